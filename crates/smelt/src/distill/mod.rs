//! Distillation: training a small student from a larger teacher that shares its tokenizer.
//!
//! * `smelt distill` — logit distillation: the trainer ([`crate::train`]) with the fused
//!   KD loss ([`crate::train::kd_loss`]) in place of cross-entropy. [`Distiller`] gives each
//!   micro-batch its loss: the teacher runs live ([`teacher`], full distributions) or is
//!   read from a top-k [`cache`] built in one teacher pass. [`student`] loads a starting
//!   student; [`vocab`] checks that teacher, student and data share a tokenizer.
//! * `smelt synth` — sequence-level distillation data: [`synth`] samples teacher replies to
//!   prompts in batches and writes filtered, deduplicated chat JSONL.

pub mod cache;
pub mod student;
pub mod synth;
pub mod teacher;
pub mod vocab;

use std::path::Path;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use candle_core::Tensor;

use crate::data::{DataMeta, TokenSplit};
use crate::model::{Decoder, SeqInput};
use crate::tokenize::Tokenizer;
use crate::train::config::DistillConfig;
use crate::train::kd_loss::{lm_head_kd, KdMix, KdParts, Teacher};
use crate::train::loss::lm_head_cross_entropy;
use cache::{CacheMeta, TopKCache};
use teacher::{dense_targets, TeacherModel};

pub use teacher::load_teacher;

/// The distillation loss of micro-batches for one run.
pub struct Distiller {
    pub mix: KdMix,
    teacher: TeacherModel,
    cache: Option<TopKCache>,
}

/// What the distiller needs to know about the run.
pub struct RunData<'a> {
    pub meta: &'a DataMeta,
    pub data_tokenizer: &'a Tokenizer,
    pub train: &'a TokenSplit,
    /// Input tokens per window.
    pub seq: usize,
    /// Aligned windows trained on.
    pub windows: u64,
    /// Windows per teacher pass when building the cache.
    pub batch: usize,
    pub student_vocab: usize,
    pub out: &'a Path,
    pub progress: bool,
}

impl Distiller {
    /// Check that teacher and data share the tokenizer (and the student the logit width),
    /// then open or build the teacher cache if one is configured.
    pub fn new(d: &DistillConfig, teacher: TeacherModel, run: &RunData<'_>) -> Result<Distiller> {
        let mix = KdMix { ratio: d.kd_ratio as f32, temperature: d.temperature as f32 };
        mix.validate()?;
        vocab::check_same_vocab(&teacher.model.tokenizer, "teacher", run.data_tokenizer, "training data")?;
        let tv = teacher.decoder.cfg.vocab_size;
        if tv != run.student_vocab {
            bail!("the teacher has {tv} output logits but the student {} (set model.vocab = {tv})", run.student_vocab);
        }
        let cache = if d.top_k > 0 && d.kd_ratio > 0.0 {
            let meta = CacheMeta {
                format: cache::FORMAT.to_string(),
                teacher: d.teacher.file_name().unwrap_or_default().to_string_lossy().into_owned(),
                teacher_bytes: std::fs::metadata(&d.teacher).map(|m| m.len()).unwrap_or(0),
                vocab_sha256: vocab::vocab_sha256(&teacher.model.tokenizer),
                data_tokenizer_sha256: run.meta.tokenizer_sha256.clone(),
                train_tokens: run.meta.train.tokens,
                seq: run.seq,
                k: d.top_k.min(tv),
                temperature: mix.temperature,
                windows: run.windows,
            };
            let dir = run.out.join("teacher-topk");
            Some(TopKCache::build_or_open(&dir, meta, &teacher.decoder, run.train, run.batch, run.progress).context("teacher cache")?)
        } else {
            None
        };
        Ok(Distiller { mix, teacher, cache })
    }

    /// The loss of `windows` (starting at `starts` in the training split) for the student.
    pub fn loss(&self, decoder: &Decoder, windows: &[Vec<u32>], starts: &[u64]) -> Result<(Tensor, Option<KdParts>)> {
        let inputs: Vec<&[u32]> = windows.iter().map(|w| &w[..w.len() - 1]).collect();
        let targets: Vec<u32> = windows.iter().flat_map(|w| w[1..].iter().copied()).collect();
        let mut seqs: Vec<SeqInput<'_>> = inputs.iter().map(|t| SeqInput { tokens: t, cache: None }).collect();
        let h = decoder.hidden_states(&mut seqs)?;
        let w = decoder.lm_head.dense_weight().context("distillation needs a student with a dense output head")?;
        if self.mix.ratio == 0.0 {
            return Ok((lm_head_cross_entropy(&h, w, &targets)?, None));
        }
        let teacher = match &self.cache {
            Some(c) => Teacher::TopK(Arc::new(c.targets(starts)?)),
            None => Teacher::Dense(dense_targets(&self.teacher.decoder, &inputs)?),
        };
        let (loss, parts) = lm_head_kd(&h, w, &targets, teacher, self.mix)?;
        let p = *parts.lock().unwrap();
        Ok((loss, Some(p)))
    }
}
