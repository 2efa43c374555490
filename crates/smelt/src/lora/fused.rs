//! The training path of a LoRA layer as one op: `y = x·Wᵀ + s·(d(x)·Aᵀ)·Bᵀ` with `W` frozen
//! (quantized or dense), `d` dropout, and its backward pass:
//!
//! ```text
//! h  = d(x)·Aᵀ            (m × r, recomputed in the backward pass)
//! dB = s·dyᵀ·h            (n × r)
//! dh = s·dy·B             (m × r)
//! dA = dhᵀ·d(x)           (r × k)
//! dx = dy·W + d'(dh·A)    (m × k; d' applies the same dropout mask)
//! ```
//!
//! All products go to `gemm` directly, so a step runs no element-wise candle ops for the
//! adapters (each is a full pass over an activation, and candle's thread pool spins on
//! every one). The composite path — frozen op, candle matmuls, add — is the oracle.

use std::sync::atomic::{AtomicU64, Ordering};

use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use crate::kernels::QWeight;
use crate::train::simd::multiversion;
use crate::train::kernels::frozen::{backward_mode, quant_backward, Backward};
use crate::train::kernels::gemm::{matmul_par, Mat};
use crate::train::kernels::{f32_data, tensor_vec, with_data};
use crate::train::optim::with_f32;

/// The frozen base weight of the layer.
#[derive(Clone)]
pub enum Frozen {
    Quant(QWeight),
    /// Dense f32 `(out, in)`, contiguous.
    Dense(Tensor),
}

impl Frozen {
    fn dims(&self) -> (usize, usize) {
        match self {
            Frozen::Quant(q) => (q.rows(), q.cols()),
            Frozen::Dense(t) => {
                let d = t.dims();
                (d[0], d[1])
            }
        }
    }

    /// `y (m × rows) = x (m × cols) · Wᵀ`.
    fn forward(&self, x: &[f32], m: usize, y: &mut [f32]) -> Result<()> {
        let (rows, cols) = self.dims();
        match self {
            Frozen::Quant(q) => q.matmul_into(x, m, y).map_err(|e| candle_core::Error::Msg(format!("{e:#}"))),
            Frozen::Dense(w) => with_f32(w, |w| matmul_par(y, Mat::rows(x, m, cols), Mat::rows(w, rows, cols).t(), 1.0, false))
                .map_err(|e| candle_core::Error::Msg(format!("{e:#}"))),
        }
    }

    /// [`Self::forward`] into a new `y` (a quantized product fills it without a zero fill).
    fn forward_vec(&self, x: &[f32], m: usize) -> Result<Vec<f32>> {
        match self {
            Frozen::Quant(q) => q.matmul_vec(x, m).map_err(|e| candle_core::Error::Msg(format!("{e:#}"))),
            Frozen::Dense(_) => {
                let mut y = vec![0f32; m * self.dims().0];
                self.forward(x, m, &mut y)?;
                Ok(y)
            }
        }
    }

    /// [`Self::backward`] into a new `dx` (the int8 product fills it without a zero fill).
    fn backward_vec(&self, dy: &[f32], m: usize, mode: Backward) -> Result<Vec<f32>> {
        match self {
            Frozen::Quant(q) => Ok(crate::train::kernels::frozen::quant_backward_vec(q, dy, m, mode)),
            Frozen::Dense(_) => {
                let mut dx = vec![0f32; m * self.dims().1];
                self.backward(dy, m, &mut dx, mode)?;
                Ok(dx)
            }
        }
    }

    /// `dx (m × cols) = dy (m × rows) · W` (quantized: in the precision `mode`).
    fn backward(&self, dy: &[f32], m: usize, dx: &mut [f32], mode: Backward) -> Result<()> {
        let (rows, cols) = self.dims();
        match self {
            Frozen::Dense(w) => with_f32(w, |w| matmul_par(dx, Mat::rows(dy, m, rows), Mat::rows(w, rows, cols), 1.0, false))
                .map_err(|e| candle_core::Error::Msg(format!("{e:#}"))),
            Frozen::Quant(q) => {
                quant_backward(q, dy, m, dx, mode);
                Ok(())
            }
        }
    }
}

