//! Causal grouped-query attention, forward and backward, as one op per call:
//! `q: (b, h, s, d)`, `k, v: (b, kv, t, d)` → `o: (b, h, s, d)`, queries at positions
//! `t − s .. t`, each seeing keys up to its own position.
//!
//! Forward per head: `P = softmax(scale · Q Kᵀ + mask)`, `O = P V`. Nothing but the output
//! is kept: the backward pass recomputes `P` (as flash attention does), then
//! `dV = Pᵀ dO`, `dP = dO Vᵀ`, `dS = P ⊙ (dP − rowsum(dO ⊙ O))`, `dQ = scale · dS K`,
//! `dK = scale · dSᵀ Q`, summing `dK`, `dV` over the query heads that share a kv head.
//! Work is split per (batch, kv head), so results do not depend on the thread count.
//!
//! [`attention_segments`]: several independent sequences concatenated along the row axis
//! (a packed training micro-batch), each causal within itself — one op for all of them,
//! so no per-sequence slicing (whose backward pass pads every slice to the whole batch).

use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::f32_data;
use super::gemm::{matmul, Mat};
use crate::train::simd::{self, exp, multiversion};

multiversion! {
    /// Softmax of `row[..valid]` in place; `row[valid..]` becomes 0.
    ///
    /// A score more than [`FLUSH`] below the row's largest gets probability 0, not
    /// `e^(x - m)`: those would become subnormal floats once divided by the sum, and every
    /// multiply that touches a subnormal costs a microcode assist on x86. With peaked
    /// attention at depth, that made `P·V` several times slower than its FMAs.
    fn softmax_row(row: &mut [f32], valid: usize) {
        let (live, dead) = row.split_at_mut(valid);
        let m = simd::max(live);
        for v in live.iter_mut() {
            let z = *v - m;
            *v = if z < -FLUSH { 0.0 } else { exp(z) };
        }
        let inv = 1.0 / simd::sum(live);
        for v in live.iter_mut() {
            *v *= inv;
        }
        dead.fill(0.0);
    }
}

/// Scores this far below a row's largest get probability 0 in [`softmax_row`]:
/// `e^-64 ≈ 1.6e-28`, negligible beside the largest term (1) yet far from f32's subnormals
/// (below 1.2e-38) even after division by a sum over a million keys.
const FLUSH: f32 = 64.0;

/// `p[j] = scale · q · k_j` for the `t` rows `k_j` of `k` (each `q.len()` long).
fn scores_row(q: &[f32], k: &[f32], scale: f32, p: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if q.len() % 16 == 0 && crate::train::simd::has_avx512() {
        // SAFETY: the CPU has AVX-512F; every row of k is q.len() long.
        return unsafe { scores_row_avx512(q, k, scale, p) };
    }
    let d = q.len();
    for (pj, kj) in p.iter_mut().zip(k.chunks_exact(d)) {
        *pj = scale * q.iter().zip(kj).map(|(a, b)| a * b).sum::<f32>();
    }
}

/// [`scores_row`] on zmm registers: one FMA per 16 values, one reduction per key.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn scores_row_avx512(q: &[f32], k: &[f32], scale: f32, p: &mut [f32]) {
    use std::arch::x86_64::*;
    let d = q.len();
    for (pj, kj) in p.iter_mut().zip(k.chunks_exact(d)) {
        let mut acc = _mm512_setzero_ps();
        for c in (0..d).step_by(16) {
            acc = _mm512_fmadd_ps(_mm512_loadu_ps(q.as_ptr().add(c)), _mm512_loadu_ps(kj.as_ptr().add(c)), acc);
        }
        *pj = scale * _mm512_reduce_add_ps(acc);
    }
}

/// `o += Σ_j p[j] · v_j` over the rows `v_j` of `v` (each `o.len()` long).
fn weighted_rows_add(p: &[f32], v: &[f32], o: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if o.len() % 16 == 0 && crate::train::simd::has_avx512() {
        // SAFETY: the CPU has AVX-512F; `v` holds `p.len()` rows of `o.len()` values.
        return unsafe { weighted_rows_add_avx512(p, v, o) };
    }
    weighted_rows_add_plain(p, v, o)
}

