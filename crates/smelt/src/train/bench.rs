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
        bf16: bf16 && super::kernels::bf16::available(),
    })
}
