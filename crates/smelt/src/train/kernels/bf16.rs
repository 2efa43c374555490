//! Matrix products with bf16 inputs and f32 accumulation, on AVX-512 BF16 (`vdpbf16ps`:
//! 32 bf16 products per instruction, twice the f32 FMA rate), for the largest products of
//! a training step — the output projection over the vocabulary and its two gradients.
//!
//! Both operands are rounded to bf16 (nearest, ties to even) while packing: `A` (m × k)
//! into rows of k-pairs (one `u32` holds `a[i][2p]` and `a[i][2p+1]`), `B` (k × n) into
//! panels of [`NR`] columns, each k-pair of a panel one 64-byte vector. The micro-kernel
//! computes an [`MR`] × [`NR`] tile of `C` in 16 registers. Work is split over fixed blocks
//! of [`MB`] rows of `C`, each computed by one thread in a fixed order, so results do not
//! depend on the thread count. [`matmul_bf16_reference`] (f32 arithmetic on the same
//! rounded inputs) is the test oracle.

use rayon::prelude::*;

use super::gemm::{Mat, SendMat};
use crate::train::simd::multiversion;

/// Rows of a micro-tile.
pub const MR: usize = 8;
/// Columns of a micro-tile (two 16-lane vectors).
pub const NR: usize = 32;
/// Rows of `C` per parallel task.
const MB: usize = 64;
/// k-pairs per cache block (a 20 KiB slice of a `B` panel stays in L1).
const KC: usize = 160;

/// Whether this CPU runs the bf16 kernel (AVX-512 F + BF16; `SMELT_NO_BF16` turns it off).
pub fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        use std::sync::OnceLock;
        static F: OnceLock<bool> = OnceLock::new();
        *F.get_or_init(|| {
            std::is_x86_feature_detected!("avx512f")
                && std::is_x86_feature_detected!("avx512bf16")
                && std::env::var_os("SMELT_NO_BF16").is_none()
        })
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// Whether bf16 products pay here: [`available`] and `vdpbf16ps` measured (once, ~1 ms) to
/// do at least 1.25× the multiply-adds per second of f32 FMA on 512-bit vectors. On AMD
/// Zen 4 it does about 2×; on Intel Sapphire/Emerald Rapids about half (one `vdpbf16ps`
/// every two cycles against two FMAs a cycle), where the f32 kernels
/// ([`super::f32x512`]) are faster. `SMELT_BF16=1` skips the measurement.
pub fn preferred() -> bool {
    use std::sync::OnceLock;
    static F: OnceLock<bool> = OnceLock::new();
    *F.get_or_init(|| {
        if !available() {
            return false;
        }
        if std::env::var_os("SMELT_BF16").is_some() {
            return true;
        }
        peak_rates().is_some_and(|(bf, f)| bf >= 1.25 * f)
    })
}

/// Multiply-adds per second of `vdpbf16ps` and of f32 FMA on 512-bit vectors on this core
/// (register-only loops, best of three short runs); `None` without AVX-512 BF16.
pub fn peak_rates() -> Option<(f64, f64)> {
    if !available() {
        return None;
    }
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: available() checked AVX-512 F and BF16.
        Some(unsafe { (peak_rate(true), peak_rate(false)) })
    }
    #[cfg(not(target_arch = "x86_64"))]
    None
}

/// Multiply-adds per second of a register-only loop of 16 independent `vdpbf16ps` (`bf`)
/// or `vfmadd231ps` chains, best of three short runs.
///
/// # Safety
/// The CPU must support AVX-512 F and BF16.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn peak_rate(bf: bool) -> f64 {
    use std::arch::x86_64::*;
    let iters = 20_000;
    let mut best = 0f64;
    for _ in 0..3 {
        let mut acc = [_mm512_setzero_ps(); 16];
        let x = std::hint::black_box(_mm512_set1_ps(1.0));
        let xb: __m512bh = std::mem::transmute(std::hint::black_box(_mm512_set1_epi32(0x3f80_3f80)));
        let t = std::time::Instant::now();
        for _ in 0..iters {
            for a in acc.iter_mut() {
                *a = if bf { _mm512_dpbf16_ps(*a, xb, xb) } else { _mm512_fmadd_ps(x, x, *a) };
            }
        }
        std::hint::black_box(&acc);
        let macs = (iters * 16) as f64 * if bf { 32.0 } else { 16.0 };
        best = best.max(macs / t.elapsed().as_secs_f64().max(1e-9));
    }
    best
}

