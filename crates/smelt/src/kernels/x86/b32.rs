//! Kernels for the 32-value block types against [`ActFormat::B32`] activations.
//!
//! Every type is handled as unsigned quants `q` plus a per-block offset term:
//! `w = d·q + c` with `c = m` (Q4_1, Q5_1) or `c = −o·d` (Q4_0: o = 8, Q5_0: 16, Q8_0 on
//! VNNI: 128, its bytes flipped by `^ 0x80`). Then `Σ w·a = d·da·Σ q·qa + c·s` where
//! `s = da·Σ qa` comes with the activations, so the inner loop is one `u8×i8` dot product
//! per block and activation row. (Plain AVX2 has no exact `u8×i8` for 255·127 pairs, so
//! there Q8_0 keeps its signs: `|w| · (a·sign(w))`.)
//!
//! Blocks go 8 at a time and end as one vector of 8 block sums, so the float scaling
//! (`× d·da`, `+ c·s`) costs one FMA per 8 blocks instead of several per block:
//! - plain activations (decode): the 8 per-block i32 vectors are reduced horizontally,
//!   per activation row;
//! - activation panels (prefill, [`QActs::interleave`]): the 8 unpacked weight vectors
//!   are transposed once (8×8 dwords), shared by all `R` rows, and each row's 8 dot
//!   products accumulate straight into one vector with one block per lane; every
//!   activation address is a base pointer plus a constant.
//!
//! Each weight block is unpacked once for all `R` activation rows of the tile. Leftover
//! blocks (`nb mod 8`, never interleaved) go one at a time.
//!
//! [`QActs::interleave`]: crate::kernels::quant::QActs::interleave
//!
//! [`ActFormat::B32`]: crate::kernels::quant::ActFormat

/// Kernel ids (const generic `T`) of the 32-value block types.
pub const Q4_0: u8 = 0;
pub const Q4_1: u8 = 1;
pub const Q5_0: u8 = 2;
pub const Q5_1: u8 = 3;
pub const Q8_0: u8 = 4;

/// Bytes per block of kernel id `t`.
pub const fn block_bytes(t: u8) -> usize {
    match t {
        Q4_0 => 18,
        Q4_1 => 20,
        Q5_0 => 22,
        Q5_1 => 24,
        _ => 34,
    }
}

/// The f16 after `d` is the block's min `m` (else the offset is a multiple of `d`).
pub const fn has_min(t: u8) -> bool {
    matches!(t, Q4_1 | Q5_1)
}

/// How many `u8×i8` pair sums (`vpmaddubsw`, i16) of type `t` can be added before i16
/// could overflow: 4-bit quants give at most 2·15·127 = 3810 (8 fit), 5-bit 2·31·127 = 7874
/// (4 fit); Q8_0's 2·128·127 leaves no room.
pub const fn i16_run(t: u8) -> usize {
    match t {
        Q4_0 | Q4_1 => 8,
        Q5_0 | Q5_1 => 4,
        _ => 1,
    }
}

/// The constant offset `o` of the unsigned quants (types without a min).
pub const fn offset(t: u8) -> f32 {
    match t {
        Q4_0 => 8.0,
        Q5_0 => 16.0,
        _ => 128.0,
    }
}

