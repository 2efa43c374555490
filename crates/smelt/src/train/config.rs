//! `train.toml`: the model shape, the optimiser and schedule, and the run's bookkeeping.
//! Every key has a default, so a run can be started from flags alone; unknown keys are an
//! error (a typo must not silently train with a default).
//!
//! ```toml
//! [data]
//! dir = "data/austen"            # from `smelt data prepare`
//! [model]
//! dim = 288
//! layers = 6
//! heads = 6
//! kv_heads = 6
//! ffn = 768
//! ctx = 256                       # sequence length trained on
//! [train]
//! steps = 2000
//! batch_size = 8
//! lr = 1e-3
//! [run]
//! out = "runs/austen"
//! ```

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use crate::model::config::*;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DataConfig {
    /// Folder written by `smelt data prepare`.
    pub dir: PathBuf,
}

impl Default for DataConfig {
    fn default() -> Self {
        DataConfig { dir: PathBuf::from("data") }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ModelShape {
    pub dim: usize,
    pub layers: usize,
    pub heads: usize,
    /// Key/value heads (grouped-query attention when fewer than `heads`).
    pub kv_heads: usize,
    /// Hidden size of the SwiGLU feed-forward.
    pub ffn: usize,
    /// Sequence length trained on; also the exported model's context length.
    pub ctx: usize,
    /// Vocabulary size; 0 = the prepared data's tokenizer.
    pub vocab: usize,
    pub tie_embeddings: bool,
    pub rope_theta: f64,
    pub norm_eps: f64,
}

impl Default for ModelShape {
    fn default() -> Self {
        ModelShape {
            dim: 288,
            layers: 6,
            heads: 6,
            kv_heads: 6,
            ffn: 768,
            ctx: 256,
            vocab: 0,
            tie_embeddings: true,
            rope_theta: 10000.0,
            norm_eps: 1e-5,
        }
    }
}

impl ModelShape {
    /// The decoder configuration: Llama (SwiGLU, RMSNorm, rope in the Hugging Face
    /// half-split layout, no biases).
    /// The shape of a llama-layout model config (its first rope's base).
    pub fn of_config(cfg: &ModelConfig) -> ModelShape {
        ModelShape {
            dim: cfg.hidden,
            layers: cfg.n_layers(),
            heads: cfg.n_heads,
            kv_heads: cfg.n_kv_heads,
            ffn: cfg.intermediate,
            ctx: cfg.max_position,
            vocab: cfg.vocab_size,
            tie_embeddings: cfg.tie_embeddings,
            rope_theta: cfg.ropes.first().map_or(10000.0, |r| r.theta),
            norm_eps: cfg.norm_eps,
        }
    }

    pub fn llama_config(&self) -> Result<ModelConfig> {
        if self.heads == 0 || self.dim % self.heads != 0 {
            bail!("model: dim {} is not a multiple of {} heads", self.dim, self.heads);
        }
        if self.vocab == 0 {
            bail!("model: the vocabulary size is unknown (set model.vocab or prepare data with a tokenizer)");
        }
        if self.ctx < 2 {
            bail!("model: ctx must be at least 2, got {}", self.ctx);
        }
        let head_dim = self.dim / self.heads;
        let cfg = ModelConfig {
            arch: Arch::Llama,
            vocab_size: self.vocab,
            hidden: self.dim,
            intermediate: self.ffn,
            n_heads: self.heads,
            n_kv_heads: self.kv_heads,
            head_dim,
            norm_eps: self.norm_eps,
            activation: Activation::Silu,
            max_position: self.ctx,
            tie_embeddings: self.tie_embeddings,
            embed_scale: None,
            attn_scale: 1.0 / (head_dim as f64).sqrt(),
            attn_softcap: None,
            final_softcap: None,
            qk_norm: false,
            sandwich_norms: false,
            ropes: vec![RopeConfig { theta: self.rope_theta, rotary_dim: head_dim, layout: RopeLayout::Half, scaling: RopeScaling::None }],
            layers: (0..self.layers).map(|_| LayerConfig { sliding_window: None, rope: 0 }).collect(),
        };
        cfg.validate()?;
        Ok(cfg)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct OptimConfig {
    /// Optimizer steps (each of `grad_accum` micro-batches of `batch_size` sequences).
    pub steps: u64,
    pub batch_size: usize,
    pub grad_accum: usize,
    /// Peak learning rate, reached after `warmup_steps`, then cosine decay to `min_lr`.
    pub lr: f64,
    pub min_lr: f64,
    pub warmup_steps: u64,
    /// Decoupled weight decay (AdamW), applied to matrices only (not norms).
    pub weight_decay: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    /// Clip the global gradient norm to this (0 = off).
    pub grad_clip: f64,
    /// Seeds the initialisation and the order of training windows.
    pub seed: u64,
    /// The output projection over the vocabulary and its gradients (the largest matrix
    /// products of a step) in bf16 with f32 accumulation, on CPUs with AVX-512 BF16 (f32
    /// elsewhere). Held-out evaluation is always f32.
    pub bf16: bool,
}

impl Default for OptimConfig {
    fn default() -> Self {
        OptimConfig {
            steps: 1000,
            batch_size: 8,
            grad_accum: 1,
            lr: 1e-3,
            min_lr: 1e-4,
            warmup_steps: 100,
            weight_decay: 0.1,
            beta1: 0.9,
            beta2: 0.95,
            eps: 1e-8,
            grad_clip: 1.0,
            seed: 1337,
            bf16: true,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RunConfig {
    /// Checkpoints, metrics.jsonl and loss.svg go here.
    pub out: PathBuf,
    /// Log training loss every N steps (metrics.jsonl).
    pub log_every: u64,
    /// Held-out loss every N steps (0 = only at the end).
    pub eval_every: u64,
    /// Held-out tokens scored per evaluation (0 = the whole split).
    pub eval_tokens: usize,
    /// Checkpoint every N steps (0 = only at the end and on Ctrl-C).
    pub checkpoint_every: u64,
    /// Checkpoints kept (older ones are deleted).
    pub keep_checkpoints: usize,
    /// Stop (with a checkpoint) after this many minutes (0 = no limit).
    pub time_limit_minutes: f64,
    /// After each evaluation, sample this many tokens from `sample_prompt` into samples.txt (0 = off).
    pub sample_tokens: usize,
    pub sample_prompt: String,
}

impl Default for RunConfig {
    fn default() -> Self {
        RunConfig {
            out: PathBuf::from("runs/train"),
            log_every: 10,
            eval_every: 200,
            eval_tokens: 1 << 16,
            checkpoint_every: 500,
            keep_checkpoints: 3,
            time_limit_minutes: 0.0,
            sample_tokens: 0,
            sample_prompt: String::new(),
        }
    }
}

/// `[distill]`: train the model as a student of a teacher (`smelt distill`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DistillConfig {
    /// Any model smelt loads (GGUF, quantized or not, or a Hugging Face folder).
    pub teacher: PathBuf,
    /// Start from these weights (a checkpoint or a Llama-architecture Hugging Face folder)
    /// instead of a fresh model of the `[model]` shape.
    pub student: Option<PathBuf>,
    /// α: loss = (1 − α)·CE + α·T²·KL(teacher ‖ student). 0 = plain training (no teacher pass).
    pub kd_ratio: f64,
    /// T: both distributions are softened by it.
    pub temperature: f64,
    /// Cache the teacher's top-k probabilities per position on disk (one teacher pass for
    /// all epochs); 0 = run the teacher at every step and distil from its full distribution.
    pub top_k: usize,
    /// Train on the first N windows of `ctx + 1` tokens of the training split (0 = all).
    pub windows: usize,
}

impl Default for DistillConfig {
    fn default() -> Self {
        DistillConfig { teacher: PathBuf::new(), student: None, kd_ratio: 0.5, temperature: 2.0, top_k: 64, windows: 0 }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields, default)]
pub struct TrainConfig {
    pub data: DataConfig,
    pub model: ModelShape,
    pub train: OptimConfig,
    pub run: RunConfig,
    /// Present for `smelt distill` runs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub distill: Option<DistillConfig>,
}

/// Set `path` (`section.key`) in a TOML table to `value` (parsed as TOML, else a string).
pub fn set_override(table: &mut toml::Table, assignment: &str) -> Result<()> {
    let (key, raw) = assignment.split_once('=').with_context(|| format!("--set {assignment:?}: expected section.key=value"))?;
    let (section, field) = key.trim().split_once('.').with_context(|| format!("--set {assignment:?}: the key must be section.key, e.g. train.lr"))?;
    let raw = raw.trim();
    let value = match format!("v = {raw}").parse::<toml::Table>() {
        Ok(mut t) => t.remove("v").expect("parsed"),
        Err(_) => toml::Value::String(raw.to_string()),
    };
    let sec = table.entry(section.to_string()).or_insert_with(|| toml::Value::Table(Default::default()));
    let sec = sec.as_table_mut().with_context(|| format!("--set: {section} is not a section"))?;
    sec.insert(field.to_string(), value);
    Ok(())
}

impl TrainConfig {
    /// Read a config file (None: defaults), apply `section.key=value` overrides, validate.
    pub fn load(path: Option<&Path>, overrides: &[String]) -> Result<TrainConfig> {
        let mut table = match path {
            Some(p) => {
                let text = std::fs::read_to_string(p).with_context(|| format!("cannot read {}", p.display()))?;
                text.parse::<toml::Table>().map_err(|e| anyhow::anyhow!("{}: {}", p.display(), e.to_string().trim().replace('\n', " ")))?
            }
            None => toml::Table::new(),
        };
        for o in overrides {
            set_override(&mut table, o)?;
        }
        let cfg: TrainConfig = toml::Value::Table(table)
            .try_into()
            .map_err(|e: toml::de::Error| anyhow::anyhow!("train config: {}", e.to_string().trim().replace('\n', " ")))?;
        cfg.validate()?;
        Ok(cfg)
    }

    pub fn validate(&self) -> Result<()> {
        let t = &self.train;
        if t.batch_size == 0 || t.grad_accum == 0 {
            bail!("train.batch_size and train.grad_accum must be at least 1");
        }
        if !(t.lr > 0.0) || t.min_lr < 0.0 || t.min_lr > t.lr {
            bail!("train.lr must be positive and train.min_lr in [0, lr] (lr {}, min_lr {})", t.lr, t.min_lr);
        }
        if !(0.0..1.0).contains(&t.beta1) || !(0.0..1.0).contains(&t.beta2) || !(t.eps > 0.0) {
            bail!("train: beta1 and beta2 must be in [0, 1) and eps positive");
        }
        if t.weight_decay < 0.0 || t.grad_clip < 0.0 {
            bail!("train.weight_decay and train.grad_clip must not be negative");
        }
        if self.run.keep_checkpoints == 0 {
            bail!("run.keep_checkpoints must be at least 1");
        }
        if let Some(d) = &self.distill {
            if !(0.0..=1.0).contains(&d.kd_ratio) {
                bail!("distill.kd_ratio (--kd-ratio) must be in [0, 1], got {}", d.kd_ratio);
            }
            if !(d.temperature > 0.0 && d.temperature <= 100.0) {
                bail!("distill.temperature must be in (0, 100], got {}", d.temperature);
            }
            if d.teacher.as_os_str().is_empty() {
                bail!("distill.teacher (--teacher) is required");
            }
        }
        Ok(())
    }

    /// Tokens per optimizer step.
    pub fn tokens_per_step(&self) -> usize {
        self.train.batch_size * self.train.grad_accum * self.model.ctx
    }

    /// Keys whose values differ from `other`'s, except those a resumed run may change
    /// (`train.steps`, the whole `[run]` section): `["train.lr: 0.001 vs 0.0003", ...]`.
    pub fn resume_conflicts(&self, other: &TrainConfig) -> Vec<String> {
        let a = serde_json::to_value(self).expect("serialisable");
        let b = serde_json::to_value(other).expect("serialisable");
        let mut out = Vec::new();
        for section in ["model", "train", "distill"] {
            let (Some(sa), Some(sb)) = (a[section].as_object(), b[section].as_object()) else {
                if a[section].is_null() != b[section].is_null() {
                    out.push(format!("[{section}]: {} vs {}", if a[section].is_null() { "absent" } else { "present" }, if b[section].is_null() { "absent" } else { "present" }));
                }
                continue;
            };
            for (k, va) in sa {
                // The teacher may move; the student only matters for the first step.
                if (section == "train" && k == "steps") || (section == "distill" && (k == "teacher" || k == "student")) {
                    continue;
                }
                let vb = sb.get(k).unwrap_or(&serde_json::Value::Null);
                if va != vb {
                    out.push(format!("{section}.{k}: {va} vs {vb}"));
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overrides_and_unknown_keys() {
        let c = TrainConfig::load(None, &["train.lr=3e-4".into(), "run.out=x/y".into(), "model.tie_embeddings=false".into()]).unwrap();
        assert_eq!(c.train.lr, 3e-4);
        assert_eq!(c.run.out, PathBuf::from("x/y"));
        assert!(!c.model.tie_embeddings);
        let e = TrainConfig::load(None, &["train.lrr=1".into()]).unwrap_err().to_string();
        assert!(e.contains("lrr"), "{e}");
        let e = TrainConfig::load(None, &["train.lr=-1".into()]).unwrap_err().to_string();
        assert!(e.contains("train.lr"), "{e}");
    }

    #[test]
    fn resume_conflicts_ignore_steps_and_run() {
        let a = TrainConfig::default();
        let mut b = a.clone();
        b.train.steps = 99;
        b.run.eval_every = 7;
        assert!(a.resume_conflicts(&b).is_empty());
        b.model.dim = 64;
        b.train.lr = 0.5;
        let c = a.resume_conflicts(&b);
        assert_eq!(c, ["model.dim: 288 vs 64", "train.lr: 0.001 vs 0.5"]);
    }
}
