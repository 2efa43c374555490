//! GGUF metadata → [`ModelConfig`], following llama.cpp's reading of the same keys.

use anyhow::{bail, Context, Result};

use super::gguf::GgufFile;
use super::tensors::TensorSource;
use crate::model::config::*;
use crate::model::rope::longrope_attn_factor;

pub fn config_from_gguf(f: &GgufFile, tensors: &dyn TensorSource) -> Result<ModelConfig> {
    let vocab_size = f.tensor_info("token_embd.weight").context("model file is missing tensor \"token_embd.weight\"")?.shape()[0];
    config_from_metadata(f, vocab_size, f.tensor_info("output.weight").is_none(), tensors)
}

/// [`config_from_gguf`] with the two facts it reads off the tensor directory given: the
/// embedding rows and whether the output matrix is the embedding's. `f` needs only the
/// metadata (and rope factor tensors, read through `tensors`).
pub fn config_from_metadata(f: &GgufFile, vocab_size: usize, tie_embeddings: bool, tensors: &dyn TensorSource) -> Result<ModelConfig> {
    let arch_name = f.architecture()?;
    let arch = Arch::parse(arch_name)?;
    let key = |k: &str| format!("{arch_name}.{k}");
    let get_usize = |k: &str| -> Result<Option<usize>> {
        match f.get(&key(k)) {
            None => Ok(None),
            Some(v) => {
                // Some writers store per-layer arrays; all layers equal is what we support.
                let v = match v.as_array() {
                    Some(items) => {
                        let first = items.first().and_then(|x| x.as_i64());
                        if items.iter().any(|x| x.as_i64() != first) {
                            bail!("{}: per-layer values differ; smelt needs one value", key(k));
                        }
                        first
                    }
                    None => v.as_i64(),
                };
                match v {
                    Some(n) if n >= 0 && n < (1 << 40) => Ok(Some(n as usize)),
                    _ => bail!("GGUF key {} has a bad value", key(k)),
                }
            }
        }
    };
    let need = |k: &str| -> Result<usize> { get_usize(k)?.with_context(|| format!("GGUF is missing {}", key(k))) };

    let hidden = need("embedding_length")?;
    let n_layers = need("block_count")?;
    let intermediate = need("feed_forward_length")?;
    let n_heads = need("attention.head_count")?;
    let n_kv_heads = get_usize("attention.head_count_kv")?.unwrap_or(n_heads);
    if n_heads == 0 {
        bail!("GGUF says the model has 0 attention heads");
    }
    let head_dim = get_usize("attention.key_length")?.unwrap_or(hidden / n_heads);
    let max_position = get_usize("context_length")?.unwrap_or(2048);
    let norm_eps = f.get_f64(&key("attention.layer_norm_rms_epsilon")).unwrap_or(1e-5);
    let theta = f.get_f64(&key("rope.freq_base")).unwrap_or(10000.0);
    let rotary_dim = get_usize("rope.dimension_count")?.unwrap_or(head_dim);

    let layout = match arch {
        // llama.cpp's converter permutes llama q/k rows for the interleaved ("normal") rope.
        Arch::Llama | Arch::Mistral => RopeLayout::Interleaved,
        _ => RopeLayout::Half,
    };
    let scaling_type = f.get_str(&key("rope.scaling.type")).unwrap_or("none");
    let factor = f.get_f64(&key("rope.scaling.factor")).unwrap_or(1.0);
    let orig_ctx = get_usize("rope.scaling.original_context_length")?;
    let mut scaling = match scaling_type {
        "none" | "" => RopeScaling::None,
        "linear" if factor != 1.0 => RopeScaling::Linear { factor },
        "linear" => RopeScaling::None,
        "longrope" => RopeScaling::None, // from the factor tensors below
        other => bail!("unsupported rope scaling {other:?} in GGUF"),
    };
    // Per-frequency factors shipped as tensors: llama 3.x `rope_freqs`, Phi-3 long/short.
    let to_f64 = |t: candle_core::Tensor| -> Result<Vec<f64>> {
        Ok(t.flatten_all()?.to_vec1::<f32>()?.into_iter().map(f64::from).collect())
    };
    if let Some(t) = tensors.get_dense("rope_freqs.weight")? {
        scaling = RopeScaling::Factors { factors: to_f64(t)?, attn_factor: 1.0 };
    } else if let (Some(long), Some(short)) =
        (tensors.get_dense("rope_factors_long.weight")?, tensors.get_dense("rope_factors_short.weight")?)
    {
        let original_max = orig_ctx.unwrap_or(max_position);
        scaling = RopeScaling::LongRope {
            short: to_f64(short)?,
            long: to_f64(long)?,
            original_max,
            attn_factor: f
                .get_f64(&key("rope.scaling.attn_factor"))
                .unwrap_or_else(|| longrope_attn_factor(max_position as f64 / original_max as f64, original_max)),
        };
    }
    if let RopeScaling::Factors { factors, .. } | RopeScaling::LongRope { long: factors, .. } = &scaling {
        if factors.len() != rotary_dim / 2 {
            bail!("rope factor tensor has {} entries, expected {}", factors.len(), rotary_dim / 2);
        }
    }
    let global = RopeConfig { theta, rotary_dim, layout, scaling };

    let is_gemma = matches!(arch, Arch::Gemma | Arch::Gemma2 | Arch::Gemma3);
    let window = get_usize("attention.sliding_window")?.filter(|&w| w > 0);
    let mut ropes = vec![global.clone()];
    let mut layers: Vec<LayerConfig> = (0..n_layers).map(|_| LayerConfig { sliding_window: None, rope: 0 }).collect();
    let swa_pattern = |default: usize| -> Result<Vec<bool>> {
        if let Some(arr) = f.get(&key("attention.sliding_window_pattern")).and_then(|v| v.as_array()) {
            if arr.len() != n_layers {
                bail!("sliding_window_pattern has {} entries for {n_layers} layers", arr.len());
            }
            return Ok(arr.iter().map(|v| v.as_bool().unwrap_or(false)).collect());
        }
        let n = get_usize("attention.sliding_window_pattern")?.unwrap_or(default);
        Ok((0..n_layers).map(|il| n == 0 || il % n < n - 1).collect())
    };
    match (arch, window) {
        (Arch::Gemma2, Some(w)) => {
            for (l, swa) in layers.iter_mut().zip(swa_pattern(2)?) {
                l.sliding_window = swa.then_some(w);
            }
        }
        (Arch::Gemma3, Some(w)) => {
            // Local layers use their own rope base and no scaling.
            let local_theta = f.get_f64(&key("rope.freq_base_swa")).unwrap_or(10000.0);
            ropes.push(RopeConfig { theta: local_theta, scaling: RopeScaling::None, ..global.clone() });
            for (l, swa) in layers.iter_mut().zip(swa_pattern(6)?) {
                if swa {
                    *l = LayerConfig { sliding_window: Some(w), rope: 1 };
                }
            }
        }
        _ => {} // llama.cpp ignores the window for the other architectures' GGUF files
    }

    // Gemma 2/3 27B scale queries by hidden/heads instead of head_dim (llama.cpp does the same).
    let big_gemma = (arch == Arch::Gemma2 && n_layers == 46) || (arch == Arch::Gemma3 && n_layers == 62);
    let attn_scale = if big_gemma { 1.0 / ((hidden / n_heads) as f64).sqrt() } else { 1.0 / (head_dim as f64).sqrt() };
    let cap = |k: &str| f.get_f64(&key(k)).filter(|&c| c > 0.0);

    let cfg = ModelConfig {
        arch,
        vocab_size,
        hidden,
        intermediate,
        n_heads,
        n_kv_heads,
        head_dim,
        norm_eps,
        activation: if is_gemma { Activation::GeluTanh } else { Activation::Silu },
        max_position,
        tie_embeddings,
        embed_scale: is_gemma.then(|| (hidden as f32).sqrt() as f64),
        attn_scale,
        attn_softcap: if arch == Arch::Gemma2 { cap("attn_logit_softcapping") } else { None },
        final_softcap: if matches!(arch, Arch::Gemma2 | Arch::Gemma3) { cap("final_logit_softcapping") } else { None },
        qk_norm: matches!(arch, Arch::Gemma3 | Arch::Qwen3),
        sandwich_norms: matches!(arch, Arch::Gemma2 | Arch::Gemma3),
        ropes,
        layers,
    };
    cfg.validate()?;
    Ok(cfg)
}
