//! aarch64 NEON kernels, compiled twice from the same source (the `neon_kernels!` macro):
//!
//! - [`neon`]: the ARMv8-A baseline (every aarch64 CPU). `i8×i8` products widen to i16
//!   (`smull`/`smull2`) and add pairwise into i32 lanes (`sadalp`).
//! - [`dotprod`]: ARMv8.2 `sdot` (Apple M1 and later, Graviton 2+, Cortex-A55/A76+, the
//!   Raspberry Pi 5), four products per i32 lane in one instruction. Its intrinsic is not
//!   stable Rust yet, so it is one line of inline assembly.
//!
//! Only that primitive (`dot16`) differs between the two. Weights are read in the file's
//! ggml block layout (no repacking), activations in the plain [`QActs`] rows: every weight
//! value fits a signed byte (Q4_1/Q4_K/Q5 quants are 0..31, Q6_K's are re-centred to
//! −32..31), so one signed product covers all types, and each block's integer sum is exact
//! in i32 lanes as in [`super::dot_scalar`], which these kernels are tested against.
//!
//! The functions are `unsafe`: the caller checks the CPU features once ([`super::Isa`]) and
//! guarantees the buffer sizes documented on [`super::matmul::Tile`].
//!
//! [`QActs`]: super::quant::QActs

/// Kernel ids (const generic `T`).
const Q4_0: u8 = 0;
const Q4_1: u8 = 1;
const Q5_0: u8 = 2;
const Q5_1: u8 = 3;
const Q8_0: u8 = 4;
const Q4_K: u8 = 5;
const Q5_K: u8 = 6;
const Q6_K: u8 = 7;

/// The f16 at `p`, widened.
///
/// # Safety
/// `p` points at two readable bytes.
#[inline]
unsafe fn f16p(p: *const u8) -> f32 {
    half::f16::from_bits((p as *const u16).read_unaligned()).to_f32()
}

