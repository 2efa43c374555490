//! x86-64 kernels, compiled twice from the same source (the `common!`, `b32_kernels!` and
//! `k_kernels!` macros) with different target features:
//!
//! - [`avx2`]: AVX2 + FMA + F16C. `u8×i8` products go through `vpmaddubsw` + `vpmaddwd`.
//! - [`vnni`]: adds AVX-512 F/BW/VL/VNNI on 256-bit vectors: `vpdpbusd` / `vpdpwssd`
//!   fuse those steps, and mask registers spread the Q5 high bits in one instruction.
//!
//! Only three primitives differ between the two (`dpbusd`, `dpwssd`, `bits16`); everything
//! else is shared. The functions are `unsafe`: the caller checks the CPU features once
//! (see [`super::Isa`]) and guarantees the buffer sizes documented on [`super::matmul::Tile`].

/// How far ahead of the weight bytes being multiplied the kernels prefetch (measured best
/// of 1, 2, 4 and 8 KiB for decode on the TinyLlama shape).
pub const PREFETCH_AHEAD: usize = 4096;

#[macro_use]
mod common;
#[macro_use]
mod b32;
#[macro_use]
mod kq;
pub mod packed;

/// AVX2 + FMA + F16C.
pub mod avx2 {
    use std::arch::x86_64::*;

    const HAS_VNNI: bool = false;

    /// `acc + Σ₄ u·s` per i32 lane (`u` unsigned, `s` signed bytes; `|u·s| pairs` must fit i16,
    /// which holds for every caller: `u ≤ 128`, `|s| ≤ 127`).
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    fn dpbusd(acc: __m256i, u: __m256i, s: __m256i) -> __m256i {
        _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1)))
    }

    /// `acc + Σ₂ a·b` per i32 lane over i16 pairs.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    fn dpwssd(acc: __m256i, a: __m256i, b: __m256i) -> __m256i {
        _mm256_add_epi32(acc, _mm256_madd_epi16(a, b))
    }

    /// 32 bytes: 0x10 where bit `i` of `bits` is set, else 0.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    fn bits16(bits: u32) -> __m256i {
        // Byte i gets byte i/8 of `bits`; OR-ing every bit except bit i%8 leaves all ones iff it was set.
        let shuf = _mm256_set_epi64x(0x0303030303030303, 0x0202020202020202, 0x0101010101010101, 0);
        let bytes = _mm256_shuffle_epi8(_mm256_set1_epi32(bits as i32), shuf);
        let set = _mm256_cmpeq_epi8(_mm256_or_si256(bytes, _mm256_set1_epi64x(0x7fbfdfeff7fbfdfe)), _mm256_set1_epi8(-1));
        _mm256_and_si256(set, _mm256_set1_epi8(0x10))
    }

    common!("avx2,fma,f16c");
    b32_kernels!("avx2,fma,f16c");
    k_kernels!("avx2,fma,f16c");
}

/// AVX2 + AVX-512 VNNI (256-bit vectors).
pub mod vnni {
    use std::arch::x86_64::*;

    const HAS_VNNI: bool = true;

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    fn dpbusd(acc: __m256i, u: __m256i, s: __m256i) -> __m256i {
        _mm256_dpbusd_epi32(acc, u, s)
    }

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    fn dpwssd(acc: __m256i, a: __m256i, b: __m256i) -> __m256i {
        _mm256_dpwssd_epi32(acc, a, b)
    }

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    fn bits16(bits: u32) -> __m256i {
        _mm256_maskz_mov_epi8(bits, _mm256_set1_epi8(0x10))
    }

    common!("avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni");
    b32_kernels!("avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni");
    k_kernels!("avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni");
}
