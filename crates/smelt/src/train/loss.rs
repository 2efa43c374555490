//! Cross-entropy over the vocabulary, fused.
//!
//! * [`lm_head_cross_entropy`]: the output projection and the loss in one op. Logits are
//!   computed `HEAD_ROWS` rows at a time; each block is turned in place into its gradient
//!   `(softmax − onehot) / n`, which is immediately multiplied back into the gradients of the
//!   hidden states and of the projection. The `(tokens, vocab)` logits never exist whole
//!   (for llama2.c's stories15M shape that is 262 MB, twice, per step).
//! * [`cross_entropy`]: the loss of given logits, one pass per row.
//!
//! With `bf16`, the three products of the fused head run in bf16 with f32 accumulation
//! ([`super::kernels::bf16`]) where the CPU has AVX-512 BF16 (else f32, silently); the
//! softmax and the loss stay f32.
//!
//! The plain candle path (matmul, log_softmax, gather, mean) is the test oracle.

use std::sync::Mutex;

use anyhow::{bail, Result};
use candle_core::{CpuStorage, CustomOp1, Layout, Shape, Tensor};
use rayon::prelude::*;

use super::kernels::{bf16, f32x512};
use super::kernels::gemm::{matmul_par, Mat};
use super::simd::{exp, multiversion};

/// Targets with this value are skipped (not counted in the mean).
pub const IGNORE: u32 = u32::MAX;

/// Rows per parallel task: fixed, so results do not depend on the thread count.
const ROWS_PER_TASK: usize = 8;

multiversion! {
    /// One row: returns `(max, Σ exp(x - max))`; writes `exp(x - max)` into `e`.
    fn row_exp(x: &[f32], e: &mut [f32]) -> (f32, f32) {
        let m = crate::train::simd::max(x);
        // 16 partial sums (vector lanes), added in a fixed order.
        let mut acc = [0f32; 16];
        let mut xc = x.chunks_exact(16);
        let mut ec = e.chunks_exact_mut(16);
        for (xs, es) in (&mut xc).zip(&mut ec) {
            for i in 0..16 {
                let v = exp(xs[i] - m);
                es[i] = v;
                acc[i] += v;
            }
        }
        let mut s: f32 = 0.0;
        for (xv, ev) in xc.remainder().iter().zip(ec.into_remainder()) {
            *ev = exp(*xv - m);
            s += *ev;
        }
        (m, acc.iter().sum::<f32>() + s)
    }
}

multiversion! {
    fn scale_row(e: &mut [f32], k: f32) {
        for v in e.iter_mut() {
            *v *= k;
        }
    }
}

multiversion! {
    /// One row in place: returns its loss; with `grad`, the row becomes
    /// `(softmax − onehot(t)) · inv`.
    fn ce_row_inplace(x: &mut [f32], t: usize, inv: f32, grad: bool) -> f64 {
        let xt = x[t];
        let m = crate::train::simd::max(x);
        let mut acc = [0f32; 16];
        let mut c = x.chunks_exact_mut(16);
        for xs in &mut c {
            for i in 0..16 {
                let v = exp(xs[i] - m);
                xs[i] = v;
                acc[i] += v;
            }
        }
        let mut tail = 0f32;
        for v in c.into_remainder() {
            *v = exp(*v - m);
            tail += *v;
        }
        let sum = acc.iter().sum::<f32>() + tail;
        if grad {
            let k = inv / sum;
            for v in x.iter_mut() {
                *v *= k;
            }
            x[t] -= inv;
        }
        (m as f64 + (sum as f64).ln()) - xt as f64
    }
}

/// Cross-entropy of a block of logit rows in place (see [`ce_row_inplace`]); rows whose
/// target is [`IGNORE`] become zeros. Returns the block's summed loss.
fn ce_block(lg: &mut [f32], vocab: usize, targets: &[u32], inv: f32, grad: bool) -> f64 {
    let losses: Vec<f64> = lg
        .par_chunks_mut(vocab * ROWS_PER_TASK)
        .zip(targets.par_chunks(ROWS_PER_TASK))
        .map(|(block, ts)| {
            let mut sum = 0f64;
            for (row, &t) in block.chunks_mut(vocab).zip(ts) {
                if t == IGNORE {
                    row.fill(0.0);
                } else {
                    sum += ce_row_inplace(row, t as usize, inv, grad);
                }
            }
            sum
        })
        .collect();
    losses.iter().sum()
}

