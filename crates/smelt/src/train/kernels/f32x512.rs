//! f32 matrix products on AVX-512 (`vfmadd231ps` on 512-bit vectors), for the training
//! path's products where the `gemm` crate (stable Rust: AVX2 kernels only) leaves half of an
//! AVX-512 core idle.
//!
//! `dst (m × n) = scale · A (m × k) · B (k × n)`: `B` is packed into panels of [`NR`]
//! columns (each k-row of a panel one 128-byte line pair, zero-padded on the right); `A` is
//! read in place at any strides (one broadcast per element, so a transposed view costs
//! nothing extra). The micro-kernel keeps an [`MR`] × [`NR`] tile of `C` in 16 registers.
//! Work is split over fixed blocks of [`MB`] rows × [`NB`] columns and `k` is summed in a
//! fixed order, so results do not depend on the thread count. [`super::gemm`] dispatches
//! here on AVX-512 CPUs; its `gemm`-crate path is the oracle in the tests.

use rayon::prelude::*;

use super::gemm::{Mat, SendMat};

/// Rows of a micro-tile.
pub const MR: usize = 8;
/// Columns of a micro-tile (two 16-lane vectors).
pub const NR: usize = 32;
/// Rows of `C` per task.
const MB: usize = 64;
/// Columns of `C` per task (a multiple of [`NR`]).
const NB: usize = 256;
/// k-rows per cache block: a 24 KiB slice of a `B` panel stays in L1.
const KC: usize = 192;

/// Whether this CPU runs the kernel (AVX-512 F; `SMELT_NO_AVX512` turns it off).
pub fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        crate::train::simd::has_avx512()
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// `B (k × n)` as panels of [`NR`] columns: `data[(panel · k + p) · NR + c]`.
pub struct PackedB {
    k: usize,
    n: usize,
    data: Vec<f32>,
}

pub fn pack_b(b: Mat) -> PackedB {
    let (k, n) = (b.rows, b.cols);
    let panels = n.div_ceil(NR);
    let mut data = vec![0f32; panels * k * NR];
    let sb = SendMat(b);
    if k > 0 {
        data.par_chunks_mut(k * NR).enumerate().for_each(|(pi, panel)| {
            let b = sb;
            let c0 = pi * NR;
            let cols = NR.min(n - c0);
            for (p, row) in panel.chunks_mut(NR).enumerate() {
                // SAFETY: row p < k and columns c0 .. c0 + cols < n lie inside the view.
                unsafe {
                    let src = b.0.ptr.offset(p as isize * b.0.rs + c0 as isize * b.0.cs);
                    if b.0.cs == 1 {
                        row[..cols].copy_from_slice(std::slice::from_raw_parts(src, cols));
                    } else {
                        for (c, v) in row[..cols].iter_mut().enumerate() {
                            *v = *src.offset(c as isize * b.0.cs);
                        }
                    }
                }
            }
        });
    }
    PackedB { k, n, data }
}

/// One tile: `C[r][c] (+)= scale · Σ_p a_r[p·cs] · b[p][c]` for `nrows` rows and `ncols`
/// columns (`add`: onto what `out` holds).
///
/// # Safety
/// AVX-512 F; each of `rows` points at `kc` elements `cs` apart; `b` holds `kc · NR`
/// values; `out` has `nrows` rows of `ldo` with `ncols ≤ NR` valid columns each.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments)]
unsafe fn tile(rows: &[*const f32; MR], cs: isize, b: *const f32, kc: usize, out: *mut f32, ldo: usize, nrows: usize, ncols: usize, scale: f32, add: bool) {
    use std::arch::x86_64::*;
    let mut acc = [[_mm512_setzero_ps(); 2]; MR];
    let r = *rows;
    for p in 0..kc {
        let b0 = _mm512_loadu_ps(b.add(p * NR));
        let b1 = _mm512_loadu_ps(b.add(p * NR + 16));
        let off = p as isize * cs;
        for (i, accr) in acc.iter_mut().enumerate() {
            let av = _mm512_set1_ps(*r[i].offset(off));
            accr[0] = _mm512_fmadd_ps(av, b0, accr[0]);
            accr[1] = _mm512_fmadd_ps(av, b1, accr[1]);
        }
    }
    let m0: __mmask16 = if ncols >= 16 { !0 } else { (1u16 << ncols) - 1 };
    let m1: __mmask16 = if ncols >= 32 { !0 } else if ncols > 16 { (1u16 << (ncols - 16)) - 1 } else { 0 };
    let s = _mm512_set1_ps(scale);
    for (i, accr) in acc.iter().enumerate().take(nrows) {
        let o = out.add(i * ldo);
        let mut v0 = _mm512_mul_ps(accr[0], s);
        let mut v1 = _mm512_mul_ps(accr[1], s);
        if add {
            v0 = _mm512_add_ps(v0, _mm512_maskz_loadu_ps(m0, o));
            v1 = _mm512_add_ps(v1, _mm512_maskz_loadu_ps(m1, o.add(16)));
        }
        _mm512_mask_storeu_ps(o, m0, v0);
        _mm512_mask_storeu_ps(o.add(16), m1, v1);
    }
}

/// `dst (m × n, row-major) = scale · a · b`, added to `dst` when `accumulate`; `parallel`
/// spreads the fixed blocks over rayon's threads. Panics without [`available`] or when the
/// shapes disagree.
pub fn matmul(dst: &mut [f32], a: Mat, b: Mat, scale: f32, accumulate: bool, parallel: bool) {
    assert_eq!(a.cols, b.rows, "matmul: inner dimensions differ");
    matmul_packed(dst, a, &pack_b(b), scale, accumulate, parallel)
}

