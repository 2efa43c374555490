//! Helpers shared by every x86 kernel, activation quantization and the tile dispatch.
//! Expanded inside each ISA module, after its `dpbusd` / `dpwssd` / `bits16`.

macro_rules! common {
    ($feat:literal) => {
        use crate::kernels::matmul::{by_nr, ActPtrs, Tile};
        use crate::load::gguf::GgmlType;

        /// Ask for the `len` bytes that lie [`PREFETCH_AHEAD`] bytes after `p`: weights stream
        /// through once per token, and the hardware prefetcher alone leaves decode well short
        /// of the memory's bandwidth.
        #[inline]
        #[target_feature(enable = $feat)]
        unsafe fn prefetch_ahead(p: *const u8, len: usize) {
            let at = p.wrapping_add(crate::kernels::x86::PREFETCH_AHEAD);
            for l in (0..len).step_by(64) {
                _mm_prefetch::<_MM_HINT_T0>(at.wrapping_add(l) as *const i8);
            }
        }

        #[inline]
        #[target_feature(enable = $feat)]
        fn hsum_ps(v: __m256) -> f32 {
            let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
            let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
            _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)))
        }

        #[inline]
        #[target_feature(enable = $feat)]
        fn hmax_ps(v: __m256) -> f32 {
            let s = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
            let s = _mm_max_ps(s, _mm_movehl_ps(s, s));
            _mm_cvtss_f32(_mm_max_ss(s, _mm_movehdup_ps(s)))
        }

        #[inline]
        #[target_feature(enable = $feat)]
        fn hsum_epi32(v: __m256i) -> i32 {
            let s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256::<1>(v));
            let s = _mm_add_epi32(s, _mm_unpackhi_epi64(s, s));
            _mm_cvtsi128_si32(_mm_add_epi32(s, _mm_shuffle_epi32::<0b10_11_00_01>(s)))
        }

        /// The f16 at `p`, widened.
        #[inline]
        #[target_feature(enable = $feat)]
        unsafe fn f16_1(p: *const u8) -> f32 {
            let bits = (p as *const u16).read_unaligned();
            _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(bits as i32)))
        }

        /// The two consecutive f16 at `p` (a block's `d` and `m`), widened.
        #[inline]
        #[target_feature(enable = $feat)]
        unsafe fn f16_2(p: *const u8) -> (f32, f32) {
            let bits = (p as *const u32).read_unaligned();
            let v = _mm_cvtph_ps(_mm_cvtsi32_si128(bits as i32));
            (_mm_cvtss_f32(v), _mm_cvtss_f32(_mm_movehdup_ps(v)))
        }

        /// 16 packed bytes at `p` → 32 nibbles: low nibbles in bytes 0..16, high in 16..32.
        #[inline]
        #[target_feature(enable = $feat)]
        unsafe fn nibbles(p: *const u8) -> __m256i {
            // Both halves get the same 16 bytes; the upper half is shifted right by 4
            // (within 64-bit lanes: the bits shifted in from the next byte are masked off).
            let x = _mm256_broadcastsi128_si256(_mm_loadu_si128(p as *const __m128i));
            _mm256_and_si256(_mm256_srlv_epi64(x, _mm256_setr_epi64x(0, 0, 4, 4)), _mm256_set1_epi8(0xF))
        }

        /// Lane `i` of the result: the sum of the 8 lanes of `p[i]`.
        #[inline]
        #[target_feature(enable = $feat)]
        fn reduce8(p: &[__m256i; 8]) -> __m256i {
            let h01 = _mm256_hadd_epi32(p[0], p[1]);
            let h23 = _mm256_hadd_epi32(p[2], p[3]);
            let h45 = _mm256_hadd_epi32(p[4], p[5]);
            let h67 = _mm256_hadd_epi32(p[6], p[7]);
            // [Σ p0 lo, Σ p1 lo, Σ p2 lo, Σ p3 lo | the same over the upper halves]
            let h0123 = _mm256_hadd_epi32(h01, h23);
            let h4567 = _mm256_hadd_epi32(h45, h67);
            _mm256_add_epi32(
                _mm256_permute2x128_si256::<0x20>(h0123, h4567),
                _mm256_permute2x128_si256::<0x31>(h0123, h4567),
            )
        }

        /// 8×8 transpose of i32 lanes: lane `b` of `out[i]` is lane `i` of `v[b]`.
        #[inline]
        #[target_feature(enable = $feat)]
        fn transpose8(v: &[__m256i; 8]) -> [__m256i; 8] {
            let a0 = _mm256_unpacklo_epi32(v[0], v[1]);
            let a1 = _mm256_unpackhi_epi32(v[0], v[1]);
            let a2 = _mm256_unpacklo_epi32(v[2], v[3]);
            let a3 = _mm256_unpackhi_epi32(v[2], v[3]);
            let a4 = _mm256_unpacklo_epi32(v[4], v[5]);
            let a5 = _mm256_unpackhi_epi32(v[4], v[5]);
            let a6 = _mm256_unpacklo_epi32(v[6], v[7]);
            let a7 = _mm256_unpackhi_epi32(v[6], v[7]);
            // b0: lanes 0 of v0..v3 | lanes 4 of v0..v3, b1: lanes 1 | 5, b2: 2 | 6, b3: 3 | 7
            let b0 = _mm256_unpacklo_epi64(a0, a2);
            let b1 = _mm256_unpackhi_epi64(a0, a2);
            let b2 = _mm256_unpacklo_epi64(a1, a3);
            let b3 = _mm256_unpackhi_epi64(a1, a3);
            let b4 = _mm256_unpacklo_epi64(a4, a6);
            let b5 = _mm256_unpackhi_epi64(a4, a6);
            let b6 = _mm256_unpacklo_epi64(a5, a7);
            let b7 = _mm256_unpackhi_epi64(a5, a7);
            [
                _mm256_permute2x128_si256::<0x20>(b0, b4),
                _mm256_permute2x128_si256::<0x20>(b1, b5),
                _mm256_permute2x128_si256::<0x20>(b2, b6),
                _mm256_permute2x128_si256::<0x20>(b3, b7),
                _mm256_permute2x128_si256::<0x31>(b0, b4),
                _mm256_permute2x128_si256::<0x31>(b1, b5),
                _mm256_permute2x128_si256::<0x31>(b2, b6),
                _mm256_permute2x128_si256::<0x31>(b3, b7),
            ]
        }

        /// The low (`HIGH = false`) or high 16 bits of each i32 lane, as 8 widened f16.
        #[inline]
        #[target_feature(enable = $feat)]
        fn f16x8<const HIGH: bool>(v: __m256i) -> __m256 {
            let h = if HIGH { _mm256_srli_epi32::<16>(v) } else { _mm256_and_si256(v, _mm256_set1_epi32(0xFFFF)) };
            let p = _mm256_permute4x64_epi64::<0b00_00_10_00>(_mm256_packus_epi32(h, h));
            _mm256_cvtph_ps(_mm256_castsi256_si128(p))
        }

        #[inline]
        #[target_feature(enable = $feat)]
        unsafe fn load(p: *const i8) -> __m256i {
            _mm256_loadu_si256(p as *const __m256i)
        }

        /// 32 floats at `x` → 32 i8 at `q` with scale `amax/127` (bit-identical to
        /// `quant::quantize_block`); returns the four i32 vectors of quants for sums.
        #[inline]
        #[target_feature(enable = $feat)]
        unsafe fn quantize32(x: *const f32, id: f32, q: *mut i8) -> [__m256i; 4] {
            let idv = _mm256_set1_ps(id);
            let mut i = [_mm256_setzero_si256(); 4];
            for (j, v) in i.iter_mut().enumerate() {
                let xv = _mm256_mul_ps(_mm256_loadu_ps(x.add(8 * j)), idv);
                *v = _mm256_cvtps_epi32(_mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(xv));
            }
            // packs work per 128-bit lane: restore element order with a dword permutation.
            let p = _mm256_packs_epi16(_mm256_packs_epi32(i[0], i[1]), _mm256_packs_epi32(i[2], i[3]));
            let p = _mm256_permutevar8x32_epi32(p, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
            _mm256_storeu_si256(q as *mut __m256i, p);
            i
        }

        /// max |x| over `n` values (a multiple of 8), or NaN when one of them is NaN.
        #[inline]
        #[target_feature(enable = $feat)]
        unsafe fn amax(x: *const f32, n: usize) -> f32 {
            let sign = _mm256_set1_ps(-0.0);
            let mut m = _mm256_setzero_ps();
            let mut nan = _mm256_setzero_ps();
            for i in (0..n).step_by(8) {
                let v = _mm256_loadu_ps(x.add(i));
                m = _mm256_max_ps(m, _mm256_andnot_ps(sign, v));
                nan = _mm256_or_ps(nan, _mm256_cmp_ps::<_CMP_UNORD_Q>(v, v));
            }
            if _mm256_movemask_ps(nan) != 0 {
                f32::NAN
            } else {
                hmax_ps(m)
            }
        }

        /// SIMD twin of `quant::quantize_row_b32` (same results, bit for bit).
        #[target_feature(enable = $feat)]
        pub fn quantize_row_b32(x: &[f32], qs: &mut [i8], d: &mut [f32], s: &mut [f32]) {
            let nb = x.len() / 32;
            assert!(qs.len() >= nb * 32 && d.len() >= nb && s.len() >= nb);
            for b in 0..nb {
                // SAFETY: block b lies within x and qs (checked above).
                unsafe {
                    let xb = x.as_ptr().add(32 * b);
                    let db = amax(xb, 32) / 127.0;
                    let id = if db > 0.0 { 1.0 / db } else { 0.0 };
                    let i = quantize32(xb, id, qs.as_mut_ptr().add(32 * b));
                    let sum = hsum_epi32(_mm256_add_epi32(_mm256_add_epi32(i[0], i[1]), _mm256_add_epi32(i[2], i[3])));
                    d[b] = db;
                    s[b] = db * sum as f32;
                }
            }
        }

        /// SIMD twin of `quant::quantize_row_k256`.
        #[target_feature(enable = $feat)]
        pub fn quantize_row_k256(x: &[f32], qs: &mut [i8], d: &mut [f32], bsums: &mut [i16]) {
            let nb = x.len() / 256;
            assert!(qs.len() >= nb * 256 && d.len() >= nb && bsums.len() >= nb * 16);
            for b in 0..nb {
                // SAFETY: super-block b lies within x and qs (checked above).
                unsafe {
                    let xb = x.as_ptr().add(256 * b);
                    let db = amax(xb, 256) / 127.0;
                    let id = if db > 0.0 { 1.0 / db } else { 0.0 };
                    for c in 0..8 {
                        let i = quantize32(xb.add(32 * c), id, qs.as_mut_ptr().add(256 * b + 32 * c));
                        bsums[16 * b + 2 * c] = hsum_epi32(_mm256_add_epi32(i[0], i[1])) as i16;
                        bsums[16 * b + 2 * c + 1] = hsum_epi32(_mm256_add_epi32(i[2], i[3])) as i16;
                    }
                    d[b] = db;
                }
            }
        }

        /// Run one tile of 1, 2 or 4 rows (8 for the interleaved 32-value kernels with VNNI)
        /// with this ISA's kernel for `t`.
        ///
        /// # Safety
        /// The CPU has this module's features and `tl`, `y`, `ldy` satisfy [`Tile`]'s contract.
        pub unsafe fn tile(t: GgmlType, tl: &Tile<'_>, y: *mut f32, ldy: usize) {
            use crate::kernels::x86::kq;
            macro_rules! b32_by_nr {
                ($t:expr) => {
                    match (tl.panel.is_some(), tl.nr) {
                        (false, 1) => b32::<{ $t }, 1, false>(tl, y, ldy),
                        (false, 2) => b32::<{ $t }, 2, false>(tl, y, ldy),
                        (false, 4) => b32::<{ $t }, 4, false>(tl, y, ldy),
                        (true, 1) => b32::<{ $t }, 1, true>(tl, y, ldy),
                        (true, 2) => b32::<{ $t }, 2, true>(tl, y, ldy),
                        (true, 4) => b32::<{ $t }, 4, true>(tl, y, ldy),
                        (true, 8) if HAS_VNNI => b32::<{ $t }, 8, true>(tl, y, ldy),
                        (il, n) => unreachable!("{n}-row tile (interleaved: {il})"),
                    }
                };
            }
            match t {
                GgmlType::Q4_0 => b32_by_nr!(Q4_0),
                GgmlType::Q4_1 => b32_by_nr!(Q4_1),
                GgmlType::Q5_0 => b32_by_nr!(Q5_0),
                GgmlType::Q5_1 => b32_by_nr!(Q5_1),
                GgmlType::Q8_0 => b32_by_nr!(Q8_0),
                GgmlType::Q4_K => by_nr!(q45k, kq::Q4_K, tl, y, ldy),
                GgmlType::Q5_K => by_nr!(q45k, kq::Q5_K, tl, y, ldy),
                GgmlType::Q6_K => by_nr!(q6k, kq::Q6_K, tl, y, ldy),
                _ => unreachable!("no kernel for {t}"),
            }
        }
    };
}