macro_rules! neon_kernels {
    ($feat:literal) => {
        use super::{f16p, Q4_0, Q4_1, Q4_K, Q5_0, Q5_1, Q5_K, Q6_K, Q8_0};
        use crate::kernels::blocks::scales_mins_k4;
        use crate::kernels::matmul::{by_nr, ActPtrs, Tile};
        use crate::load::gguf::GgmlType;

        /// 16 bytes: 0x10 where bit `i` of `bits` is set, else 0 (Q5's fifth bits).
        #[inline]
        #[target_feature(enable = $feat)]
        fn bits5(bits: u32) -> uint8x16_t {
            let b = vcombine_u8(vdup_n_u8(bits as u8), vdup_n_u8((bits >> 8) as u8));
            let m = vcombine_u8(vcreate_u8(0x8040201008040201), vcreate_u8(0x8040201008040201));
            vandq_u8(vtstq_u8(b, m), vdupq_n_u8(0x10))
        }

        #[inline]
        #[target_feature(enable = $feat)]
        fn s8(v: uint8x16_t) -> int8x16_t {
            vreinterpretq_s8_u8(v)
        }

        /// One 32-value block: its quants as two vectors of signed bytes (values 0..16 and
        /// 16..32, re-centred for the symmetric types), its scale `d` and offset `m` (0 for
        /// the symmetric types).
        ///
        /// # Safety
        /// `blk` points at a whole block of type `T`.
        #[inline]
        #[target_feature(enable = $feat)]
        unsafe fn b32_block<const T: u8>(blk: *const u8) -> (int8x16_t, int8x16_t, f32, f32) {
            let m4 = vdupq_n_u8(0xF);
            match T {
                Q4_0 => {
                    let q = vld1q_u8(blk.add(2));
                    let eight = vdupq_n_s8(8);
                    (vsubq_s8(s8(vandq_u8(q, m4)), eight), vsubq_s8(s8(vshrq_n_u8::<4>(q)), eight), f16p(blk), 0.0)
                }
                Q4_1 => {
                    let q = vld1q_u8(blk.add(4));
                    (s8(vandq_u8(q, m4)), s8(vshrq_n_u8::<4>(q)), f16p(blk), f16p(blk.add(2)))
                }
                Q5_0 | Q5_1 => {
                    let (h, o) = if T == Q5_0 { (2, 6) } else { (4, 8) };
                    let qh = (blk.add(h) as *const u32).read_unaligned();
                    let q = vld1q_u8(blk.add(o));
                    let lo = s8(vorrq_u8(vandq_u8(q, m4), bits5(qh)));
                    let hi = s8(vorrq_u8(vshrq_n_u8::<4>(q), bits5(qh >> 16)));
                    if T == Q5_0 {
                        let c = vdupq_n_s8(16);
                        (vsubq_s8(lo, c), vsubq_s8(hi, c), f16p(blk), 0.0)
                    } else {
                        (lo, hi, f16p(blk), f16p(blk.add(2)))
                    }
                }
                _ => (vld1q_s8(blk.add(2) as *const i8), vld1q_s8(blk.add(18) as *const i8), f16p(blk), 0.0),
            }
        }

        /// Q4_0 … Q8_0: `y[r·ldy + j] = Σ_b (dw·da·Σ w·a + mw·s_b)`.
        ///
        /// # Safety
        /// The CPU has this module's features and `tl`, `y`, `ldy` satisfy [`Tile`]'s contract.
        #[target_feature(enable = $feat)]
        unsafe fn b32<const T: u8, const R: usize>(tl: &Tile<'_>, y: *mut f32, ldy: usize) {
            let ts = [18, 20, 22, 24, 34][T as usize];
            let nb = tl.row_bytes / ts;
            let offset = T == Q4_1 || T == Q5_1;
            let ActPtrs { q: qa, d: da, s: sa, .. } = tl.act_ptrs::<R>();
            for j in 0..tl.rows {
                let w = tl.w.as_ptr().add(j * tl.row_bytes);
                let mut acc = [vdupq_n_f32(0.0); R];
                let mut accm = [0f32; R];
                for b in 0..nb {
                    let (w0, w1, d, m) = b32_block::<T>(w.add(b * ts));
                    for r in 0..R {
                        let a = qa[r].add(32 * b);
                        let p = dot16(dot16(vdupq_n_s32(0), w0, vld1q_s8(a)), w1, vld1q_s8(a.add(16)));
                        acc[r] = vfmaq_n_f32(acc[r], vcvtq_f32_s32(p), d * *da[r].add(b));
                        if offset {
                            accm[r] += m * *sa[r].add(b);
                        }
                    }
                }
                for r in 0..R {
                    *y.add(r * ldy + j) = vaddvq_f32(acc[r]) + accm[r];
                }
            }
        }

        /// Q4_K (`T = Q4_K`) and Q5_K: `y[r·ldy + j] = Σ_B (d·da·Σ_j sc_j·Σ q·a − dmin·da·Σ_j m_j·Σ a)`,
        /// the mins from the activation's 16-value sums. Same contract as [`b32`].
        #[target_feature(enable = $feat)]
        unsafe fn q45k<const T: u8, const R: usize>(tl: &Tile<'_>, y: *mut f32, ldy: usize) {
            let bytes = if T == Q5_K { 176 } else { 144 };
            let nb = tl.row_bytes / bytes;
            let ActPtrs { q: qa, d: da, bs, .. } = tl.act_ptrs::<R>();
            let m4 = vdupq_n_u8(0xF);
            for j in 0..tl.rows {
                let w = tl.w.as_ptr().add(j * tl.row_bytes);
                let mut acc = [0f32; R];
                for b in 0..nb {
                    let blk = w.add(b * bytes);
                    let (d, dmin) = (f16p(blk), f16p(blk.add(2)));
                    let (sc, mn) = scales_mins_k4(&*(blk.add(4) as *const [u8; 12]));
                    let mins = vreinterpretq_s16_u16(vmovl_u8(vld1_u8(mn.as_ptr())));
                    let (qs, mut qh) = if T == Q5_K {
                        (blk.add(48), [vld1q_u8(blk.add(16)), vld1q_u8(blk.add(32))])
                    } else {
                        (blk.add(16), [vdupq_n_u8(0); 2])
                    };
                    let mut sumi = [vdupq_n_s32(0); R];
                    for c in 0..4 {
                        let q = [vld1q_u8(qs.add(32 * c)), vld1q_u8(qs.add(32 * c + 16))];
                        let mut lo = [vandq_u8(q[0], m4), vandq_u8(q[1], m4)];
                        let mut hi = [vshrq_n_u8::<4>(q[0]), vshrq_n_u8::<4>(q[1])];
                        if T == Q5_K {
                            // Bits 2c and 2c+1 of each qh byte are bit 4 of the low / high values.
                            for i in 0..2 {
                                lo[i] = vorrq_u8(lo[i], vshlq_n_u8::<4>(vandq_u8(qh[i], vdupq_n_u8(1))));
                                hi[i] = vorrq_u8(hi[i], vshlq_n_u8::<3>(vandq_u8(qh[i], vdupq_n_u8(2))));
                                qh[i] = vshrq_n_u8::<2>(qh[i]);
                            }
                        }
                        for r in 0..R {
                            let a = qa[r].add(256 * b + 64 * c);
                            let pl = dot16(dot16(vdupq_n_s32(0), s8(lo[0]), vld1q_s8(a)), s8(lo[1]), vld1q_s8(a.add(16)));
                            let ph = dot16(dot16(vdupq_n_s32(0), s8(hi[0]), vld1q_s8(a.add(32))), s8(hi[1]), vld1q_s8(a.add(48)));
                            sumi[r] = vmlaq_n_s32(sumi[r], pl, sc[2 * c] as i32);
                            sumi[r] = vmlaq_n_s32(sumi[r], ph, sc[2 * c + 1] as i32);
                        }
                    }
                    for r in 0..R {
                        // Σ_j m_j·(bsum[2j] + bsum[2j+1]): pair sums fit i16 (|Σ| ≤ 32·127).
                        let s = bs[r].add(16 * b);
                        let pairs = vpaddq_s16(vld1q_s16(s), vld1q_s16(s.add(8)));
                        let mp = vmlal_high_s16(vmull_s16(vget_low_s16(pairs), vget_low_s16(mins)), pairs, mins);
                        let db = *da[r].add(b);
                        acc[r] += d * db * vaddvq_s32(sumi[r]) as f32 - dmin * db * vaddvq_s32(mp) as f32;
                    }
                }
                for r in 0..R {
                    *y.add(r * ldy + j) = acc[r];
                }
            }
        }

        /// Q6_K: `y[r·ldy + j] = Σ_B d·da·Σ_j sc_j·Σ (q − 32)·a`. Same contract as [`b32`].
        #[target_feature(enable = $feat)]
        unsafe fn q6k<const T: u8, const R: usize>(tl: &Tile<'_>, y: *mut f32, ldy: usize) {
            debug_assert_eq!(T, Q6_K);
            let nb = tl.row_bytes / 210;
            let ActPtrs { q: qa, d: da, .. } = tl.act_ptrs::<R>();
            let (m4, m2, c32) = (vdupq_n_u8(0xF), vdupq_n_u8(3), vdupq_n_s8(32));
            for j in 0..tl.rows {
                let w = tl.w.as_ptr().add(j * tl.row_bytes);
                let mut acc = [0f32; R];
                for b in 0..nb {
                    let blk = w.add(b * 210);
                    let sc = blk.add(192) as *const i8;
                    let mut sumi = [vdupq_n_s32(0); R];
                    for h in 0..2 {
                        // Runs of 16 (`s`): value 128h + 32g + 16s + i has scale 8h + 2g + s.
                        for s in 0..2 {
                            let ql0 = vld1q_u8(blk.add(64 * h + 16 * s));
                            let ql1 = vld1q_u8(blk.add(64 * h + 32 + 16 * s));
                            let qh = vld1q_u8(blk.add(128 + 32 * h + 16 * s));
                            let q = [
                                vorrq_u8(vandq_u8(ql0, m4), vshlq_n_u8::<4>(vandq_u8(qh, m2))),
                                vorrq_u8(vandq_u8(ql1, m4), vshlq_n_u8::<2>(vandq_u8(qh, vdupq_n_u8(12)))),
                                vorrq_u8(vshrq_n_u8::<4>(ql0), vandq_u8(qh, vdupq_n_u8(48))),
                                vorrq_u8(vshrq_n_u8::<4>(ql1), vshrq_n_u8::<2>(vandq_u8(qh, vdupq_n_u8(192)))),
                            ];
                            for (g, &qg) in q.iter().enumerate() {
                                let wv = vsubq_s8(s8(qg), c32);
                                let scale = *sc.add(8 * h + 2 * g + s) as i32;
                                for r in 0..R {
                                    let a = vld1q_s8(qa[r].add(256 * b + 128 * h + 32 * g + 16 * s));
                                    sumi[r] = vmlaq_n_s32(sumi[r], dot16(vdupq_n_s32(0), wv, a), scale);
                                }
                            }
                        }
                    }
                    let d = f16p(blk.add(208));
                    for r in 0..R {
                        acc[r] += d * *da[r].add(b) * vaddvq_s32(sumi[r]) as f32;
                    }
                }
                for r in 0..R {
                    *y.add(r * ldy + j) = acc[r];
                }
            }
        }

        /// Run one tile of 1, 2 or 4 rows with this ISA's kernel for `t`.
        ///
        /// # Safety
        /// The CPU has this module's features and `tl`, `y`, `ldy` satisfy [`Tile`]'s contract.
        pub unsafe fn tile(t: GgmlType, tl: &Tile<'_>, y: *mut f32, ldy: usize) {
            match t {
                GgmlType::Q4_0 => by_nr!(b32, Q4_0, tl, y, ldy),
                GgmlType::Q4_1 => by_nr!(b32, Q4_1, tl, y, ldy),
                GgmlType::Q5_0 => by_nr!(b32, Q5_0, tl, y, ldy),
                GgmlType::Q5_1 => by_nr!(b32, Q5_1, tl, y, ldy),
                GgmlType::Q8_0 => by_nr!(b32, Q8_0, tl, y, ldy),
                GgmlType::Q4_K => by_nr!(q45k, Q4_K, tl, y, ldy),
                GgmlType::Q5_K => by_nr!(q45k, Q5_K, tl, y, ldy),
                GgmlType::Q6_K => by_nr!(q6k, Q6_K, tl, y, ldy),
                _ => unreachable!("no kernel for {t}"),
            }
        }
    };
}