/// The fused output projection + cross-entropy for a frozen quantized head (LoRA on a GGUF
/// base): logits by the inference kernel, `dh` by the frozen backward pass
/// ([`super::kernels::frozen::quant_backward`]), block by block.
struct FrozenHeadCrossEntropy {
    w: crate::kernels::QWeight,
    targets: Vec<u32>,
    want_grad: bool,
    /// The precision of `dh`'s product.
    mode: super::kernels::frozen::Backward,
    grads: Mutex<Option<Vec<f32>>>,
}

impl candle_core::CustomOp1 for FrozenHeadCrossEntropy {
    fn name(&self) -> &'static str {
        "fused-frozen-head-cross-entropy"
    }

    fn cpu_fwd(&self, hs: &CpuStorage, hl: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let h = super::kernels::f32_data(hs, hl, "lm head")?;
        let (n, d) = hl.shape().dims2()?;
        let (vocab, wd) = (self.w.rows(), self.w.cols());
        if wd != d || n != self.targets.len() {
            candle_core::bail!("lm head: hidden {:?}, weight [{vocab}, {wd}], {} targets", hl.dims(), self.targets.len());
        }
        if let Some(&t) = self.targets.iter().find(|&&t| t != IGNORE && t as usize >= vocab) {
            candle_core::bail!("cross-entropy: target {t} outside the vocabulary of {vocab}");
        }
        let counted = self.targets.iter().filter(|&&t| t != IGNORE).count();
        let inv = if counted > 0 { 1.0 / counted as f32 } else { 0.0 };
        // Blocks of about 64 MiB of logits: each block dequantizes the head once more in
        // the backward product, so blocks are as large as memory comfortably allows.
        let block = ((16 << 20) / vocab.max(1)).clamp(32, 1024);
        let mut logits: Vec<f32> = Vec::new();
        let mut dh = if self.want_grad { vec![0f32; n * d] } else { Vec::new() };
        let mut total = 0f64;
        let err = |e: anyhow::Error| candle_core::Error::Msg(format!("{e:#}"));
        for r0 in (0..n).step_by(block) {
            let rows = block.min(n - r0);
            let hc = &h[r0 * d..(r0 + rows) * d];
            // The first (largest) block's logits are a new buffer the kernel fills (no zero
            // fill of ~64 MiB); later blocks reuse it.
            if r0 == 0 {
                logits = self.w.matmul_vec(hc, rows).map_err(err)?;
            } else {
                self.w.matmul_into(hc, rows, &mut logits[..rows * vocab]).map_err(err)?;
            }
            let lg = &mut logits[..rows * vocab];
            total += ce_block(lg, vocab, &self.targets[r0..r0 + rows], inv, self.want_grad);
            if self.want_grad {
                super::kernels::frozen::quant_backward(&self.w, lg, rows, &mut dh[r0 * d..(r0 + rows) * d], self.mode);
            }
        }
        if self.want_grad {
            *self.grads.lock().unwrap() = Some(dh);
        }
        let mean = if counted > 0 { total / counted as f64 } else { 0.0 };
        Ok((CpuStorage::F32(vec![mean as f32]), Shape::from(())))
    }

    fn bwd(&self, h: &Tensor, _res: &Tensor, g: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let Some(mut dh) = self.grads.lock().unwrap().take() else {
            candle_core::bail!("fused lm head: backward without a gradient (computed once per forward)");
        };
        let k = g.to_dtype(candle_core::DType::F32)?.to_scalar::<f32>()?;
        if k != 1.0 {
            scale_row(&mut dh, k);
        }
        Ok(Some(Tensor::from_vec(dh, h.shape(), h.device())?))
    }
}

