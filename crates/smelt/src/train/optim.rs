//! AdamW with decoupled weight decay, its moments owned here (so checkpoints hold them),
//! one fused in-place pass per tensor: decay, both moment updates, bias correction and the
//! step, reading the gradient once. Also the global gradient norm for clipping.
//!
//! Update for each element (the order PyTorch's `AdamW` uses):
//! `p ← p·(1 − lr·wd)`, `m ← β1·m + (1−β1)·g`, `v ← β2·v + (1−β2)·g²`,
//! `p ← p − (lr / (1−β1ᵗ)) · m / (√v / √(1−β2ᵗ) + ε)`, with `g` the clipped gradient.

use std::sync::Mutex;

use anyhow::{bail, Result};
use candle_core::{CpuStorage, InplaceOp2, Layout, Storage, Tensor};
use rayon::prelude::*;

use super::config::OptimConfig;
use super::params::Params;
use super::simd::multiversion;

/// Elements per parallel task (fixed: results never depend on the thread count).
const CHUNK: usize = 1 << 14;

/// Run `f` on the f32 data of a contiguous CPU tensor.
pub fn with_f32<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> R) -> Result<R> {
    let (storage, layout) = t.storage_and_layout();
    let Storage::Cpu(cpu) = &*storage else { bail!("training runs on the CPU") };
    let data = cpu.as_slice::<f32>()?;
    let Some((a, b)) = layout.contiguous_offsets() else { bail!("expected a contiguous tensor") };
    Ok(f(&data[a..b]))
}

multiversion! {
    fn sum_squares_chunk(x: &[f32]) -> f64 {
        let mut acc = [0f32; 16];
        let mut c = x.chunks_exact(16);
        for xs in &mut c {
            for i in 0..16 {
                acc[i] += xs[i] * xs[i];
            }
        }
        let tail: f32 = c.remainder().iter().map(|v| v * v).sum();
        acc.iter().map(|&a| a as f64).sum::<f64>() + tail as f64
    }
}

/// Σ x² over a tensor, in f64, with a fixed summation order.
pub fn sum_squares(t: &Tensor) -> Result<f64> {
    with_f32(t, |x| x.par_chunks(CHUNK).map(sum_squares_chunk).collect::<Vec<f64>>().iter().sum())
}

/// Hyper-parameters of one update.
#[derive(Debug, Clone, Copy)]
pub struct StepParams {
    pub lr: f32,
    pub weight_decay: f32,
    /// Multiplies the gradient (clipping and accumulation averaging).
    pub grad_scale: f32,
}

#[derive(Debug, Clone, Copy)]
struct Coeffs {
    decay: f32,
    b1: f32,
    b2: f32,
    step_size: f32,
    inv_sqrt_bc2: f32,
    eps: f32,
    grad_scale: f32,
}

multiversion! {
    fn adamw_chunk(p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32], c: Coeffs) {
        let (one_b1, one_b2) = (1.0 - c.b1, 1.0 - c.b2);
        for i in 0..p.len() {
            let gi = g[i] * c.grad_scale;
            let mi = c.b1 * m[i] + one_b1 * gi;
            let vi = c.b2 * v[i] + one_b2 * gi * gi;
            m[i] = mi;
            v[i] = vi;
            let denom = vi.sqrt() * c.inv_sqrt_bc2 + c.eps;
            p[i] = p[i] * c.decay - c.step_size * mi / denom;
        }
    }
}

struct AdamInplace<'a> {
    m: Mutex<&'a mut [f32]>,
    v: Mutex<&'a mut [f32]>,
    c: Coeffs,
}

impl InplaceOp2 for AdamInplace<'_> {
    fn name(&self) -> &'static str {
        "adamw"
    }

    fn cpu_fwd(&self, dst: &mut CpuStorage, dst_l: &Layout, gs: &CpuStorage, gl: &Layout) -> candle_core::Result<()> {
        let (CpuStorage::F32(p), CpuStorage::F32(g)) = (dst, gs) else { candle_core::bail!("adamw: f32 only") };
        let (Some((pa, pb)), Some((ga, gb))) = (dst_l.contiguous_offsets(), gl.contiguous_offsets()) else {
            candle_core::bail!("adamw: contiguous tensors only")
        };
        let mut m = self.m.lock().unwrap();
        let mut v = self.v.lock().unwrap();
        let (p, g) = (&mut p[pa..pb], &g[ga..gb]);
        if p.len() != g.len() || p.len() != m.len() || p.len() != v.len() {
            candle_core::bail!("adamw: parameter, gradient and state sizes differ");
        }
        let c = self.c;
        p.par_chunks_mut(CHUNK)
            .zip(g.par_chunks(CHUNK))
            .zip(m.par_chunks_mut(CHUNK).zip(v.par_chunks_mut(CHUNK)))
            .for_each(|((p, g), (m, v))| adamw_chunk(p, g, m, v, c));
        Ok(())
    }
}

