//! Rotary position embeddings: frequency tables for every scaling variant, and the
//! rotation itself (a fused candle kernel at inference, plain differentiable ops when
//! training — the plain path is also the oracle the fused one is tested against).

use anyhow::Result;
use candle_core::{CpuStorage, Device, Tensor, D};

use super::config::{RopeConfig, RopeLayout, RopeScaling};

/// Precomputed cos/sin for positions `0..n_ctx`, each `(n_ctx, rotary_dim / 2)`.
#[derive(Debug, Clone)]
pub struct Rope {
    pub cos: Tensor,
    pub sin: Tensor,
    pub rotary_dim: usize,
    pub layout: RopeLayout,
}

/// Inverse frequencies (length rotary_dim / 2) and the cos/sin magnitude factor.
pub fn inv_freqs(cfg: &RopeConfig, n_ctx: usize) -> (Vec<f64>, f64) {
    let half = cfg.rotary_dim / 2;
    let base: Vec<f64> = (0..half)
        .map(|i| 1.0 / cfg.theta.powf((2 * i) as f64 / cfg.rotary_dim as f64))
        .collect();
    match &cfg.scaling {
        RopeScaling::None => (base, 1.0),
        RopeScaling::Linear { factor } => (base.iter().map(|f| f / factor).collect(), 1.0),
        RopeScaling::Llama3 { factor, low_freq_factor, high_freq_factor, original_max } => {
            let old = *original_max as f64;
            let low_wavelen = old / low_freq_factor;
            let high_wavelen = old / high_freq_factor;
            let freqs = base
                .iter()
                .map(|&f| {
                    let wavelen = 2.0 * std::f64::consts::PI / f;
                    if wavelen < high_wavelen {
                        f
                    } else if wavelen > low_wavelen {
                        f / factor
                    } else {
                        let smooth = (old / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor);
                        (1.0 - smooth) * f / factor + smooth * f
                    }
                })
                .collect();
            (freqs, 1.0)
        }
        RopeScaling::Factors { factors, attn_factor } => {
            (base.iter().zip(factors).map(|(f, s)| f / s).collect(), *attn_factor)
        }
        RopeScaling::LongRope { short, long, original_max, attn_factor } => {
            // Long factors once the context can exceed what the model was trained on
            // (llama.cpp's rule; transformers switches on the current sequence length).
            let factors = if n_ctx > *original_max { long } else { short };
            (base.iter().zip(factors).map(|(f, s)| f / s).collect(), *attn_factor)
        }
    }
}

/// Phi-3's default magnitude correction: sqrt(1 + ln(scale) / ln(original_max)), where
/// scale is the configured factor or max_position / original_max.
pub fn longrope_attn_factor(scale: f64, original_max: usize) -> f64 {
    if scale <= 1.0 {
        1.0
    } else {
        (1.0 + scale.ln() / (original_max as f64).ln()).sqrt()
    }
}

impl Rope {
    pub fn new(cfg: &RopeConfig, n_ctx: usize, device: &Device) -> Result<Rope> {
        let (freqs, mag) = inv_freqs(cfg, n_ctx);
        let half = freqs.len();
        let mut cos = Vec::with_capacity(n_ctx * half);
        let mut sin = Vec::with_capacity(n_ctx * half);
        for p in 0..n_ctx {
            for &f in &freqs {
                // Angles in f32 first, as transformers computes them, so long positions
                // round the same way.
                let angle = (p as f32 * f as f32) as f64;
                cos.push((angle.cos() * mag) as f32);
                sin.push((angle.sin() * mag) as f32);
            }
        }
        Ok(Rope {
            cos: Tensor::from_vec(cos, (n_ctx, half), device)?,
            sin: Tensor::from_vec(sin, (n_ctx, half), device)?,
            rotary_dim: cfg.rotary_dim,
            layout: cfg.layout,
        })
    }

    pub fn n_ctx(&self) -> usize {
        self.cos.dims()[0]
    }

    /// Rotate `x: (b, heads, seq, head_dim)` whose rows sit at positions `pos..pos+seq`.
    pub fn apply(&self, x: &Tensor, pos: usize) -> Result<Tensor> {
        let seq = x.dims4()?.2;
        self.apply_with(x, &self.cos.narrow(0, pos, seq)?, &self.sin.narrow(0, pos, seq)?)
    }

    /// Rotate `x: (b, heads, seq, head_dim)` whose row `i` sits at position `positions[i]`
    /// (several sequences concatenated, each starting at 0).
    pub fn apply_positions(&self, x: &Tensor, positions: &[u32]) -> Result<Tensor> {
        if let Some(&p) = positions.iter().find(|&&p| p as usize >= self.n_ctx()) {
            anyhow::bail!("position {p} beyond the rope table of {}", self.n_ctx());
        }
        let idx = Tensor::from_vec(positions.to_vec(), positions.len(), self.cos.device())?;
        self.apply_with(x, &self.cos.index_select(&idx, 0)?, &self.sin.index_select(&idx, 0)?)
    }

