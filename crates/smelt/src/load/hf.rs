//! Hugging Face model folders: `config.json`, single or sharded safetensors (with
//! `model.safetensors.index.json`), `tokenizer.json` + `tokenizer_config.json`,
//! `chat_template.jinja`, `generation_config.json`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use candle_core::Device;
use serde_json::Value;

use super::tensors::{SafetensorsTensors, TensorSource};
use super::{choose_ctx, hf_config, Format, LoadOptions, Model, ModelInfo};
use crate::model::linear::Weight;
use crate::model::{Arch, Decoder};
use crate::tokenize::Tokenizer;

pub fn read_json(path: &Path) -> Result<Value> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{} is not valid JSON", path.display()))
}

/// The safetensors files of a folder: the shards named by the index, else every
/// `*.safetensors` file.
pub fn safetensors_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let index = dir.join("model.safetensors.index.json");
    if index.is_file() {
        let idx = read_json(&index)?;
        let map = idx
            .get("weight_map")
            .and_then(Value::as_object)
            .with_context(|| format!("{} has no weight_map", index.display()))?;
        let mut files: Vec<PathBuf> = map
            .values()
            .filter_map(Value::as_str)
            .map(|f| {
                if f.contains('/') || f.contains("..") {
                    bail!("{}: shard name {f:?} leaves the folder", index.display());
                }
                Ok(dir.join(f))
            })
            .collect::<Result<_>>()?;
        files.sort();
        files.dedup();
        for f in &files {
            if !f.is_file() {
                bail!("{}: shard {} is missing", index.display(), f.display());
            }
        }
        return Ok(files);
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "safetensors"))
        .collect();
    files.sort();
    if files.is_empty() {
        bail!("{}: no .safetensors weights (smelt reads safetensors, not .bin/.pt)", dir.display());
    }
    Ok(files)
}

/// Gemma keeps RMSNorm weights as `w` and multiplies by `1 + w`; smelt's decoder uses
/// `w`, so Hugging Face Gemma norms are shifted by one at load (GGUF files already are).
struct ShiftNorms<'a> {
    inner: &'a dyn TensorSource,
    arch: Arch,
}

/// Is `name` (canonical) a norm weight that a Hugging Face `arch` folder stores as `w` for a
/// `1 + w` scale? Those are shifted by one on the way to smelt's decoder or a GGUF.
pub(crate) fn shifted_norm(arch: Arch, name: &str) -> bool {
    matches!(arch, Arch::Gemma | Arch::Gemma2 | Arch::Gemma3) && name.ends_with("norm.weight")
}

impl TensorSource for ShiftNorms<'_> {
    fn get(&self, name: &str) -> Result<Option<Weight>> {
        let w = self.inner.get(name)?;
        if shifted_norm(self.arch, name) {
            if let Some(Weight::Dense(t)) = w {
                return Ok(Some(Weight::Dense((t + 1.0)?)));
            }
        }
        Ok(w)
    }
    fn names(&self) -> Vec<String> {
        self.inner.names()
    }
}

/// The chat template: `chat_template.jinja`, else `tokenizer_config.json`'s
/// `chat_template` (a string, or a list of named templates of which "default" is used).
pub fn chat_template(dir: &Path) -> Result<Option<String>> {
    let jinja = dir.join("chat_template.jinja");
    if jinja.is_file() {
        return Ok(Some(std::fs::read_to_string(&jinja)?));
    }
    let tc = dir.join("tokenizer_config.json");
    if !tc.is_file() {
        return Ok(None);
    }
    Ok(match read_json(&tc)?.get("chat_template") {
        Some(Value::String(s)) => Some(s.clone()),
        Some(Value::Array(list)) => list
            .iter()
            .find(|t| t.get("name").and_then(Value::as_str) == Some("default"))
            .or(list.first())
            .and_then(|t| t.get("template"))
            .and_then(Value::as_str)
            .map(str::to_string),
        _ => None,
    })
}

/// End-of-generation ids from `generation_config.json` (`eos_token_id`: int or list).
pub fn generation_eos(dir: &Path) -> Result<Vec<u32>> {
    let p = dir.join("generation_config.json");
    if !p.is_file() {
        return Ok(Vec::new());
    }
    Ok(match read_json(&p)?.get("eos_token_id") {
        Some(Value::Number(n)) => n.as_u64().map(|v| vec![v as u32]).unwrap_or_default(),
        Some(Value::Array(a)) => a.iter().filter_map(Value::as_u64).map(|v| v as u32).collect(),
        _ => Vec::new(),
    })
}

/// Only the weights and config: what parity tests and training need.
pub fn load_hf_decoder(dir: &Path, ctx: Option<usize>) -> Result<Decoder> {
    Ok(open_hf(dir, ctx)?.0)
}

/// The decoder, and the count of tensors per stored dtype.
fn open_hf(dir: &Path, ctx: Option<usize>) -> Result<(Decoder, BTreeMap<String, usize>)> {
    let cfg_json = read_json(&dir.join("config.json"))?;
    let cfg = hf_config::config_from_hf(&cfg_json).with_context(|| format!("{}/config.json", dir.display()))?;
    let files = safetensors_files(dir)?;
    let st = SafetensorsTensors::open(&files, cfg.arch, Device::Cpu)?;
    let ctx = choose_ctx(&cfg, ctx, crate::model::KvType::default())?;
    let src = ShiftNorms { inner: &st, arch: cfg.arch };
    let decoder = Decoder::load(&cfg, &src, ctx, &Device::Cpu).with_context(|| dir.display().to_string())?;
    Ok((decoder, st.dtype_counts()))
}

pub fn load_hf_dir(dir: &Path, opts: &LoadOptions) -> Result<Model> {
    if !dir.join("config.json").is_file() {
        bail!("{}: not a model folder (no config.json)", dir.display());
    }
    let (mut decoder, tensor_types) = open_hf(dir, opts.ctx)?;
    decoder.kv_type = opts.kv_type;
    let n_tensors = tensor_types.values().sum();
    let mut tokenizer = Tokenizer::from_hf_dir(dir).with_context(|| format!("{}: tokenizer", dir.display()))?;
    let extra_eos = generation_eos(dir)?;
    if !extra_eos.is_empty() {
        let mut ids = tokenizer.eog_ids().to_vec();
        ids.extend(extra_eos);
        ids.sort_unstable();
        ids.dedup();
        tokenizer.set_eog_ids(&ids)?;
    }
    let files = safetensors_files(dir)?;
    let file_bytes = files.iter().filter_map(|f| f.metadata().ok()).map(|m| m.len()).sum();
    Ok(Model {
        decoder,
        tokenizer,
        chat_template: chat_template(dir)?,
        info: ModelInfo {
            path: dir.to_path_buf(),
            format: Format::HfFolder,
            name: dir.file_name().map(|n| n.to_string_lossy().into_owned()),
            file_bytes,
            tensor_types,
            n_tensors,
        },
    })
}
