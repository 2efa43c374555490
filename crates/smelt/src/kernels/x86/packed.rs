//! AVX-512 VNNI kernels over packed weights ([`crate::kernels::packed`]): 512-bit vectors,
//! one block per i32 lane, 16 blocks per step.
//!
//! Per group of 16 blocks and activation row: 8 `vpdpbusd` (4 values × 16 blocks each)
//! onto a start value that carries the type's offset (`−8·Σa` for Q4_0, `−128·Σa` for the
//! flipped Q8_0 quants, exact in i32), one conversion, one scale product, one FMA. The
//! unpacked weight vectors are shared by the `R` activation rows of a tile.

use std::arch::x86_64::*;

use crate::kernels::packed::{tail_lanes, PActRow, LANES, PANEL, SLOT_Q};

use super::PREFETCH_AHEAD as PF;

/// Kernel ids (const generic `T`).
pub const Q4_0: u8 = 0;
pub const Q4_1: u8 = 1;
pub const Q8_0: u8 = 2;
pub const Q4_K: u8 = 3;

/// One tile: `rows` packed weight rows (`stride` bytes apart, `nb` blocks each) against
/// `R` consecutive activation rows of one panel starting at `a`; `y[r·ldy + j]` gets weight
/// row `j` · activation row `r`.
///
/// # Safety
/// The CPU has AVX-512 F/BW/VL/VNNI and F16C; `w` points at `rows` packed rows of type `T`;
/// each of `acts` points at a [`crate::kernels::packed::PActs`] row of `nb` blocks; `y` has
/// room for `R` rows of stride `ldy` and `rows` columns. `a` and the `R − 1` rows after it
/// are rows of one panel of a [`crate::kernels::packed::PActs`] of `nb` blocks.
/// Only groups `groups.0..groups.1` are multiplied; unless that range starts at 0, their
/// sum is added to `y`.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
pub unsafe fn tile<const T: u8, const R: usize>(w: *const u8, stride: usize, rows: usize, nb: usize, a: PActRow, y: *mut f32, ldy: usize, groups: (usize, usize)) {
    let qb = if T == Q8_0 { 32 } else { 16 };
    let hd = nb * qb; // offset of the f16 scales
    let low = _mm512_set1_epi8(0x0F);
    // An interleaved tail group (see `tail_lanes`): `P` rows share a vector, `L` lanes each.
    let ng = nb.div_ceil(LANES);
    let tail = tail_lanes(nb - (ng - 1) * LANES).filter(|_| groups.1 == ng);
    let (tl, tp) = tail.map_or((LANES, 1), |l| (l, LANES / l));
    let tail_live: __mmask16 = ((1u32 << (nb - (ng - 1) * LANES)) - 1) as u16;
    let iota = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    // Lane i takes the weight's tail lane i % L.
    let bcast = _mm512_and_si512(iota, _mm512_set1_epi32(tl as i32 - 1));
    // The integer start value: the type's offset, −8·Σa (the activations hold it so), or
    // −128·Σa for the flipped Q8_0 quants; 0 where a float offset term is added instead.
    let start = |off: __m512i| match T {
        Q4_1 | Q4_K => _mm512_setzero_si512(),
        Q8_0 => _mm512_slli_epi32::<4>(off),
        _ => off,
    };
    // The tile's rows r0 = a.r .. a.r + R of the panel span vectors a.r / P ..= (a.r + R − 1) / P.
    let v0 = a.r / tp;
    let nv = (a.r + R - 1) / tp - v0 + 1;
    for j in 0..rows {
        let wr = w.add(j * stride);
        let mut acc = [_mm512_setzero_ps(); R];
        let mut tacc = [_mm512_setzero_ps(); R];
        for g in groups.0..groups.1 {
            let nt = (nb - g * LANES).min(LANES);
            let m16: __mmask16 = if nt == LANES { !0 } else { (1u16 << nt) - 1 };
            let m64: __mmask64 = if nt == LANES { !0 } else { (1u64 << (4 * nt)) - 1 };
            let chunk = 4 * nt;
            let wq = wr.add(g * LANES * qb);
            // Weights stream through once per token: ask for the lines PF bytes ahead.
            for l in 0..LANES * qb / 64 {
                _mm_prefetch::<_MM_HINT_T0>(wq.wrapping_add(PF + 64 * l) as *const i8);
            }
            let mut q = [_mm512_setzero_si512(); 8];
            if T == Q8_0 {
                for (c, q) in q.iter_mut().enumerate() {
                    *q = _mm512_maskz_loadu_epi8(m64, wq.add(c * chunk) as *const i8);
                }
            } else {
                for c in 0..4 {
                    let x = _mm512_maskz_loadu_epi8(m64, wq.add(c * chunk) as *const i8);
                    q[c] = _mm512_and_si512(x, low);
                    q[c + 4] = _mm512_and_si512(_mm512_srli_epi16::<4>(x), low);
                }
            }
            // Per-lane scale and offset factor (`w = wd·q + wm` per block, Q4_K: `wm = −dmin·m`).
            let (wd, wm) = if T == Q4_K {
                let byte_f32 = |p: *const u8| _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_maskz_loadu_epi8(m16, p as *const i8)));
                // (d, dmin) of super-blocks 2g and 2g + 1 → lanes 0..8 and 8..16.
                let dd = _mm512_castps128_ps512(_mm_cvtph_ps(_mm_maskz_loadu_epi16(if nt > 8 { 0xF } else { 0x3 }, wr.add(hd + 2 * nb + 8 * g) as *const i16)));
                let d = _mm512_permutexvar_ps(_mm512_setr_epi32(0, 0, 0, 0, 0, 0, 0, 0, 2, 2, 2, 2, 2, 2, 2, 2), dd);
                let dmin = _mm512_permutexvar_ps(_mm512_setr_epi32(1, 1, 1, 1, 1, 1, 1, 1, 3, 3, 3, 3, 3, 3, 3, 3), dd);
                (_mm512_mul_ps(byte_f32(wr.add(hd + 16 * g)), d), _mm512_sub_ps(_mm512_setzero_ps(), _mm512_mul_ps(byte_f32(wr.add(hd + nb + 16 * g)), dmin)))
            } else {
                let wd = _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m16, wr.add(hd + 32 * g) as *const i16));
                let wm = if T == Q4_1 {
                    _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m16, wr.add(hd + 2 * nb + 32 * g) as *const i16))
                } else {
                    _mm512_setzero_ps()
                };
                (wd, wm)
            };
            if tail.is_some() && g == ng - 1 {
                // Interleaved tail: the weight's lanes broadcast to every row's place, then
                // one pass per shared vector (slot v of the panel holds rows v·P .. v·P + P).
                for q in q.iter_mut() {
                    *q = _mm512_permutexvar_epi32(bcast, *q);
                }
                let (wd, wm) = (_mm512_permutexvar_ps(bcast, wd), _mm512_permutexvar_ps(bcast, wm));
                let at = |v: usize| v * SLOT_Q;
                let pq = a.qs.wrapping_sub(a.r * SLOT_Q).add(g * PANEL * SLOT_Q);
                let pf = |p: *const f32| p.wrapping_sub(a.r * LANES).add(g * PANEL * LANES);
                let (pd, ps) = (pf(a.d), pf(a.s));
                let pi = a.isum.wrapping_sub(a.r * LANES).add(g * PANEL * LANES);
                for (vi, t) in tacc.iter_mut().enumerate().take(nv) {
                    let v = v0 + vi;
                    let mut sumi = start(_mm512_loadu_si512(pi.add(v * LANES) as *const _));
                    for (c, q) in q.iter().enumerate() {
                        sumi = _mm512_dpbusd_epi32(sumi, *q, _mm512_loadu_si512(pq.add(at(v) + 64 * c) as *const _));
                    }
                    let sc = _mm512_mul_ps(wd, _mm512_loadu_ps(pd.add(v * LANES)));
                    *t = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sumi), sc, *t);
                    if T == Q4_1 || T == Q4_K {
                        *t = _mm512_fmadd_ps(wm, _mm512_loadu_ps(ps.add(v * LANES)), *t);
                    }
                }
                continue;
            }
            // This group's slot of row 0; row r is r slots further on.
            let (aq, ad, ai, as_) = (a.qs.add(g * PANEL * SLOT_Q), a.d.add(g * PANEL * LANES), a.isum.add(g * PANEL * LANES), a.s.add(g * PANEL * LANES));
            for r in 0..R {
                let mut sumi = start(_mm512_maskz_loadu_epi32(m16, ai.add(r * LANES)));
                let aq = aq.add(r * SLOT_Q);
                if nt == LANES {
                    for (c, q) in q.iter().enumerate() {
                        sumi = _mm512_dpbusd_epi32(sumi, *q, _mm512_loadu_si512(aq.add(64 * c) as *const _));
                    }
                } else {
                    for (c, q) in q.iter().enumerate() {
                        sumi = _mm512_dpbusd_epi32(sumi, *q, _mm512_maskz_loadu_epi8(m64, aq.add(c * chunk)));
                    }
                }
                let sc = _mm512_mul_ps(wd, _mm512_maskz_loadu_ps(m16, ad.add(r * LANES)));
                acc[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sumi), sc, acc[r]);
                if T == Q4_1 || T == Q4_K {
                    acc[r] = _mm512_fmadd_ps(wm, _mm512_maskz_loadu_ps(m16, as_.add(r * LANES)), acc[r]);
                }
            }
        }
        if let Some(l) = tail {
            for (r, acc) in acc.iter_mut().enumerate() {
                // Row a.r + r's live lanes of its shared tail vector, moved to lanes 0..nt
                // and added there (the same adds whichever place the row had).
                let rr = a.r + r;
                let t = _mm512_permutexvar_ps(_mm512_add_epi32(iota, _mm512_set1_epi32(((rr % tp) * l) as i32)), tacc[rr / tp - v0]);
                *acc = _mm512_mask_add_ps(*acc, tail_live, *acc, t);
            }
        }
        // 8-row tiles sum their rows in one transposing tree (~40 instructions instead of
        // 8 × 8), in `_mm512_reduce_add_ps`'s order, so a row's result does not depend on
        // the tile it ran in.
        let sums: [f32; R] = if R == 8 {
            let v = reduce8(&acc[..8].try_into().unwrap());
            std::array::from_fn(|r| v[r])
        } else {
            std::array::from_fn(|r| _mm512_reduce_add_ps(acc[r]))
        };
        for (r, v) in sums.into_iter().enumerate() {
            // Slices after the first add on (in slice order, whatever R: batch-invariant).
            let y = y.add(r * ldy + j);
            *y = if groups.0 == 0 { v } else { *y + v };
        }
    }
}

