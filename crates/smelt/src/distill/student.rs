//! The student a distillation starts from: a fresh model of the `[model]` shape (made by
//! the trainer), a smelt checkpoint, or a Llama-architecture Hugging Face folder.

use std::path::Path;

use anyhow::{bail, Context, Result};
use candle_core::Device;

use crate::load::hf::{read_json, safetensors_files};
use crate::load::hf_config::config_from_hf;
use crate::load::tensors::{SafetensorsTensors, TensorSource};
use crate::model::config::{Activation, Arch, ModelConfig, RopeLayout, RopeScaling};
use crate::tokenize::Tokenizer;
use crate::train::checkpoint;
use crate::train::config::ModelShape;
use crate::train::Params;

pub struct Student {
    pub params: Params,
    /// The shape, with `ctx` set to the windows trained on.
    pub shape: ModelShape,
    pub tokenizer: Tokenizer,
}

/// The [`ModelShape`] of a model config, if the trainer's Llama decoder can express it.
pub fn shape_of(cfg: &ModelConfig, ctx: usize) -> Result<ModelShape> {
    let why = if cfg.arch != Arch::Llama {
        Some(format!("architecture {:?} (only Llama students can be trained)", cfg.arch))
    } else if cfg.activation != Activation::Silu || cfg.embed_scale.is_some() || cfg.attn_softcap.is_some() || cfg.final_softcap.is_some() || cfg.qk_norm || cfg.sandwich_norms {
        Some("a Llama variant the trainer does not implement".to_string())
    } else if cfg.ropes.len() != 1 || cfg.ropes[0].layout != RopeLayout::Half || cfg.ropes[0].rotary_dim != cfg.head_dim || !matches!(cfg.ropes[0].scaling, RopeScaling::None) {
        Some("rope scaling or partial rotary dimensions".to_string())
    } else if cfg.head_dim * cfg.n_heads != cfg.hidden || (cfg.attn_scale - 1.0 / (cfg.head_dim as f64).sqrt()).abs() > 1e-9 {
        Some("a head size other than hidden / heads".to_string())
    } else if cfg.layers.iter().any(|l| l.sliding_window.is_some()) {
        Some("sliding-window attention".to_string())
    } else {
        None
    };
    if let Some(w) = why {
        bail!("the student has {w}");
    }
    Ok(ModelShape {
        dim: cfg.hidden,
        layers: cfg.n_layers(),
        heads: cfg.n_heads,
        kv_heads: cfg.n_kv_heads,
        ffn: cfg.intermediate,
        ctx,
        vocab: cfg.vocab_size,
        tie_embeddings: cfg.tie_embeddings,
        rope_theta: cfg.ropes[0].theta,
        norm_eps: cfg.norm_eps,
    })
}

/// Load the student at `path` for `ctx`-token windows.
pub fn load_student(path: &Path, ctx: usize) -> Result<Student> {
    let device = Device::Cpu;
    let what = || format!("student {}", path.display());
    if path.is_dir() && path.join("config.json").is_file() {
        let cfg = config_from_hf(&read_json(&path.join("config.json"))?).with_context(what)?;
        let mut shape = shape_of(&cfg, ctx).with_context(what)?;
        shape.ctx = ctx;
        let st = SafetensorsTensors::open(&safetensors_files(path)?, cfg.arch, device.clone()).with_context(what)?;
        if st.get("blk.0.attn_q.bias")?.is_some() {
            bail!("{}: the student has attention biases (not supported by the trainer)", what());
        }
        let params = Params::from_source(&shape.llama_config()?, &st, &device).with_context(what)?;
        let tokenizer = Tokenizer::from_hf_dir(path).with_context(|| format!("{}: tokenizer", what()))?;
        return Ok(Student { params, shape, tokenizer });
    }
    if path.is_file() {
        bail!("{}: give a smelt checkpoint (or run folder) or a Llama-architecture Hugging Face folder; GGUF files are not supported as students", what());
    }
    let dir = checkpoint::resolve(path).with_context(what)?;
    let state = checkpoint::read_state(&dir)?;
    let mut shape = state.config.model.clone();
    shape.ctx = ctx;
    let mut st = state.clone();
    st.config.model = shape.clone();
    let params = checkpoint::load_params(&dir, &st, &device).with_context(what)?;
    let tokenizer = crate::data::prepare::load_data_tokenizer(&dir)?;
    Ok(Student { params, shape, tokenizer })
}