    /// Rotate one head's `x` (head_dim values) in place as the token at `pos`: the same
    /// arithmetic as [`Self::apply`] (candle's `rope` / `rope_i`), without allocating.
    pub fn rotate_row(&self, x: &mut [f32], pos: usize) -> Result<()> {
        let (r, half) = (self.rotary_dim, self.rotary_dim / 2);
        if pos >= self.n_ctx() || x.len() < r {
            anyhow::bail!("rope: position {pos} of {}, {} values for a rotary size of {r}", self.n_ctx(), x.len());
        }
        let (cs, cl) = self.cos.storage_and_layout();
        let (ss, sl) = self.sin.storage_and_layout();
        let (candle_core::Storage::Cpu(CpuStorage::F32(cos)), candle_core::Storage::Cpu(CpuStorage::F32(sin))) = (&*cs, &*ss) else {
            anyhow::bail!("rope tables must be f32 on the CPU");
        };
        let (Some((c0, _)), Some((s0, _))) = (cl.contiguous_offsets(), sl.contiguous_offsets()) else {
            anyhow::bail!("rope tables must be contiguous");
        };
        let (cos, sin) = (&cos[c0 + pos * half..c0 + (pos + 1) * half], &sin[s0 + pos * half..s0 + (pos + 1) * half]);
        match self.layout {
            RopeLayout::Half => {
                for i in 0..half {
                    let (a, b) = (x[i], x[i + half]);
                    x[i] = a * cos[i] - b * sin[i];
                    x[i + half] = a * sin[i] + b * cos[i];
                }
            }
            RopeLayout::Interleaved => {
                for i in 0..half {
                    let (a, b) = (x[2 * i], x[2 * i + 1]);
                    x[2 * i] = a * cos[i] - b * sin[i];
                    x[2 * i + 1] = a * sin[i] + b * cos[i];
                }
            }
        }
        Ok(())
    }

    fn apply_with(&self, x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
        let head_dim = x.dims4()?.3;
        if self.rotary_dim == head_dim {
            return self.rotate(&x.contiguous()?, cos, sin);
        }
        let rot = x.narrow(D::Minus1, 0, self.rotary_dim)?.contiguous()?;
        let pass = x.narrow(D::Minus1, self.rotary_dim, head_dim - self.rotary_dim)?;
        let rot = self.rotate(&rot, cos, sin)?;
        Ok(Tensor::cat(&[&rot, &pass], D::Minus1)?)
    }

    fn rotate(&self, x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
        let training = x.track_op();
        Ok(match (self.layout, training) {
            (RopeLayout::Half, false) => candle_nn::rotary_emb::rope(x, cos, sin)?,
            (RopeLayout::Interleaved, false) => candle_nn::rotary_emb::rope_i(x, cos, sin)?,
            // Training: the fused kernel with its backward pass (the references are its oracle).
            (layout, true) => crate::train::kernels::rope::rope(x, cos, sin, x.dim(D::Minus1)?, layout)?,
        })
    }
}

/// Plain-ops rotation with pairs (i, i + d/2); differentiable.
pub fn rope_half_reference(x: &Tensor, cos: &Tensor, sin: &Tensor) -> candle_core::Result<Tensor> {
    let d = x.dim(D::Minus1)?;
    let cos = Tensor::cat(&[cos, cos], D::Minus1)?.to_dtype(x.dtype())?;
    let sin = Tensor::cat(&[sin, sin], D::Minus1)?.to_dtype(x.dtype())?;
    let x1 = x.narrow(D::Minus1, 0, d / 2)?;
    let x2 = x.narrow(D::Minus1, d / 2, d / 2)?;
    let rotated = Tensor::cat(&[&x2.neg()?, &x1], D::Minus1)?;
    x.broadcast_mul(&cos)? + rotated.broadcast_mul(&sin)?
}

/// Plain-ops rotation with pairs (2i, 2i + 1); differentiable.
pub fn rope_interleaved_reference(x: &Tensor, cos: &Tensor, sin: &Tensor) -> candle_core::Result<Tensor> {
    let (b, h, t, d) = x.dims4()?;
    let x = x.reshape((b, h, t, d / 2, 2))?;
    let x0 = x.narrow(D::Minus1, 0, 1)?;
    let x1 = x.narrow(D::Minus1, 1, 1)?;
    let cos = cos.reshape((t, d / 2, 1))?.to_dtype(x.dtype())?;
    let sin = sin.reshape((t, d / 2, 1))?.to_dtype(x.dtype())?;
    let y0 = (x0.broadcast_mul(&cos)? - x1.broadcast_mul(&sin)?)?;
    let y1 = (x0.broadcast_mul(&sin)? + x1.broadcast_mul(&cos)?)?;
    Tensor::cat(&[&y0, &y1], D::Minus1)?.reshape((b, h, t, d))
}

