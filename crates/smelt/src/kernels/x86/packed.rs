//! AVX-512 VNNI kernels over packed weights ([`crate::kernels::packed`]): 16 weight rows
//! in the lanes of a vector, one vector of outputs per activation row.
//!
//! Per block of 32 values and activation row: 8 `vpdpbusd` (4 values × 16 rows each, the
//! activation's 4 values broadcast from memory) onto a start value that carries the type's
//! offset (`−8·Σa` for Q4_0, `−128·Σa` for the flipped Q8_0 quants, exact in i32), then one
//! conversion, one scale product and one FMA into the row's 16 outputs. Each unpacked weight
//! vector serves all `R` activation rows of the tile (12 in prefill), and nothing is ever
//! summed across lanes, so a result does not depend on the tile it ran in.

use std::arch::x86_64::*;

use crate::kernels::packed::{PActRow, PANEL, RG};

use super::PREFETCH_AHEAD as PF;

/// Kernel ids (const generic `T`).
pub const Q4_0: u8 = 0;
pub const Q4_1: u8 = 1;
pub const Q8_0: u8 = 2;
pub const Q4_K: u8 = 3;
pub const Q6_K: u8 = 4;

/// Activation `r`'s 4 quants at byte `e` of the block at `q`, as 16 copies.
#[inline(always)]
unsafe fn bcast(q: *const i8, r: usize, e: usize) -> __m512i {
    _mm512_set1_epi32((q.add(r * 32 + e) as *const i32).read_unaligned())
}

/// One block of 4-bit quants (16 rows × 16 bytes at `wq`, Q4_0's nibble order) against `R`
/// activation rows' 32 quants at `q`: `s[r] += Σ u4 · a` per row lane.
#[inline(always)]
unsafe fn dot_nibbles<const R: usize>(wq: *const u8, q: *const i8, s: &mut [__m512i; R]) {
    let low = _mm512_set1_epi8(0x0F);
    for c in 0..4 {
        let x = _mm512_load_si512(wq.add(64 * c) as *const _);
        let lo = _mm512_and_si512(x, low);
        let hi = _mm512_and_si512(_mm512_srli_epi16::<4>(x), low);
        for (r, s) in s.iter_mut().enumerate() {
            *s = _mm512_dpbusd_epi32(*s, lo, bcast(q, r, 4 * c));
        }
        for (r, s) in s.iter_mut().enumerate() {
            *s = _mm512_dpbusd_epi32(*s, hi, bcast(q, r, 16 + 4 * c));
        }
    }
}

/// Weights stream through once per token: ask for block `wq`'s `bytes` PF bytes ahead.
#[inline(always)]
unsafe fn prefetch_block(wq: *const u8, bytes: usize) {
    for l in 0..bytes / 64 {
        _mm_prefetch::<_MM_HINT_T0>(wq.wrapping_add(PF + 64 * l) as *const i8);
    }
}

/// A group's per-block fields (`bytes` of block `b` at `w + at + bytes·b`) are a second
/// stream beside the quants: fetch the line that block `b + ahead` starts, once per line.
/// `ahead` is the quants' prefetch distance in blocks, so both streams arrive together.
#[inline(always)]
unsafe fn prefetch_field(w: *const u8, at: usize, bytes: usize, b: usize, ahead: usize) {
    let next = at + bytes * (b + ahead);
    if next % 64 < bytes {
        _mm_prefetch::<_MM_HINT_T0>(w.wrapping_add(next) as *const i8);
    }
}

/// The tile's outputs: row `r`'s 16 sums to `y[r·ldy ..]`, the first `live` of them.
#[inline(always)]
unsafe fn store<const R: usize>(acc: &[__m512; R], y: *mut f32, ldy: usize, live: usize) {
    let mask: __mmask16 = if live >= RG { !0 } else { (1u16 << live) - 1 };
    for (r, acc) in acc.iter().enumerate() {
        _mm512_mask_storeu_ps(y.add(r * ldy), mask, *acc);
    }
}

