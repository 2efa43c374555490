//! `smelt bench-train`: training throughput of a model shape on random tokens (the same
//! measurement `scripts/bench/train_torch.py` makes for PyTorch): full optimizer steps —
//! forward, fused cross-entropy, backward, clip, AdamW — timed after a few warm-up steps.

use std::time::Instant;

use anyhow::Result;
use candle_core::Device;
use serde::Serialize;

use super::config::{ModelShape, OptimConfig};
use super::optim::AdamW;
use super::params::Params;
use super::step::optimizer_step;
use crate::sample::Rng;

#[derive(Debug, Clone, Serialize)]
pub struct BenchResult {
    pub params: usize,
    pub tokens_per_step: usize,
    pub steps: usize,
    pub tok_per_s: f64,
    pub step_ms: f64,
    pub best_step_ms: f64,
    pub first_loss: f64,
    pub last_loss: f64,
    /// Whether the output projection ran in bf16.
    pub bf16: bool,
}

pub fn bench_train(shape: &ModelShape, batch: usize, warmup: usize, steps: usize, seed: u64, bf16: bool) -> Result<BenchResult> {
    let cfg = shape.llama_config()?;
    let params = Params::init(&cfg, seed, &Device::Cpu)?;
    let ocfg = OptimConfig::default();
    let mut opt = AdamW::new(&params, &ocfg);
    let decoder = params.decoder(shape.ctx)?;
    let mut rng = Rng::new(seed);
    let mut times = Vec::new();
    let mut losses = Vec::new();
    for i in 0..warmup + steps.max(1) {
        let windows: Vec<Vec<u32>> = (0..batch)
            .map(|_| (0..=shape.ctx).map(|_| (rng.next_u64() % shape.vocab as u64) as u32).collect())
            .collect();
        let t0 = Instant::now();
        let s = optimizer_step(&decoder, &params, &mut opt, &[windows], 1e-3, 0.1, 1.0, bf16)?;
        let dt = t0.elapsed().as_secs_f64();
        losses.push(s.loss);
        if i >= warmup {
            times.push(dt);
        }
    }
    let tokens = batch * shape.ctx;
    let total: f64 = times.iter().sum();
    Ok(BenchResult {
        params: params.n_params(),
        tokens_per_step: tokens,
        steps: times.len(),
        tok_per_s: tokens as f64 * times.len() as f64 / total,
        step_ms: 1000.0 * total / times.len() as f64,
        best_step_ms: 1000.0 * times.iter().cloned().fold(f64::INFINITY, f64::min),
        first_loss: losses[0],
        last_loss: *losses.last().unwrap(),
        bf16: bf16 && super::kernels::bf16::preferred(),
    })
}

/// `smelt bench-distill`: distillation throughput — teacher forward (inference path, no
/// gradients), student forward, the fused KD loss on the full vocabulary, backward, clip,
/// AdamW — on random tokens, as `scripts/bench/distill_torch.py` measures PyTorch.
#[derive(Debug, Clone, Serialize)]
pub struct DistillBenchResult {
    pub teacher_params: usize,
    pub student_params: usize,
    pub tokens_per_step: usize,
    pub steps: usize,
    pub tok_per_s: f64,
    pub step_ms: f64,
    pub best_step_ms: f64,
    /// Of a step, the time in the teacher's forward pass.
    pub teacher_ms: f64,
    pub first_loss: f64,
    pub last_loss: f64,
}

pub fn bench_distill(teacher: &ModelShape, student: &ModelShape, batch: usize, warmup: usize, steps: usize, mix: super::kd_loss::KdMix, seed: u64) -> Result<DistillBenchResult> {
    use super::kd_loss::{lm_head_kd, Teacher};
    use super::step::optimizer_step_with;
    use crate::model::SeqInput;
    use std::sync::Arc;
    let tparams = Params::init(&teacher.llama_config()?, seed ^ 0x7eac4e5, &Device::Cpu)?;
    let tdec = Arc::new(tparams.eval_decoder(teacher.ctx)?);
    let params = Params::init(&student.llama_config()?, seed, &Device::Cpu)?;
    let mut opt = AdamW::new(&params, &OptimConfig::default());
    let decoder = params.decoder(student.ctx)?;
    let mut rng = Rng::new(seed);
    let (mut times, mut tts, mut losses) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..warmup + steps.max(1) {
        let windows: Vec<Vec<u32>> = (0..batch)
            .map(|_| (0..=student.ctx).map(|_| (rng.next_u64() % student.vocab as u64) as u32).collect())
            .collect();
        let t0 = Instant::now();
        let teacher_time = std::sync::Mutex::new(0.0);
        let loss_fn = |d: &crate::model::Decoder, _: usize, ws: &[Vec<u32>]| {
            let inputs: Vec<&[u32]> = ws.iter().map(|w| &w[..w.len() - 1]).collect();
            let targets: Vec<u32> = ws.iter().flat_map(|w| w[1..].iter().copied()).collect();
            let tt = Instant::now();
            let th = crate::distill::teacher::hidden(&tdec, &inputs)?;
            let td = tdec.clone();
            let dense: super::kd_loss::DenseLogits = Arc::new(move |r0, rows| crate::distill::teacher::block_logits(&td, &th, r0, rows));
            *teacher_time.lock().unwrap() = tt.elapsed().as_secs_f64();
            let mut seqs: Vec<SeqInput<'_>> = inputs.iter().map(|t| SeqInput { tokens: t, cache: None }).collect();
            let h = d.hidden_states(&mut seqs)?;
            let w = d.lm_head.dense_weight().expect("dense head");
            let (loss, parts) = lm_head_kd(&h, w, &targets, Teacher::Dense(dense), mix)?;
            let p = *parts.lock().unwrap();
            Ok((loss, Some(p)))
        };
        let s = optimizer_step_with(&decoder, &params, &mut opt, &[windows], &loss_fn, 1e-3, 0.1, 1.0)?;
        let dt = t0.elapsed().as_secs_f64();
        losses.push(s.loss);
        if i >= warmup {
            times.push(dt);
            tts.push(*teacher_time.lock().unwrap());
        }
    }
    let tokens = batch * student.ctx;
    let total: f64 = times.iter().sum();
    Ok(DistillBenchResult {
        teacher_params: tparams.n_params(),
        student_params: params.n_params(),
        tokens_per_step: tokens,
        steps: times.len(),
        tok_per_s: tokens as f64 * times.len() as f64 / total,
        step_ms: 1000.0 * total / times.len() as f64,
        best_step_ms: 1000.0 * times.iter().cloned().fold(f64::INFINITY, f64::min),
        teacher_ms: 1000.0 * tts.iter().sum::<f64>() / tts.len() as f64,
        first_loss: losses[0],
        last_loss: *losses.last().unwrap(),
    })
}
