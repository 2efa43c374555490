//! `smelt quantize IN OUT --type TYPE [--eval-file F]`.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};

use crate::eval::perplexity::perplexity;
use crate::load::{load, LoadOptions};
use crate::quantize::{quantize_file, FileType};

#[derive(Args, Debug)]
pub struct QuantizeArgs {
    /// The model to quantize: a GGUF file (ideally f16/bf16/f32), or a Hugging Face folder
    /// (Llama, Mistral, Qwen 2/3, Phi-3, Gemma 1/2/3) with its tokenizer.json.
    pub input: PathBuf,
    /// The GGUF file to write.
    pub output: PathBuf,
    /// q4_0, q4_1, q5_0, q5_1, q8_0, q4_k_m, q5_k_m, q6_k, f16 or f32 (the _m types mix in
    /// Q6_K/Q5_K for the sensitive tensors, as llama.cpp does).
    #[arg(long = "type", short = 'q')]
    pub ftype: String,
    /// Also report the perplexity of both models on this UTF-8 text.
    #[arg(long)]
    pub eval_file: Option<PathBuf>,
    /// Tokens per perplexity chunk.
    #[arg(long, default_value_t = 512)]
    pub eval_ctx: usize,
    /// Score only the first N chunks.
    #[arg(long, default_value_t = 20)]
    pub eval_chunks: usize,
    #[arg(long)]
    pub json: bool,
}

/// Perplexity and the number of chunks scored.
fn ppl(model: &Path, text: &str, ctx: usize, chunks: usize) -> Result<(f64, usize)> {
    let m = load(model, &LoadOptions { ctx: Some(ctx), ..Default::default() })?;
    let tokens = m.tokenizer.encode(text, true, false)?;
    let bos = if m.tokenizer.add_bos() { m.tokenizer.bos_id() } else { None };
    let r = perplexity(&m.decoder, &tokens, ctx, Some(chunks), bos, |_, _, _| {})?;
    Ok((r.ppl, r.chunks))
}

pub fn quantize(a: QuantizeArgs) -> Result<()> {
    let ftype = FileType::parse(&a.ftype)?;
    if !a.input.is_file() && !a.input.is_dir() {
        bail!("{}: no such file", a.input.display());
    }
    if a.output.is_dir() {
        bail!("{} is a folder; give the .gguf file to write", a.output.display());
    }
    if a.input.canonicalize().ok() == a.output.canonicalize().ok() {
        bail!("the output would overwrite the input {}", a.input.display());
    }
    let text = match &a.eval_file {
        Some(f) => Some(std::fs::read_to_string(f).with_context(|| format!("cannot read {} as UTF-8 text", f.display()))?),
        None => None,
    };
    let bar = ProgressBar::new(0);
    bar.set_style(ProgressStyle::with_template("quantizing [{bar:30}] {percent}% eta {eta}").unwrap().progress_chars("=> "));
    let t0 = std::time::Instant::now();
    let rep = quantize_file(&a.input, &a.output, ftype, |done, total| {
        bar.set_length(total);
        bar.set_position(done);
    })?;
    bar.finish_and_clear();
    let secs = t0.elapsed().as_secs_f64();
    let eval = match &text {
        Some(t) => {
            let base = ppl(&a.input, t, a.eval_ctx, a.eval_chunks).context("perplexity of the input model")?;
            let quant = ppl(&a.output, t, a.eval_ctx, a.eval_chunks).context("perplexity of the quantized model")?;
            Some((base, quant))
        }
        None => None,
    };
    if a.json {
        let mut v = serde_json::to_value(&rep)?;
        v["type"] = ftype.name().into();
        v["seconds"] = secs.into();
        if let Some(((b, n), (q, _))) = eval {
            v["ppl_base"] = b.into();
            v["ppl_quantized"] = q.into();
            v["ppl_chunks"] = n.into();
        }
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    let types: Vec<String> = rep.types.iter().map(|(k, n)| format!("{n} {k}")).collect();
    println!(
        "{} -> {} ({}): {:.1} MB -> {:.1} MB in {secs:.1}s; tensors: {}",
        a.input.display(),
        a.output.display(),
        ftype.name(),
        rep.in_bytes as f64 / 1e6,
        rep.out_bytes as f64 / 1e6,
        types.join(", ")
    );
    for n in &rep.notes {
        println!("note: {n}");
    }
    if rep.requantized > 0 {
        println!("note: {} tensors were already quantized; quantizing again costs more quality than starting from f16", rep.requantized);
    }
    if let Some(((b, n), (q, _))) = eval {
        println!(
            "perplexity ({n} chunks of {}): base {b:.4}, {} {q:.4} ({:+.2}%)",
            a.eval_ctx,
            ftype.name(),
            (q / b - 1.0) * 100.0
        );
    }
    Ok(())
}