/// One tile: the 16 rows of the packed group at `w` (`nb` blocks) against `R` consecutive
/// activation rows of one panel starting at `a`; `y[r·ldy + i]` gets weight row `i` ·
/// activation row `r`, for `i < live`.
///
/// # Safety
/// The CPU has AVX-512 F/BW/VL/VNNI and F16C; `w` points at a whole packed group of type
/// `T` (64-byte aligned); `a` is a row of a [`crate::kernels::packed::PActs`] of `nb`
/// blocks whose panel holds `R` rows from it; `y` has room for `R` rows of stride `ldy`
/// and `live ≤ 16` columns.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
pub unsafe fn tile<const T: u8, const R: usize>(w: *const u8, nb: usize, a: PActRow, y: *mut f32, ldy: usize, live: usize) {
    if T == Q6_K {
        return tile_q6k::<R>(w, nb, a, y, ldy, live);
    }
    if T == Q4_K {
        return tile_q4k::<R>(w, nb, a, y, ldy, live);
    }
    let qb = if T == Q8_0 { 32 } else { 16 };
    let f = nb * RG * qb; // the fields
    let mut acc = [_mm512_setzero_ps(); R];
    for b in 0..nb {
        let wq = w.add(b * RG * qb);
        prefetch_block(wq, RG * qb);
        let ahead = PF / (RG * qb);
        prefetch_field(w, f, 32, b, ahead);
        if T == Q4_1 {
            prefetch_field(w, f + 32 * nb, 32, b, ahead);
        }
        let slot = b * PANEL;
        let q = a.qs.add(slot * 32);
        let mut s: [__m512i; R] = std::array::from_fn(|r| match T {
            Q4_0 => _mm512_set1_epi32(*a.isum8.add(slot + r)),
            Q8_0 => _mm512_set1_epi32(*a.isum128.add(slot + r)),
            _ => _mm512_setzero_si512(),
        });
        if T == Q8_0 {
            for c in 0..8 {
                let v = _mm512_load_si512(wq.add(64 * c) as *const _);
                for (r, s) in s.iter_mut().enumerate() {
                    *s = _mm512_dpbusd_epi32(*s, v, bcast(q, r, 4 * c));
                }
            }
        } else {
            dot_nibbles(wq, q, &mut s);
        }
        // Per-row scale and offset (`w = wd·q + wm` per block).
        let half = |at: usize| _mm512_cvtph_ps(_mm256_load_si256(w.add(at) as *const __m256i));
        let (wd, wm) = match T {
            Q4_1 => (half(f + 32 * b), half(f + 32 * nb + 32 * b)),
            _ => (half(f + 32 * b), _mm512_setzero_ps()),
        };
        for (r, acc) in acc.iter_mut().enumerate() {
            let sc = _mm512_mul_ps(wd, _mm512_set1_ps(*a.d.add(slot + r)));
            *acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s[r]), sc, *acc);
            if T == Q4_1 {
                *acc = _mm512_fmadd_ps(wm, _mm512_set1_ps(*a.s.add(slot + r)), *acc);
            }
        }
    }
    store(&acc, y, ldy, live);
}

/// [`tile`] for Q4_K: blocks of 32 unpack as Q4_0's; `d` and `dmin` are converted once per
/// super-block of 8 blocks instead of once per block. The arithmetic per output is the same
/// for every tile height `R` (so a result does not depend on its batch): per block,
/// `acc += cvt(s)·(sc·d·da)` then `acc −= (m·dmin)·sa`. (Gathering the 8 blocks' sums per
/// super-block before scaling by `d` would save two products per block in decode, but with
/// 12 activation rows the extra accumulators spill, and prefill would pay.)
///
/// # Safety
/// As [`tile`].
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn tile_q4k<const R: usize>(w: *const u8, nb: usize, a: PActRow, y: *mut f32, ldy: usize, live: usize) {
    const QB: usize = 16;
    const AHEAD: usize = PF / (RG * QB);
    let f = nb * RG * QB; // the fields
    let half = |at: usize| _mm512_cvtph_ps(_mm256_load_si256(w.add(at) as *const __m256i));
    let byte_f32 = |at: usize| _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_load_si128(w.add(at) as *const __m128i)));
    let mut acc = [_mm512_setzero_ps(); R];
    for sb in 0..nb / 8 {
        let (d, dmin) = (half(f + 32 * nb + 32 * sb), half(f + 32 * nb + 32 * (nb / 8) + 32 * sb));
        for b in 8 * sb..8 * sb + 8 {
            let wq = w.add(b * RG * QB);
            prefetch_block(wq, RG * QB);
            prefetch_field(w, f, 16, b, AHEAD);
            prefetch_field(w, f + 16 * nb, 16, b, AHEAD);
            prefetch_field(w, f + 32 * nb, 32 / 8, b, AHEAD);
            prefetch_field(w, f + 32 * nb + 32 * (nb / 8), 32 / 8, b, AHEAD);
            let slot = b * PANEL;
            let q = a.qs.add(slot * 32);
            let mut s = [_mm512_setzero_si512(); R];
            dot_nibbles(wq, q, &mut s);
            let wd = _mm512_mul_ps(byte_f32(f + 16 * b), d);
            let wm = _mm512_mul_ps(byte_f32(f + 16 * nb + 16 * b), dmin);
            for (r, acc) in acc.iter_mut().enumerate() {
                let scale = _mm512_mul_ps(wd, _mm512_set1_ps(*a.d.add(slot + r)));
                *acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s[r]), scale, *acc);
                *acc = _mm512_fnmadd_ps(wm, _mm512_set1_ps(*a.s.add(slot + r)), *acc);
            }
        }
    }
    store(&acc, y, ldy, live);
}

