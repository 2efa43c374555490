//! Knowledge-distillation loss, fused with the student's output projection.
//!
//! Per position, with student logits `z`, label `y`, teacher distribution `p` at
//! temperature `T` and student distribution `q = softmax(z / T)`:
//!
//! ```text
//! loss = (1 − α) · CE(z, y) + α · T² · KL(p ‖ q)          (forward KL; α = --kd-ratio)
//! ∂loss/∂z = (1 − α) · (softmax(z) − onehot(y)) + α · T · (q − p̃)
//! ```
//!
//! The teacher comes either dense (its full logits, computed block by block from its hidden
//! states, [`Teacher::Dense`]) or as a top-k cache ([`Teacher::TopK`]: k ids with their
//! probabilities at `T` plus the remaining mass `r` as one tail bucket). For the top-k form
//! the KL is over the k + 1 buckets, `Σₖ pₖ ln(pₖ/qₖ) + r ln(r / Q_tail)`, and its gradient
//! is the same formula with `p̃ⱼ = r · qⱼ / Q_tail` off the top-k ids: the tail mass spread
//! in proportion to the student's own distribution. With k = vocab it is exactly the dense
//! loss.
//!
//! [`lm_head_kd`] never holds the `(tokens, vocab)` logits: `HEAD_ROWS`-row blocks of
//! student (and teacher) logits are computed, turned in place into their gradient, and
//! multiplied back into `dh` and `dW` at once, as [`super::loss::lm_head_cross_entropy`]
//! does for plain cross-entropy. Memory is `O(HEAD_ROWS · vocab)` whatever the batch.
//! [`kd_loss_reference`] (plain candle ops on full logits) is the test oracle.

use std::sync::{Arc, Mutex};

use anyhow::{bail, Result};
use candle_core::{CpuStorage, Layout, Shape, Tensor};
use rayon::prelude::*;

use super::kernels::gemm::{matmul_par, Mat};
use super::simd::{exp, multiversion};

/// Weights of the mix.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct KdMix {
    /// α: weight of the distillation term (1 − α on cross-entropy with the data).
    pub ratio: f32,
    /// T: softening temperature of both distributions.
    pub temperature: f32,
}

impl KdMix {
    pub fn validate(&self) -> Result<()> {
        if !(0.0..=1.0).contains(&self.ratio) {
            bail!("--kd-ratio must be in [0, 1], got {}", self.ratio);
        }
        if !(self.temperature > 0.0 && self.temperature <= 100.0) {
            bail!("--temperature must be in (0, 100], got {}", self.temperature);
        }
        Ok(())
    }
}

/// Teacher top-k targets for `n` rows: `ids`/`probs` are `n × k`, `tail` is `n`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TopK {
    pub k: usize,
    pub ids: Vec<u32>,
    /// Probabilities at the distillation temperature.
    pub probs: Vec<f32>,
    /// `1 − Σ probs` of each row (≥ 0).
    pub tail: Vec<f32>,
}

/// Dense teacher logits for rows `start..start + rows` (row-major, `rows × vocab`).
pub type DenseLogits = Arc<dyn Fn(usize, usize) -> Result<Vec<f32>> + Send + Sync>;

#[derive(Clone)]
pub enum Teacher {
    Dense(DenseLogits),
    TopK(Arc<TopK>),
}

/// Mean parts of the last evaluated loss (for metrics).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct KdParts {
    pub ce: f64,
    /// KL(p ‖ q) at temperature T (not scaled by T²).
    pub kl: f64,
}

/// Rows of logits computed at a time (bounded further by [`MAX_BLOCK_FLOATS`]).
const HEAD_ROWS: usize = 256;
/// Upper bound on one block of logits (student and teacher each), in floats: 64 MB.
const MAX_BLOCK_FLOATS: usize = 16 << 20;
/// Rows per parallel task: fixed, so results do not depend on the thread count.
const ROWS_PER_TASK: usize = 4;

multiversion! {
    fn max_of(x: &[f32]) -> f32 {
        crate::train::simd::max(x)
    }
}

