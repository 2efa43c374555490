//! Loading: a GGUF file or a Hugging Face folder becomes a ready [`Model`]: the decoder
//! with its weights, the tokenizer, the chat template and the end-of-generation tokens.

pub mod gguf;
pub mod gguf_config;
pub mod hf;
pub mod hf_config;
pub mod tensors;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use candle_core::Device;

use crate::model::{Decoder, ModelConfig};
use crate::tokenize::Tokenizer;
use gguf::GgufFile;
use tensors::GgufTensors;

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Format {
    Gguf,
    HfFolder,
}

#[derive(Debug, Clone, Default)]
pub struct LoadOptions {
    /// Context size; None = the model's trained context, bounded by available memory.
    pub ctx: Option<usize>,
    /// How KV caches store entries (f16 unless asked otherwise).
    pub kv_type: crate::model::KvType,
}

/// Facts about the loaded files, for `smelt info` and `--verbose`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ModelInfo {
    pub path: PathBuf,
    pub format: Format,
    pub name: Option<String>,
    pub file_bytes: u64,
    /// Tensor type → number of tensors.
    pub tensor_types: BTreeMap<String, usize>,
    pub n_tensors: usize,
}

pub struct Model {
    pub decoder: Decoder,
    pub tokenizer: Tokenizer,
    pub chat_template: Option<String>,
    pub info: ModelInfo,
}

impl Model {
    pub fn config(&self) -> &ModelConfig {
        &self.decoder.cfg
    }

    /// BOS/EOS strings for chat templates.
    pub fn special_tokens(&self) -> crate::template::SpecialTokens {
        let t = &self.tokenizer;
        let s = |id: Option<u32>| id.and_then(|i| t.token_str(i)).map(str::to_string);
        crate::template::SpecialTokens { bos_token: s(t.bos_id()), eos_token: s(t.eos_id()), unk_token: None, pad_token: None }
    }
}

/// KV-cache bytes one token costs, stored as `kv_type`.
pub fn kv_bytes_per_token(cfg: &ModelConfig, kv_type: crate::model::KvType) -> usize {
    cfg.n_layers() * 2 * cfg.n_kv_heads * cfg.head_dim * kv_type.bytes()
}

fn mem_available() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = s.lines().find(|l| l.starts_with("MemAvailable:"))?;
    line.split_whitespace().nth(1)?.parse::<u64>().ok().map(|kb| kb * 1024)
}

/// The context to run with: what was asked (checked), else the trained context capped so a
/// full KV cache fits in half the available memory.
pub fn choose_ctx(cfg: &ModelConfig, asked: Option<usize>, kv_type: crate::model::KvType) -> Result<usize> {
    if let Some(c) = asked {
        if c < 2 {
            bail!("--ctx must be at least 2, got {c}");
        }
        if c > cfg.max_position {
            bail!(
                "--ctx {c} is larger than the {} tokens this model was trained for",
                cfg.max_position
            );
        }
        return Ok(c);
    }
    let budget = mem_available().map_or(u64::MAX, |m| m / 2);
    let fit = (budget / kv_bytes_per_token(cfg, kv_type).max(1) as u64) as usize;
    let ctx = cfg.max_position.min(fit.max(512) / 256 * 256).max(2);
    if ctx < cfg.max_position {
        tracing::info!(
            "context limited to {ctx} of the model's {} tokens by available memory (set --ctx to choose)",
            cfg.max_position
        );
    }
    Ok(ctx)
}

/// Load a `.gguf` file or a Hugging Face model folder.
pub fn load(path: &Path, opts: &LoadOptions) -> Result<Model> {
    if path.is_dir() {
        hf::load_hf_dir(path, opts)
    } else if path.is_file() {
        load_gguf(path, opts)
    } else {
        bail!("{}: no such file or folder", path.display())
    }
}

pub fn load_gguf(path: &Path, opts: &LoadOptions) -> Result<Model> {
    let file = Arc::new(GgufFile::open(path)?);
    let device = Device::Cpu;
    let src = GgufTensors::new(file.clone(), device.clone());
    let cfg = gguf_config::config_from_gguf(&file, &src).with_context(|| path.display().to_string())?;
    let tokenizer = Tokenizer::from_gguf(&file).with_context(|| format!("{}: tokenizer", path.display()))?;
    if tokenizer.vocab_size() > cfg.vocab_size {
        bail!(
            "{}: the tokenizer has {} tokens but the embedding only {} rows",
            path.display(),
            tokenizer.vocab_size(),
            cfg.vocab_size
        );
    }
    let ctx = choose_ctx(&cfg, opts.ctx, opts.kv_type)?;
    let mut decoder = Decoder::load(&cfg, &src, ctx, &device).with_context(|| path.display().to_string())?;
    decoder.kv_type = opts.kv_type;
    let mut tensor_types = BTreeMap::new();
    for t in &file.tensors {
        *tensor_types.entry(t.dtype.name().to_string()).or_insert(0) += 1;
    }
    let model = Model {
        decoder,
        tokenizer,
        chat_template: file.get_str("tokenizer.chat_template").map(str::to_string),
        info: ModelInfo {
            path: path.to_path_buf(),
            format: Format::Gguf,
            name: file.get_str("general.name").map(str::to_string),
            file_bytes: file.file_size() as u64,
            tensor_types,
            n_tensors: file.tensors.len(),
        },
    };
    // The parsed metadata goes with the last reference to the file (the decoder keeps only
    // the mapped bytes); its pages go back to the system.
    drop((src, file));
    crate::util::return_freed_memory();
    Ok(model)
}