/// [`weighted_rows_add`] with the output held in registers across all rows of `v`, 64
/// columns at a time, and two rows per step into separate sums (the plain loop loads and
/// stores `o` once per row, which made it the costliest part of a decode step at depth).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn weighted_rows_add_avx512(p: &[f32], v: &[f32], o: &mut [f32]) {
    let d = o.len();
    assert!(v.len() >= p.len() * d && d % 16 == 0);
    let mut c = 0;
    while c + 64 <= d {
        weighted_block::<4>(p, v, d, c, o);
        c += 64;
    }
    while c < d {
        weighted_block::<1>(p, v, d, c, o);
        c += 16;
    }
}

/// Columns `c..c + 16·W` of [`weighted_rows_add_avx512`]: `2·W` accumulators, a constant
/// count so they stay in registers.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn weighted_block<const W: usize>(p: &[f32], v: &[f32], d: usize, c: usize, o: &mut [f32]) {
    use std::arch::x86_64::*;
    let (n, vp) = (p.len(), v.as_ptr().add(c));
    let mut a = [_mm512_setzero_ps(); W];
    let mut b = [_mm512_setzero_ps(); W];
    let mut j = 0;
    while j + 2 <= n {
        let (x, y) = (_mm512_set1_ps(*p.get_unchecked(j)), _mm512_set1_ps(*p.get_unchecked(j + 1)));
        let (r0, r1) = (vp.add(j * d), vp.add((j + 1) * d));
        for u in 0..W {
            a[u] = _mm512_fmadd_ps(x, _mm512_loadu_ps(r0.add(16 * u)), a[u]);
            b[u] = _mm512_fmadd_ps(y, _mm512_loadu_ps(r1.add(16 * u)), b[u]);
        }
        j += 2;
    }
    if j < n {
        let x = _mm512_set1_ps(p[j]);
        for u in 0..W {
            a[u] = _mm512_fmadd_ps(x, _mm512_loadu_ps(vp.add(j * d + 16 * u)), a[u]);
        }
    }
    for u in 0..W {
        let at = o.as_mut_ptr().add(c + 16 * u);
        _mm512_storeu_ps(at, _mm512_add_ps(_mm512_loadu_ps(at), _mm512_add_ps(a[u], b[u])));
    }
}

