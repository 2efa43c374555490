//! Hugging Face `config.json` → [`ModelConfig`], in both the transformers-4 style
//! (`rope_theta`, `rope_scaling`, `torch_dtype`) and the transformers-5 style
//! (`rope_parameters`, flat or keyed by layer type, and `dtype`).

use anyhow::{bail, Context, Result};
use serde_json::Value;

use crate::model::config::*;
use crate::model::rope::longrope_attn_factor;

fn get_usize(c: &Value, k: &str) -> Result<Option<usize>> {
    match c.get(k) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => match v.as_u64() {
            Some(n) if n < (1 << 40) => Ok(Some(n as usize)),
            _ => bail!("config.json: {k} must be a non-negative integer, got {v}"),
        },
    }
}

fn need_usize(c: &Value, k: &str) -> Result<usize> {
    get_usize(c, k)?.with_context(|| format!("config.json is missing {k}"))
}

fn get_f64(c: &Value, k: &str) -> Option<f64> {
    c.get(k).and_then(Value::as_f64)
}

fn f64_list(v: Option<&Value>, what: &str) -> Result<Vec<f64>> {
    v.and_then(Value::as_array)
        .with_context(|| format!("config.json: rope scaling needs a {what} list"))?
        .iter()
        .map(|x| x.as_f64().with_context(|| format!("config.json: {what} must hold numbers")))
        .collect()
}

/// The rope parameter dict that applies to layers of `layer_type`, merged so that every
/// key a reader needs is in one map: v5 `rope_parameters` (flat or per layer type), or
/// the v4 top-level keys.
fn rope_params(c: &Value, layer_type: &str) -> Value {
    let mut out = serde_json::Map::new();
    // v4 style first; v5 keys override.
    if let Some(t) = c.get("rope_theta") {
        out.insert("rope_theta".into(), t.clone());
    }
    if let Some(p) = c.get("partial_rotary_factor") {
        out.insert("partial_rotary_factor".into(), p.clone());
    }
    if let Some(Value::Object(s)) = c.get("rope_scaling") {
        for (k, v) in s {
            out.insert(if k == "type" { "rope_type".into() } else { k.clone() }, v.clone());
        }
    }
    let is_gemma3 = matches!(c.get("model_type").and_then(Value::as_str), Some("gemma3" | "gemma3_text"));
    if layer_type == "sliding_attention" && is_gemma3 {
        // Gemma 3 (v4): local layers use their own base (default 10000) and no scaling.
        out.retain(|k, _| k == "partial_rotary_factor");
        out.insert("rope_theta".into(), c.get("rope_local_base_freq").cloned().unwrap_or(serde_json::json!(10000.0)));
    }
    if let Some(Value::Object(rp)) = c.get("rope_parameters") {
        let flat = rp.contains_key("rope_theta") || rp.contains_key("rope_type");
        let chosen = if flat { Some(rp) } else { rp.get(layer_type).and_then(Value::as_object) };
        if let Some(m) = chosen {
            for (k, v) in m {
                out.insert(if k == "type" { "rope_type".into() } else { k.clone() }, v.clone());
            }
        }
    }
    Value::Object(out)
}

fn rope_config(c: &Value, p: &Value, head_dim: usize, max_position: usize, default_theta: f64) -> Result<RopeConfig> {
    let theta = get_f64(p, "rope_theta").unwrap_or(default_theta);
    let partial = get_f64(p, "partial_rotary_factor").unwrap_or(1.0);
    let rotary_dim = ((head_dim as f64 * partial) as usize) & !1;
    let rope_type = p.get("rope_type").and_then(Value::as_str).unwrap_or("default");
    let factor = get_f64(p, "factor");
    let scaling = match rope_type {
        "default" => RopeScaling::None,
        // Dynamic NTK only changes frequencies beyond the trained length, which smelt
        // refuses to exceed; within it the frequencies are the defaults.
        "dynamic" => RopeScaling::None,
        "linear" => RopeScaling::Linear { factor: factor.context("config.json: linear rope scaling needs factor")? },
        "llama3" => RopeScaling::Llama3 {
            factor: factor.context("config.json: llama3 rope scaling needs factor")?,
            low_freq_factor: get_f64(p, "low_freq_factor").unwrap_or(1.0),
            high_freq_factor: get_f64(p, "high_freq_factor").unwrap_or(4.0),
            original_max: get_usize(p, "original_max_position_embeddings")?
                .context("config.json: llama3 rope scaling needs original_max_position_embeddings")?,
        },
        "longrope" | "su" => {
            // Phi-3: the top-level value wins over one inside the rope dict; transformers'
            // Phi3Config defaults it to 4096.
            let original_max = get_usize(c, "original_max_position_embeddings")?
                .or(get_usize(p, "original_max_position_embeddings")?)
                .unwrap_or(4096);
            let scale = factor.unwrap_or(max_position as f64 / original_max as f64);
            let short = f64_list(p.get("short_factor"), "short_factor")?;
            let long = f64_list(p.get("long_factor"), "long_factor")?;
            if short.len() != rotary_dim / 2 || long.len() != rotary_dim / 2 {
                bail!(
                    "config.json: longrope factor lists have {} / {} entries, expected {}",
                    short.len(),
                    long.len(),
                    rotary_dim / 2
                );
            }
            RopeScaling::LongRope {
                short,
                long,
                original_max,
                attn_factor: get_f64(p, "attention_factor").unwrap_or_else(|| longrope_attn_factor(scale, original_max)),
            }
        }
        other => bail!("rope scaling type {other:?} is not supported yet"),
    };
    Ok(RopeConfig { theta, rotary_dim, layout: RopeLayout::Half, scaling })
}

