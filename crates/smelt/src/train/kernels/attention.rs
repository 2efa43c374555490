//! Causal grouped-query attention, forward and backward, as one op per call:
//! `q: (b, h, s, d)`, `k, v: (b, kv, t, d)` → `o: (b, h, s, d)`, queries at positions
//! `t − s .. t`, each seeing keys up to its own position.
//!
//! Forward per head: `P = softmax(scale · Q Kᵀ + mask)`, `O = P V`. Nothing but the output
//! is kept: the backward pass recomputes `P` (as flash attention does), then
//! `dV = Pᵀ dO`, `dP = dO Vᵀ`, `dS = P ⊙ (dP − rowsum(dO ⊙ O))`, `dQ = scale · dS K`,
//! `dK = scale · dSᵀ Q`, summing `dK`, `dV` over the query heads that share a kv head.
//! Work is split per (batch, kv head), so results do not depend on the thread count.

use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::f32_data;
use super::gemm::{matmul, Mat};
use crate::train::simd::{exp, multiversion};

multiversion! {
    /// Softmax of `row[..valid]` in place; `row[valid..]` becomes 0.
    fn softmax_row(row: &mut [f32], valid: usize) {
        let (live, dead) = row.split_at_mut(valid);
        let m = live.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
        let mut s = 0f32;
        for v in live.iter_mut() {
            *v = exp(*v - m);
            s += *v;
        }
        let inv = 1.0 / s;
        for v in live.iter_mut() {
            *v *= inv;
        }
        dead.fill(0.0);
    }
}

multiversion! {
    /// dS = P ⊙ (dP − δ) for one row.
    fn dsoftmax_row(p: &[f32], dp: &mut [f32], delta: f32) {
        for i in 0..p.len() {
            dp[i] = p[i] * (dp[i] - delta);
        }
    }
}

struct Dims {
    h: usize,
    kv: usize,
    s: usize,
    t: usize,
    d: usize,
}

impl Dims {
    fn of(q: &Layout, k: &Layout, v: &Layout) -> Result<Dims> {
        let (b, h, s, d) = q.shape().dims4()?;
        let (kb, kv, t, kd) = k.shape().dims4()?;
        if k.shape() != v.shape() || kb != b || kd != d || kv == 0 || h % kv != 0 || t < s {
            candle_core::bail!("attention: q {:?}, k {:?}, v {:?}", q.dims(), k.dims(), v.dims());
        }
        Ok(Dims { h, kv, s, t, d })
    }
}

struct AttentionOp {
    scale: f32,
}

/// Query rows per block of the forward pass.
const QB: usize = 64;

impl AttentionOp {
    /// `P` for query head `qh` (s × d) against `kg` (t × d), into `p` (s × t).
    fn probs(&self, qh: &[f32], kg: &[f32], p: &mut [f32], dm: &Dims) {
        let (s, t, d) = (dm.s, dm.t, dm.d);
        matmul(p, Mat::rows(qh, s, d), Mat::rows(kg, t, d).t(), self.scale, false);
        let pos = t - s;
        for (i, row) in p.chunks_mut(t).enumerate() {
            softmax_row(row, pos + i + 1);
        }
    }
}