/// `x` rounded to bf16 (nearest, ties to even; NaN stays NaN), as its 16 bits.
#[inline(always)]
pub fn to_bf16(x: f32) -> u16 {
    let b = x.to_bits();
    let rounded = (b.wrapping_add(0x7fff + ((b >> 16) & 1)) >> 16) as u16;
    let quiet_nan = ((b >> 16) | 0x40) as u16;
    // A select, not a branch, so packing loops vectorise.
    if b & 0x7fff_ffff > 0x7f80_0000 {
        quiet_nan
    } else {
        rounded
    }
}

multiversion! {
    /// `dst[i] = pair(lo[i], hi[i])`.
    fn pair_rows(dst: &mut [u32], lo: &[f32], hi: &[f32]) {
        for ((d, &l), &h) in dst.iter_mut().zip(lo).zip(hi) {
            *d = pair(l, h);
        }
    }
}

multiversion! {
    /// `dst[p] = pair(src[2p], src[2p + 1])` (a missing last element counts as 0).
    fn pair_adjacent(dst: &mut [u32], src: &[f32]) {
        let mut it = src.chunks_exact(2);
        for (d, c) in dst.iter_mut().zip(&mut it) {
            *d = pair(c[0], c[1]);
        }
        if let [last] = it.remainder() {
            dst[src.len() / 2] = pair(*last, 0.0);
        }
    }
}

#[inline(always)]
pub fn from_bf16(h: u16) -> f32 {
    f32::from_bits((h as u32) << 16)
}

#[inline(always)]
fn pair(lo: f32, hi: f32) -> u32 {
    to_bf16(lo) as u32 | (to_bf16(hi) as u32) << 16
}

/// Read element (r, c) of a view.
///
/// # Safety
/// (r, c) must lie inside the view, whose memory must be valid.
#[inline(always)]
unsafe fn at(m: &Mat, r: usize, c: usize) -> f32 {
    *m.ptr.offset(r as isize * m.rs + c as isize * m.cs)
}

/// `A` (m × k) rounded to bf16 as rows of k-pairs, rows padded to a multiple of [`MR`].
pub struct PackedA {
    m: usize,
    k: usize,
    /// k-pairs per row.
    kp: usize,
    data: Vec<u32>,
}

/// `B` (k × n) rounded to bf16 as panels of [`NR`] columns: `data[(panel · kp + p) · NR + c]`.
pub struct PackedB {
    k: usize,
    n: usize,
    kp: usize,
    data: Vec<u32>,
}


pub fn pack_a(a: Mat) -> PackedA {
    let (m, k) = (a.rows, a.cols);
    let kp = k.div_ceil(2);
    let mp = m.div_ceil(MR) * MR;
    let mut data = vec![0u32; mp * kp];
    let a = SendMat(a);
    if kp > 0 {
        data.par_chunks_mut(kp * MR).enumerate().for_each(|(t, rows)| {
            let a = a;
            let live = MR.min(m.saturating_sub(t * MR));
            if a.0.cs == 1 {
                // Rows contiguous.
                for (ri, row) in rows.chunks_mut(kp).take(live).enumerate() {
                    // SAFETY: row t · MR + ri < m holds k values from its start.
                    let src = unsafe { std::slice::from_raw_parts(a.0.ptr.offset(((t * MR + ri) as isize) * a.0.rs), k) };
                    pair_adjacent(row, src);
                }
                return;
            }
            if a.0.rs == 1 {
                // Columns contiguous (a transposed row-major matrix): gather MR rows per pair.
                let mut lo = [0f32; MR];
                let mut hi = [0f32; MR];
                let mut out = [0u32; MR];
                for p in 0..kp {
                    // SAFETY: columns 2p (and 2p + 1 when < k) and rows t · MR .. + live are inside A.
                    unsafe {
                        let c0 = a.0.ptr.offset((2 * p) as isize * a.0.cs + (t * MR) as isize);
                        lo[..live].copy_from_slice(std::slice::from_raw_parts(c0, live));
                        if 2 * p + 1 < k {
                            hi[..live].copy_from_slice(std::slice::from_raw_parts(c0.offset(a.0.cs), live));
                        } else {
                            hi = [0.0; MR];
                        }
                    }
                    pair_rows(&mut out, &lo, &hi);
                    for ri in 0..live {
                        rows[ri * kp + p] = out[ri];
                    }
                }
                return;
            }
            for (ri, row) in rows.chunks_mut(kp).enumerate() {
                let r = t * MR + ri;
                if r >= m {
                    break;
                }
                // SAFETY: r < m and every column index < k.
                unsafe {
                    for (p, v) in row.iter_mut().enumerate() {
                        let c = 2 * p;
                        *v = pair(at(&a.0, r, c), if c + 1 < k { at(&a.0, r, c + 1) } else { 0.0 });
                    }
                }
            }
        });
    }
    PackedA { m, k, kp, data }
}