/// Mean cross-entropy of `h (n, d) · Wᵀ` for a frozen quantized `W (vocab, d)` against
/// `targets`, without materialising the logits; differentiable in `h`.
pub fn frozen_head_cross_entropy(h: &Tensor, w: &crate::kernels::QWeight, targets: &[u32]) -> Result<Tensor> {
    frozen_head_cross_entropy_with(h, w, targets, super::kernels::frozen::backward_mode())
}

/// [`frozen_head_cross_entropy`] with the backward precision given.
pub fn frozen_head_cross_entropy_with(h: &Tensor, w: &crate::kernels::QWeight, targets: &[u32], mode: super::kernels::frozen::Backward) -> Result<Tensor> {
    let op = FrozenHeadCrossEntropy {
        w: w.clone(),
        targets: targets.to_vec(),
        want_grad: h.track_op(),
        mode,
        grads: Mutex::new(None),
    };
    Ok(h.contiguous()?.apply_op1(op)?)
}

/// Rows of logits the fused head computes at a time.
const HEAD_ROWS: usize = 256;

/// The fused output projection + cross-entropy: `h (n, d)`, `w (vocab, d)` → mean loss.
struct LmHeadCrossEntropy {
    targets: Vec<u32>,
    /// Gradients wanted at all (then `dh` always).
    want_grad: bool,
    /// `dW` wanted too (not for a frozen head under LoRA).
    want_dw: bool,
    /// bf16 products (the caller checked `bf16::available()`).
    bf16: bool,
    /// (dh, dw) of the mean loss, computed in the forward pass.
    grads: Mutex<Option<(Vec<f32>, Vec<f32>)>>,
}

impl candle_core::CustomOp2 for LmHeadCrossEntropy {
    fn name(&self) -> &'static str {
        "fused-lm-head-cross-entropy"
    }

    fn cpu_fwd(&self, hs: &CpuStorage, hl: &Layout, ws: &CpuStorage, wl: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let h = super::kernels::f32_data(hs, hl, "lm head")?;
        let w = super::kernels::f32_data(ws, wl, "lm head")?;
        let (n, d) = hl.shape().dims2()?;
        let (vocab, wd) = wl.shape().dims2()?;
        if wd != d || n != self.targets.len() {
            candle_core::bail!("lm head: hidden {:?}, weight {:?}, {} targets", hl.dims(), wl.dims(), self.targets.len());
        }
        if let Some(&t) = self.targets.iter().find(|&&t| t != IGNORE && t as usize >= vocab) {
            candle_core::bail!("cross-entropy: target {t} outside the vocabulary of {vocab}");
        }
        let counted = self.targets.iter().filter(|&&t| t != IGNORE).count();
        let inv = if counted > 0 { 1.0 / counted as f32 } else { 0.0 };
        let mut logits = vec![0f32; HEAD_ROWS.min(n) * vocab];
        let mut dh = if self.want_grad { vec![0f32; n * d] } else { Vec::new() };
        let mut dw = if self.want_dw { vec![0f32; vocab * d] } else { Vec::new() };
        let mut total = 0f64;
        // bf16: W packed once for the logits (as Wᵀ) and once for dh (as W).
        let w_t = self.bf16.then(|| bf16::pack_b(Mat::rows(w, vocab, d).t()));
        let w_n = (self.bf16 && self.want_grad).then(|| bf16::pack_b(Mat::rows(w, vocab, d)));
        // f32 on AVX-512: W packed once for all row blocks as well (packing it per block
        // would repeat the same copy of the whole matrix for every block).
        let f32_packed = !self.bf16 && super::kernels::f32x512::available();
        let f_t = f32_packed.then(|| f32x512::pack_b(Mat::rows(w, vocab, d).t()));
        let f_n = (f32_packed && self.want_grad).then(|| f32x512::pack_b(Mat::rows(w, vocab, d)));
        for (ci, r0) in (0..n).step_by(HEAD_ROWS).enumerate() {
            let rows = HEAD_ROWS.min(n - r0);
            let lg = &mut logits[..rows * vocab];
            let hc = &h[r0 * d..(r0 + rows) * d];
            match &w_t {
                Some(wt) => bf16::matmul_packed(lg, &bf16::pack_a(Mat::rows(hc, rows, d)), wt, 1.0, false),
                None => match &f_t {
                    Some(ft) => f32x512::matmul_packed(lg, Mat::rows(hc, rows, d), ft, 1.0, false, true),
                    None => matmul_par(lg, Mat::rows(hc, rows, d), Mat::rows(w, vocab, d).t(), 1.0, false), // (rows, vocab)
                },
            }
            total += ce_block(lg, vocab, &self.targets[r0..r0 + rows], inv, self.want_grad);
            if self.want_grad {
                // dh_c = dlogits_c · W (rows, d); dW += dlogits_cᵀ · h_c (vocab, d).
                let dhc = &mut dh[r0 * d..(r0 + rows) * d];
                if let Some(wn) = &w_n {
                    bf16::matmul_packed(dhc, &bf16::pack_a(Mat::rows(lg, rows, vocab)), wn, 1.0, false);
                    if self.want_dw {
                        let (a, b) = (bf16::pack_a(Mat::rows(lg, rows, vocab).t()), bf16::pack_b(Mat::rows(hc, rows, d)));
                        bf16::matmul_packed(&mut dw, &a, &b, 1.0, ci > 0);
                    }
                } else {
                    match &f_n {
                        Some(fnn) => f32x512::matmul_packed(dhc, Mat::rows(lg, rows, vocab), fnn, 1.0, false, true),
                        None => matmul_par(dhc, Mat::rows(lg, rows, vocab), Mat::rows(w, vocab, d), 1.0, false),
                    }
                    if self.want_dw {
                        matmul_par(&mut dw, Mat::rows(lg, rows, vocab).t(), Mat::rows(hc, rows, d), 1.0, ci > 0);
                    }
                }
            }
        }
        if self.want_grad {
            *self.grads.lock().unwrap() = Some((dh, dw));
        }
        let mean = if counted > 0 { total / counted as f64 } else { 0.0 };
        Ok((CpuStorage::F32(vec![mean as f32]), Shape::from(())))
    }

    fn bwd(&self, h: &Tensor, w: &Tensor, _res: &Tensor, g: &Tensor) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let Some((mut dh, mut dw)) = self.grads.lock().unwrap().take() else {
            candle_core::bail!("fused lm head: backward without a gradient (computed once per forward)");
        };
        let k = g.to_dtype(candle_core::DType::F32)?.to_scalar::<f32>()?;
        if k != 1.0 {
            scale_row(&mut dh, k);
            scale_row(&mut dw, k);
        }
        let dw = if self.want_dw { Some(Tensor::from_vec(dw, w.shape(), w.device())?) } else { None };
        Ok((Some(Tensor::from_vec(dh, h.shape(), h.device())?), dw))
    }
}