/// ARMv8-A baseline NEON.
pub mod neon {
    use std::arch::aarch64::*;

    /// `acc + Σ₄ a·b` over the 16 byte pairs, spread over the four i32 lanes (lane
    /// grouping differs from `sdot`'s; callers only use the total or scale whole vectors).
    /// Each i16 product pair fits: `|a·b| ≤ 128·127`.
    #[inline]
    #[target_feature(enable = "neon")]
    fn dot16(acc: int32x4_t, a: int8x16_t, b: int8x16_t) -> int32x4_t {
        let acc = vpadalq_s16(acc, vmull_s8(vget_low_s8(a), vget_low_s8(b)));
        vpadalq_s16(acc, vmull_high_s8(a, b))
    }

    neon_kernels!("neon");
}

/// ARMv8.2 NEON with the dot-product extension.
pub mod dotprod {
    use std::arch::aarch64::*;

    /// `acc + Σ₄ a·b` per i32 lane (`sdot`).
    #[inline]
    #[target_feature(enable = "neon,dotprod")]
    fn dot16(acc: int32x4_t, a: int8x16_t, b: int8x16_t) -> int32x4_t {
        let mut acc = acc;
        // SAFETY: a register-only instruction of this function's target features.
        unsafe {
            std::arch::asm!(
                "sdot {acc:v}.4s, {a:v}.16b, {b:v}.16b",
                acc = inout(vreg) acc, a = in(vreg) a, b = in(vreg) b,
                options(pure, nomem, nostack, preserves_flags)
            );
        }
        acc
    }

    neon_kernels!("neon,dotprod");
}