/// Convert Hugging Face (half) q/k projection rows to the interleaved layout GGUF llama
/// files use, or back. `w: (n_heads * head_dim, in)`.
pub fn permute_rows_for_interleaved(w: &Tensor, n_heads: usize) -> Result<Tensor> {
    let (rows, cols) = w.dims2()?;
    let hd = rows / n_heads;
    Ok(w.reshape((n_heads, 2, hd / 2, cols))?.transpose(1, 2)?.reshape((rows, cols))?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::config::RopeScaling;

    fn cfg(layout: RopeLayout, rotary_dim: usize) -> RopeConfig {
        RopeConfig { theta: 10000.0, rotary_dim, layout, scaling: RopeScaling::None }
    }

    #[test]
    fn fused_matches_reference() {
        let dev = Device::Cpu;
        let x = crate::util::randn(7, 0f32, 1.0, (1, 3, 7, 16), &dev).unwrap();
        for layout in [RopeLayout::Half, RopeLayout::Interleaved] {
            let rope = Rope::new(&cfg(layout, 16), 32, &dev).unwrap();
            let fast = rope.apply(&x, 5).unwrap();
            let cos = rope.cos.narrow(0, 5, 7).unwrap();
            let sin = rope.sin.narrow(0, 5, 7).unwrap();
            let slow = match layout {
                RopeLayout::Half => rope_half_reference(&x, &cos, &sin).unwrap(),
                RopeLayout::Interleaved => rope_interleaved_reference(&x, &cos, &sin).unwrap(),
            };
            let diff = (fast - slow).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
            assert!(diff < 1e-5, "{layout:?}: {diff}");
        }
    }

    #[test]
    fn interleaved_on_permuted_weights_equals_half() {
        // q = W x; rope_half(W x) must equal unpermute(rope_interleaved(P W x)).
        let dev = Device::Cpu;
        let (heads, hd, inp) = (2, 8, 5);
        let w = crate::util::randn(8, 0f32, 1.0, (heads * hd, inp), &dev).unwrap();
        let x = crate::util::randn(9, 0f32, 1.0, (3, inp), &dev).unwrap();
        let q_half = x.matmul(&w.t().unwrap()).unwrap().reshape((1, 3, heads, hd)).unwrap().transpose(1, 2).unwrap();
        let wp = permute_rows_for_interleaved(&w, heads).unwrap();
        let q_int = x.matmul(&wp.t().unwrap()).unwrap().reshape((1, 3, heads, hd)).unwrap().transpose(1, 2).unwrap();
        let a = Rope::new(&cfg(RopeLayout::Half, hd), 8, &dev).unwrap().apply(&q_half, 2).unwrap();
        let b = Rope::new(&cfg(RopeLayout::Interleaved, hd), 8, &dev).unwrap().apply(&q_int, 2).unwrap();
        // Attention scores are invariant to the within-head permutation: compare q·q.
        let sa = a.matmul(&a.t().unwrap()).unwrap();
        let sb = b.matmul(&b.t().unwrap()).unwrap();
        let diff = (sa - sb).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(diff < 1e-4, "{diff}");
    }

    #[test]
    fn partial_rotary_leaves_tail() {
        let dev = Device::Cpu;
        let x = crate::util::randn(10, 0f32, 1.0, (1, 2, 4, 16), &dev).unwrap();
        let rope = Rope::new(&cfg(RopeLayout::Half, 8), 16, &dev).unwrap();
        let y = rope.apply(&x, 3).unwrap();
        let tail_x = x.narrow(3, 8, 8).unwrap();
        let tail_y = y.narrow(3, 8, 8).unwrap();
        let diff = (tail_x - tail_y).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert_eq!(diff, 0.0);
    }

    #[test]
    fn llama3_scaling_bands() {
        let c = RopeConfig {
            theta: 500000.0,
            rotary_dim: 128,
            layout: RopeLayout::Half,
            scaling: RopeScaling::Llama3 { factor: 8.0, low_freq_factor: 1.0, high_freq_factor: 4.0, original_max: 8192 },
        };
        let (f, _) = inv_freqs(&c, 8192);
        let (b, _) = inv_freqs(&RopeConfig { scaling: RopeScaling::None, ..c.clone() }, 8192);
        assert_eq!(f[0], b[0]); // highest frequency untouched
        assert!((f[63] - b[63] / 8.0).abs() < 1e-12); // lowest divided by factor
    }
}