pub fn pack_b(b: Mat) -> PackedB {
    let (k, n) = (b.rows, b.cols);
    let kp = k.div_ceil(2);
    let panels = n.div_ceil(NR);
    let mut data = vec![0u32; panels * kp * NR];
    let b = SendMat(b);
    if kp > 0 {
        data.par_chunks_mut(kp * NR).enumerate().for_each(|(pi, panel)| {
            let b = b;
            let cols = NR.min(n - pi * NR);
            if b.0.cs == 1 {
                // Rows contiguous: each pair of rows gives one panel row.
                for (p, v) in panel.chunks_mut(NR).enumerate() {
                    let r = 2 * p;
                    // SAFETY: rows r (and r + 1 when < k), columns pi · NR .. + cols are inside B.
                    unsafe {
                        let lo = std::slice::from_raw_parts(b.0.ptr.offset(r as isize * b.0.rs + (pi * NR) as isize), cols);
                        if r + 1 < k {
                            let hi = std::slice::from_raw_parts(b.0.ptr.offset((r + 1) as isize * b.0.rs + (pi * NR) as isize), cols);
                            pair_rows(&mut v[..cols], lo, hi);
                        } else {
                            pair_rows(&mut v[..cols], lo, &[0.0; NR][..cols]);
                        }
                    }
                }
                return;
            }
            for (p, v) in panel.chunks_mut(NR).enumerate() {
                let r = 2 * p;
                // SAFETY: rows r, r + 1 (when < k) and columns pi · NR + c < n are inside B.
                unsafe {
                    for (c, slot) in v.iter_mut().take(cols).enumerate() {
                        let j = pi * NR + c;
                        *slot = pair(at(&b.0, r, j), if r + 1 < k { at(&b.0, r + 1, j) } else { 0.0 });
                    }
                }
            }
        });
    }
    PackedB { k, n, kp, data }
}

/// One tile: `out[r][c] = Σ_p a[r][p] · b[p][c]` over `kc` k-pairs.
///
/// # Safety
/// The CPU must support AVX-512 F and BF16; `a` must hold `MR` rows of `lda` pairs from
/// the starting pair on, `b` `kc · NR` pairs.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn tile(a: *const u32, lda: usize, b: *const u32, kc: usize, out: &mut [f32; MR * NR]) {
    use std::arch::x86_64::*;
    let mut acc = [[_mm512_setzero_ps(); 2]; MR];
    for p in 0..kc {
        let b0: __m512bh = std::mem::transmute(_mm512_loadu_si512(b.add(p * NR) as *const _));
        let b1: __m512bh = std::mem::transmute(_mm512_loadu_si512(b.add(p * NR + 16) as *const _));
        for (r, accr) in acc.iter_mut().enumerate() {
            let av: __m512bh = std::mem::transmute(_mm512_set1_epi32(*a.add(r * lda + p) as i32));
            accr[0] = _mm512_dpbf16_ps(accr[0], av, b0);
            accr[1] = _mm512_dpbf16_ps(accr[1], av, b1);
        }
    }
    for (r, accr) in acc.iter().enumerate() {
        _mm512_storeu_ps(out.as_mut_ptr().add(r * NR), accr[0]);
        _mm512_storeu_ps(out.as_mut_ptr().add(r * NR + 16), accr[1]);
    }
}

/// `dst (m × n, row-major) = scale · A · B`, added to `dst` when `accumulate`. Panics when
/// the kernel is not [`available`] or the shapes disagree.
// Elsewhere the tile call is compiled out and the loop only walks the blocks.
#[cfg_attr(not(target_arch = "x86_64"), allow(unused_variables, unused_mut))]
pub fn matmul_packed(dst: &mut [f32], a: &PackedA, b: &PackedB, scale: f32, accumulate: bool) {
    assert!(available(), "bf16 matmul: this CPU has no AVX-512 BF16");
    assert!(a.k == b.k && a.kp == b.kp, "bf16 matmul: inner dimensions differ");
    let (m, n, kp) = (a.m, b.n, a.kp);
    assert!(dst.len() >= m * n);
    let dst = &mut dst[..m * n];
    if !accumulate {
        dst.fill(0.0);
    }
    if m == 0 || n == 0 || kp == 0 {
        return;
    }
    let panels = n.div_ceil(NR);
    dst.par_chunks_mut(MB * n).enumerate().for_each(|(blk, cblock)| {
        let r0 = blk * MB;
        let rows = cblock.len() / n;
        let mut out = [0f32; MR * NR];
        for p0 in (0..kp).step_by(KC) {
            let kc = KC.min(kp - p0);
            for pi in 0..panels {
                let bptr = b.data[(pi * kp + p0) * NR..].as_ptr();
                let cols = NR.min(n - pi * NR);
                for t in (0..rows).step_by(MR) {
                    let aptr = a.data[(r0 + t) * kp + p0..].as_ptr();
                    // SAFETY: available() checked the CPU; A is padded to whole MR-row tiles
                    // and each B panel holds kp · NR pairs.
                    #[cfg(target_arch = "x86_64")]
                    unsafe {
                        tile(aptr, kp, bptr, kc, &mut out)
                    };
                    for r in 0..MR.min(rows - t) {
                        let crow = &mut cblock[(t + r) * n + pi * NR..(t + r) * n + pi * NR + cols];
                        for (c, v) in crow.iter_mut().enumerate() {
                            *v += scale * out[r * NR + c];
                        }
                    }
                }
            }
        }
    });
}