/// Mean next-token cross-entropy of `h (n, d) · wᵀ` (logits over a vocabulary of
/// `w.dims()[0]`) against `targets`, without materialising the logits. Differentiable
/// in `h` and `w` when they track gradients.
pub fn lm_head_cross_entropy(h: &Tensor, w: &Tensor, targets: &[u32]) -> Result<Tensor> {
    lm_head_cross_entropy_with(h, w, targets, false)
}

/// [`lm_head_cross_entropy`], with bf16 products when `bf16` and they pay on this CPU
/// ([`bf16::preferred`]).
pub fn lm_head_cross_entropy_with(h: &Tensor, w: &Tensor, targets: &[u32], bf16: bool) -> Result<Tensor> {
    lm_head_cross_entropy_exact(h, w, targets, bf16 && bf16::preferred())
}

/// [`lm_head_cross_entropy`] with bf16 products whenever `bf16` and the CPU has them.
pub(crate) fn lm_head_cross_entropy_exact(h: &Tensor, w: &Tensor, targets: &[u32], bf16: bool) -> Result<Tensor> {
    let op = LmHeadCrossEntropy {
        targets: targets.to_vec(),
        want_grad: h.track_op() || w.track_op(),
        want_dw: w.track_op(),
        bf16: bf16 && bf16::available(),
        grads: Mutex::new(None),
    };
    Ok(h.contiguous()?.apply_op2(&w.contiguous()?, op)?)
}

