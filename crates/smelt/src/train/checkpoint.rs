//! Checkpoints: `OUT/checkpoints/step-NNNNNNNN/` holding `model.safetensors` (canonical
//! tensor names, f32), `optimizer.safetensors` (AdamW moments `m.NAME`, `v.NAME`),
//! `state.json` (step, optimizer step count, the resolved config, data fingerprint) and a
//! copy of the tokenizer, so export needs nothing else. `OUT/checkpoints/latest` names the
//! newest one.
//!
//! A checkpoint is written into a temporary sibling folder, every file fsynced, then
//! renamed into place, and only then is `latest` replaced (atomically). A failure at any
//! point (a full disk) removes the temporary folder and leaves the previous checkpoint and
//! `latest` untouched.
//!
//! Fault injection for tests: with `SMELT_FAULT_FULL_DISK_AT_STEP=N` in the environment, the
//! checkpoint of step N fails half-way through writing its optimizer state with the error a
//! full disk gives (ENOSPC), so the recovery path can be tested without filling a disk.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};

use super::config::TrainConfig;
use super::optim::AdamW;
use super::params::Params;
use crate::export::safetensors;
use crate::util::write_atomic;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DataFingerprint {
    pub tokenizer_sha256: String,
    pub vocab_size: usize,
    pub train_tokens: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CheckpointState {
    pub format: String,
    /// Optimizer steps completed.
    pub step: u64,
    /// AdamW's update count (equals `step` unless steps were skipped).
    pub adam_t: u64,
    pub tokens_seen: u64,
    /// Training time so far, summed over resumed runs.
    pub elapsed_s: f64,
    pub last_val_loss: Option<f64>,
    pub config: TrainConfig,
    pub data: DataFingerprint,
}

pub const FORMAT: &str = "smelt-checkpoint-1";
pub const TOKENIZER_FILES: [&str; 3] = ["tokenizer.json", "tokenizer_config.json", crate::data::prepare::TOKENIZER_GGUF];

pub fn checkpoints_dir(out: &Path) -> PathBuf {
    out.join("checkpoints")
}

fn step_name(step: u64) -> String {
    format!("step-{step:08}")
}

/// The environment variable read by [`injected_full_disk`].
pub const FAULT_ENV: &str = "SMELT_FAULT_FULL_DISK_AT_STEP";

/// Whether the test fault (see the module docs) is set for `step`.
fn injected_full_disk(step: u64) -> bool {
    std::env::var(FAULT_ENV).ok().and_then(|v| v.trim().parse::<u64>().ok()) == Some(step)
}

/// Write and fsync `path`; with `full_disk`, write half of `bytes` and fail as a full disk would.
fn write_synced_or_fail(path: &Path, bytes: &[u8], full_disk: bool) -> Result<()> {
    let mut f = std::fs::File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
    if full_disk {
        f.write_all(&bytes[..bytes.len() / 2]).with_context(|| format!("cannot write {}", path.display()))?;
        return Err(std::io::Error::from_raw_os_error(28)).with_context(|| format!("cannot write {}", path.display()));
    }
    f.write_all(bytes).with_context(|| format!("cannot write {}", path.display()))?;
    f.sync_all().with_context(|| format!("cannot sync {}", path.display()))?;
    Ok(())
}

fn sync_dir(dir: &Path) {
    // Makes the rename durable; not every filesystem supports it, and failure here cannot
    // corrupt anything, so it is best effort.
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
}

/// The checkpoint `latest` points to, if any.
pub fn latest(out: &Path) -> Result<Option<PathBuf>> {
    let root = checkpoints_dir(out);
    let p = root.join("latest");
    if !p.is_file() {
        return Ok(None);
    }
    let name = std::fs::read_to_string(&p).with_context(|| format!("cannot read {}", p.display()))?;
    let name = name.trim();
    if name.is_empty() || name.contains('/') || name.contains("..") {
        bail!("{}: does not name a checkpoint ({name:?})", p.display());
    }
    let dir = root.join(name);
    if !dir.join("state.json").is_file() {
        bail!("{} names {}, which is not a complete checkpoint", p.display(), dir.display());
    }
    Ok(Some(dir))
}

/// A checkpoint folder from what the user gave: the folder itself, a run folder (its
/// latest checkpoint) or a `checkpoints` folder.
pub fn resolve(path: &Path) -> Result<PathBuf> {
    if path.join("state.json").is_file() {
        return Ok(path.to_path_buf());
    }
    if let Some(d) = latest(path)? {
        return Ok(d);
    }
    if let Some(parent) = path.parent().filter(|_| path.file_name().is_some_and(|n| n == "checkpoints")) {
        if let Some(d) = latest(parent)? {
            return Ok(d);
        }
    }
    if !path.exists() {
        bail!("{}: no such checkpoint or run folder", path.display());
    }
    bail!("{}: not a checkpoint (no state.json) nor a run folder with checkpoints", path.display())
}

pub struct SaveInputs<'a> {
    pub params: &'a Params,
    pub opt: &'a AdamW,
    pub state: &'a CheckpointState,
    /// Folder holding tokenizer.json / tokenizer_config.json to copy.
    pub tokenizer_dir: &'a Path,
}