multiversion! {
    /// `Σ exp((x − m) · k)`.
    fn sum_exp(x: &[f32], m: f32, k: f32) -> f32 {
        let mut acc = [0f32; 16];
        let mut c = x.chunks_exact(16);
        for xs in &mut c {
            for i in 0..16 {
                acc[i] += exp((xs[i] - m) * k);
            }
        }
        acc.iter().sum::<f32>() + c.remainder().iter().map(|&v| exp((v - m) * k)).sum::<f32>()
    }
}

multiversion! {
    /// Teacher row in place: `t ← exp((t − mt)/T)`; returns `(Σ t, Σ t·(t_orig − z))`.
    fn teacher_exp(t: &mut [f32], z: &[f32], mt: f32, inv_t: f32) -> (f32, f32) {
        let mut s = [0f32; 16];
        let mut d = [0f32; 16];
        let mut tc = t.chunks_exact_mut(16);
        let mut zc = z.chunks_exact(16);
        for (ts, zs) in (&mut tc).zip(&mut zc) {
            for i in 0..16 {
                let e = exp((ts[i] - mt) * inv_t);
                s[i] += e;
                d[i] += e * (ts[i] - zs[i]);
                ts[i] = e;
            }
        }
        let (mut s1, mut d1) = (0f32, 0f32);
        for (tv, zv) in tc.into_remainder().iter_mut().zip(zc.remainder()) {
            let e = exp((*tv - mt) * inv_t);
            s1 += e;
            d1 += e * (*tv - *zv);
            *tv = e;
        }
        (s.iter().sum::<f32>() + s1, d.iter().sum::<f32>() + d1)
    }
}

/// How `exp(x)` follows from `exp(x / T)`: the same (T = 1), its square (T = 2), or
/// computed separately — one exponential per element instead of two for the common T.
#[derive(Clone, Copy, PartialEq)]
enum TempKind {
    One,
    Two,
    Other,
}

fn temp_kind(t: f32) -> TempKind {
    if t == 1.0 {
        TempKind::One
    } else if t == 2.0 {
        TempKind::Two
    } else {
        TempKind::Other
    }
}

/// `(exp(x), exp(x / T))`.
#[inline(always)]
fn exp_1_t(x: f32, inv_t: f32, kind: TempKind) -> (f32, f32) {
    let v = exp(x * inv_t);
    let e1 = match kind {
        TempKind::One => v,
        TempKind::Two => v * v,
        TempKind::Other => exp(x),
    };
    (e1, v)
}

multiversion! {
    /// Student row: `z ← exp(z − m)`, `et ← exp((z − m)/T)`; returns their sums.
    fn student_exp(z: &mut [f32], et: &mut [f32], m: f32, inv_t: f32, kind: TempKind) -> (f32, f32) {
        let mut s1 = [0f32; 16];
        let mut st = [0f32; 16];
        let mut zc = z.chunks_exact_mut(16);
        let mut ec = et.chunks_exact_mut(16);
        for (zs, es) in (&mut zc).zip(&mut ec) {
            for i in 0..16 {
                let (a, b) = exp_1_t(zs[i] - m, inv_t, kind);
                zs[i] = a;
                es[i] = b;
                s1[i] += a;
                st[i] += b;
            }
        }
        let (mut a1, mut b1) = (0f32, 0f32);
        for (zv, ev) in zc.into_remainder().iter_mut().zip(ec.into_remainder()) {
            let (a, b) = exp_1_t(*zv - m, inv_t, kind);
            *zv = a;
            *ev = b;
            a1 += a;
            b1 += b;
        }
        (s1.iter().sum::<f32>() + a1, st.iter().sum::<f32>() + b1)
    }
}

multiversion! {
    /// `(Σ exp(z − m), Σ exp((z − m)/T))`.
    fn sums_1_t(z: &[f32], m: f32, inv_t: f32, kind: TempKind) -> (f32, f32) {
        let mut s1 = [0f32; 16];
        let mut st = [0f32; 16];
        let mut c = z.chunks_exact(16);
        for zs in &mut c {
            for i in 0..16 {
                let (a, b) = exp_1_t(zs[i] - m, inv_t, kind);
                s1[i] += a;
                st[i] += b;
            }
        }
        let (mut a1, mut b1) = (0f32, 0f32);
        for &v in c.remainder() {
            let (a, b) = exp_1_t(v - m, inv_t, kind);
            a1 += a;
            b1 += b;
        }
        (s1.iter().sum::<f32>() + a1, st.iter().sum::<f32>() + b1)
    }
}