/// Mean cross-entropy of `logits: (n, vocab)` against `targets: (n)`, and optionally the
/// gradient of that mean w.r.t. the logits. Returns `(mean loss, counted rows, grad)`.
pub fn cross_entropy_rows(logits: &[f32], vocab: usize, targets: &[u32], want_grad: bool) -> Result<(f64, usize, Option<Vec<f32>>)> {
    let n = targets.len();
    if logits.len() != n * vocab {
        bail!("cross-entropy: {} logits for {n} rows of {vocab}", logits.len());
    }
    if let Some(&t) = targets.iter().find(|&&t| t != IGNORE && t as usize >= vocab) {
        bail!("cross-entropy: target {t} outside the vocabulary of {vocab}");
    }
    let counted = targets.iter().filter(|&&t| t != IGNORE).count();
    let inv = if counted > 0 { 1.0 / counted as f32 } else { 0.0 };
    let mut losses = vec![0f64; n];
    let mut grad = vec![0f32; if want_grad { n * vocab } else { 0 }];
    let task = |(ci, (loss_chunk, grad_chunk)): (usize, (&mut [f64], &mut [f32]))| {
        let mut scratch = if want_grad { Vec::new() } else { vec![0f32; vocab] };
        for (j, loss) in loss_chunk.iter_mut().enumerate() {
            let r = ci * ROWS_PER_TASK + j;
            let t = targets[r];
            if t == IGNORE {
                continue; // loss 0, gradient row stays 0
            }
            let x = &logits[r * vocab..(r + 1) * vocab];
            let e: &mut [f32] = if want_grad { &mut grad_chunk[j * vocab..(j + 1) * vocab] } else { &mut scratch };
            let (m, s) = row_exp(x, e);
            *loss = (m as f64 + (s as f64).ln()) - x[t as usize] as f64;
            if want_grad {
                scale_row(e, inv / s); // softmax / counted
                e[t as usize] -= inv;
            }
        }
    };
    if want_grad {
        losses
            .par_chunks_mut(ROWS_PER_TASK)
            .zip(grad.par_chunks_mut(ROWS_PER_TASK * vocab))
            .enumerate()
            .for_each(task);
    } else {
        losses
            .par_chunks_mut(ROWS_PER_TASK)
            .enumerate()
            .for_each(|(ci, lc)| task((ci, (lc, &mut []))));
    }
    let mean = if counted > 0 { losses.iter().sum::<f64>() / counted as f64 } else { 0.0 };
    Ok((mean, counted, want_grad.then_some(grad)))
}

/// The fused op: `logits (n, vocab) -> scalar mean loss`; the gradient is computed in the
/// forward pass and handed out (scaled by the incoming gradient) in the backward pass.
struct CrossEntropyOp {
    targets: Vec<u32>,
    want_grad: bool,
    grad: Mutex<Option<Vec<f32>>>,
}

impl CustomOp1 for CrossEntropyOp {
    fn name(&self) -> &'static str {
        "fused-cross-entropy"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let (n, vocab) = layout.shape().dims2()?;
        let CpuStorage::F32(data) = storage else {
            candle_core::bail!("fused cross-entropy needs f32 logits");
        };
        let Some((start, end)) = layout.contiguous_offsets() else {
            candle_core::bail!("fused cross-entropy needs contiguous logits");
        };
        if n != self.targets.len() {
            candle_core::bail!("cross-entropy: {n} logit rows for {} targets", self.targets.len());
        }
        let (mean, _, grad) = cross_entropy_rows(&data[start..end], vocab, &self.targets, self.want_grad)
            .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
        *self.grad.lock().unwrap() = grad;
        Ok((CpuStorage::F32(vec![mean as f32]), Shape::from(())))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let g = self.grad.lock().unwrap().take();
        let Some(mut g) = g else {
            candle_core::bail!("fused cross-entropy: backward without a gradient (computed once per forward)");
        };
        let k = grad_res.to_dtype(candle_core::DType::F32)?.to_scalar::<f32>()?;
        if k != 1.0 {
            scale_row(&mut g, k);
        }
        Ok(Some(Tensor::from_vec(g, arg.shape(), arg.device())?))
    }
}