/// Write a checkpoint for `state.step`; returns its folder.
pub fn save(out: &Path, inp: &SaveInputs<'_>, keep: usize) -> Result<PathBuf> {
    let model: Vec<(String, Tensor)> = inp.params.list.iter().map(|p| (p.name.clone(), p.var.as_tensor().clone())).collect();
    let mut files = vec![
        ("model.safetensors".to_string(), safetensors::to_bytes(&model, &[("format", "pt")])?),
        ("optimizer.safetensors".to_string(), optimizer_bytes(inp.params, inp.opt)?),
    ];
    for f in TOKENIZER_FILES {
        let src = inp.tokenizer_dir.join(f);
        if src.is_file() {
            files.push((f.to_string(), std::fs::read(&src).with_context(|| format!("cannot read {}", src.display()))?));
        }
    }
    files.push(("state.json".to_string(), serde_json::to_string_pretty(inp.state)?.into_bytes()));
    save_files(out, inp.state.step, &files, keep)
}

/// AdamW's moments as safetensors (`m.NAME`, `v.NAME`).
pub fn optimizer_bytes(params: &Params, opt: &AdamW) -> Result<Vec<u8>> {
    let mut moments = Vec::with_capacity(2 * params.list.len());
    for (i, p) in params.list.iter().enumerate() {
        let shape = p.var.shape().clone();
        moments.push((format!("m.{}", p.name), Tensor::from_slice(&opt.m[i], &shape, &Device::Cpu)?));
        moments.push((format!("v.{}", p.name), Tensor::from_slice(&opt.v[i], &shape, &Device::Cpu)?));
    }
    safetensors::to_bytes(&moments, &[])
}

/// Read moments written by [`optimizer_bytes`] into `opt` (names must match `params`).
pub fn read_moments(path: &Path, params: &Params, opt: &mut AdamW) -> Result<()> {
    let t = candle_core::safetensors::load(path, &Device::Cpu).with_context(|| format!("cannot read {}", path.display()))?;
    for (i, prm) in params.list.iter().enumerate() {
        for (kind, dst) in [("m", &mut opt.m[i]), ("v", &mut opt.v[i])] {
            let key = format!("{kind}.{}", prm.name);
            let x = t.get(&key).with_context(|| format!("{}: missing {key}", path.display()))?;
            if x.dims() != prm.var.dims() {
                bail!("{}: {key} has shape {:?}, expected {:?}", path.display(), x.dims(), prm.var.dims());
            }
            *dst = x.flatten_all()?.to_vec1::<f32>()?;
        }
    }
    Ok(())
}