multiversion! {
    /// `z ← a·z + b·et − c·t` (the dense gradient row, before the label fix).
    fn grad_dense(z: &mut [f32], et: &[f32], t: &[f32], a: f32, b: f32, c: f32) {
        for ((zv, &ev), &tv) in z.iter_mut().zip(et).zip(t) {
            *zv = a * *zv + b * ev - c * tv;
        }
    }
}

multiversion! {
    /// `z ← a·exp(z − m) + b·exp((z − m)/T)`.
    fn grad_sparse_base(z: &mut [f32], m: f32, inv_t: f32, a: f32, b: f32, kind: TempKind) {
        for zv in z.iter_mut() {
            let (e1, et) = exp_1_t(*zv - m, inv_t, kind);
            *zv = a * e1 + b * et;
        }
    }
}

/// Per-row weights shared by the row functions.
#[derive(Clone, Copy)]
struct RowCtx {
    mix: KdMix,
    /// 1 / counted rows.
    inv: f32,
    grad: bool,
}

/// One row with a dense teacher row `t` (both overwritten; `et` is scratch). Returns `(ce, kl)`.
fn kd_row_dense(z: &mut [f32], t: &mut [f32], et: &mut [f32], y: usize, cx: RowCtx) -> (f64, f64) {
    let (alpha, temp) = (cx.mix.ratio, cx.mix.temperature);
    let inv_t = 1.0 / temp;
    let m = max_of(z);
    let mt = max_of(t);
    let zy = z[y];
    // Teacher first: the KL needs the student's logits before they become exponentials.
    let (st, dot) = teacher_exp(t, z, mt, inv_t);
    let (s1, st_z) = student_exp(z, et, m, inv_t, temp_kind(temp));
    let ce = (m as f64 + (s1 as f64).ln()) - zy as f64;
    // KL = Σ p (ln p − ln q) with ln p = (t − mt)/T − ln st, ln q = (z − m)/T − ln st_z.
    let kl = (dot as f64 / st as f64) * inv_t as f64 + (m as f64 - mt as f64) * inv_t as f64 + (st_z as f64).ln() - (st as f64).ln();
    if cx.grad {
        let (a, b, c) = ((1.0 - alpha) * cx.inv / s1, alpha * temp * cx.inv / st_z, alpha * temp * cx.inv / st);
        grad_dense(z, et, t, a, b, c);
        z[y] -= (1.0 - alpha) * cx.inv;
    }
    (ce, kl.max(0.0))
}

/// One row with top-k targets. Returns `(ce, kl)`.
fn kd_row_topk(z: &mut [f32], ids: &[u32], probs: &[f32], tail: f32, y: usize, cx: RowCtx) -> (f64, f64) {
    let (alpha, temp) = (cx.mix.ratio, cx.mix.temperature);
    let inv_t = 1.0 / temp;
    let m = max_of(z);
    let (s1, st_z) = sums_1_t(z, m, inv_t, temp_kind(temp));
    let ln_stz = (st_z as f64).ln();
    let ce = (m as f64 + (s1 as f64).ln()) - z[y] as f64;
    let mut q_k = 0f64;
    let mut kl = 0f64;
    for (&id, &p) in ids.iter().zip(probs) {
        let lq = ((z[id as usize] - m) * inv_t) as f64 - ln_stz;
        q_k += lq.exp();
        if p > 0.0 {
            kl += p as f64 * ((p as f64).ln() - lq);
        }
    }
    let q_tail = (1.0 - q_k).max(1e-30);
    let r = tail.max(0.0) as f64;
    if r > 0.0 {
        kl += r * (r.ln() - q_tail.ln());
    }
    if cx.grad {
        // Off the top-k: (1−α)·sm + αT·q·(1 − r/Q_tail); on it: (1−α)·sm + αT·(q − p).
        let ratio = (r / q_tail) as f32;
        let qs: Vec<f32> = ids.iter().map(|&id| exp((z[id as usize] - m) * inv_t) / st_z).collect();
        let b = alpha * temp * cx.inv / st_z;
        grad_sparse_base(z, m, inv_t, (1.0 - alpha) * cx.inv / s1, b * (1.0 - ratio), temp_kind(temp));
        for ((&id, &p), &q) in ids.iter().zip(probs).zip(&qs) {
            z[id as usize] += alpha * temp * cx.inv * (q * ratio - p);
        }
        z[y] -= (1.0 - alpha) * cx.inv;
    }
    (ce, kl.max(0.0))
}