/// [`tile`] for Q6_K: per block two sub-blocks of 16 values, `d·sc·(q − 32)` each. A half's
/// 6-bit values are its nibbles (low or high) with 2 bits from its own high-bit vector
/// (chunk `c`'s at bits `2c..2c + 2`) moved to bits 4–5. The halves run one after the
/// other, so the tile holds `R` integer sums at a time (12 rows fit in the registers).
///
/// # Safety
/// As [`tile`].
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn tile_q6k<const R: usize>(w: *const u8, nb: usize, a: PActRow, y: *mut f32, ldy: usize, live: usize) {
    const QB: usize = 24;
    let f = nb * RG * QB;
    let low = _mm512_set1_epi8(0x0F);
    let bits45 = _mm512_set1_epi8(0x30);
    let mut acc = [_mm512_setzero_ps(); R];
    for b in 0..nb {
        let wq = w.add(b * RG * QB);
        prefetch_block(wq, RG * QB);
        const AHEAD: usize = PF / (RG * QB);
        prefetch_field(w, f, 32, b, AHEAD);
        prefetch_field(w, f + 32 * nb, 32 / 8, b, AHEAD);
        let slot = b * PANEL;
        let q = a.qs.add(slot * 32);
        let d = _mm512_cvtph_ps(_mm256_load_si256(w.add(f + 32 * nb + 32 * (b / 8)) as *const __m256i));
        for half in 0..2 {
            let h = _mm512_load_si512(wq.add(64 * (4 + half)) as *const _);
            let mut s: [__m512i; R] = std::array::from_fn(|r| _mm512_set1_epi32((*a.isum32.add(slot + r))[half]));
            for c in 0..4 {
                let x = _mm512_load_si512(wq.add(64 * c) as *const _);
                let nib = if half == 0 { _mm512_and_si512(x, low) } else { _mm512_and_si512(_mm512_srli_epi16::<4>(x), low) };
                // Bits 2c, 2c+1 of each byte to bits 4, 5 (16-bit shifts: the mask drops what crossed bytes).
                let hb = match c {
                    0 => _mm512_slli_epi16::<4>(h),
                    1 => _mm512_slli_epi16::<2>(h),
                    2 => h,
                    _ => _mm512_srli_epi16::<2>(h),
                };
                let v = _mm512_or_si512(nib, _mm512_and_si512(hb, bits45));
                for (r, s) in s.iter_mut().enumerate() {
                    *s = _mm512_dpbusd_epi32(*s, v, bcast(q, r, 16 * half + 4 * c));
                }
            }
            let sc = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_load_si128(w.add(f + 32 * b + 16 * half) as *const __m128i)));
            let wd = _mm512_mul_ps(sc, d);
            for (r, acc) in acc.iter_mut().enumerate() {
                let scale = _mm512_mul_ps(wd, _mm512_set1_ps(*a.d.add(slot + r)));
                *acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s[r]), scale, *acc);
            }
        }
    }
    store(&acc, y, ldy, live);
}
