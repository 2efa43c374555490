//! Grouped-query self-attention with rope, optional q/k norms, sliding windows and
//! logit soft-capping.

use anyhow::Result;
use candle_core::{DType, Device, Tensor};

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
    /// Project `x: (n, hidden)` into q `(n, nh·hd)`, k and v `(n, nkv·hd)` — one product
    /// each for every sequence of a batch.
    fn project(&self, x: &Tensor) -> Result<(Tensor, Tensor, Tensor)> {
        let (nh, nkv, hd) = (self.n_heads, self.n_kv_heads, self.head_dim);
        Ok(match &self.qkv {
            QkvProj::Separate { q, k, v } => (q.forward(x)?, k.forward(x)?, v.forward(x)?),
            QkvProj::Fused(w) => {
                let qkv = w.forward(x)?;
                (qkv.narrow(1, 0, nh * hd)?, qkv.narrow(1, nh * hd, nkv * hd)?, qkv.narrow(1, (nh + nkv) * hd, nkv * hd)?)
            }
        })
    }

    /// One sequence's new tokens `x: (s, hidden)` at positions `pos..pos+s`; appends to
    /// `cache` (when given) and returns `(s, hidden)`.
    pub fn forward(&self, x: &Tensor, pos: usize, rope: &Rope, layer: usize, cache: Option<&mut KvCache>) -> Result<Tensor> {
        let (q, k, v) = self.project(x)?;
        let out = self.attend(&q, &k, &v, pos, rope, layer, cache)?;
        self.o.forward(&out)
    }

    /// Several sequences in one pass: `x: (Σ s_i, hidden)`, sequence `i` being `lens[i]`
    /// rows at positions `pos[i]..` with its own cache. The q/k/v and output projections
    /// run once over all rows (a batched decode step reads each weight once, not once per
    /// sequence); only the attention itself is per sequence. Returns `(Σ s_i, hidden)`.
    pub fn forward_seqs(&self, x: &Tensor, lens: &[usize], pos: &[usize], caches: &mut [Option<&mut KvCache>], rope: &Rope, layer: usize) -> Result<Tensor> {
        if lens.len() == 1 {
            return self.forward(x, pos[0], rope, layer, caches[0].as_deref_mut());
        }
        let (q, k, v) = self.project(x)?;
        if caches.iter().all(|c| c.is_none()) && pos.iter().all(|&p| p == 0) && self.softcap.is_none() && self.sliding_window.is_none() {
            // Training / scoring: every sequence in one fused attention op (slicing per
            // sequence would cost a whole-batch pad and add per slice in the backward pass).
            let n = x.dims2()?.0;
            let (q, k, v) = self.heads(&q, &k, &v)?;
            let positions: Vec<u32> = lens.iter().flat_map(|&l| 0..l as u32).collect();
            let (q, k) = (rope.apply_positions(&q, &positions)?, rope.apply_positions(&k, &positions)?);
            let out = crate::train::kernels::attention::attention_segments(&q, &k, &v, self.scale, lens)?; // (1, nh, n, hd)
            return self.o.forward(&out.transpose(1, 2)?.reshape((n, self.n_heads * self.head_dim))?);
        }
        // Heads, norms and rope once for all rows, each row at its own sequence's position;
        // per sequence only the cache append and the attention itself.
        let (qh, kh, vh) = self.heads(&q, &k, &v)?;
        let positions: Vec<u32> = lens.iter().zip(pos).flat_map(|(&l, &p)| p as u32..(p + l) as u32).collect();
        let (qh, kh) = (rope.apply_positions(&qh, &positions)?, rope.apply_positions(&kh, &positions)?);
        let mut parts = Vec::with_capacity(lens.len());
        let mut off = 0;
        for (i, cache) in caches.iter_mut().enumerate() {
            let s = lens[i];
            let (qs, ks, vs) = (qh.narrow(2, off, s)?, kh.narrow(2, off, s)?, vh.narrow(2, off, s)?);
            parts.push(self.attend_heads(&qs.contiguous()?, &ks, &vs, layer, cache.as_deref_mut())?);
            off += s;
        }
        self.o.forward(&Tensor::cat(&parts, 0)?)
    }

    /// q `(s, nh·hd)`, k, v `(s, nkv·hd)` → `(1, heads, s, hd)` each, q/k norms applied.
    fn heads(&self, q: &Tensor, k: &Tensor, v: &Tensor) -> Result<(Tensor, Tensor, Tensor)> {
        let (s, _) = q.dims2()?;
        let (nh, nkv, hd) = (self.n_heads, self.n_kv_heads, self.head_dim);
        let heads = |t: &Tensor, n: usize| -> Result<Tensor> { Ok(t.reshape((1, s, n, hd))?.transpose(1, 2)?.contiguous()?) };
        let (mut q, mut k, v) = (heads(q, nh)?, heads(k, nkv)?, heads(v, nkv)?);
        if let Some(n) = &self.q_norm {
            q = n.forward(&q)?;
        }
        if let Some(n) = &self.k_norm {
            k = n.forward(&k)?;
        }
        Ok((q, k, v))
    }

    /// Attention of one sequence: q `(s, nh·hd)`, k and v `(s, nkv·hd)` of its new tokens
    /// → `(s, nh·hd)`, before the output projection.
    #[allow(clippy::too_many_arguments)]
    fn attend(&self, q: &Tensor, k: &Tensor, v: &Tensor, pos: usize, rope: &Rope, layer: usize, cache: Option<&mut KvCache>) -> Result<Tensor> {
        let (q, k, v) = self.heads(q, k, v)?;
        let q = rope.apply(&q, pos)?;
        let k = rope.apply(&k, pos)?;
        self.attend_heads(&q, &k, &v, layer, cache)
    }

    /// Attention of one sequence whose q `(1, nh, s, hd)` and k, v `(1, nkv, s, hd)` are
    /// normed and rotated: appends k, v to `cache` (when given) → `(s, nh·hd)`.
    fn attend_heads(&self, q: &Tensor, k: &Tensor, v: &Tensor, layer: usize, cache: Option<&mut KvCache>) -> Result<Tensor> {
        let s = q.dims4()?.2;
        let (nh, nkv, hd) = (self.n_heads, self.n_kv_heads, self.head_dim);
        let rep = nh / nkv;
        let (k, v) = match cache {
            Some(c) => c.append(layer, k, v)?,
            None => (k.clone(), v.clone()),
        };
        let t = k.dims()[2];
        if self.softcap.is_none() && self.sliding_window.is_none() {
            // Fused causal attention (with its backward pass for training): no mask and no
            // (heads × s × t) score tensor are materialised, which at a 512-token prefill
            // was a quarter of the time. The path below is its oracle, and serves
            // soft-capping and sliding windows.
            let out = crate::train::kernels::attention::attention(&q, &k, &v, self.scale)?; // (1, nh, s, hd)
            return Ok(out.transpose(1, 2)?.reshape((s, nh * hd))?);
        }

        // This path multiplies in f32: widen an f16 cache's history.
        let (k, v) = (k.to_dtype(DType::F32)?, v.to_dtype(DType::F32)?);
        // Fold the query heads that share a kv head into the row axis:
        // (1, nh, s, hd) -> (1, nkv, rep*s, hd), so no kv copy is needed for GQA.
        let q = (q * self.scale)?.reshape((1, nkv, rep * s, hd))?;
        let mut scores = q.matmul(&k.t()?)?; // (1, nkv, rep*s, t)
        if let Some(cap) = self.softcap {
            scores = ((scores / cap)?.tanh()? * cap)?;
        }
        if let Some(mask) = attention_mask(s, t - s, self.sliding_window, rep, q.device())? {
            scores = scores.broadcast_add(&mask)?;
        }
        let probs = if scores.track_op() {
            // softmax_last_dim has no backward pass; the composite softmax has.
            candle_nn::ops::softmax(&scores, candle_core::D::Minus1)?
        } else {
            candle_nn::ops::softmax_last_dim(&scores)?
        };
        let out = probs.matmul(&v.contiguous()?)?; // (1, nkv, rep*s, hd)
        Ok(out.reshape((1, nh, s, hd))?.transpose(1, 2)?.reshape((s, nh * hd))?)
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