/// A block of teacher targets aligned with a block of student rows.
enum Block<'a> {
    Dense(&'a mut [f32]),
    TopK { k: usize, ids: &'a [u32], probs: &'a [f32], tail: &'a [f32] },
}

/// Loss of `rows` student logit rows (`z`, overwritten with the gradient when `cx.grad`)
/// against `targets` and the teacher block. Returns the sums `(Σ ce, Σ kl)`.
fn kd_block(z: &mut [f32], vocab: usize, targets: &[u32], block: Block<'_>, cx: RowCtx) -> (f64, f64) {
    let per = vocab * ROWS_PER_TASK;
    let sums: Vec<(f64, f64)> = match block {
        Block::Dense(t) => z
            .par_chunks_mut(per)
            .zip(t.par_chunks_mut(per))
            .zip(targets.par_chunks(ROWS_PER_TASK))
            .map(|((zb, tb), ys)| {
                let mut acc = (0f64, 0f64);
                let mut et = vec![0f32; vocab];
                for ((zr, tr), &y) in zb.chunks_mut(vocab).zip(tb.chunks_mut(vocab)).zip(ys) {
                    let (c, k) = kd_row_dense(zr, tr, &mut et, y as usize, cx);
                    acc = (acc.0 + c, acc.1 + k);
                }
                acc
            })
            .collect(),
        Block::TopK { k, ids, probs, tail } => z
            .par_chunks_mut(per)
            .zip(targets.par_chunks(ROWS_PER_TASK))
            .enumerate()
            .map(|(ti, (zb, ys))| {
                let mut acc = (0f64, 0f64);
                for (j, (zr, &y)) in zb.chunks_mut(vocab).zip(ys).enumerate() {
                    let r = ti * ROWS_PER_TASK + j;
                    let (c, kk) = kd_row_topk(zr, &ids[r * k..(r + 1) * k], &probs[r * k..(r + 1) * k], tail[r], y as usize, cx);
                    acc = (acc.0 + c, acc.1 + kk);
                }
                acc
            })
            .collect(),
    };
    sums.iter().fold((0.0, 0.0), |a, b| (a.0 + b.0, a.1 + b.1))
}

fn check_targets(targets: &[u32], vocab: usize, teacher: &Teacher) -> candle_core::Result<()> {
    if let Some(&t) = targets.iter().find(|&&t| t as usize >= vocab) {
        candle_core::bail!("distillation: label {t} outside the vocabulary of {vocab}");
    }
    if let Teacher::TopK(tk) = teacher {
        let n = targets.len();
        if tk.k == 0 || tk.ids.len() != n * tk.k || tk.probs.len() != n * tk.k || tk.tail.len() != n {
            candle_core::bail!("distillation: top-k targets of the wrong size for {n} rows");
        }
        if let Some(&b) = tk.ids.iter().find(|&&i| i as usize >= vocab) {
            candle_core::bail!("distillation: teacher token {b} outside the student's vocabulary of {vocab}");
        }
    }
    Ok(())
}

/// Rows per block so one block of logits stays under [`MAX_BLOCK_FLOATS`].
fn block_rows(vocab: usize) -> usize {
    (MAX_BLOCK_FLOATS / vocab.max(1)).clamp(ROWS_PER_TASK, HEAD_ROWS) / ROWS_PER_TASK * ROWS_PER_TASK
}

/// Loss of one block: fills `z` with logits, then turns them into gradients.
fn block_loss(z: &mut [f32], r0: usize, rows: usize, vocab: usize, targets: &[u32], teacher: &Teacher, cx: RowCtx) -> candle_core::Result<(f64, f64)> {
    let ys = &targets[r0..r0 + rows];
    Ok(match teacher {
        Teacher::Dense(f) => {
            let mut t = f(r0, rows).map_err(|e| candle_core::Error::Msg(format!("teacher logits: {e:#}")))?;
            if t.len() != rows * vocab {
                candle_core::bail!("distillation: the teacher gave {} logits for {rows} rows of {vocab}", t.len());
            }
            kd_block(z, vocab, ys, Block::Dense(&mut t), cx)
        }
        Teacher::TopK(tk) => {
            let k = tk.k;
            let blk = Block::TopK { k, ids: &tk.ids[r0 * k..(r0 + rows) * k], probs: &tk.probs[r0 * k..(r0 + rows) * k], tail: &tk.tail[r0..r0 + rows] };
            kd_block(z, vocab, ys, blk, cx)
        }
    })
}

struct LmHeadKd {
    targets: Vec<u32>,
    teacher: Teacher,
    mix: KdMix,
    want_grad: bool,
    grads: Mutex<Option<(Vec<f32>, Vec<f32>)>>,
    parts: Arc<Mutex<KdParts>>,
}

impl candle_core::CustomOp2 for LmHeadKd {
    fn name(&self) -> &'static str {
        "fused-lm-head-kd"
    }

    fn cpu_fwd(&self, hs: &CpuStorage, hl: &Layout, ws: &CpuStorage, wl: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let h = super::kernels::f32_data(hs, hl, "lm head kd")?;
        let w = super::kernels::f32_data(ws, wl, "lm head kd")?;
        let (n, d) = hl.shape().dims2()?;
        let (vocab, wd) = wl.shape().dims2()?;
        if wd != d || n != self.targets.len() {
            candle_core::bail!("lm head kd: hidden {:?}, weight {:?}, {} targets", hl.dims(), wl.dims(), self.targets.len());
        }
        check_targets(&self.targets, vocab, &self.teacher)?;
        let cx = RowCtx { mix: self.mix, inv: if n > 0 { 1.0 / n as f32 } else { 0.0 }, grad: self.want_grad };
        let br = block_rows(vocab);
        let mut logits = vec![0f32; br.min(n) * vocab];
        let (mut dh, mut dw) = if self.want_grad { (vec![0f32; n * d], vec![0f32; vocab * d]) } else { (Vec::new(), Vec::new()) };
        let (mut ce, mut kl) = (0f64, 0f64);
        for (ci, r0) in (0..n).step_by(br).enumerate() {
            let rows = br.min(n - r0);
            let lg = &mut logits[..rows * vocab];
            let hc = &h[r0 * d..(r0 + rows) * d];
            matmul_par(lg, Mat::rows(hc, rows, d), Mat::rows(w, vocab, d).t(), 1.0, false);
            let (c, k) = block_loss(lg, r0, rows, vocab, &self.targets, &self.teacher, cx)?;
            ce += c;
            kl += k;
            if self.want_grad {
                matmul_par(&mut dh[r0 * d..(r0 + rows) * d], Mat::rows(lg, rows, vocab), Mat::rows(w, vocab, d), 1.0, false);
                matmul_par(&mut dw, Mat::rows(lg, rows, vocab).t(), Mat::rows(hc, rows, d), 1.0, ci > 0);
            }
        }
        if self.want_grad {
            *self.grads.lock().unwrap() = Some((dh, dw));
        }
        Ok((CpuStorage::F32(vec![finish(ce, kl, n, self.mix, &self.parts)]), Shape::from(())))
    }

    fn bwd(&self, h: &Tensor, w: &Tensor, _res: &Tensor, g: &Tensor) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let Some((mut dh, mut dw)) = self.grads.lock().unwrap().take() else {
            candle_core::bail!("fused lm head kd: backward without a gradient (computed once per forward)");
        };
        let k = g.to_dtype(candle_core::DType::F32)?.to_scalar::<f32>()?;
        if k != 1.0 {
            dh.iter_mut().for_each(|v| *v *= k);
            dw.iter_mut().for_each(|v| *v *= k);
        }
        Ok((Some(Tensor::from_vec(dh, h.shape(), h.device())?), Some(Tensor::from_vec(dw, w.shape(), w.device())?)))
    }
}