/// [`matmul`] with `B` packed already (reused across calls).
// Elsewhere the tile call is compiled out and the loop only walks the blocks.
#[cfg_attr(not(target_arch = "x86_64"), allow(unused_variables, unused_mut))]
pub fn matmul_packed(dst: &mut [f32], a: Mat, b: &PackedB, scale: f32, accumulate: bool, parallel: bool) {
    assert!(available(), "f32 AVX-512 matmul: this CPU has no AVX-512");
    let (m, k, n) = (a.rows, b.k, b.n);
    assert_eq!(a.cols, k, "matmul: inner dimensions differ");
    assert!(dst.len() >= m * n);
    let dst = &mut dst[..m * n];
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            dst.fill(0.0);
        }
        return;
    }
    let (row_blocks, col_blocks) = (m.div_ceil(MB), n.div_ceil(NB));
    let out = SendPtr(dst.as_mut_ptr());
    let sa = SendMat(a);
    let task = |t: usize| {
        let (a, out) = (sa, out);
        let (rb, cb) = (t / col_blocks, t % col_blocks);
        let (r0, r1) = (rb * MB, ((rb + 1) * MB).min(m));
        let (c0, c1) = (cb * NB, ((cb + 1) * NB).min(n));
        for p0 in (0..k).step_by(KC) {
            let kc = KC.min(k - p0);
            for pc in (c0..c1).step_by(NR) {
                let bptr = b.data[(pc / NR * k + p0) * NR..].as_ptr();
                let ncols = NR.min(c1 - pc);
                for i0 in (r0..r1).step_by(MR) {
                    let nrows = MR.min(r1 - i0);
                    // Missing rows of a partial tile repeat the last one (their sums are dropped).
                    let rows: [*const f32; MR] = std::array::from_fn(|i| {
                        let r = i0 + i.min(nrows - 1);
                        // SAFETY: row r < m, column p0 < k: inside the view.
                        unsafe { a.0.ptr.offset(r as isize * a.0.rs + p0 as isize * a.0.cs) }
                    });
                    // SAFETY: available() checked the CPU; each row pointer reads kc elements of
                    // its row, the panel slice holds kc · NR values, and this task alone writes
                    // rows r0..r1 × columns c0..c1 of dst.
                    #[cfg(target_arch = "x86_64")]
                    unsafe {
                        tile(&rows, a.0.cs, bptr, kc, out.0.add(i0 * n + pc), n, nrows, ncols, scale, accumulate || p0 > 0)
                    };
                }
            }
        }
    };
    let tasks = row_blocks * col_blocks;
    if parallel && tasks > 1 {
        (0..tasks).into_par_iter().for_each(task);
    } else {
        (0..tasks).for_each(task);
    }
}

#[derive(Clone, Copy)]
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
struct SendPtr(*mut f32);
// SAFETY: tasks write disjoint blocks of the output.
unsafe impl Send for SendPtr {}
unsafe impl Sync for SendPtr {}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sample::Rng;

    fn reference(a: Mat, b: Mat) -> Vec<f64> {
        let mut c = vec![0f64; a.rows * b.cols];
        for i in 0..a.rows {
            for j in 0..b.cols {
                let mut s = 0f64;
                for p in 0..a.cols {
                    // SAFETY: indices inside both views.
                    unsafe { s += *a.ptr.offset(i as isize * a.rs + p as isize * a.cs) as f64 * *b.ptr.offset(p as isize * b.rs + j as isize * b.cs) as f64 };
                }
                c[i * b.cols + j] = s;
            }
        }
        c
    }

    #[test]
    fn matches_f64_reference_for_odd_shapes_strides_and_accumulation() {
        if !available() {
            eprintln!("no AVX-512 on this CPU: kernel not exercised");
            return;
        }
        let mut rng = Rng::new(5);
        let mut rand = |n: usize| (0..n).map(|_| rng.next_f64() as f32 - 0.5).collect::<Vec<f32>>();
        // Partial tiles and panels, several k blocks, several row and column blocks.
        for (m, k, n) in [(1, 1, 1), (7, 5, 33), (70, 200, 300), (9, 400, 17)] {
            let (av, bv) = (rand(m * k), rand(k * n));
            for (ta, tb) in [(false, false), (true, true)] {
                // The same matrices read as transposed views of transposed storage.
                let at: Vec<f32> = (0..k * m).map(|i| av[(i % m) * k + i / m]).collect();
                let bt: Vec<f32> = (0..n * k).map(|i| bv[(i % k) * n + i / k]).collect();
                let a = if ta { Mat::rows(&at, k, m).t() } else { Mat::rows(&av, m, k) };
                let b = if tb { Mat::rows(&bt, n, k).t() } else { Mat::rows(&bv, k, n) };
                let want = reference(a, b);
                let init = rand(m * n);
                for (acc, par) in [(false, true), (true, false)] {
                    let mut c = init.clone();
                    matmul(&mut c, a, b, 0.5, acc, par);
                    for (i, (&got, &w)) in c.iter().zip(&want).enumerate() {
                        let w = 0.5 * w + if acc { init[i] as f64 } else { 0.0 };
                        assert!((got as f64 - w).abs() < 1e-4 * (1.0 + w.abs()), "({m},{k},{n}) [{i}]: {got} vs {w}");
                    }
                }
            }
        }
    }
}