static DROPOUT_STREAM: AtomicU64 = AtomicU64::new(0x5eed);

struct LoraLinear {
    w: Frozen,
    scale: f32,
    dropout: f32,
    /// Seeds this application's dropout mask (the backward pass regenerates it).
    seed: u64,
    /// The precision of the frozen weight's backward product.
    mode: Backward,
}

/// Elements per parallel task of the dropout passes (fixed: the mask depends only on the
/// seed and the element's index).
const DROP_CHUNK: usize = 1 << 16;

/// A counter-based hash of element `i` (murmur3's finaliser): the mask is a pure function
/// of `(seed, i)`, so the backward pass regenerates it exactly, in any order and in
/// parallel, and the loops vectorise.
#[inline(always)]
fn mask_hash(seed: u32, i: u32) -> u32 {
    let mut h = i.wrapping_mul(0x9E37_79B1) ^ seed;
    h ^= h >> 16;
    h = h.wrapping_mul(0x85EB_CA6B);
    h ^= h >> 13;
    h = h.wrapping_mul(0xC2B2_AE35);
    h ^ (h >> 16)
}

multiversion! {
    /// `dst[i] = keep(i) ? x[i] · scale : 0` for elements `base..` of the mask.
    fn drop_into(dst: &mut [f32], x: &[f32], base: u32, seed: u32, threshold: u32, scale: f32) {
        for (i, (d, &v)) in dst.iter_mut().zip(x).enumerate() {
            let kept = mask_hash(seed, base.wrapping_add(i as u32)) >= threshold;
            *d = if kept { v * scale } else { 0.0 };
        }
    }
}

multiversion! {
    /// `dx[i] += keep(i) ? g[i] · scale : 0`: the gradient through the same mask.
    fn drop_grad_add(dx: &mut [f32], g: &[f32], base: u32, seed: u32, threshold: u32, scale: f32) {
        for (i, (d, &v)) in dx.iter_mut().zip(g).enumerate() {
            let kept = mask_hash(seed, base.wrapping_add(i as u32)) >= threshold;
            *d += if kept { v * scale } else { 0.0 };
        }
    }
}

impl LoraLinear {
    /// (seed, threshold, scale) of the mask: element `i` is kept when its hash ≥ threshold.
    fn mask(&self) -> (u32, u32, f32) {
        let threshold = (self.dropout as f64 * 4294967296.0).min(u32::MAX as f64) as u32;
        ((self.seed ^ (self.seed >> 32)) as u32, threshold, 1.0 / (1.0 - self.dropout))
    }

    /// `x` with dropout applied (a copy), or `None` when there is no dropout.
    fn dropped(&self, x: &[f32]) -> Option<Vec<f32>> {
        if self.dropout <= 0.0 {
            return None;
        }
        let (seed, threshold, scale) = self.mask();
        let mut out = vec![0f32; x.len()];
        out.par_chunks_mut(DROP_CHUNK).zip(x.par_chunks(DROP_CHUNK)).enumerate().for_each(|(c, (d, x))| {
            drop_into(d, x, (c * DROP_CHUNK) as u32, seed, threshold, scale);
        });
        Some(out)
    }

    /// `dx += mask ⊙ g · scale` (the dropout's backward pass).
    fn add_dropped_grad(&self, dx: &mut [f32], g: &[f32]) {
        let (seed, threshold, scale) = self.mask();
        dx.par_chunks_mut(DROP_CHUNK).zip(g.par_chunks(DROP_CHUNK)).enumerate().for_each(|(c, (d, g))| {
            drop_grad_add(d, g, (c * DROP_CHUNK) as u32, seed, threshold, scale);
        });
    }
}