/// The lane sums of 8 vectors, each added as `_mm512_reduce_add_ps` adds: 256-bit halves,
/// then 128-bit halves, then lanes (0 + 2, 1 + 3), then those two.
#[target_feature(enable = "avx512f")]
unsafe fn reduce8(a: &[__m512; 8]) -> [f32; 8] {
    // halves: [x.q0 + x.q2, x.q1 + x.q3, y.q0 + y.q2, y.q1 + y.q3] for the pair (x, y)
    let h = |x: __m512, y: __m512| _mm512_add_ps(_mm512_shuffle_f32x4::<0b01_00_01_00>(x, y), _mm512_shuffle_f32x4::<0b11_10_11_10>(x, y));
    let (p0, p1, p2, p3) = (h(a[0], a[1]), h(a[2], a[3]), h(a[4], a[5]), h(a[6], a[7]));
    // quarters: one per row, (q0 + q2) + (q1 + q3)
    let q = |x: __m512, y: __m512| _mm512_add_ps(_mm512_shuffle_f32x4::<0b10_00_10_00>(x, y), _mm512_shuffle_f32x4::<0b11_01_11_01>(x, y));
    let (t0, t1) = (q(p0, p1), q(p2, p3)); // rows 0-3, rows 4-7
    // per quarter: [r0 + r2, s0 + s2, r1 + r3, s1 + s3] for rows (r, s) = (i, i + 4)
    let u = _mm512_add_ps(_mm512_unpacklo_ps(t0, t1), _mm512_unpackhi_ps(t0, t1));
    let w = _mm512_add_ps(u, _mm512_permute_ps::<0b01_00_11_10>(u));
    let mut lanes = [0f32; 16];
    _mm512_storeu_ps(lanes.as_mut_ptr(), w);
    std::array::from_fn(|r| lanes[4 * (r % 4) + r / 4])
}