multiversion! {
    /// `o += Σ_j p[j] · v_j`: the portable loop, and the oracle of the AVX-512 one.
    fn weighted_rows_add_plain(p: &[f32], v: &[f32], o: &mut [f32]) {
        let d = o.len();
        for (&pj, vj) in p.iter().zip(v.chunks_exact(d)) {
            for i in 0..d {
                o[i] += pj * vj[i];
            }
        }
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
    /// Row lengths of independent sequences (`s == t`); empty: one sequence whose queries
    /// are the last `s` of `t` positions.
    segments: Vec<usize>,
}

/// One causal sequence of the op: query rows `qa..qa + len` at positions `pos..pos + len`
/// against key rows `ka..ka + pos + len`.
#[derive(Clone, Copy)]
struct Seg {
    qa: usize,
    len: usize,
    ka: usize,
    pos: usize,
}

/// Query rows per block of the forward pass.
const QB: usize = 64;

impl AttentionOp {
    fn segs(&self, dm: &Dims) -> Result<Vec<Seg>> {
        if self.segments.is_empty() {
            return Ok(vec![Seg { qa: 0, len: dm.s, ka: 0, pos: dm.t - dm.s }]);
        }
        if self.segments.iter().sum::<usize>() != dm.s || dm.s != dm.t {
            candle_core::bail!("attention: segments {:?} for {} queries and {} keys", self.segments, dm.s, dm.t);
        }
        let mut at = 0;
        Ok(self
            .segments
            .iter()
            .map(|&len| {
                let g = Seg { qa: at, len, ka: at, pos: 0 };
                at += len;
                g
            })
            .collect())
    }

    /// One (batch, kv head) task over f32 keys and values (f16 ones widened first): the
    /// group's `rep` query heads into `og`.
    #[allow(clippy::too_many_arguments)]
    fn task_f32(&self, q: &[f32], k: &HeadRows, v: &HeadRows, dm: &Dims, segs: &[Seg], gi: usize, og: &mut [f32]) {
        let (s, t, d, rep) = (dm.s, dm.t, dm.d, dm.h / dm.kv);
        with_f32_heads(k, v, gi, dm.kv, t * d, |kg, vg| {
            // Queries in blocks of QB: a block only needs the keys up to its last position,
            // so a prefill computes the causal half of the scores, not all of them.
            let mut p = vec![0f32; s.min(QB) * t];
            for r in 0..rep {
                let qh = &q[(gi * rep + r) * s * d..][..s * d];
                let oh = &mut og[r * s * d..(r + 1) * s * d];
                for g in segs {
                    let (kgs, vgs) = (&kg[g.ka * d..], &vg[g.ka * d..]);
                    for i0 in (0..g.len).step_by(QB) {
                        let (bq, tk) = ((g.len - i0).min(QB), g.pos + (i0 + QB).min(g.len));
                        let pb = &mut p[..bq * tk];
                        let qa = g.qa + i0;
                        matmul(pb, Mat::rows(&qh[qa * d..(qa + bq) * d], bq, d), Mat::rows(&kgs[..tk * d], tk, d).t(), self.scale, false);
                        for (i, row) in pb.chunks_mut(tk).enumerate() {
                            softmax_row(row, g.pos + i0 + i + 1);
                        }
                        matmul(&mut oh[qa * d..(qa + bq) * d], Mat::rows(pb, bq, tk), Mat::rows(&vgs[..tk * d], tk, d), 1.0, false);
                    }
                }
            }
        })
    }

    /// The forward pass into `o` (`q`'s shape): one task per (batch, kv head), whose `rep`
    /// query heads are contiguous in `q` and `o`.
    fn run_groups(&self, q: &[f32], k: &HeadRows, v: &HeadRows, dm: &Dims, segs: &[Seg], o: &mut [f32]) {
        let (s, t, d, rep) = (dm.s, dm.t, dm.d, dm.h / dm.kv);
        let task = |(gi, og): (usize, &mut [f32])| {
            if s == 1 && self.segments.is_empty() {
                let qg = &q[gi * rep * d..(gi + 1) * rep * d];
                if let (Some(kg), Some(vg)) = (k.f16_head(gi, dm.kv, t * d), v.f16_head(gi, dm.kv, t * d)) {
                    return decode_f16(qg, kg, vg, d, self.scale, og);
                }
                if let (Some(kg), Some(vg)) = (k.f32_head(gi, dm.kv, t * d), v.f32_head(gi, dm.kv, t * d)) {
                    return decode_f32(qg, kg, vg, d, self.scale, og);
                }
            }
            self.task_f32(q, k, v, dm, segs, gi, og)
        };
        // A decode step over a short cache is a few microseconds of work per head: not
        // worth handing to the other threads.
        if s == 1 && self.segments.is_empty() && dm.h * t * d < 1 << 18 {
            o.chunks_mut(rep * s * d).enumerate().for_each(task);
        } else {
            o.par_chunks_mut(rep * s * d).enumerate().for_each(task);
        }
    }

    /// `P` for the rows of query head `qh` (s × d) in segment `g` against the head's keys
    /// `kg` (t × d), into `p` (len × (pos + len)).
    fn probs(&self, qh: &[f32], kg: &[f32], p: &mut [f32], g: Seg, d: usize) {
        let tk = g.pos + g.len;
        let p = &mut p[..g.len * tk];
        matmul(p, Mat::rows(&qh[g.qa * d..(g.qa + g.len) * d], g.len, d), Mat::rows(&kg[g.ka * d..(g.ka + tk) * d], tk, d).t(), self.scale, false);
        for (i, row) in p.chunks_mut(tk).enumerate() {
            softmax_row(row, g.pos + i + 1);
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
        let segs = self.segs(&dm)?;
        let mut o = vec![0f32; q.len()];
        self.run_groups(q, &k, &v, &dm, &segs, &mut o);
        Ok((CpuStorage::F32(o), ql.shape().clone()))
    }

    #[allow(clippy::type_complexity)]
    fn bwd(&self, q: &Tensor, k: &Tensor, v: &Tensor, o: &Tensor, go: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let dm = Dims::of(q.layout(), k.layout(), v.layout())?;
        let (s, t, d, rep) = (dm.s, dm.t, dm.d, dm.h / dm.kv);
        let (qv, kv, vv) = (super::tensor_vec(q)?, super::tensor_vec(k)?, super::tensor_vec(v)?);
        let (ov, gv) = (super::tensor_vec(o)?, super::tensor_vec(go)?);
        let segs = self.segs(&dm)?;
        let pmax = segs.iter().map(|g| g.len * (g.pos + g.len)).max().unwrap_or(0);
        let mut dq = vec![0f32; qv.len()];
        let mut dk = vec![0f32; kv.len()];
        let mut dvv = vec![0f32; vv.len()];
        dq.par_chunks_mut(rep * s * d)
            .zip(dk.par_chunks_mut(t * d).zip(dvv.par_chunks_mut(t * d)))
            .enumerate()
            .for_each(|(gi, (dqg, (dkg, dvg)))| {
                let kg = &kv[gi * t * d..(gi + 1) * t * d];
                let vg = &vv[gi * t * d..(gi + 1) * t * d];
                let mut p = vec![0f32; pmax];
                let mut dp = vec![0f32; pmax];
                for r in 0..rep {
                    let off = (gi * rep + r) * s * d;
                    let (qh, oh, gh) = (&qv[off..off + s * d], &ov[off..off + s * d], &gv[off..off + s * d]);
                    let first = r == 0;
                    for &g in &segs {
                        let (len, tk) = (g.len, g.pos + g.len);
                        let (q0, k0) = (g.qa * d, g.ka * d);
                        self.probs(qh, kg, &mut p, g, d);
                        let (p, dp) = (&p[..len * tk], &mut dp[..len * tk]);
                        let (qs, os, gs) = (&qh[q0..q0 + len * d], &oh[q0..q0 + len * d], &gh[q0..q0 + len * d]);
                        let (ks, vs) = (&kg[k0..k0 + tk * d], &vg[k0..k0 + tk * d]);
                        matmul(&mut dvg[k0..k0 + tk * d], Mat::rows(p, len, tk).t(), Mat::rows(gs, len, d), 1.0, !first);
                        matmul(dp, Mat::rows(gs, len, d), Mat::rows(vs, tk, d).t(), 1.0, false);
                        for i in 0..len {
                            let delta: f32 = (0..d).map(|c| gs[i * d + c] * os[i * d + c]).sum();
                            dsoftmax_row(&p[i * tk..(i + 1) * tk], &mut dp[i * tk..(i + 1) * tk], delta);
                        }
                        let dqh = &mut dqg[r * s * d + q0..r * s * d + q0 + len * d];
                        matmul(dqh, Mat::rows(dp, len, tk), Mat::rows(ks, tk, d), self.scale, false);
                        matmul(&mut dkg[k0..k0 + tk * d], Mat::rows(dp, len, tk).t(), Mat::rows(qs, len, d), self.scale, !first);
                    }
                }
            });
        let mk = |data: Vec<f32>, like: &Tensor| Tensor::from_vec(data, like.shape(), like.device()).map(Some);
        Ok((mk(dq, q)?, mk(dk, k)?, mk(dvv, v)?))
    }
}

/// `k` or `v` data `(b, kv, t, d)` whose rows are contiguous within each head, heads and
/// batches at any stride: a view into a longer KV cache is read in place, not copied.
/// f16 data (an inference KV cache) is widened one head at a time by [`with_f32_heads`].
struct HeadRows<'a> {
    data: KvData<'a>,
    start: usize,
    batch_stride: usize,
    head_stride: usize,
}

#[derive(Clone, Copy)]
enum KvData<'a> {
    F32(&'a [f32]),
    F16(&'a [half::f16]),
}

impl<'a> HeadRows<'a> {
    fn of(st: &'a CpuStorage, l: &Layout) -> Result<HeadRows<'a>> {
        let data = match st {
            CpuStorage::F32(d) => KvData::F32(d),
            CpuStorage::F16(d) => KvData::F16(d),
            _ => candle_core::bail!("attention: k/v must be f32 or f16, got {:?}", candle_core::backend::BackendStorage::dtype(st)),
        };
        let st = l.stride();
        if !head_rows_contiguous(l) {
            candle_core::bail!("attention: k/v rows must be contiguous within a head (strides {st:?})");
        }
        Ok(HeadRows { data, start: l.start_offset(), batch_stride: st[0], head_stride: st[1] })
    }

    /// Where the `len` values of head `gi` (batch `gi / kv`, head `gi % kv`) start.
    fn at(&self, gi: usize, kv: usize) -> usize {
        self.start + gi / kv * self.batch_stride + gi % kv * self.head_stride
    }

    /// The `len` f16 values of head `gi`, when the data is f16.
    fn f16_head(&self, gi: usize, kv: usize, len: usize) -> Option<&'a [half::f16]> {
        let at = self.at(gi, kv);
        match self.data {
            KvData::F16(d) => Some(&d[at..at + len]),
            KvData::F32(_) => None,
        }
    }

    /// The `len` f32 values of head `gi`, when the data is f32.
    fn f32_head(&self, gi: usize, kv: usize, len: usize) -> Option<&'a [f32]> {
        let at = self.at(gi, kv);
        match self.data {
            KvData::F32(d) => Some(&d[at..at + len]),
            KvData::F16(_) => None,
        }
    }

    /// The `len` values of head `gi` as f32: borrowed, or widened into `buf`.
    fn head<'s>(&'s self, gi: usize, kv: usize, len: usize, buf: &'s mut Vec<f32>) -> &'s [f32] {
        let at = self.at(gi, kv);
        match self.data {
            KvData::F32(d) => &d[at..at + len],
            KvData::F16(d) => {
                if buf.len() < len {
                    buf.resize(len, 0.0);
                }
                simd::widen_f16(&d[at..at + len], &mut buf[..len]);
                &buf[..len]
            }
        }
    }
}

/// f32 values widened at a time by [`decode_f16`]: 16 KiB, which stays in L1.
const WIDE: usize = 4096;

/// A decode step's attention for one kv group over an f16 cache: queries `qg` (`rep × d`),
/// keys and values `kg`, `vg` (`t × d`) → `og` (`rep × d`). Keys and values are widened a
/// chunk at a time into an L1-resident buffer, each chunk serving all `rep` query heads, so
/// the cache is read once at 2 bytes a value, and nothing is allocated but the scores.
fn decode_f16(qg: &[f32], kg: &[half::f16], vg: &[half::f16], d: usize, scale: f32, og: &mut [f32]) {
    let (rep, t) = (qg.len() / d, kg.len() / d);
    let ch = (WIDE / d).max(1);
    let mut stack = [0f32; WIDE];
    let mut heap = Vec::new();
    let buf: &mut [f32] = if ch * d <= WIDE {
        &mut stack[..ch * d]
    } else {
        heap.resize(ch * d, 0.0);
        &mut heap
    };
    with_scores(rep * t, |p| {
        for j0 in (0..t).step_by(ch) {
            let n = ch.min(t - j0);
            let kc = &mut buf[..n * d];
            simd::widen_f16(&kg[j0 * d..(j0 + n) * d], kc);
            for (r, pr) in p.chunks_mut(t).enumerate() {
                scores_row(&qg[r * d..(r + 1) * d], kc, scale, &mut pr[j0..j0 + n]);
            }
        }
        for pr in p.chunks_mut(t) {
            softmax_row(pr, t);
        }
        og.fill(0.0);
        for j0 in (0..t).step_by(ch) {
            let n = ch.min(t - j0);
            let vc = &mut buf[..n * d];
            simd::widen_f16(&vg[j0 * d..(j0 + n) * d], vc);
            for (r, pr) in p.chunks(t).enumerate() {
                weighted_rows_add(&pr[j0..j0 + n], vc, &mut og[r * d..(r + 1) * d]);
            }
        }
    })
}

/// [`decode_f16`] over an f32 cache, read in place a chunk at a time (the same order of
/// operations, without the widening).
fn decode_f32(qg: &[f32], kg: &[f32], vg: &[f32], d: usize, scale: f32, og: &mut [f32]) {
    let (rep, t) = (qg.len() / d, kg.len() / d);
    let ch = (WIDE / d).max(1);
    with_scores(rep * t, |p| {
        for j0 in (0..t).step_by(ch) {
            let n = ch.min(t - j0);
            for (r, pr) in p.chunks_mut(t).enumerate() {
                scores_row(&qg[r * d..(r + 1) * d], &kg[j0 * d..(j0 + n) * d], scale, &mut pr[j0..j0 + n]);
            }
        }
        for pr in p.chunks_mut(t) {
            softmax_row(pr, t);
        }
        og.fill(0.0);
        for j0 in (0..t).step_by(ch) {
            let n = ch.min(t - j0);
            for (r, pr) in p.chunks(t).enumerate() {
                weighted_rows_add(&pr[j0..j0 + n], &vg[j0 * d..(j0 + n) * d], &mut og[r * d..(r + 1) * d]);
            }
        }
    })
}

thread_local! {
    /// Per-thread buffer for a decode step's scores, kept between calls.
    static SCORES: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Run `f` on `n` scratch floats (stale values: `f` writes before it reads) from this
/// thread's buffer, so a decode step's attention allocates nothing once the buffer has
/// grown to the depth. A nested call on the same thread gets a fresh buffer.
fn with_scores<R>(n: usize, f: impl FnOnce(&mut [f32]) -> R) -> R {
    SCORES.with(|cell| match cell.try_borrow_mut() {
        Ok(mut p) => {
            if p.len() < n {
                p.resize(n, 0.0);
            }
            f(&mut p[..n])
        }
        Err(_) => f(&mut vec![0f32; n]),
    })
}

/// An inference KV cache's buffer for one layer, `(kv, cap, d)` row-major, of which the
/// first `t` rows of every head are filled.
#[derive(Clone, Copy)]
pub enum KvRows<'a> {
    F32(&'a [f32]),
    F16(&'a [half::f16]),
}

/// A decode step's attention on raw buffers, exactly as the op computes it for one query
/// row: `q` (`h × d`, heads in order) against the first `t` rows of each head of `k` and
/// `v` (`kv` heads of `cap` rows) → `o` (`h × d`). Allocates nothing in steady state (the
/// allocation-free decode step, `model::decode_step`).
#[allow(clippy::too_many_arguments)]
pub fn decode_rows(q: &[f32], k: KvRows, v: KvRows, h: usize, kv: usize, cap: usize, t: usize, d: usize, scale: f32, o: &mut [f32]) -> Result<()> {
    fn rows<'a>(x: KvRows<'a>, kv: usize, cap: usize, d: usize) -> Result<HeadRows<'a>> {
        let (data, len) = match x {
            KvRows::F32(a) => (KvData::F32(a), a.len()),
            KvRows::F16(a) => (KvData::F16(a), a.len()),
        };
        if len < kv * cap * d {
            candle_core::bail!("attention: a kv buffer of {len} values for {kv} heads of {cap} rows of {d}");
        }
        Ok(HeadRows { data, start: 0, batch_stride: kv * cap * d, head_stride: cap * d })
    }
    if kv == 0 || h % kv != 0 || t == 0 || t > cap || q.len() != h * d || o.len() != h * d {
        candle_core::bail!("attention: decode of {h} heads over {kv} kv heads, t {t} of {cap}, d {d}");
    }
    // Scores for the cache's whole capacity: this thread's buffer then grows when the cache
    // does (by doubling), not a little with every token.
    SCORES.with(|c| {
        if let Ok(mut p) = c.try_borrow_mut() {
            if p.len() < h / kv * cap {
                p.resize(h / kv * cap, 0.0);
            }
        }
    });
    let dm = Dims { h, kv, s: 1, t, d };
    let op = AttentionOp { scale, segments: Vec::new() };
    op.run_groups(q, &rows(k, kv, cap, d)?, &rows(v, kv, cap, d)?, &dm, &[Seg { qa: 0, len: 1, ka: 0, pos: t - 1 }], o);
    Ok(())
}

thread_local! {
    /// Per-thread buffers for one head's widened f16 keys and values, kept between calls
    /// so a decode step allocates nothing.
    static WIDE_KV: std::cell::RefCell<(Vec<f32>, Vec<f32>)> = std::cell::RefCell::default();
}

/// Run `f` on head `gi`'s keys and values as f32 (`len` values each). f32 data is passed
/// in place; f16 data is widened into this thread's buffers (about `2·len·4` bytes, which
/// stays in cache while `f` reads it, where the f16 rows came from memory at half the
/// bytes). `f` must not re-enter the op on the same thread (it runs no parallel work).
fn with_f32_heads<R>(k: &HeadRows, v: &HeadRows, gi: usize, kv: usize, len: usize, f: impl FnOnce(&[f32], &[f32]) -> R) -> R {
    if let (KvData::F32(_), KvData::F32(_)) = (k.data, v.data) {
        let (mut a, mut b) = (Vec::new(), Vec::new());
        return f(k.head(gi, kv, len, &mut a), v.head(gi, kv, len, &mut b));
    }
    WIDE_KV.with(|cell| {
        let mut fresh = <(Vec<f32>, Vec<f32>)>::default();
        let mut guard = cell.try_borrow_mut();
        let (kb, vb) = match guard.as_deref_mut() {
            Ok((kb, vb)) => (kb, vb),
            Err(_) => (&mut fresh.0, &mut fresh.1),
        };
        f(k.head(gi, kv, len, kb), v.head(gi, kv, len, vb))
    })
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
    q.apply_op3(&k, &v, AttentionOp { scale: scale as f32, segments: Vec::new() })
}

/// Differentiable causal attention over independent sequences concatenated along the row
/// axis: `q: (b, h, Σ lens, d)`, `k, v: (b, kv, Σ lens, d)`; row block `i` (`lens[i]`
/// rows, positions from 0) attends only within itself.
pub fn attention_segments(q: &Tensor, k: &Tensor, v: &Tensor, scale: f64, lens: &[usize]) -> Result<Tensor> {
    let (q, k, v) = (q.contiguous()?, k.contiguous()?, v.contiguous()?);
    dims_check(&q, &k, &v)?;
    q.apply_op3(&k, &v, AttentionOp { scale: scale as f32, segments: lens.to_vec() })
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
    use super::super::tensor_vec;
    use super::*;
    use candle_core::{Device, Var};

    #[test]
    fn matches_reference_values_and_grads() {
        let dev = Device::Cpu;
        for (h, kvh, s, t) in [(4, 2, 7, 7), (3, 3, 5, 9), (2, 1, 1, 6), (8, 1, 1, 40)] {
            let q = Var::from_tensor(&crate::util::randn(14, 0f32, 1.0, (2, h, s, 8), &dev).unwrap()).unwrap();
            let k = Var::from_tensor(&crate::util::randn(15, 0f32, 1.0, (2, kvh, t, 8), &dev).unwrap()).unwrap();
            let v = Var::from_tensor(&crate::util::randn(16, 0f32, 1.0, (2, kvh, t, 8), &dev).unwrap()).unwrap();
            let up = crate::util::randn(17, 0f32, 1.0, (2, h, s, 8), &dev).unwrap();
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

    #[test]
    fn softmax_flushes_far_tails_to_zero() {
        // e^-70 would be ~4e-31 before the division; e^-50 stays. No subnormal survives.
        let mut row = vec![0.0, -70.0, -50.0, -1000.0, 3.0, 9.0];
        softmax_row(&mut row, 5);
        assert_eq!((row[1], row[3], row[5]), (0.0, 0.0, 0.0));
        assert!(row[2] > 0.0 && row.iter().all(|p| *p == 0.0 || p.is_normal()));
        let sum: f32 = row.iter().sum();
        assert!((sum - 1.0).abs() < 1e-6 && (row[4] / row[0] - 3f32.exp()).abs() < 1e-3);
    }

    #[test]
    fn weighted_rows_match_plain_loop() {
        for (n, d) in [(1, 16), (7, 64), (33, 80), (5, 128), (2, 256), (0, 64)] {
            let p: Vec<f32> = (0..n).map(|i| ((i * 7 % 11) as f32 - 5.0) / 3.0).collect();
            let v: Vec<f32> = (0..n * d).map(|i| ((i * 13 % 17) as f32 - 8.0) / 5.0).collect();
            let start: Vec<f32> = (0..d).map(|i| i as f32 / 10.0).collect();
            let (mut a, mut b) = (start.clone(), start);
            weighted_rows_add(&p, &v, &mut a);
            weighted_rows_add_plain(&p, &v, &mut b);
            for (x, y) in a.iter().zip(&b) {
                assert!((x - y).abs() <= 1e-5 * (1.0 + y.abs()), "n {n} d {d}: {x} vs {y}");
            }
        }
    }

    #[test]
    fn f16_keys_and_values_read_in_place() {
        // An f16 KV-cache view (a narrow of a longer buffer): a prefill gives exactly what
        // its f32 widening gives; decode (its own chunked path, with 2 and 8 query heads
        // per kv head) and prefill both match the reference.
        let dev = Device::Cpu;
        for (h, kvh, s, t) in [(4, 2, 1, 40), (8, 1, 1, 70), (4, 2, 9, 70), (3, 3, 70, 70)] {
            let q = crate::util::randn(18, 0f32, 1.0, (1, h, s, 16), &dev).unwrap();
            let cache = |_| crate::util::randn(19, 0f32, 1.0, (1, kvh, t + 5, 16), &dev).unwrap().to_dtype(candle_core::DType::F16).unwrap();
            let (k, v) = (cache(0).narrow(2, 0, t).unwrap(), cache(1).narrow(2, 0, t).unwrap());
            let wide = |x: &Tensor| x.to_dtype(candle_core::DType::F32).unwrap();
            let a = attention(&q, &k, &v, 0.3).unwrap();
            let b = attention(&q, &wide(&k), &wide(&v), 0.3).unwrap();
            if s > 1 {
                // Prefill widens the heads and runs the f32 code: the same numbers exactly.
                assert_eq!(tensor_vec(&a).unwrap(), tensor_vec(&b).unwrap(), "h {h} kv {kvh} s {s} t {t}");
            }
            crate::train::kernels::assert_close(&a, &attention_reference(&q, &wide(&k), &wide(&v), 0.3).unwrap(), 1e-5);
        }
        let k = Tensor::zeros((1, 1, 4, 16), candle_core::DType::BF16, &dev).unwrap();
        let q = Tensor::zeros((1, 1, 1, 16), candle_core::DType::F32, &dev).unwrap();
        assert!(attention(&q, &k, &k, 1.0).unwrap_err().to_string().contains("f32 or f16"));
    }

    #[test]
    fn segments_match_separate_sequences() {
        let dev = Device::Cpu;
        let lens = [5usize, 1, 70, 3]; // one longer than a query block
        let n: usize = lens.iter().sum();
        let q = Var::from_tensor(&crate::util::randn(20, 0f32, 1.0, (1, 4, n, 8), &dev).unwrap()).unwrap();
        let k = Var::from_tensor(&crate::util::randn(21, 0f32, 1.0, (1, 2, n, 8), &dev).unwrap()).unwrap();
        let v = Var::from_tensor(&crate::util::randn(22, 0f32, 1.0, (1, 2, n, 8), &dev).unwrap()).unwrap();
        let up = crate::util::randn(23, 0f32, 1.0, (1, 4, n, 8), &dev).unwrap();
        let a = attention_segments(&q, &k, &v, 0.35, &lens).unwrap();
        let mut parts = Vec::new();
        let mut at = 0;
        for &l in &lens {
            let sl = |x: &Var| x.as_tensor().narrow(2, at, l).unwrap();
            parts.push(attention_reference(&sl(&q), &sl(&k), &sl(&v), 0.35).unwrap());
            at += l;
        }
        let b = Tensor::cat(&parts, 2).unwrap();
        crate::train::kernels::assert_close(&a, &b, 1e-5);
        let ga = (a * &up).unwrap().sum_all().unwrap().backward().unwrap();
        let gb = (b * &up).unwrap().sum_all().unwrap().backward().unwrap();
        for x in [&q, &k, &v] {
            crate::train::kernels::assert_close(ga.get(x).unwrap(), gb.get(x).unwrap(), 1e-5);
        }
        assert!(attention_segments(&q, &k, &v, 0.35, &[5, 1]).is_err(), "segments must cover the rows");
    }
}