impl CustomOp3 for LoraLinear {
    fn name(&self) -> &'static str {
        "lora-linear"
    }

    fn cpu_fwd(&self, xs: &CpuStorage, xl: &Layout, as_: &CpuStorage, al: &Layout, bs: &CpuStorage, bl: &Layout) -> Result<(CpuStorage, Shape)> {
        let (n, k) = self.w.dims();
        let Some((&kx, lead)) = xl.dims().split_last() else { candle_core::bail!("lora linear: scalar input") };
        let (r, ka) = al.shape().dims2()?;
        let (nb, rb) = bl.shape().dims2()?;
        if kx != k || ka != k || nb != n || rb != r {
            candle_core::bail!("lora linear: x {:?}, A {:?}, B {:?} for a [{n}, {k}] weight", xl.dims(), al.dims(), bl.dims());
        }
        let (x, a, b) = (f32_data(xs, xl, "lora")?, f32_data(as_, al, "lora")?, f32_data(bs, bl, "lora")?);
        let m: usize = lead.iter().product();
        let mut y = self.w.forward_vec(x, m)?;
        let xd = self.dropped(x);
        let mut h = vec![0f32; m * r];
        matmul_par(&mut h, Mat::rows(xd.as_deref().unwrap_or(x), m, k), Mat::rows(a, r, k).t(), 1.0, false);
        matmul_par(&mut y, Mat::rows(&h, m, r), Mat::rows(b, n, r).t(), self.scale, true);
        let mut out = lead.to_vec();
        out.push(n);
        Ok((CpuStorage::F32(y), Shape::from(out)))
    }

    fn bwd(&self, x: &Tensor, a: &Tensor, b: &Tensor, _y: &Tensor, dy: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        // The activation and the gradient are read in place (no copies of m × k and m × n);
        // the adapters are small.
        let (av, bv) = (tensor_vec(a)?, tensor_vec(b)?);
        let (dx, da, db) = with_data(x, |xv| with_data(dy, |dyv| self.grads(xv, &av, &bv, dyv)))?;
        Ok((
            Some(Tensor::from_vec(dx, x.shape(), x.device())?),
            Some(Tensor::from_vec(da, a.shape(), a.device())?),
            Some(Tensor::from_vec(db, b.shape(), b.device())?),
        ))
    }
}

impl LoraLinear {
    /// `(dx, dA, dB)` from the layer's input, adapter and output gradient (see the module
    /// docs for the products).
    fn grads(&self, xv: &[f32], av: &[f32], bv: &[f32], dyv: &[f32]) -> Result<(Vec<f32>, Vec<f32>, Vec<f32>)> {
        let (n, k) = self.w.dims();
        let r = av.len() / k;
        let m = xv.len() / k;
        let xd = self.dropped(xv);
        let xd = xd.as_deref().unwrap_or(xv);
        let mut h = vec![0f32; m * r];
        matmul_par(&mut h, Mat::rows(xd, m, k), Mat::rows(av, r, k).t(), 1.0, false);
        let mut db = vec![0f32; n * r];
        matmul_par(&mut db, Mat::rows(dyv, m, n).t(), Mat::rows(&h, m, r), self.scale, false);
        let mut dh = vec![0f32; m * r];
        matmul_par(&mut dh, Mat::rows(dyv, m, n), Mat::rows(bv, n, r), self.scale, false);
        let mut da = vec![0f32; r * k];
        matmul_par(&mut da, Mat::rows(&dh, m, r).t(), Mat::rows(xd, m, k), 1.0, false);
        let mut dx = self.w.backward_vec(dyv, m, self.mode)?;
        if self.dropout > 0.0 {
            let mut dxd = vec![0f32; m * k];
            matmul_par(&mut dxd, Mat::rows(&dh, m, r), Mat::rows(av, r, k), 1.0, false);
            // Where dropout kept x (scaled), the gradient passes with the same scale.
            self.add_dropped_grad(&mut dx, &dxd);
        } else {
            matmul_par(&mut dx, Mat::rows(&dh, m, r), Mat::rows(av, r, k), 1.0, true);
        }
        Ok((dx, da, db))
    }
}

/// `x·Wᵀ + scale·(dropout(x)·Aᵀ)·Bᵀ`, differentiable in `x`, `A` and `B`.
pub fn lora_linear(x: &Tensor, w: Frozen, a: &Tensor, b: &Tensor, scale: f64, dropout: f32) -> Result<Tensor> {
    lora_linear_with(x, w, a, b, scale, dropout, backward_mode())
}