/// Per-layer attention kinds: `true` = sliding window.
fn sliding_layers(c: &Value, arch: Arch, n_layers: usize) -> Result<Vec<bool>> {
    if let Some(Value::Array(types)) = c.get("layer_types") {
        if types.len() != n_layers {
            bail!("config.json: layer_types has {} entries for {n_layers} layers", types.len());
        }
        return types
            .iter()
            .map(|t| match t.as_str() {
                Some("sliding_attention") => Ok(true),
                Some("full_attention") => Ok(false),
                _ => bail!("config.json: unknown layer type {t}"),
            })
            .collect();
    }
    Ok(match arch {
        Arch::Gemma2 => (0..n_layers).map(|i| i % 2 == 0).collect(),
        Arch::Gemma3 => {
            let n = get_usize(c, "sliding_window_pattern")?.unwrap_or(6).max(1);
            (0..n_layers).map(|i| (i + 1) % n != 0).collect()
        }
        Arch::Mistral | Arch::Phi3 => vec![true; n_layers],
        Arch::Qwen2 | Arch::Qwen3 => {
            let from = get_usize(c, "max_window_layers")?.unwrap_or(n_layers);
            let on = c.get("use_sliding_window").and_then(Value::as_bool).unwrap_or(false);
            (0..n_layers).map(|i| on && i >= from).collect()
        }
        _ => vec![false; n_layers],
    })
}

pub fn config_from_hf(root: &Value) -> Result<ModelConfig> {
    // Multimodal wrappers keep the language model's settings in `text_config`.
    let c = match root.get("text_config") {
        Some(t @ Value::Object(_)) => t,
        _ => root,
    };
    let model_type = c
        .get("model_type")
        .or(root.get("model_type"))
        .and_then(Value::as_str)
        .context("config.json has no model_type")?;
    let arch = Arch::parse(model_type)?;
    let hidden = need_usize(c, "hidden_size")?;
    let n_layers = need_usize(c, "num_hidden_layers")?;
    let n_heads = need_usize(c, "num_attention_heads")?;
    if n_heads == 0 {
        bail!("config.json: num_attention_heads is 0");
    }
    let n_kv_heads = get_usize(c, "num_key_value_heads")?.unwrap_or(n_heads);
    let head_dim = get_usize(c, "head_dim")?.unwrap_or(hidden / n_heads);
    let max_position = get_usize(c, "max_position_embeddings")?.unwrap_or(2048);
    let is_gemma = matches!(arch, Arch::Gemma | Arch::Gemma2 | Arch::Gemma3);

    let act_name = c
        .get("hidden_activation")
        .and_then(Value::as_str)
        .or_else(|| c.get("hidden_act").and_then(Value::as_str))
        .unwrap_or(if is_gemma { "gelu_pytorch_tanh" } else { "silu" });
    let activation = match act_name {
        "silu" | "swish" => Activation::Silu,
        "gelu_pytorch_tanh" | "gelu_new" | "gelu_fast" => Activation::GeluTanh,
        // Gemma 1 configs say "gelu" but transformers runs the tanh form for them.
        "gelu" if arch == Arch::Gemma && c.get("hidden_activation").is_none() => Activation::GeluTanh,
        "gelu" => Activation::Gelu,
        other => bail!("config.json: activation {other:?} is not supported"),
    };

    let sliding = sliding_layers(c, arch, n_layers)?;
    let window = match arch {
        Arch::Qwen2 | Arch::Qwen3 if c.get("use_sliding_window").and_then(Value::as_bool) == Some(false) => None,
        _ => get_usize(c, "sliding_window")?,
    };
    let default_theta = if arch == Arch::Gemma3 { 1e6 } else { 10000.0 };
    let full = rope_config(c, &rope_params(c, "full_attention"), head_dim, max_position, default_theta)?;
    let local = rope_config(c, &rope_params(c, "sliding_attention"), head_dim, max_position, default_theta)?;
    let mut ropes = vec![full.clone()];
    if local != full && sliding.iter().any(|&s| s) {
        ropes.push(local);
    }
    let layers = sliding
        .iter()
        .map(|&s| LayerConfig {
            sliding_window: if s { window } else { None },
            rope: if s && ropes.len() > 1 { 1 } else { 0 },
        })
        .collect();

    let attn_scale = match get_f64(c, "query_pre_attn_scalar") {
        Some(s) if is_gemma && s > 0.0 => 1.0 / s.sqrt(),
        _ => 1.0 / (head_dim as f64).sqrt(),
    };
    let cap = |k: &str| get_f64(c, k).filter(|&v| v > 0.0);
    let tie_default = is_gemma;
    let cfg = ModelConfig {
        arch,
        vocab_size: need_usize(c, "vocab_size")?,
        hidden,
        intermediate: need_usize(c, "intermediate_size")?,
        n_heads,
        n_kv_heads,
        head_dim,
        norm_eps: get_f64(c, "rms_norm_eps").unwrap_or(1e-6),
        activation,
        max_position,
        tie_embeddings: c
            .get("tie_word_embeddings")
            .or(root.get("tie_word_embeddings"))
            .and_then(Value::as_bool)
            .unwrap_or(tie_default),
        embed_scale: is_gemma.then(|| (hidden as f32).sqrt() as f64),
        attn_scale,
        // Gemma 3 configs carry attn_logit_softcapping but transformers never applies it.
        attn_softcap: if arch == Arch::Gemma2 { cap("attn_logit_softcapping") } else { None },
        final_softcap: if arch == Arch::Gemma2 || arch == Arch::Gemma3 { cap("final_logit_softcapping") } else { None },
        qk_norm: matches!(arch, Arch::Gemma3 | Arch::Qwen3),
        sandwich_norms: matches!(arch, Arch::Gemma2 | Arch::Gemma3),
        ropes,
        layers,
    };
    cfg.validate()?;
    Ok(cfg)
}

