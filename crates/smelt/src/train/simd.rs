//! Helpers for the training kernels: compile a plain loop body for AVX-512 and AVX2+FMA
//! and pick one at run time (smelt is built for baseline x86-64, where the compiler may
//! only use SSE2), and a vectorisable `exp`.
//!
//! The kernels avoid `mul_add`, so every instruction set computes bit-identical results
//! (Rust never contracts `a * b + c` into an FMA on its own).

/// Define `pub fn $name(args)` whose body is compiled three times (AVX-512, AVX2+FMA,
/// baseline) and dispatched on the CPU's features.
macro_rules! multiversion {
    ($(#[$m:meta])* $vis:vis fn $name:ident($($arg:ident : $ty:ty),* $(,)?) $(-> $ret:ty)? $body:block) => {
        $(#[$m])*
        $vis fn $name($($arg: $ty),*) $(-> $ret)? {
            #[inline(always)]
            fn inner($($arg: $ty),*) $(-> $ret)? $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx2,fma")]
                unsafe fn v4($($arg: $ty),*) $(-> $ret)? { inner($($arg),*) }
                #[target_feature(enable = "avx2,fma")]
                unsafe fn v3($($arg: $ty),*) $(-> $ret)? { inner($($arg),*) }
                if $crate::train::simd::has_avx512() {
                    // SAFETY: the CPU supports the features v4 was compiled for.
                    return unsafe { v4($($arg),*) };
                }
                if $crate::train::simd::has_avx2() {
                    // SAFETY: as above, for v3.
                    return unsafe { v3($($arg),*) };
                }
            }
            inner($($arg),*)
        }
    };
}
pub(crate) use multiversion;

#[cfg(target_arch = "x86_64")]
pub fn has_avx512() -> bool {
    use std::sync::OnceLock;
    static F: OnceLock<bool> = OnceLock::new();
    *F.get_or_init(|| {
        std::is_x86_feature_detected!("avx512f")
            && std::is_x86_feature_detected!("avx512bw")
            && std::is_x86_feature_detected!("avx512vl")
            && std::is_x86_feature_detected!("avx512dq")
            && has_avx2()
            && std::env::var_os("SMELT_NO_AVX512").is_none()
    })
}

#[cfg(target_arch = "x86_64")]
pub fn has_avx2() -> bool {
    use std::sync::OnceLock;
    static F: OnceLock<bool> = OnceLock::new();
    *F.get_or_init(|| std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma"))
}

/// `dst[i] = src[i]` widened from f16 (exact): 16 values per instruction with AVX-512, 8 with
/// F16C, else `half`'s own conversion (which uses aarch64's FP16 unit where present).
pub fn widen_f16(src: &[half::f16], dst: &mut [f32]) {
    assert_eq!(src.len(), dst.len());
    #[cfg(target_arch = "x86_64")]
    {
        if has_avx512() {
            // SAFETY: the CPU has AVX-512F; the lengths are equal.
            return unsafe { widen_f16_avx512(src, dst) };
        }
        if has_avx2() && std::is_x86_feature_detected!("f16c") {
            // SAFETY: the CPU has F16C and AVX; the lengths are equal.
            return unsafe { widen_f16_f16c(src, dst) };
        }
    }
    half::slice::HalfFloatSliceExt::convert_to_f32_slice(src, dst);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn widen_f16_avx512(src: &[half::f16], dst: &mut [f32]) {
    use std::arch::x86_64::*;
    let n = src.len() / 16 * 16;
    for i in (0..n).step_by(16) {
        let h = _mm256_loadu_si256(src.as_ptr().add(i) as *const __m256i);
        _mm512_storeu_ps(dst.as_mut_ptr().add(i), _mm512_cvtph_ps(h));
    }
    for i in n..src.len() {
        dst[i] = src[i].to_f32();
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx,f16c")]
unsafe fn widen_f16_f16c(src: &[half::f16], dst: &mut [f32]) {
    use std::arch::x86_64::*;
    let n = src.len() / 8 * 8;
    for i in (0..n).step_by(8) {
        let h = _mm_loadu_si128(src.as_ptr().add(i) as *const __m128i);
        _mm256_storeu_ps(dst.as_mut_ptr().add(i), _mm256_cvtph_ps(h));
    }
    for i in n..src.len() {
        dst[i] = src[i].to_f32();
    }
}

/// Largest element of `x` (−∞ if empty), over 16 lanes so the loop vectorises (a plain
/// fold is one long dependency chain). Max is associative: same result as the fold.
#[inline(always)]
pub fn max(x: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; 16];
    let mut c = x.chunks_exact(16);
    for xs in &mut c {
        for i in 0..16 {
            acc[i] = acc[i].max(xs[i]);
        }
    }
    c.remainder().iter().fold(acc.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b)), |a, &b| a.max(b))
}

/// `Σ x[i]` in 16 partial sums added in a fixed order.
#[inline(always)]
pub fn sum(x: &[f32]) -> f32 {
    let mut acc = [0f32; 16];
    let mut c = x.chunks_exact(16);
    for xs in &mut c {
        for i in 0..16 {
            acc[i] += xs[i];
        }
    }
    acc.iter().sum::<f32>() + c.remainder().iter().sum::<f32>()
}

/// `e^x` for `x` in about [-87, 88] within 2 ulp (Cephes' polynomial), branch-free so loops
/// over it vectorise. Inputs below -87 give ~1e-38 rather than 0.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const C1: f32 = 0.693_359_4;
    const C2: f32 = -2.121_944_4e-4;
    let x = x.clamp(-87.0, 88.0);
    let fx = (x * LOG2E + 0.5).floor();
    let r = x - fx * C1 - fx * C2;
    let mut p = 1.987_569_1e-4f32;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 1.666_666_5e-1;
    p = p * r + 5.000_000_1e-1;
    let y = p * r * r + r + 1.0;
    // 2^fx from the bits of fx + 127 + 2^23, whose low mantissa bits are the integer
    // fx + 127 (in 1..=215 here). Not `fx as i32`: Rust's saturating cast has a NaN branch
    // that keeps the loop scalar (a compare and an insert per element).
    let scale = f32::from_bits((fx + (127.0 + 8_388_608.0)).to_bits() << 23);
    y * scale
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn widen_f16_is_exact() {
        // Every f16 bit pattern but NaNs, at an odd length so the tail loop runs too.
        let src: Vec<half::f16> = (0..=u16::MAX).map(half::f16::from_bits).filter(|h| !h.is_nan()).collect();
        let src = &src[..src.len() - 3];
        let mut dst = vec![0f32; src.len()];
        widen_f16(src, &mut dst);
        for (h, w) in src.iter().zip(&dst) {
            assert_eq!(h.to_f32().to_bits(), w.to_bits(), "{h:?}");
        }
    }

    #[test]
    fn exp_is_accurate() {
        let mut worst = 0f64;
        let mut x = -87.0f32;
        while x < 88.0 {
            let want = (x as f64).exp();
            let rel = ((exp(x) as f64 - want) / want).abs();
            worst = worst.max(rel);
            x += 0.0137;
        }
        assert!(worst < 3e-7, "worst relative error {worst}");
        assert_eq!(exp(0.0), 1.0);
    }
}
