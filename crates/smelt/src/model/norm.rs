//! RMSNorm: `x / sqrt(mean(x²) + eps) * w`, computed in f32.
//!
//! Gemma's `(1 + w)` convention is folded into `w` at load time, so every architecture
//! runs the same code.

use anyhow::Result;
use candle_core::{Tensor, D};

#[derive(Debug, Clone)]
pub struct RmsNorm {
    pub weight: Tensor,
    pub eps: f64,
}

impl RmsNorm {
    pub fn new(weight: Tensor, eps: f64) -> RmsNorm {
        RmsNorm { weight, eps }
    }

    /// Normalise over the last dimension of `x: (..., d)`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if x.track_op() || self.weight.track_op() {
            // Training: the fused kernel with its backward pass (rms_norm_reference is its oracle).
            Ok(crate::train::kernels::rmsnorm::rms_norm(x, &self.weight, self.eps)?)
        } else {
            Ok(candle_nn::ops::rms_norm(&x.contiguous()?, &self.weight, self.eps as f32)?)
        }
    }
}

impl RmsNorm {
    /// One row `x` into `out` (same length as the weight), with candle's `rms_norm`
    /// arithmetic (so the same bits as [`Self::forward`] at inference), allocating nothing.
    pub fn forward_row(&self, x: &[f32], out: &mut [f32]) -> Result<()> {
        let (st, l) = self.weight.storage_and_layout();
        let (candle_core::Storage::Cpu(candle_core::CpuStorage::F32(w)), Some((a, b))) = (&*st, l.contiguous_offsets()) else {
            anyhow::bail!("norm weight must be contiguous f32 on the CPU");
        };
        let w = &w[a..b];
        if x.len() != w.len() || out.len() != w.len() {
            anyhow::bail!("norm of {} values into {} with a weight of {}", x.len(), out.len(), w.len());
        }
        let sum2 = x.iter().map(|&v| v * v).sum::<f32>();
        let m = (sum2 / x.len() as f32 + self.eps as f32).sqrt();
        for ((o, &v), &a) in out.iter_mut().zip(x).zip(w) {
            *o = v / m * a;
        }
        Ok(())
    }
}

/// Plain differentiable ops; the oracle for the fused kernel.
pub fn rms_norm_reference(x: &Tensor, w: &Tensor, eps: f64) -> candle_core::Result<Tensor> {
    let d = x.dim(D::Minus1)? as f64;
    let ms = (x.sqr()?.sum_keepdim(D::Minus1)? / d)?;
    x.broadcast_div(&(ms + eps)?.sqrt()?)?.broadcast_mul(w)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn fused_matches_reference() {
        let x = crate::util::randn(5, 0f32, 2.0, (3, 5, 24), &Device::Cpu).unwrap();
        let w = crate::util::randn(6, 1f32, 0.3, 24, &Device::Cpu).unwrap();
        let n = RmsNorm::new(w.clone(), 1e-6);
        let a = n.forward(&x).unwrap();
        let b = rms_norm_reference(&x, &w, 1e-6).unwrap();
        let diff = (a - b).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(diff < 1e-5, "{diff}");
    }
}