/// The checkpoint's stored dtype (`dtype` in v5, `torch_dtype` in v4), for `smelt info`.
pub fn stored_dtype(root: &Value) -> Option<String> {
    let c = root.get("text_config").unwrap_or(root);
    c.get("dtype")
        .or(c.get("torch_dtype"))
        .or(root.get("dtype"))
        .or(root.get("torch_dtype"))
        .and_then(Value::as_str)
        .map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn base() -> Value {
        json!({"model_type": "llama", "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
               "num_key_value_heads": 2, "intermediate_size": 96, "vocab_size": 128, "max_position_embeddings": 64})
    }

    #[test]
    fn v4_and_v5_rope_agree() {
        let mut v4 = base();
        v4["rope_theta"] = json!(5000.0);
        v4["rope_scaling"] = json!({"type": "linear", "factor": 2.0});
        let mut v5 = base();
        v5["rope_parameters"] = json!({"rope_type": "linear", "rope_theta": 5000.0, "factor": 2.0});
        assert_eq!(config_from_hf(&v4).unwrap(), config_from_hf(&v5).unwrap());
    }

    #[test]
    fn gemma3_local_and_global_ropes() {
        let mut c = base();
        c["model_type"] = json!("gemma3_text");
        c["layer_types"] = json!(["sliding_attention", "full_attention"]);
        c["sliding_window"] = json!(5);
        c["rope_parameters"] = json!({"sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
                                      "full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1e6}});
        let cfg = config_from_hf(&c).unwrap();
        assert_eq!(cfg.ropes.len(), 2);
        assert_eq!(cfg.layers[0], LayerConfig { sliding_window: Some(5), rope: 1 });
        assert_eq!(cfg.layers[1], LayerConfig { sliding_window: None, rope: 0 });
        assert_eq!(cfg.ropes[0].theta, 1e6);
        assert_eq!(cfg.ropes[1].scaling, RopeScaling::None);
    }

    #[test]
    fn bad_values_are_errors() {
        let mut c = base();
        c["num_attention_heads"] = json!(3);
        assert!(config_from_hf(&c).unwrap_err().to_string().contains("heads"));
        let mut c = base();
        c["model_type"] = json!("bert");
        assert!(config_from_hf(&c).unwrap_err().to_string().contains("unknown architecture"));
        let mut c = base();
        c["hidden_size"] = json!(-1);
        assert!(config_from_hf(&c).is_err());
    }
}