macro_rules! b32_kernels {
    ($feat:literal) => {
        use crate::kernels::matmul::PanelRef;
        use crate::kernels::quant::{PANEL_Q, PANEL_ROWS};
        use crate::kernels::x86::b32::{block_bytes, has_min, i16_run, offset, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0};

        /// Q8_0 keeps signed quants here (sign trick) when `dpbusd` cannot take 255·127 pairs.
        const fn signed(t: u8) -> bool {
            t == Q8_0 && !HAS_VNNI
        }

        /// The 32 quants of the block at `p`: unsigned, or signed i8 when `signed(T)`.
        #[inline]
        #[target_feature(enable = $feat)]
        unsafe fn unpack32<const T: u8>(p: *const u8) -> __m256i {
            match T {
                Q4_0 => nibbles(p.add(2)),
                Q4_1 => nibbles(p.add(4)),
                Q5_0 => _mm256_or_si256(nibbles(p.add(6)), bits16((p.add(2) as *const u32).read_unaligned())),
                Q5_1 => _mm256_or_si256(nibbles(p.add(8)), bits16((p.add(4) as *const u32).read_unaligned())),
                _ => {
                    let q = _mm256_loadu_si256(p.add(2) as *const __m256i);
                    if signed(T) {
                        q
                    } else {
                        _mm256_xor_si256(q, _mm256_set1_epi8(-128))
                    }
                }
            }
        }

        /// `acc` + Σ over 4-byte groups of `q · a` (i32 lanes), `q` from [`unpack32`].
        #[inline]
        #[target_feature(enable = $feat)]
        unsafe fn dot32<const T: u8>(acc: __m256i, q: __m256i, a: *const i8) -> __m256i {
            let a = load(a);
            if signed(T) {
                dpbusd(acc, _mm256_sign_epi8(q, q), _mm256_sign_epi8(a, q))
            } else {
                dpbusd(acc, q, a)
            }
        }

        /// `y[r·ldy + j] = Σ_b d·da·Σ q·a + c·s` for each weight row `j` and act row `r`;
        /// `IL`: full chunks of 8 blocks come from the activation panels (`tl.panel`).
        ///
        /// # Safety
        /// CPU features of this module; `tl` satisfies [`Tile`]'s contract; `y` has room
        /// for `R` rows of stride `ldy` and `tl.rows` columns.
        #[target_feature(enable = $feat)]
        unsafe fn b32<const T: u8, const R: usize, const IL: bool>(tl: &Tile<'_>, y: *mut f32, ldy: usize) {
            let bytes = block_bytes(T);
            let nb = tl.row_bytes / bytes;
            let ActPtrs { q: qa, d: da, s: sa, .. } = tl.act_ptrs::<R>();
            let neg_off = _mm256_set1_ps(-offset(T));
            let panel = match tl.panel {
                Some(p) => p,
                None => PanelRef { q: core::ptr::null(), d: core::ptr::null(), s: core::ptr::null() },
            };
            for j in 0..tl.rows {
                let w = tl.w.as_ptr().add(j * tl.row_bytes);
                let mut acc = [_mm256_setzero_ps(); R];
                let mut b = 0;
                while b + 8 <= nb {
                    let blk = w.add(b * bytes);
                    prefetch_ahead(blk, 8 * bytes);
                    let h = |i: usize| (blk.add(i * bytes) as *const i32).read_unaligned();
                    let hdr = _mm256_setr_epi32(h(0), h(1), h(2), h(3), h(4), h(5), h(6), h(7));
                    let dv = f16x8::<false>(hdr);
                    let cv = if signed(T) {
                        _mm256_setzero_ps()
                    } else if has_min(T) {
                        f16x8::<true>(hdr)
                    } else {
                        _mm256_mul_ps(dv, neg_off)
                    };
                    let mut q = [_mm256_setzero_si256(); 8];
                    for (i, q) in q.iter_mut().enumerate() {
                        *q = unpack32::<T>(blk.add(i * bytes));
                    }
                    if IL {
                        let qt = transpose8(&q);
                        // Chunk b/8 of the tile's rows: 8 panel rows further on per chunk.
                        let c = b / 8 * PANEL_ROWS;
                        let (pq, pd, ps) = (panel.q.add(c * PANEL_Q), panel.d.add(c * 8), panel.s.add(c * 8));
                        for r in 0..R {
                            let a = pq.add(r * PANEL_Q);
                            let mut sums = _mm256_setzero_si256();
                            if !HAS_VNNI && i16_run(T) > 1 {
                                // Without vpdpbusd: add runs of i16 pair sums before widening.
                                for i0 in (0..8).step_by(i16_run(T)) {
                                    let mut p = _mm256_maddubs_epi16(qt[i0], load(a.add(32 * i0)));
                                    for i in i0 + 1..i0 + i16_run(T) {
                                        p = _mm256_add_epi16(p, _mm256_maddubs_epi16(qt[i], load(a.add(32 * i))));
                                    }
                                    sums = _mm256_add_epi32(sums, _mm256_madd_epi16(p, _mm256_set1_epi16(1)));
                                }
                            } else {
                                for i in 0..8 {
                                    sums = dot32::<T>(sums, qt[i], a.add(32 * i));
                                }
                            }
                            let sc = _mm256_mul_ps(dv, _mm256_loadu_ps(pd.add(8 * r)));
                            acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sums), sc, acc[r]);
                            if !signed(T) {
                                acc[r] = _mm256_fmadd_ps(cv, _mm256_loadu_ps(ps.add(8 * r)), acc[r]);
                            }
                        }
                    } else {
                        for r in 0..R {
                            let a = qa[r].add(32 * b);
                            let mut p = [_mm256_setzero_si256(); 8];
                            for i in 0..8 {
                                p[i] = dot32::<T>(_mm256_setzero_si256(), q[i], a.add(32 * i));
                            }
                            let sc = _mm256_mul_ps(dv, _mm256_loadu_ps(da[r].add(b)));
                            acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(reduce8(&p)), sc, acc[r]);
                            if !signed(T) {
                                acc[r] = _mm256_fmadd_ps(cv, _mm256_loadu_ps(sa[r].add(b)), acc[r]);
                            }
                        }
                    }
                    b += 8;
                }
                let mut tail = [0f32; R];
                while b < nb {
                    let blk = w.add(b * bytes);
                    let (d, m) = f16_2(blk);
                    let c = if has_min(T) { m } else { -offset(T) * d };
                    let q = unpack32::<T>(blk);
                    for r in 0..R {
                        let v = hsum_epi32(dot32::<T>(_mm256_setzero_si256(), q, qa[r].add(32 * b))) as f32;
                        tail[r] += d * *da[r].add(b) * v;
                        if !signed(T) {
                            tail[r] += c * *sa[r].add(b);
                        }
                    }
                    b += 1;
                }
                for r in 0..R {
                    *y.add(r * ldy + j) = hsum_ps(acc[r]) + tail[r];
                }
            }
        }
    };
}