/// Mean cross-entropy of `logits: (n, vocab)` f32 against `targets` (fused kernel).
/// Differentiable when `logits` tracks gradients.
pub fn cross_entropy(logits: &Tensor, targets: &[u32]) -> Result<Tensor> {
    let logits = logits.contiguous()?;
    let op = CrossEntropyOp { targets: targets.to_vec(), want_grad: logits.track_op(), grad: Mutex::new(None) };
    Ok(logits.apply_op1(op)?)
}

/// The plain candle path (log-softmax, gather, mean): the oracle for [`cross_entropy`].
pub fn cross_entropy_reference(logits: &Tensor, targets: &[u32]) -> Result<Tensor> {
    let t = Tensor::from_slice(targets, targets.len(), logits.device())?;
    Ok(candle_nn::loss::cross_entropy(logits, &t)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap()
    }

    #[test]
    fn fused_matches_reference_loss_and_grad() {
        let dev = Device::Cpu;
        let (n, v) = (37, 101);
        let x = Var::from_tensor(&(crate::util::randn(42, 0f32, 3.0, (n, v), &dev).unwrap())).unwrap();
        let targets: Vec<u32> = (0..n as u32).map(|i| (i * 7919) % v as u32).collect();
        let a = cross_entropy(x.as_tensor(), &targets).unwrap();
        let b = cross_entropy_reference(x.as_tensor(), &targets).unwrap();
        assert!(max_diff(&a, &b) < 1e-5, "{a} vs {b}");
        let ga = (a * 2.5).unwrap().backward().unwrap().remove(x.as_tensor()).unwrap();
        let gb = (b * 2.5).unwrap().backward().unwrap().remove(x.as_tensor()).unwrap();
        assert!(max_diff(&ga, &gb) < 1e-6, "{}", max_diff(&ga, &gb));
    }

    #[test]
    fn fused_head_matches_matmul_then_reference() {
        let dev = Device::Cpu;
        // More rows than one block, and an ignored target.
        let (n, d, v) = (300, 24, 53);
        let h = Var::from_tensor(&crate::util::randn(43, 0f32, 1.0, (n, d), &dev).unwrap()).unwrap();
        let w = Var::from_tensor(&crate::util::randn(44, 0f32, 0.5, (v, d), &dev).unwrap()).unwrap();
        let mut targets: Vec<u32> = (0..n as u32).map(|i| (i * 31) % v as u32).collect();
        targets[7] = IGNORE;
        let a = lm_head_cross_entropy(&h, &w, &targets).unwrap();
        let keep: Vec<u32> = (0..n as u32).filter(|&i| i != 7).collect();
        let idx = Tensor::new(keep.as_slice(), &dev).unwrap();
        let logits = h.as_tensor().matmul(&w.t().unwrap()).unwrap().index_select(&idx, 0).unwrap();
        let kept: Vec<u32> = keep.iter().map(|&i| targets[i as usize]).collect();
        let b = cross_entropy_reference(&logits, &kept).unwrap();
        assert!(max_diff(&a, &b) < 1e-5, "{a} vs {b}");
        let ga = (&a * 3.0).unwrap().backward().unwrap();
        let gb = (b * 3.0).unwrap().backward().unwrap();
        for x in [&h, &w] {
            crate::train::kernels::assert_close(ga.get(x).unwrap(), gb.get(x).unwrap(), 1e-5);
        }
        // Without gradients: the same loss.
        let c = lm_head_cross_entropy(&h.as_tensor().detach(), &w.as_tensor().detach(), &targets).unwrap();
        assert!(max_diff(&a.detach(), &c) < 1e-7);
    }

    #[test]
    fn frozen_quantized_head_matches_dequantized_reference() {
        use crate::kernels::testing::random_blocks;
        use crate::kernels::QWeight;
        use crate::load::gguf::GgmlType;
        let dev = Device::Cpu;
        let mut rng = crate::sample::Rng::new(11);
        // Vocabulary large enough for several row blocks ((16 Mi / vocab) rows each).
        let (n, d, v) = (40, 32, 600_000);
        let q = QWeight::from_vec(random_blocks(&mut rng, GgmlType::Q8_0, v, d, 0.05), GgmlType::Q8_0, v, d).unwrap();
        let w = Tensor::from_vec(q.to_f32(), (v, d), &dev).unwrap();
        // Seeded (candle's randn is not): the same inputs on every run.
        let hv: Vec<f32> = (0..n * d).map(|_| (rng.next_f64() as f32 - 0.5) * 3.5).collect();
        let h = Var::from_tensor(&Tensor::from_vec(hv, (n, d), &dev).unwrap()).unwrap();
        let mut targets: Vec<u32> = (0..n as u32).map(|i| (i * 7919) % v as u32).collect();
        targets[3] = IGNORE;
        // Reference: the same (8-bit activation) logits from the inference kernel, the plain
        // loss, and dh = dlogits · W in f32.
        let logits = Var::from_tensor(&q.forward(h.as_tensor()).unwrap()).unwrap();
        let keep: Vec<u32> = (0..n as u32).filter(|&i| targets[i as usize] != IGNORE).collect();
        let kept: Vec<u32> = keep.iter().map(|&i| targets[i as usize]).collect();
        let idx = Tensor::new(keep.as_slice(), &dev).unwrap();
        let b = cross_entropy_reference(&logits.as_tensor().index_select(&idx, 0).unwrap(), &kept).unwrap();
        let dlogits = (&b * 2.0).unwrap().backward().unwrap().remove(logits.as_tensor()).unwrap();
        let dh = dlogits.matmul(&w).unwrap();
        use crate::train::kernels::frozen::Backward;
        for mode in [Backward::F32, Backward::Bf16, Backward::Int8] {
            let a = frozen_head_cross_entropy_with(h.as_tensor(), &q, &targets, mode).unwrap();
            // f32 sums over 600k logits in two orders: ~1e-7 of the loss apart.
            let tol = 1e-5 + 1e-6 * b.to_scalar::<f32>().unwrap().abs();
            assert!(max_diff(&a, &b) < tol, "{a} vs {b}");
            let ga = (&a * 2.0).unwrap().backward().unwrap();
            crate::train::kernels::assert_close(ga.get(&h).unwrap(), &dh, if mode == Backward::F32 { 1e-5 } else { 2e-2 });
        }
    }

    #[test]
    fn bf16_head_is_close_to_f32() {
        if !bf16::available() {
            eprintln!("no AVX-512 BF16 on this CPU: bf16 head not exercised");
            return;
        }
        let dev = Device::Cpu;
        let (n, d, v) = (300, 40, 517);
        let h = Var::from_tensor(&crate::util::randn(45, 0f32, 1.0, (n, d), &dev).unwrap()).unwrap();
        let w = Var::from_tensor(&crate::util::randn(46, 0f32, 0.5, (v, d), &dev).unwrap()).unwrap();
        let targets: Vec<u32> = (0..n as u32).map(|i| (i * 31) % v as u32).collect();
        let a = lm_head_cross_entropy_exact(&h, &w, &targets, false).unwrap();
        let b = lm_head_cross_entropy_exact(&h, &w, &targets, true).unwrap();
        let (la, lb) = (a.to_scalar::<f32>().unwrap(), b.to_scalar::<f32>().unwrap());
        assert!(la != lb, "the bf16 path was not taken");
        assert!((la - lb).abs() / la < 2e-3, "loss {la} (f32) vs {lb} (bf16)");
        let ga = a.backward().unwrap();
        let gb = b.backward().unwrap();
        for x in [&h, &w] {
            crate::train::kernels::assert_close(gb.get(x).unwrap(), ga.get(x).unwrap(), 2e-2);
        }
    }

    #[test]
    fn ignored_rows_and_bad_targets() {
        let logits = vec![0f32; 3 * 4];
        let (mean, counted, g) = cross_entropy_rows(&logits, 4, &[1, IGNORE, 2], true).unwrap();
        assert_eq!(counted, 2);
        assert!((mean - 4f64.ln()).abs() < 1e-6);
        let g = g.unwrap();
        assert!(g[4..8].iter().all(|&x| x == 0.0));
        assert!((g[1] - (0.25 - 1.0) / 2.0).abs() < 1e-7);
        assert!(cross_entropy_rows(&logits, 4, &[1, 4, 0], false).is_err());
    }
}