/// The mean loss from the sums; records the parts.
fn finish(ce: f64, kl: f64, n: usize, mix: KdMix, parts: &Mutex<KdParts>) -> f32 {
    let n = n.max(1) as f64;
    let (ce, kl) = (ce / n, kl / n);
    *parts.lock().unwrap() = KdParts { ce, kl };
    let a = mix.ratio as f64;
    let t2 = (mix.temperature as f64).powi(2);
    ((1.0 - a) * ce + a * t2 * kl) as f32
}

/// The distillation loss of `h (n, d) · wᵀ` against `targets` and the teacher, without
/// materialising the logits. Differentiable in `h` and `w`. The returned cell holds the
/// mean CE and KL of this evaluation once the op has run.
pub fn lm_head_kd(h: &Tensor, w: &Tensor, targets: &[u32], teacher: Teacher, mix: KdMix) -> Result<(Tensor, Arc<Mutex<KdParts>>)> {
    mix.validate()?;
    let parts = Arc::new(Mutex::new(KdParts::default()));
    let op = LmHeadKd {
        targets: targets.to_vec(),
        teacher,
        mix,
        want_grad: h.track_op() || w.track_op(),
        grads: Mutex::new(None),
        parts: parts.clone(),
    };
    Ok((h.contiguous()?.apply_op2(&w.contiguous()?, op)?, parts))
}

