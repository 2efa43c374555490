//! Kernels for the K-quants against [`ActFormat::K256`] activations.
//!
//! Per super-block of 256 the integer part is accumulated exactly in i32 lanes:
//! `u8×i8 → i16` pairs (`vpmaddubsw`), then `× scale` into i32 (`vpmaddwd` / `vpdpwssd`).
//! The mins (Q4_K, Q5_K) and the −32 offset (Q6_K) come from the activation's 16-value
//! sums, so the unsigned quants are never re-centred.
//!
//! [`ActFormat::K256`]: crate::kernels::quant::ActFormat

/// Kernel ids (const generic `T`).
pub const Q4_K: u8 = 0;
pub const Q5_K: u8 = 1;
pub const Q6_K: u8 = 2;

macro_rules! k_kernels {
    ($feat:literal) => {
        use crate::kernels::x86::kq::{Q5_K, Q6_K};

        /// Q4_K/Q5_K packed scales → (8 scales, 8 mins) as bytes (ggml's 32-bit shuffle).
        #[inline]
        fn k4_scales(p: &[u8; 12]) -> ([u8; 8], [u8; 8]) {
            const M1: u32 = 0x3f3f3f3f;
            const M2: u32 = 0x0f0f0f0f;
            const M3: u32 = 0x03030303;
            let u = |i: usize| u32::from_le_bytes([p[4 * i], p[4 * i + 1], p[4 * i + 2], p[4 * i + 3]]);
            let (u0, u1, u2) = (u(0), u(1), u(2));
            let sc_lo = u0 & M1;
            let sc_hi = (u2 & M2) | (((u0 >> 6) & M3) << 4);
            let mn_lo = u1 & M1;
            let mn_hi = ((u2 >> 4) & M2) | (((u1 >> 6) & M3) << 4);
            let cat = |a: u32, b: u32| -> [u8; 8] { (a as u64 | (b as u64) << 32).to_le_bytes() };
            (cat(sc_lo, sc_hi), cat(mn_lo, mn_hi))
        }

        /// Q4_K (`T = Q4_K`) and Q5_K: `y[r·ldy + j] = Σ_B (d·da·Σ_j sc_j·Σ q·a − dmin·da·Σ_j m_j·Σ a)`.
        ///
        /// # Safety
        /// As for the 32-value kernels: CPU features, [`Tile`]'s contract, room in `y`.
        #[target_feature(enable = $feat)]
        unsafe fn q45k<const T: u8, const R: usize>(tl: &Tile<'_>, y: *mut f32, ldy: usize) {
            let bytes = if T == Q5_K { 176 } else { 144 };
            let nb = tl.row_bytes / bytes;
            let ActPtrs { q: qa, d: da, bs, .. } = tl.act_ptrs::<R>();
            let m4 = _mm256_set1_epi8(0xF);
            for j in 0..tl.rows {
                let w = tl.w.as_ptr().add(j * tl.row_bytes);
                let mut acc = [_mm256_setzero_ps(); R];
                let mut accm = [_mm_setzero_ps(); R];
                for b in 0..nb {
                    let blk = w.add(b * bytes);
                    prefetch_ahead(blk, bytes);
                    let (d, dmin) = f16_2(blk);
                    let (sc, mn) = k4_scales(&*(blk.add(4) as *const [u8; 12]));
                    // Mins: Σ_j m_j·(bsum[2j] + bsum[2j+1]), 8 products in i32 lanes.
                    let mins = _mm_cvtepu8_epi16(_mm_loadl_epi64(mn.as_ptr() as *const __m128i));
                    for r in 0..R {
                        let s = _mm256_loadu_si256(bs[r].add(16 * b) as *const __m256i);
                        let s32 = _mm_hadd_epi16(_mm256_castsi256_si128(s), _mm256_extracti128_si256::<1>(s));
                        let prod = _mm_cvtepi32_ps(_mm_madd_epi16(mins, s32));
                        accm[r] = _mm_fmadd_ps(_mm_set1_ps(dmin * *da[r].add(b)), prod, accm[r]);
                    }
                    let (qs, mut qh) = if T == Q5_K {
                        (blk.add(48), _mm256_loadu_si256(blk.add(16) as *const __m256i))
                    } else {
                        (blk.add(16), _mm256_setzero_si256())
                    };
                    let mut sumi = [_mm256_setzero_si256(); R];
                    for c in 0..4 {
                        let q = _mm256_loadu_si256(qs.add(32 * c) as *const __m256i);
                        let mut lo = _mm256_and_si256(q, m4);
                        let mut hi = _mm256_and_si256(_mm256_srli_epi16::<4>(q), m4);
                        if T == Q5_K {
                            // Bits 2c and 2c+1 of each qh byte are bit 4 of the low / high values.
                            let one = _mm256_set1_epi8(1);
                            lo = _mm256_or_si256(lo, _mm256_slli_epi16::<4>(_mm256_and_si256(qh, one)));
                            hi = _mm256_or_si256(hi, _mm256_slli_epi16::<3>(_mm256_and_si256(qh, _mm256_set1_epi8(2))));
                            qh = _mm256_srli_epi16::<2>(qh);
                        }
                        let sl = _mm256_set1_epi16(sc[2 * c] as i16);
                        let sh = _mm256_set1_epi16(sc[2 * c + 1] as i16);
                        for r in 0..R {
                            let a = qa[r].add(256 * b + 64 * c);
                            sumi[r] = dpwssd(sumi[r], _mm256_maddubs_epi16(lo, load(a)), sl);
                            sumi[r] = dpwssd(sumi[r], _mm256_maddubs_epi16(hi, load(a.add(32))), sh);
                        }
                    }
                    for r in 0..R {
                        let sc = _mm256_set1_ps(d * *da[r].add(b));
                        acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sumi[r]), sc, acc[r]);
                    }
                }
                for r in 0..R {
                    let m = _mm_add_ps(accm[r], _mm_movehl_ps(accm[r], accm[r]));
                    let m = _mm_cvtss_f32(_mm_add_ss(m, _mm_movehdup_ps(m)));
                    *y.add(r * ldy + j) = hsum_ps(acc[r]) - m;
                }
            }
        }

        /// Q6_K: `y[r·ldy + j] = Σ_B d·da·(Σ_j sc_j·Σ q·a − 32·Σ_j sc_j·bsum_j)`. Same contract.
        #[target_feature(enable = $feat)]
        unsafe fn q6k<const T: u8, const R: usize>(tl: &Tile<'_>, y: *mut f32, ldy: usize) {
            debug_assert_eq!(T, Q6_K);
            let nb = tl.row_bytes / 210;
            let ActPtrs { q: qa, d: da, bs, .. } = tl.act_ptrs::<R>();
            let m4 = _mm256_set1_epi8(0xF);
            let m2 = _mm256_set1_epi8(3);
            // Shuffle picking scale bytes (2p, 2p+1) as [2p ×8, 2p+1 ×8].
            let pair = _mm_set_epi64x(0x0101010101010101, 0);
            for j in 0..tl.rows {
                let w = tl.w.as_ptr().add(j * tl.row_bytes);
                let mut acc = [_mm256_setzero_ps(); R];
                for b in 0..nb {
                    let blk = w.add(b * 210);
                    prefetch_ahead(blk, 210);
                    let d = f16_1(blk.add(208));
                    let sc8 = _mm_loadu_si128(blk.add(192) as *const __m128i);
                    let sc16 = _mm256_cvtepi8_epi16(sc8);
                    let mut sumi = [_mm256_setzero_si256(); R];
                    for r in 0..R {
                        // −32·Σ_j sc_j·bsum_j, folded into the start value.
                        let s = _mm256_loadu_si256(bs[r].add(16 * b) as *const __m256i);
                        sumi[r] = _mm256_sub_epi32(sumi[r], _mm256_slli_epi32::<5>(_mm256_madd_epi16(s, sc16)));
                    }
                    for h in 0..2 {
                        let ql0 = _mm256_loadu_si256(blk.add(64 * h) as *const __m256i);
                        let ql1 = _mm256_loadu_si256(blk.add(64 * h + 32) as *const __m256i);
                        let qh = _mm256_loadu_si256(blk.add(128 + 32 * h) as *const __m256i);
                        let q = [
                            _mm256_or_si256(_mm256_and_si256(ql0, m4), _mm256_slli_epi16::<4>(_mm256_and_si256(qh, m2))),
                            _mm256_or_si256(_mm256_and_si256(ql1, m4), _mm256_slli_epi16::<2>(_mm256_and_si256(qh, _mm256_set1_epi8(12)))),
                            _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16::<4>(ql0), m4), _mm256_and_si256(qh, _mm256_set1_epi8(48))),
                            _mm256_or_si256(
                                _mm256_and_si256(_mm256_srli_epi16::<4>(ql1), m4),
                                _mm256_srli_epi16::<2>(_mm256_and_si256(qh, _mm256_set1_epi8(-64))),
                            ),
                        ];
                        for g in 0..4 {
                            let p = (4 * h + g) as i8;
                            let idx = _mm_add_epi8(pair, _mm_set1_epi8(2 * p));
                            let scv = _mm256_cvtepi8_epi16(_mm_shuffle_epi8(sc8, idx));
                            for r in 0..R {
                                let a = load(qa[r].add(256 * b + 128 * h + 32 * g));
                                sumi[r] = dpwssd(sumi[r], _mm256_maddubs_epi16(q[g], a), scv);
                            }
                        }
                    }
                    for r in 0..R {
                        let sc = _mm256_set1_ps(d * *da[r].add(b));
                        acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sumi[r]), sc, acc[r]);
                    }
                }
                for r in 0..R {
                    *y.add(r * ldy + j) = hsum_ps(acc[r]);
                }
            }
        }
    };
}