impl CustomOp3 for AttentionOp {
    fn name(&self) -> &'static str {
        "fused-attention"
    }

    fn cpu_fwd(&self, qs: &CpuStorage, ql: &Layout, ks: &CpuStorage, kl: &Layout, vs: &CpuStorage, vl: &Layout) -> Result<(CpuStorage, Shape)> {
        let dm = Dims::of(ql, kl, vl)?;
        let q = f32_data(qs, ql, "attention")?;
        let (k, v) = (HeadRows::of(ks, kl)?, HeadRows::of(vs, vl)?);
        let (s, t, d, rep) = (dm.s, dm.t, dm.d, dm.h / dm.kv);
        let mut o = vec![0f32; q.len()];
        // One task per (batch, kv head): its `rep` query heads are contiguous in q and o.
        o.par_chunks_mut(rep * s * d).enumerate().for_each(|(gi, og)| {
            let kg = k.head(gi, dm.kv, t * d);
            let vg = v.head(gi, dm.kv, t * d);
            // Queries in blocks of QB: a block only needs the keys up to its last position,
            // so a prefill computes the causal half of the scores, not all of them.
            let pos = t - s;
            let mut p = vec![0f32; s.min(QB) * t];
            for r in 0..rep {
                let qh = &q[(gi * rep + r) * s * d..][..s * d];
                let oh = &mut og[r * s * d..(r + 1) * s * d];
                for i0 in (0..s).step_by(QB) {
                    let (bq, tk) = ((s - i0).min(QB), pos + (i0 + QB).min(s));
                    let pb = &mut p[..bq * tk];
                    matmul(pb, Mat::rows(&qh[i0 * d..(i0 + bq) * d], bq, d), Mat::rows(&kg[..tk * d], tk, d).t(), self.scale, false);
                    for (i, row) in pb.chunks_mut(tk).enumerate() {
                        softmax_row(row, pos + i0 + i + 1);
                    }
                    matmul(&mut oh[i0 * d..(i0 + bq) * d], Mat::rows(pb, bq, tk), Mat::rows(&vg[..tk * d], tk, d), 1.0, false);
                }
            }
        });
        Ok((CpuStorage::F32(o), ql.shape().clone()))
    }

    #[allow(clippy::type_complexity)]
    fn bwd(&self, q: &Tensor, k: &Tensor, v: &Tensor, o: &Tensor, go: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let dm = Dims::of(q.layout(), k.layout(), v.layout())?;
        let (s, t, d, rep) = (dm.s, dm.t, dm.d, dm.h / dm.kv);
        let (qv, kv, vv) = (super::tensor_vec(q)?, super::tensor_vec(k)?, super::tensor_vec(v)?);
        let (ov, gv) = (super::tensor_vec(o)?, super::tensor_vec(go)?);
        let mut dq = vec![0f32; qv.len()];
        let mut dk = vec![0f32; kv.len()];
        let mut dvv = vec![0f32; vv.len()];
        dq.par_chunks_mut(rep * s * d)
            .zip(dk.par_chunks_mut(t * d).zip(dvv.par_chunks_mut(t * d)))
            .enumerate()
            .for_each(|(gi, (dqg, (dkg, dvg)))| {
                let kg = &kv[gi * t * d..(gi + 1) * t * d];
                let vg = &vv[gi * t * d..(gi + 1) * t * d];
                let mut p = vec![0f32; s * t];
                let mut dp = vec![0f32; s * t];
                for r in 0..rep {
                    let off = (gi * rep + r) * s * d;
                    let (qh, oh, gh) = (&qv[off..off + s * d], &ov[off..off + s * d], &gv[off..off + s * d]);
                    self.probs(qh, kg, &mut p, &dm);
                    let first = r == 0;
                    matmul(dvg, Mat::rows(&p, s, t).t(), Mat::rows(gh, s, d), 1.0, !first);
                    matmul(&mut dp, Mat::rows(gh, s, d), Mat::rows(vg, t, d).t(), 1.0, false);
                    for i in 0..s {
                        let delta: f32 = (0..d).map(|c| gh[i * d + c] * oh[i * d + c]).sum();
                        dsoftmax_row(&p[i * t..(i + 1) * t], &mut dp[i * t..(i + 1) * t], delta);
                    }
                    matmul(&mut dqg[r * s * d..(r + 1) * s * d], Mat::rows(&dp, s, t), Mat::rows(kg, t, d), self.scale, false);
                    matmul(dkg, Mat::rows(&dp, s, t).t(), Mat::rows(qh, s, d), self.scale, !first);
                }
            });
        let mk = |data: Vec<f32>, like: &Tensor| Tensor::from_vec(data, like.shape(), like.device()).map(Some);
        Ok((mk(dq, q)?, mk(dk, k)?, mk(dvv, v)?))
    }
}

/// `k` or `v` data `(b, kv, t, d)` whose rows are contiguous within each head, heads and
/// batches at any stride: a view into a longer KV cache is read in place, not copied.
struct HeadRows<'a> {
    data: &'a [f32],
    start: usize,
    batch_stride: usize,
    head_stride: usize,
}

