//! Grouped-query self-attention with rope, optional q/k norms, sliding windows and
//! logit soft-capping.

use anyhow::Result;
use candle_core::{Device, Tensor};

use super::kv_cache::KvCache;
use super::linear::Linear;
use super::norm::RmsNorm;
use super::rope::Rope;

/// q/k/v projections: separate, or one fused matrix (Phi-3) split after the product.
#[derive(Debug, Clone)]
pub enum QkvProj {
    Separate { q: Linear, k: Linear, v: Linear },
    Fused(Linear),
}

#[derive(Debug, Clone)]
pub struct Attention {
    pub qkv: QkvProj,
    pub o: Linear,
    pub q_norm: Option<RmsNorm>,
    pub k_norm: Option<RmsNorm>,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    pub scale: f64,
    pub softcap: Option<f64>,
    pub sliding_window: Option<usize>,
}

/// Additive mask `(rows, t)` for `s` queries at positions `pos..pos+s` over keys `0..t`,
/// each query row repeated `rep` times (grouped heads are folded into the row axis).
/// `None` when nothing is masked.
pub fn attention_mask(s: usize, pos: usize, window: Option<usize>, rep: usize, device: &Device) -> Result<Option<Tensor>> {
    let t = pos + s;
    let masked = |q: usize, k: usize| k > q || window.is_some_and(|w| q - k >= w);
    let any = (0..s).any(|i| (0..t).any(|k| masked(pos + i, k)));
    if !any {
        return Ok(None);
    }
    let mut m = Vec::with_capacity(rep * s * t);
    for _ in 0..rep {
        for i in 0..s {
            m.extend((0..t).map(|k| if masked(pos + i, k) { f32::NEG_INFINITY } else { 0.0 }));
        }
    }
    Ok(Some(Tensor::from_vec(m, (rep * s, t), device)?))
}

impl Attention {
    /// Project `x: (s, hidden)` into q `(1, n_heads, s, hd)` and k, v `(1, n_kv, s, hd)`.
    fn project(&self, x: &Tensor) -> Result<(Tensor, Tensor, Tensor)> {
        let (s, _) = x.dims2()?;
        let (nh, nkv, hd) = (self.n_heads, self.n_kv_heads, self.head_dim);
        let (q, k, v) = match &self.qkv {
            QkvProj::Separate { q, k, v } => (q.forward(x)?, k.forward(x)?, v.forward(x)?),
            QkvProj::Fused(w) => {
                let qkv = w.forward(x)?;
                (qkv.narrow(1, 0, nh * hd)?, qkv.narrow(1, nh * hd, nkv * hd)?, qkv.narrow(1, (nh + nkv) * hd, nkv * hd)?)
            }
        };
        let heads = |t: Tensor, n: usize| -> Result<Tensor> { Ok(t.reshape((1, s, n, hd))?.transpose(1, 2)?.contiguous()?) };
        Ok((heads(q, nh)?, heads(k, nkv)?, heads(v, nkv)?))
    }

    /// One sequence's new tokens `x: (s, hidden)` at positions `pos..pos+s`; appends to
    /// `cache` (when given) and returns `(s, hidden)`.
    pub fn forward(&self, x: &Tensor, pos: usize, rope: &Rope, layer: usize, cache: Option<&mut KvCache>) -> Result<Tensor> {
        let (s, _) = x.dims2()?;
        let (nh, nkv, hd) = (self.n_heads, self.n_kv_heads, self.head_dim);
        let rep = nh / nkv;
        let (mut q, mut k, v) = self.project(x)?;
        if let Some(n) = &self.q_norm {
            q = n.forward(&q)?;
        }
        if let Some(n) = &self.k_norm {
            k = n.forward(&k)?;
        }
        let q = rope.apply(&q, pos)?;
        let k = rope.apply(&k, pos)?;
        let (k, v) = match cache {
            Some(c) => c.append(layer, &k, &v)?,
            None => (k, v),
        };
        let t = k.dims()[2];
        if self.softcap.is_none() && self.sliding_window.is_none() {
            // Fused causal attention (with its backward pass for training): no mask and no
            // (heads × s × t) score tensor are materialised, which at a 512-token prefill
            // was a quarter of the time. The path below is its oracle, and serves
            // soft-capping and sliding windows.
            let out = crate::train::kernels::attention::attention(&q, &k, &v, self.scale)?; // (1, nh, s, hd)
            let out = out.transpose(1, 2)?.reshape((s, nh * hd))?;
            return self.o.forward(&out);
        }

        // Fold the query heads that share a kv head into the row axis:
        // (1, nh, s, hd) -> (1, nkv, rep*s, hd), so no kv copy is needed for GQA.
        let q = (q * self.scale)?.reshape((1, nkv, rep * s, hd))?;
        let mut scores = q.matmul(&k.t()?)?; // (1, nkv, rep*s, t)
        if let Some(cap) = self.softcap {
            scores = ((scores / cap)?.tanh()? * cap)?;
        }
        if let Some(mask) = attention_mask(s, t - s, self.sliding_window, rep, x.device())? {
            scores = scores.broadcast_add(&mask)?;
        }
        let probs = if scores.track_op() {
            // softmax_last_dim has no backward pass; the composite softmax has.
            candle_nn::ops::softmax(&scores, candle_core::D::Minus1)?
        } else {
            candle_nn::ops::softmax_last_dim(&scores)?
        };
        let out = probs.matmul(&v.contiguous()?)?; // (1, nkv, rep*s, hd)
        let out = out.reshape((1, nh, s, hd))?.transpose(1, 2)?.reshape((s, nh * hd))?;
        self.o.forward(&out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mask_causal_and_window() {
        let m = attention_mask(3, 2, Some(2), 1, &Device::Cpu).unwrap().unwrap();
        let m: Vec<Vec<f32>> = m.to_vec2().unwrap();
        // query at pos 2 sees keys 1,2 (window 2); pos 3 sees 2,3; pos 4 sees 3,4.
        let ok = |r: &Vec<f32>| r.iter().map(|v| v.is_finite()).collect::<Vec<_>>();
        assert_eq!(ok(&m[0]), [false, true, true, false, false]);
        assert_eq!(ok(&m[1]), [false, false, true, true, false]);
        assert_eq!(ok(&m[2]), [false, false, false, true, true]);
        assert!(attention_mask(1, 7, None, 4, &Device::Cpu).unwrap().is_none());
    }
}