/// The loss on given logits `(n, vocab)` (no gradient): the same row functions as the
/// fused op, for models whose output head is not a plain dense matrix.
pub fn kd_loss_logits(logits: &[f32], vocab: usize, targets: &[u32], teacher: &Teacher, mix: KdMix) -> Result<(f64, KdParts)> {
    let n = targets.len();
    if logits.len() != n * vocab {
        bail!("distillation: {} logits for {n} rows of {vocab}", logits.len());
    }
    check_targets(targets, vocab, teacher)?;
    let cx = RowCtx { mix, inv: 1.0 / n.max(1) as f32, grad: false };
    let mut z = logits.to_vec();
    let br = block_rows(vocab);
    let (mut ce, mut kl) = (0f64, 0f64);
    for r0 in (0..n).step_by(br) {
        let rows = br.min(n - r0);
        let (c, k) = block_loss(&mut z[r0 * vocab..(r0 + rows) * vocab], r0, rows, vocab, targets, teacher, cx)?;
        ce += c;
        kl += k;
    }
    let parts = Mutex::new(KdParts::default());
    let loss = finish(ce, kl, n, mix, &parts) as f64;
    let p = *parts.lock().unwrap();
    Ok((loss, p))
}

/// Top-k targets of dense teacher logits `(n, vocab)` at temperature `T`: the `k` largest
/// probabilities (ties by lower id) and the tail mass.
pub fn top_k_of_logits(logits: &[f32], vocab: usize, k: usize, temperature: f32) -> TopK {
    let n = logits.len() / vocab.max(1);
    let k = k.min(vocab);
    let rows: Vec<(Vec<u32>, Vec<f32>, f32)> = logits
        .par_chunks(vocab)
        .map(|row| {
            let m = max_of(row);
            let s = sum_exp(row, m, 1.0 / temperature) as f64;
            let mut idx: Vec<u32> = (0..vocab as u32).collect();
            let cmp = |a: &u32, b: &u32| row[*b as usize].total_cmp(&row[*a as usize]).then(a.cmp(b));
            if k < vocab {
                idx.select_nth_unstable_by(k, cmp);
                idx.truncate(k);
            }
            idx.sort_unstable_by(cmp);
            let probs: Vec<f32> = idx.iter().map(|&i| ((((row[i as usize] - m) / temperature) as f64).exp() / s) as f32).collect();
            let tail = (1.0 - probs.iter().map(|&p| p as f64).sum::<f64>()).max(0.0) as f32;
            (idx, probs, tail)
        })
        .collect();
    let mut out = TopK { k, ids: Vec::with_capacity(n * k), probs: Vec::with_capacity(n * k), tail: Vec::with_capacity(n) };
    for (i, p, t) in rows {
        out.ids.extend(i);
        out.probs.extend(p);
        out.tail.push(t);
    }
    out
}