/// [`lora_linear`] with the frozen weight's backward precision given.
pub fn lora_linear_with(x: &Tensor, w: Frozen, a: &Tensor, b: &Tensor, scale: f64, dropout: f32, mode: Backward) -> Result<Tensor> {
    let seed = DROPOUT_STREAM.fetch_add(0x9e3779b97f4a7c15, Ordering::Relaxed);
    let op = LoraLinear { w, scale: scale as f32, dropout, seed, mode };
    x.contiguous()?.apply_op3(&a.contiguous()?, &b.contiguous()?, op)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::testing::random_blocks;
    use crate::load::gguf::GgmlType;
    use crate::train::kernels::assert_close;
    use candle_core::{Device, Var};

    fn oracle(x: &Tensor, w: &Tensor, a: &Tensor, b: &Tensor, s: f64) -> Tensor {
        let base = crate::train::kernels::frozen::frozen_dense(x, w).unwrap();
        (base + (x.matmul(&a.t().unwrap()).unwrap().matmul(&b.t().unwrap()).unwrap() * s).unwrap()).unwrap()
    }

    #[test]
    fn matches_composite_values_and_grads() {
        let dev = Device::Cpu;
        let (m, k, n, r) = (9, 64, 300, 4);
        let mut rng = crate::sample::Rng::new(3);
        let q = QWeight::from_vec(random_blocks(&mut rng, GgmlType::Q4_1, n, k, 0.5), GgmlType::Q4_1, n, k).unwrap();
        let wq = Tensor::from_vec(q.to_f32(), (n, k), &dev).unwrap();
        let x = Var::from_tensor(&crate::util::randn(1, 0f32, 1.0, (m, k), &dev).unwrap()).unwrap();
        let a = Var::from_tensor(&crate::util::randn(2, 0f32, 0.3, (r, k), &dev).unwrap()).unwrap();
        let b = Var::from_tensor(&crate::util::randn(3, 0f32, 0.3, (n, r), &dev).unwrap()).unwrap();
        let probe = crate::util::randn(4, 0f32, 1.0, (m, n), &dev).unwrap();
        for (w, tol) in [(Frozen::Dense(wq.clone()), 1e-5), (Frozen::Quant(q.clone()), 2e-2)] {
            let ours = lora_linear_with(&x, w, &a, &b, 2.0, 0.0, Backward::F32).unwrap();
            let want = oracle(&x, &wq, &a, &b, 2.0);
            assert_close(&ours, &want, tol);
            let g1 = (ours * &probe).unwrap().sum_all().unwrap().backward().unwrap();
            let g2 = (want * &probe).unwrap().sum_all().unwrap().backward().unwrap();
            for v in [&x, &a, &b] {
                assert_close(g1.get(v).unwrap(), g2.get(v).unwrap(), 1e-5);
            }
        }
    }

    #[test]
    fn dropout_scales_kept_inputs_and_their_gradients() {
        let dev = Device::Cpu;
        let (m, k, n, r) = (64, 32, 8, 2);
        let w = Tensor::zeros((n, k), candle_core::DType::F32, &dev).unwrap();
        let x = Var::from_tensor(&Tensor::ones((m, k), candle_core::DType::F32, &dev).unwrap()).unwrap();
        let a = Var::from_tensor(&Tensor::ones((r, k), candle_core::DType::F32, &dev).unwrap()).unwrap();
        let b = Var::from_tensor(&Tensor::ones((n, r), candle_core::DType::F32, &dev).unwrap()).unwrap();
        let y = lora_linear(&x, Frozen::Dense(w), &a, &b, 1.0, 0.5).unwrap();
        // Each output = r · Σ_k kept(x)·2: on average r·k = 64.
        let mean = y.mean_all().unwrap().to_scalar::<f32>().unwrap();
        assert!((mean - 64.0).abs() < 8.0, "{mean}");
        let g = y.sum_all().unwrap().backward().unwrap();
        let dx = tensor_vec(g.get(&x).unwrap()).unwrap();
        // Dropped inputs get no gradient, kept ones n·r·2.
        assert!(dx.iter().all(|&v| v == 0.0 || (v - (n * r) as f32 * 2.0).abs() < 1e-4));
        let zeros = dx.iter().filter(|&&v| v == 0.0).count() as f64 / dx.len() as f64;
        assert!((zeros - 0.5).abs() < 0.1, "{zeros}");
    }
}
