//! A Hugging Face model folder transformers loads as `LlamaForCausalLM`: `config.json`
//! (both the transformers 4 and 5 rope keys), `model.safetensors` (f32, transformers'
//! tensor names; q/k rows stay in the half-split rope layout smelt trains in),
//! `generation_config.json`, and the tokenizer files.

use std::path::Path;

use anyhow::{Context, Result};
use candle_core::Tensor;

use super::{safetensors, Exportable};
use crate::util::write_atomic;

/// Canonical name → transformers' name.
pub fn hf_name(canonical: &str) -> Option<String> {
    Some(match canonical {
        "token_embd.weight" => "model.embed_tokens.weight".into(),
        "output_norm.weight" => "model.norm.weight".into(),
        "output.weight" => "lm_head.weight".into(),
        _ => {
            let rest = canonical.strip_prefix("blk.")?;
            let (layer, tail) = rest.split_once('.')?;
            let base = tail.strip_suffix(".weight")?;
            let hf = match base {
                "attn_norm" => "input_layernorm",
                "attn_q" => "self_attn.q_proj",
                "attn_k" => "self_attn.k_proj",
                "attn_v" => "self_attn.v_proj",
                "attn_output" => "self_attn.o_proj",
                "ffn_norm" => "post_attention_layernorm",
                "ffn_gate" => "mlp.gate_proj",
                "ffn_up" => "mlp.up_proj",
                "ffn_down" => "mlp.down_proj",
                _ => return None,
            };
            format!("model.layers.{layer}.{hf}.weight")
        }
    })
}

pub fn config_json(m: &Exportable) -> serde_json::Value {
    let c = &m.cfg;
    let s = &m.shape;
    let bos = m.special_id("bos_token");
    let eos = m.special_id("eos_token");
    serde_json::json!({
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": c.vocab_size,
        "hidden_size": c.hidden,
        "intermediate_size": c.intermediate,
        "num_hidden_layers": c.n_layers(),
        "num_attention_heads": c.n_heads,
        "num_key_value_heads": c.n_kv_heads,
        "head_dim": c.head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": c.max_position,
        "rms_norm_eps": c.norm_eps,
        "rope_theta": s.rope_theta,
        "rope_scaling": null,
        "rope_parameters": { "rope_type": "default", "rope_theta": s.rope_theta },
        "attention_bias": false,
        "attention_dropout": 0.0,
        "mlp_bias": false,
        "pretraining_tp": 1,
        "initializer_range": 0.02,
        "tie_word_embeddings": c.tie_embeddings,
        "use_cache": true,
        "bos_token_id": bos,
        "eos_token_id": eos,
        "pad_token_id": eos,
        "torch_dtype": "float32",
        "dtype": "float32",
    })
}

pub fn export_hf(m: &Exportable, out: &Path) -> Result<()> {
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    let mut names: Vec<&String> = m.tensors.keys().collect();
    names.sort();
    let mut tensors: Vec<(String, Tensor)> = Vec::new();
    for n in names {
        if n == "output.weight" && m.cfg.tie_embeddings {
            continue;
        }
        let hf = hf_name(n).with_context(|| format!("no transformers name for tensor {n}"))?;
        tensors.push((hf, m.tensors[n].clone()));
    }
    write_atomic(&out.join("model.safetensors"), &safetensors::to_bytes(&tensors, &[("format", "pt")])?)?;
    write_atomic(&out.join("config.json"), serde_json::to_string_pretty(&config_json(m))?.as_bytes())?;
    let mut eos: Vec<u32> = m.special_id("eos_token").into_iter().collect();
    if let Some(id) = read_token_id(&m.tokenizer_dir, crate::data::tokenizer::IM_END) {
        eos.push(id);
    }
    let gen = serde_json::json!({ "bos_token_id": m.special_id("bos_token"), "eos_token_id": eos, "do_sample": true, "temperature": 0.8, "top_k": 40 });
    write_atomic(&out.join("generation_config.json"), serde_json::to_string_pretty(&gen)?.as_bytes())?;
    for f in crate::train::checkpoint::TOKENIZER_FILES {
        let src = m.tokenizer_dir.join(f);
        if src.is_file() {
            write_atomic(&out.join(f), &std::fs::read(&src).with_context(|| format!("cannot read {}", src.display()))?)?;
        }
    }
    Ok(())
}

fn read_token_id(dir: &Path, text: &str) -> Option<u32> {
    let tj: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.join("tokenizer.json")).ok()?).ok()?;
    tj.get("added_tokens")?
        .as_array()?
        .iter()
        .find(|t| t.get("content").and_then(|c| c.as_str()) == Some(text))
        .and_then(|t| t.get("id")?.as_u64())
        .map(|v| v as u32)
}
