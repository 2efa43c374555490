//! `smelt export`: a training checkpoint as a Hugging Face folder (transformers'
//! `LlamaForCausalLM`) or a GGUF file (llama.cpp's `llama` architecture), with the tokenizer.
//!
//! [`hf`] writes safetensors under transformers' names; [`gguf`] writes GGUF metadata,
//! q/k rows permuted for llama.cpp's interleaved rope, and optional quantization;
//! [`tokenizer`] turns `tokenizer.json` into `tokenizer.ggml.*`; [`safetensors`] is the writer;
//! [`convert`] turns a Hugging Face folder of any supported architecture into a GGUF.

pub mod convert;
pub mod gguf;
pub mod hf;
pub mod merge;
pub mod safetensors;
pub mod tokenizer;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use candle_core::{Device, Tensor};

use crate::model::ModelConfig;
use crate::train::checkpoint;
use crate::train::config::ModelShape;

/// A trained model ready to be written out.
pub struct Exportable {
    pub shape: ModelShape,
    pub cfg: ModelConfig,
    /// Canonical names (`blk.0.attn_q.weight`, ...) → f32 tensors.
    pub tensors: HashMap<String, Tensor>,
    /// Folder with tokenizer.json and tokenizer_config.json.
    pub tokenizer_dir: PathBuf,
    pub name: String,
}

impl Exportable {
    /// From a checkpoint folder, or a run folder (its latest checkpoint).
    pub fn from_checkpoint(path: &Path) -> Result<Exportable> {
        let dir = checkpoint::resolve(path)?;
        let state = checkpoint::read_state(&dir)?;
        let shape = state.config.model.clone();
        let cfg = shape.llama_config()?;
        let p = dir.join("model.safetensors");
        let tensors = candle_core::safetensors::load(&p, &Device::Cpu).with_context(|| format!("cannot read {}", p.display()))?;
        for (name, dims) in crate::train::params::llama_tensor_shapes(&cfg) {
            let t = tensors.get(&name).with_context(|| format!("{}: missing tensor {name}", p.display()))?;
            if t.dims() != dims.as_slice() {
                anyhow::bail!("{}: tensor {name} has shape {:?}, the config says {dims:?}", p.display(), t.dims());
            }
        }
        if !dir.join("tokenizer.json").is_file() {
            anyhow::bail!("{}: the checkpoint has no tokenizer.json", dir.display());
        }
        let run = state.config.run.out.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let name = format!("{} step {}", if run.is_empty() { "smelt" } else { &run }, state.step);
        Ok(Exportable { shape, cfg, tensors, tokenizer_dir: dir, name })
    }

    pub fn tensor(&self, name: &str) -> Result<&Tensor> {
        self.tensors.get(name).with_context(|| format!("missing tensor {name}"))
    }

    /// Token ids named in tokenizer_config.json (`bos_token`, `eos_token`).
    pub fn special_id(&self, key: &str) -> Option<u32> {
        let cfg: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(self.tokenizer_dir.join("tokenizer_config.json")).ok()?).ok()?;
        let text = match cfg.get(key)? {
            serde_json::Value::String(s) => s.clone(),
            v => v.get("content")?.as_str()?.to_string(),
        };
        let tj: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(self.tokenizer_dir.join("tokenizer.json")).ok()?).ok()?;
        tj.get("added_tokens")?
            .as_array()?
            .iter()
            .find(|t| t.get("content").and_then(|c| c.as_str()) == Some(text.as_str()))
            .and_then(|t| t.get("id")?.as_u64())
            .or_else(|| tj.pointer("/model/vocab")?.get(&text)?.as_u64())
            .map(|v| v as u32)
    }
}
