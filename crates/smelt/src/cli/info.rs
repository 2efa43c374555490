//! `smelt info MODEL [--json]`.

use anyhow::Result;
use clap::Args;
use serde_json::json;

use super::args::{load_model, ModelArgs};
use crate::model::config::RopeScaling;
use crate::util::human_bytes;

#[derive(Args, Debug)]
pub struct InfoArgs {
    /// The model: path, alias or hub repo (default: smollm2-135m).
    pub model: Option<String>,
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub model_args: ModelArgs,
}

pub fn info(a: InfoArgs) -> Result<()> {
    let m = load_model(a.model.as_deref(), &a.model_args)?;
    let c = m.config();
    let t = &m.tokenizer;
    let sliding: Vec<usize> = c.layers.iter().filter_map(|l| l.sliding_window).collect();
    let rope = &c.ropes[0];
    let scaling = match &rope.scaling {
        RopeScaling::None => "none".to_string(),
        RopeScaling::Linear { factor } => format!("linear ×{factor}"),
        RopeScaling::Llama3 { factor, .. } => format!("llama3 ×{factor}"),
        RopeScaling::Factors { .. } => "per-frequency factors".to_string(),
        RopeScaling::LongRope { original_max, .. } => format!("longrope (original {original_max})"),
    };
    let tok_name = |id: Option<u32>| id.map(|i| format!("{} ({i})", t.token_str(i).unwrap_or("?")));
    let v = json!({
        "path": m.info.path,
        "format": m.info.format,
        "name": m.info.name,
        "architecture": c.arch.name(),
        "parameters": c.n_params(),
        "file_bytes": m.info.file_bytes,
        "tensor_types": m.info.tensor_types,
        "context_length": c.max_position,
        "context_loaded": m.decoder.n_ctx,
        "layers": c.n_layers(),
        "hidden": c.hidden,
        "intermediate": c.intermediate,
        "heads": c.n_heads,
        "kv_heads": c.n_kv_heads,
        "head_dim": c.head_dim,
        "vocab_size": c.vocab_size,
        "tied_embeddings": c.tie_embeddings,
        "rope_theta": rope.theta,
        "rope_scaling": scaling,
        "sliding_window": sliding.first(),
        "sliding_layers": sliding.len(),
        "attn_softcap": c.attn_softcap,
        "final_softcap": c.final_softcap,
        "tokenizer": {
            "vocab_size": t.vocab_size(),
            "bos": tok_name(t.bos_id()),
            "eos": tok_name(t.eos_id()),
            "adds_bos": t.add_bos(),
            "end_of_generation": t.eog_ids(),
        },
        "chat_template": m.chat_template.as_ref().map(|s| s.len()),
    });
    if a.json {
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    let types: Vec<String> = m.info.tensor_types.iter().map(|(k, n)| format!("{k}×{n}")).collect();
    println!("model          {}", m.info.name.as_deref().unwrap_or("-"));
    println!("path           {} ({:?}, {})", m.info.path.display(), m.info.format, human_bytes(m.info.file_bytes));
    println!("architecture   {}", c.arch.name());
    println!("parameters     {:.1}M", c.n_params() as f64 / 1e6);
    println!("tensor types   {}", types.join(" "));
    println!("context        {} trained, {} loaded", c.max_position, m.decoder.n_ctx);
    println!(
        "shape          {} layers, hidden {}, ffn {}, {} heads / {} kv heads × {}",
        c.n_layers(),
        c.hidden,
        c.intermediate,
        c.n_heads,
        c.n_kv_heads,
        c.head_dim
    );
    println!("rope           theta {}, scaling {scaling}", rope.theta);
    if !sliding.is_empty() {
        println!("sliding window {} on {} of {} layers", sliding[0], sliding.len(), c.n_layers());
    }
    println!(
        "tokenizer      {} tokens, bos {}, eos {}, end-of-generation {:?}",
        t.vocab_size(),
        tok_name(t.bos_id()).unwrap_or("-".into()),
        tok_name(t.eos_id()).unwrap_or("-".into()),
        t.eog_ids()
    );
    match &m.chat_template {
        Some(s) => println!("chat template  yes ({} chars)", s.len()),
        None => println!("chat template  none (run uses plain completion)"),
    }
    Ok(())
}