impl<'a> HeadRows<'a> {
    fn of(st: &'a CpuStorage, l: &Layout) -> Result<HeadRows<'a>> {
        let CpuStorage::F32(data) = st else { candle_core::bail!("attention: f32 only") };
        let st = l.stride();
        if !head_rows_contiguous(l) {
            candle_core::bail!("attention: k/v rows must be contiguous within a head (strides {st:?})");
        }
        Ok(HeadRows { data, start: l.start_offset(), batch_stride: st[0], head_stride: st[1] })
    }

    /// The `len` values of head `gi` (batch `gi / kv`, head `gi % kv`).
    fn head(&self, gi: usize, kv: usize, len: usize) -> &'a [f32] {
        let at = self.start + gi / kv * self.batch_stride + gi % kv * self.head_stride;
        &self.data[at..at + len]
    }
}

/// Whether a `(b, kv, t, d)` layout has each head's `t × d` values contiguous.
fn head_rows_contiguous(l: &Layout) -> bool {
    let (st, dims) = (l.stride(), l.dims());
    dims.len() == 4 && (st[3] == 1 || dims[3] == 1) && (st[2] == dims[3] || dims[2] == 1)
}

/// Differentiable causal attention (see the module docs). `q` is made contiguous; `k` and
/// `v` only when their rows are not contiguous within a head or gradients flow through
/// them (a KV-cache view at inference is read in place).
pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor, scale: f64) -> Result<Tensor> {
    let in_place = |x: &Tensor| -> Result<Tensor> {
        if !x.track_op() && head_rows_contiguous(x.layout()) {
            Ok(x.clone())
        } else {
            x.contiguous()
        }
    };
    let (q, k, v) = (q.contiguous()?, in_place(k)?, in_place(v)?);
    dims_check(&q, &k, &v)?;
    q.apply_op3(&k, &v, AttentionOp { scale: scale as f32 })
}

fn dims_check(q: &Tensor, k: &Tensor, v: &Tensor) -> Result<()> {
    Dims::of(q.layout(), k.layout(), v.layout()).map(|_| ())
}

/// The plain candle ops for the same function: the oracle.
pub fn attention_reference(q: &Tensor, k: &Tensor, v: &Tensor, scale: f64) -> Result<Tensor> {
    let (b, h, s, d) = q.dims4()?;
    let (_, kv, t, _) = k.dims4()?;
    let rep = h / kv;
    let q = (q * scale)?.reshape((b, kv, rep * s, d))?;
    let scores = q.matmul(&k.t()?)?; // (b, kv, rep*s, t)
    let pos = t - s;
    let mut m = Vec::with_capacity(rep * s * t);
    for _ in 0..rep {
        for i in 0..s {
            m.extend((0..t).map(|j| if j > pos + i { f32::NEG_INFINITY } else { 0.0 }));
        }
    }
    let mask = Tensor::from_vec(m, (rep * s, t), q.device())?;
    // (candle_nn's softmax_last_dim has no backward pass; the composite softmax does.)
    let probs = candle_nn::ops::softmax(&scores.broadcast_add(&mask)?, candle_core::D::Minus1)?;
    probs.matmul(&v.contiguous()?)?.reshape((b, h, s, d))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    #[test]
    fn matches_reference_values_and_grads() {
        let dev = Device::Cpu;
        for (h, kvh, s, t) in [(4, 2, 7, 7), (3, 3, 5, 9), (2, 1, 1, 6)] {
            let q = Var::from_tensor(&Tensor::randn(0f32, 1.0, (2, h, s, 8), &dev).unwrap()).unwrap();
            let k = Var::from_tensor(&Tensor::randn(0f32, 1.0, (2, kvh, t, 8), &dev).unwrap()).unwrap();
            let v = Var::from_tensor(&Tensor::randn(0f32, 1.0, (2, kvh, t, 8), &dev).unwrap()).unwrap();
            let up = Tensor::randn(0f32, 1.0, (2, h, s, 8), &dev).unwrap();
            let a = attention(&q, &k, &v, 0.35).unwrap();
            let b = attention_reference(&q, &k, &v, 0.35).unwrap();
            crate::train::kernels::assert_close(&a, &b, 1e-5);
            let ga = (a * &up).unwrap().sum_all().unwrap().backward().unwrap();
            let gb = (b * &up).unwrap().sum_all().unwrap().backward().unwrap();
            for x in [&q, &k, &v] {
                crate::train::kernels::assert_close(ga.get(x).unwrap(), gb.get(x).unwrap(), 1e-5);
            }
        }
    }
}