/// The oracle: plain candle ops on full student logits `(n, vocab)`. `teacher_logits`
/// (dense) or `topk` gives the teacher. Differentiable through `logits`.
pub fn kd_loss_reference(logits: &Tensor, targets: &[u32], teacher_logits: Option<&Tensor>, topk: Option<&TopK>, mix: KdMix) -> Result<Tensor> {
    use candle_nn::ops::log_softmax;
    let dev = logits.device();
    let n = targets.len();
    let y = Tensor::from_slice(targets, n, dev)?;
    let ce = candle_nn::loss::cross_entropy(logits, &y)?;
    let t = mix.temperature as f64;
    let logq = log_softmax(&(logits / t)?, 1)?;
    let kl = if let Some(tl) = teacher_logits {
        let logp = log_softmax(&(tl / t)?, 1)?;
        (logp.exp()? * (logp - &logq)?)?.sum_all()?
    } else if let Some(tk) = topk {
        let ids = Tensor::from_slice(&tk.ids, (n, tk.k), dev)?;
        let p = Tensor::from_slice(&tk.probs, (n, tk.k), dev)?;
        let r = Tensor::from_slice(&tk.tail, n, dev)?;
        let lq = logq.gather(&ids, 1)?;
        let q_tail = (1.0 - lq.exp()?.sum(1)?)?;
        let top = (&p * (p.log()? - lq)?)?.sum_all()?;
        let tail = (&r * (r.log()? - q_tail.log()?)?)?.sum_all()?;
        (top + tail)?
    } else {
        bail!("kd_loss_reference: no teacher");
    };
    let kl = (kl / n as f64)?;
    let a = mix.ratio as f64;
    Ok(((ce * (1.0 - a))? + (kl * (a * t * t))?)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::kernels::assert_close;
    use candle_core::{Device, Var};

    fn dense(tl: &Tensor) -> Teacher {
        let (_, v) = tl.dims2().unwrap();
        let data = tl.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        Teacher::Dense(Arc::new(move |r0, rows| Ok(data[r0 * v..(r0 + rows) * v].to_vec())))
    }

    fn setup(n: usize, d: usize, v: usize) -> (Var, Var, Tensor, Vec<u32>) {
        let dev = Device::Cpu;
        let h = Var::from_tensor(&crate::util::randn(11, 0f32, 1.0, (n, d), &dev).unwrap()).unwrap();
        let w = Var::from_tensor(&crate::util::randn(12, 0f32, 0.5, (v, d), &dev).unwrap()).unwrap();
        let tl = crate::util::randn(13, 0f32, 2.0, (n, v), &dev).unwrap();
        let y: Vec<u32> = (0..n as u32).map(|i| (i * 31 + 5) % v as u32).collect();
        (h, w, tl, y)
    }

    #[test]
    fn fused_dense_matches_oracle_loss_and_grads() {
        // More rows than one block (block_rows(53) = HEAD_ROWS); T ≠ 1 and T = 1.
        let (h, w, tl, y) = setup(300, 24, 53);
        for mix in [KdMix { ratio: 0.7, temperature: 2.0 }, KdMix { ratio: 0.5, temperature: 1.0 }, KdMix { ratio: 1.0, temperature: 0.5 }] {
            let (a, parts) = lm_head_kd(&h, &w, &y, dense(&tl), mix).unwrap();
            let logits = h.as_tensor().matmul(&w.t().unwrap()).unwrap();
            let b = kd_loss_reference(&logits, &y, Some(&tl), None, mix).unwrap();
            let (av, bv) = (a.to_scalar::<f32>().unwrap(), b.to_scalar::<f32>().unwrap());
            assert!((av - bv).abs() < 1e-4 * bv.abs().max(1.0), "{mix:?}: {av} vs {bv}");
            assert!(parts.lock().unwrap().kl > 0.0);
            let ga = (&a * 3.0).unwrap().backward().unwrap();
            let gb = (b * 3.0).unwrap().backward().unwrap();
            for x in [&h, &w] {
                assert_close(ga.get(x).unwrap(), gb.get(x).unwrap(), 1e-4);
            }
        }
    }

    #[test]
    fn fused_topk_matches_oracle_and_full_k_equals_dense() {
        let (h, w, tl, y) = setup(40, 16, 37);
        let mix = KdMix { ratio: 0.6, temperature: 1.5 };
        let tv = tl.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let tk = top_k_of_logits(&tv, 37, 5, mix.temperature);
        assert!(tk.tail.iter().all(|&r| r > 0.0 && r < 1.0));
        let (a, _) = lm_head_kd(&h, &w, &y, Teacher::TopK(Arc::new(tk.clone())), mix).unwrap();
        let logits = h.as_tensor().matmul(&w.t().unwrap()).unwrap();
        let b = kd_loss_reference(&logits, &y, None, Some(&tk), mix).unwrap();
        let (av, bv) = (a.to_scalar::<f32>().unwrap(), b.to_scalar::<f32>().unwrap());
        assert!((av - bv).abs() < 1e-4 * bv.abs().max(1.0), "{av} vs {bv}");
        let ga = a.backward().unwrap();
        let gb = b.backward().unwrap();
        for x in [&h, &w] {
            assert_close(ga.get(x).unwrap(), gb.get(x).unwrap(), 1e-4);
        }
        // k = vocab: the top-k loss is the dense loss.
        let full = top_k_of_logits(&tv, 37, 37, mix.temperature);
        let (c, _) = lm_head_kd(&h, &w, &y, Teacher::TopK(Arc::new(full)), mix).unwrap();
        let (d, _) = lm_head_kd(&h, &w, &y, dense(&tl), mix).unwrap();
        let (cv, dv) = (c.to_scalar::<f32>().unwrap(), d.to_scalar::<f32>().unwrap());
        assert!((cv - dv).abs() < 1e-4, "{cv} vs {dv}");
    }

    #[test]
    fn gradient_matches_finite_differences() {
        // Central differences in f64 of the loss computed by the kernel's own forward path.
        let (n, d, v) = (6, 5, 11);
        let (h, w, tl, y) = setup(n, d, v);
        let tv = tl.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        for teacher in [dense(&tl), Teacher::TopK(Arc::new(top_k_of_logits(&tv, v, 3, 2.0)))] {
            let mix = KdMix { ratio: 0.8, temperature: 2.0 };
            let (loss, _) = lm_head_kd(&h, &w, &y, teacher.clone(), mix).unwrap();
            let g = loss.backward().unwrap();
            let gh = g.get(&h).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let hv = h.as_tensor().flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let wv = w.as_tensor().detach();
            let f = |x: &[f32]| -> f64 {
                let hx = Tensor::from_slice(x, (n, d), &Device::Cpu).unwrap();
                let logits = hx.matmul(&wv.t().unwrap()).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
                kd_loss_logits(&logits, v, &y, &teacher, mix).unwrap().0
            };
            let eps = 1e-2f32;
            for i in (0..n * d).step_by(3) {
                let (mut p, mut m) = (hv.clone(), hv.clone());
                p[i] += eps;
                m[i] -= eps;
                let fd = (f(&p) - f(&m)) / (2.0 * eps as f64);
                assert!((fd - gh[i] as f64).abs() < 2e-3 + 2e-2 * fd.abs(), "dh[{i}]: analytic {} vs numeric {fd}", gh[i]);
            }
        }
    }

    #[test]
    fn bad_inputs_are_errors() {
        let (h, w, tl, mut y) = setup(4, 3, 7);
        assert!(lm_head_kd(&h, &w, &y, dense(&tl), KdMix { ratio: 1.5, temperature: 1.0 }).is_err());
        assert!(lm_head_kd(&h, &w, &y, dense(&tl), KdMix { ratio: 0.5, temperature: 0.0 }).is_err());
        y[0] = 7;
        assert!(lm_head_kd(&h, &w, &y, dense(&tl), KdMix { ratio: 0.5, temperature: 1.0 }).is_err());
        y[0] = 0;
        let bad = TopK { k: 1, ids: vec![9, 0, 0, 0], probs: vec![0.5; 4], tail: vec![0.5; 4] };
        assert!(lm_head_kd(&h, &w, &y, Teacher::TopK(Arc::new(bad)), KdMix { ratio: 0.5, temperature: 1.0 }).is_err());
    }
}