pub struct AdamW {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    /// Updates applied so far (the `t` of the bias correction).
    pub t: u64,
    /// First and second moments, one per parameter, in `Params` order.
    pub m: Vec<Vec<f32>>,
    pub v: Vec<Vec<f32>>,
}

impl AdamW {
    pub fn new(params: &Params, cfg: &OptimConfig) -> AdamW {
        let zeros = || params.list.iter().map(|p| vec![0f32; p.var.elem_count()]).collect();
        AdamW { beta1: cfg.beta1, beta2: cfg.beta2, eps: cfg.eps, t: 0, m: zeros(), v: zeros() }
    }

    /// One update of every parameter from its gradient (`grads` in `Params` order).
    pub fn step(&mut self, params: &Params, grads: &[Tensor], sp: StepParams) -> Result<()> {
        if grads.len() != params.list.len() {
            bail!("adamw: {} gradients for {} parameters", grads.len(), params.list.len());
        }
        self.t += 1;
        let t = self.t as i32;
        let bc1 = 1.0 - self.beta1.powi(t);
        let bc2 = 1.0 - self.beta2.powi(t);
        for (i, (p, g)) in params.list.iter().zip(grads).enumerate() {
            let wd = if p.decay { sp.weight_decay } else { 0.0 };
            let c = Coeffs {
                decay: 1.0 - sp.lr * wd,
                b1: self.beta1 as f32,
                b2: self.beta2 as f32,
                step_size: (sp.lr as f64 / bc1) as f32,
                inv_sqrt_bc2: (1.0 / bc2.sqrt()) as f32,
                eps: self.eps as f32,
                grad_scale: sp.grad_scale,
            };
            let g = g.contiguous()?;
            let op = AdamInplace { m: Mutex::new(&mut self.m[i]), v: Mutex::new(&mut self.v[i]), c };
            p.var.as_tensor().inplace_op2(&g, &op)?;
        }
        Ok(())
    }
}

/// The plain-ops update of one tensor: the oracle for the fused kernel.
pub fn adamw_reference(p: &[f32], g: &[f32], m: &mut [f32], v: &mut [f32], t: u64, cfg: &OptimConfig, sp: StepParams, decay: bool) -> Vec<f32> {
    let (b1, b2) = (cfg.beta1, cfg.beta2);
    let wd = if decay { sp.weight_decay as f64 } else { 0.0 };
    let bc1 = 1.0 - b1.powi(t as i32);
    let bc2 = 1.0 - b2.powi(t as i32);
    (0..p.len())
        .map(|i| {
            let gi = (g[i] * sp.grad_scale) as f64;
            m[i] = (b1 * m[i] as f64 + (1.0 - b1) * gi) as f32;
            v[i] = (b2 * v[i] as f64 + (1.0 - b2) * gi * gi) as f32;
            let denom = (v[i] as f64).sqrt() / bc2.sqrt() + cfg.eps;
            (p[i] as f64 * (1.0 - sp.lr as f64 * wd) - sp.lr as f64 / bc1 * m[i] as f64 / denom) as f32
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::config::ModelShape;
    use candle_core::Device;

    #[test]
    fn fused_matches_reference_over_steps() {
        let shape = ModelShape { dim: 16, layers: 1, heads: 2, kv_heads: 1, ffn: 24, ctx: 8, vocab: 40, ..Default::default() };
        let params = Params::init(&shape.llama_config().unwrap(), 1, &Device::Cpu).unwrap();
        let cfg = OptimConfig::default();
        let mut opt = AdamW::new(&params, &cfg);
        let mut refs: Vec<(Vec<f32>, Vec<f32>, Vec<f32>)> = params
            .list
            .iter()
            .map(|p| {
                let n = p.var.elem_count();
                (p.var.flatten_all().unwrap().to_vec1().unwrap(), vec![0.0; n], vec![0.0; n])
            })
            .collect();
        for step in 1..=3u64 {
            let grads: Vec<Tensor> = params.list.iter().map(|p| p.var.randn_like(0.0, 1.0).unwrap()).collect();
            let sp = StepParams { lr: 0.01 * step as f32, weight_decay: 0.1, grad_scale: 0.7 };
            opt.step(&params, &grads, sp).unwrap();
            for (i, p) in params.list.iter().enumerate() {
                let g: Vec<f32> = grads[i].flatten_all().unwrap().to_vec1().unwrap();
                let (rp, rm, rv) = &mut refs[i];
                *rp = adamw_reference(rp, &g, rm, rv, step, &cfg, sp, p.decay);
                let got: Vec<f32> = p.var.flatten_all().unwrap().to_vec1().unwrap();
                let diff = got.iter().zip(rp.iter()).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
                assert!(diff < 1e-6, "{} step {step}: {diff}", p.name);
            }
        }
    }

    #[test]
    fn sum_squares_is_exact_enough() {
        let t = Tensor::arange(0f32, 100_000f32, &Device::Cpu).unwrap();
        let want: f64 = (0..100_000u64).map(|i| (i * i) as f64).sum();
        let got = sum_squares(&t).unwrap();
        assert!(((got - want) / want).abs() < 1e-6, "{got} vs {want}");
    }
}