/// Write `files` as checkpoint `step` of the run in `out` (atomically, see the module
/// docs), point `latest` at it and keep only the newest `keep`; returns its folder. Any
/// trainer's checkpoint goes through here.
pub fn save_files(out: &Path, step: u64, files: &[(String, Vec<u8>)], keep: usize) -> Result<PathBuf> {
    let root = checkpoints_dir(out);
    std::fs::create_dir_all(&root).with_context(|| format!("cannot create {}", root.display()))?;
    let name = step_name(step);
    let fin = root.join(&name);
    let tmp = root.join(format!(".tmp-{name}-{}", std::process::id()));
    let previous = latest(out).ok().flatten();
    let result = (|| -> Result<()> {
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp)?;
        }
        std::fs::create_dir(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
        let fault = injected_full_disk(step);
        for (f, bytes) in files {
            write_synced_or_fail(&tmp.join(f), bytes, fault)?;
        }
        sync_dir(&tmp);
        if fin.exists() {
            let old = root.join(format!(".old-{name}-{}", std::process::id()));
            std::fs::rename(&fin, &old).with_context(|| format!("cannot replace {}", fin.display()))?;
            std::fs::rename(&tmp, &fin).with_context(|| format!("cannot rename onto {}", fin.display()))?;
            let _ = std::fs::remove_dir_all(&old);
        } else {
            std::fs::rename(&tmp, &fin).with_context(|| format!("cannot rename onto {}", fin.display()))?;
        }
        sync_dir(&root);
        write_atomic(&root.join("latest"), name.as_bytes())?;
        Ok(())
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_dir_all(&tmp);
        let prev = match &previous {
            Some(p) => format!("the previous checkpoint {} is intact", p.display()),
            None => "no earlier checkpoint exists".to_string(),
        };
        return Err(e.context(format!("cannot write checkpoint {} ({prev})", fin.display())));
    }
    prune(&root, keep, &name);
    Ok(fin)
}

/// Delete all but the newest `keep` checkpoints (never `current`).
fn prune(root: &Path, keep: usize, current: &str) {
    let Ok(rd) = std::fs::read_dir(root) else { return };
    let mut steps: Vec<String> = rd
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| n.starts_with("step-") && n[5..].chars().all(|c| c.is_ascii_digit()))
        .collect();
    steps.sort();
    let n = steps.len();
    for name in steps.into_iter().take(n.saturating_sub(keep)) {
        if name != current {
            let _ = std::fs::remove_dir_all(root.join(name));
        }
    }
}

pub fn read_state(dir: &Path) -> Result<CheckpointState> {
    let p = dir.join("state.json");
    let text = std::fs::read_to_string(&p).with_context(|| format!("cannot read {}", p.display()))?;
    let s: CheckpointState = serde_json::from_str(&text).with_context(|| format!("{} is not a valid checkpoint state", p.display()))?;
    if s.format != FORMAT {
        bail!("{}: format {:?}, smelt reads {FORMAT:?}", p.display(), s.format);
    }
    Ok(s)
}

/// The weights of a checkpoint as trainable parameters.
pub fn load_params(dir: &Path, state: &CheckpointState, device: &Device) -> Result<Params> {
    let cfg = state.config.model.llama_config()?;
    let p = dir.join("model.safetensors");
    let tensors = candle_core::safetensors::load(&p, device).with_context(|| format!("cannot read {}", p.display()))?;
    let src = MapSource(tensors);
    Params::from_source(&cfg, &src, device).with_context(|| p.display().to_string())
}

/// The optimizer state saved beside the weights.
pub fn load_optimizer(dir: &Path, state: &CheckpointState, params: &Params) -> Result<AdamW> {
    let mut opt = AdamW::new(params, &state.config.train);
    read_moments(&dir.join("optimizer.safetensors"), params, &mut opt)?;
    opt.t = state.adam_t;
    Ok(opt)
}

/// Tensors from a name → tensor map (safetensors already loaded).
pub struct MapSource(pub std::collections::HashMap<String, Tensor>);

impl crate::load::tensors::TensorSource for MapSource {
    fn get(&self, name: &str) -> Result<Option<crate::model::linear::Weight>> {
        Ok(self.0.get(name).map(|t| crate::model::linear::Weight::Dense(t.clone())))
    }

    fn names(&self) -> Vec<String> {
        self.0.keys().cloned().collect()
    }
}