/// Pack both operands and multiply: `dst = scale · a · b (+ dst)`.
pub fn matmul_bf16(dst: &mut [f32], a: Mat, b: Mat, scale: f32, accumulate: bool) {
    matmul_packed(dst, &pack_a(a), &pack_b(b), scale, accumulate)
}

/// The oracle: the same bf16-rounded inputs multiplied in f32 (f64 sums), plainly.
pub fn matmul_bf16_reference(dst: &mut [f32], a: Mat, b: Mat, scale: f32, accumulate: bool) {
    let (m, k, n) = (a.rows, a.cols, b.cols);
    for i in 0..m {
        for j in 0..n {
            let mut s = 0f64;
            for p in 0..k {
                // SAFETY: indices inside both views.
                let (x, y) = unsafe { (at(&a, i, p), at(&b, p, j)) };
                s += from_bf16(to_bf16(x)) as f64 * from_bf16(to_bf16(y)) as f64;
            }
            let v = scale * s as f32;
            dst[i * n + j] = if accumulate { dst[i * n + j] + v } else { v };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sample::Rng;

    fn random(n: usize, seed: u64) -> Vec<f32> {
        let mut r = Rng::new(seed);
        (0..n).map(|_| (r.next_u64() % 20001) as f32 / 10000.0 - 1.0).collect()
    }

    #[test]
    fn rounding() {
        assert_eq!(to_bf16(1.0), 0x3f80);
        assert_eq!(from_bf16(to_bf16(1.0 + 1.0 / 512.0)), 1.0); // tie → even
        assert_eq!(from_bf16(to_bf16(1.0 + 3.0 / 512.0)), 1.0 + 4.0 / 512.0);
        assert!(from_bf16(to_bf16(f32::NAN)).is_nan());
        assert_eq!(from_bf16(to_bf16(f32::INFINITY)), f32::INFINITY);
    }

    #[test]
    fn matches_reference_on_odd_shapes_and_views() {
        if !available() {
            eprintln!("no AVX-512 BF16 on this CPU: bf16 kernel not exercised");
            return;
        }
        // Shapes off every block size; k odd; B given transposed (strided view).
        // Every packing path: A rows or columns contiguous, B rows or columns contiguous.
        for (i, &(m, k, n)) in [(1, 1, 1), (9, 7, 33), (70, 333, 65), (130, 40, 17), (5, 2, 3), (17, 129, 40)].iter().enumerate() {
            let a = random(m * k, 1);
            let bt = random(n * k, 2);
            let mut want = random(m * n, 3);
            let mut got = want.clone();
            let av = if i % 2 == 0 { Mat::rows(&a, m, k) } else { Mat::rows(&a, k, m).t() };
            let bv = if i % 3 == 0 { Mat::rows(&bt, k, n) } else { Mat::rows(&bt, n, k).t() };
            matmul_bf16_reference(&mut want, av, bv, 0.5, true);
            matmul_bf16(&mut got, av, bv, 0.5, true);
            let scale = want.iter().fold(1e-3f32, |s, v| s.max(v.abs()));
            let d = want.iter().zip(&got).fold(0f32, |s, (x, y)| s.max((x - y).abs())) / scale;
            assert!(d < 1e-5, "({m}, {k}, {n}): relative difference {d}");
            // Overwriting.
            matmul_bf16(&mut got, av, bv, 1.0, false);
            matmul_bf16_reference(&mut want, av, bv, 1.0, false);
            let d = want.iter().zip(&got).fold(0f32, |s, (x, y)| s.max((x - y).abs())) / scale;
            assert!(d < 1e-5, "({m}, {k}, {n}) overwrite: {d}");
        }
    }
}
