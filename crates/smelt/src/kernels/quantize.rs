//! Weight quantization: f32 rows into ggml blocks, the same algorithms as llama.cpp's
//! reference quantizers (`quantize_row_*_ref` in ggml-quants.c, which llama-quantize uses
//! when no importance matrix is given), written from their description:
//!
//! - Q4_0 / Q5_0: `d = max/−8` (`/−16`) where `max` is the value of largest magnitude,
//!   `q = min(15, trunc(x/d + 8.5))`.
//! - Q4_1 / Q5_1: `d = (max − min)/15` (`/31`), `m = min`, `q = trunc((x − min)/d + 0.5)`.
//! - Q8_0: `d = amax/127`, `q = round(x/d)` (half away from zero).
//! - Q4_K / Q5_K: per sub-block of 32 a scale and min fitted by weighted least squares
//!   over a grid of 21 (16) candidate scales (`make_qkx2_quants`), then both quantized to
//!   6 bits against the super-block's largest, and the values requantized with them.
//! - Q6_K: per sub-block of 16 the best of 19 scales for an rmse weighted by `x²`
//!   (`make_qx_quants`), scales quantized to i8 against the largest.
//!
//! Float operations happen in the reference's order, so the bytes are identical to ggml's
//! (tests/quantize.rs compares with output of ggml itself, edge cases included). A build
//! of ggml whose compiler fused `a·b + c` into FMAs could differ on rare near ties.
//! f16 fields are rounded to nearest even, as ggml does.

use anyhow::{bail, Result};
use half::f16;

use super::blocks::{QK, QK_K};
use crate::load::gguf::GgmlType;

/// Types [`quantize_row`] can produce.
pub fn quantize_supported(t: GgmlType) -> bool {
    use GgmlType::*;
    matches!(t, F32 | F16 | Q4_0 | Q4_1 | Q5_0 | Q5_1 | Q8_0 | Q4_K | Q5_K | Q6_K)
}

/// Quantize `x` (a whole number of blocks) into `t`'s encoding.
pub fn quantize(t: GgmlType, x: &[f32]) -> Result<Vec<u8>> {
    if !quantize_supported(t) {
        bail!("smelt cannot quantize to {t}");
    }
    let bs = t.block_size();
    if !x.len().is_multiple_of(bs) {
        bail!("{t} needs a multiple of {bs} values, got {}", x.len());
    }
    let mut out = vec![0u8; x.len() / bs * t.type_size()];
    quantize_row(t, x, &mut out);
    Ok(out)
}

/// Quantize `x` into `out` (`x.len() / block_size · type_size` bytes). Panics on a type
/// [`quantize_supported`] rejects or mismatched lengths.
pub fn quantize_row(t: GgmlType, x: &[f32], out: &mut [u8]) {
    let (bs, ts) = (t.block_size(), t.type_size());
    assert_eq!(x.len() % bs, 0, "{t}: {} values is not a whole number of blocks", x.len());
    assert_eq!(out.len(), x.len() / bs * ts, "{t}: output size");
    for (xb, ob) in x.chunks_exact(bs).zip(out.chunks_exact_mut(ts)) {
        match t {
            GgmlType::F32 => ob.copy_from_slice(&xb[0].to_le_bytes()),
            GgmlType::F16 => ob.copy_from_slice(&f16::from_f32(xb[0]).to_le_bytes()),
            GgmlType::Q4_0 => q4_0(xb, ob),
            GgmlType::Q4_1 => q4_1(xb, ob),
            GgmlType::Q5_0 => q5_0(xb, ob),
            GgmlType::Q5_1 => q5_1(xb, ob),
            GgmlType::Q8_0 => q8_0(xb, ob),
            GgmlType::Q4_K => q4_k(xb, ob),
            GgmlType::Q5_K => q5_k(xb, ob),
            GgmlType::Q6_K => q6_k(xb, ob),
            other => panic!("smelt cannot quantize to {other}"),
        }
    }
}

fn put_f16(b: &mut [u8], off: usize, v: f32) {
    b[off..off + 2].copy_from_slice(&f16::from_f32(v).to_le_bytes());
}

fn f16_round(v: f32) -> f32 {
    f16::from_f32(v).to_f32()
}

/// ggml's `nearest_int`: round half to even (exact for the magnitudes that reach it).
#[inline]
fn nearest_int(v: f32) -> i32 {
    v.round_ties_even() as i32
}

/// The value of largest magnitude (the first one on ties), and that magnitude.
fn signed_max(x: &[f32]) -> (f32, f32) {
    let (mut amax, mut max) = (0f32, 0f32);
    for &v in x {
        if amax < v.abs() {
            amax = v.abs();
            max = v;
        }
    }
    (max, amax)
}

fn min_max(x: &[f32]) -> (f32, f32) {
    let (mut min, mut max) = (f32::MAX, -f32::MAX);
    for &v in x {
        if v < min {
            min = v;
        }
        if v > max {
            max = v;
        }
    }
    (min, max)
}

/// Symmetric 4/5-bit: `nmax` = 8 or 16; returns the quants (0..2·nmax).
fn sym_quants(x: &[f32], nmax: f32, out: &mut [u8; QK]) -> f32 {
    let (max, _) = signed_max(x);
    let d = max / -nmax;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    let top = (2.0 * nmax - 1.0) as i32;
    for (o, &v) in out.iter_mut().zip(x) {
        // C: MIN(top, (int8_t)(v·id + nmax + 0.5)); the sum is in [0.5, 2·nmax + 0.5].
        *o = ((v * id + (nmax + 0.5)) as i32).min(top) as u8;
    }
    d
}

/// Asymmetric 4/5-bit with `levels` = 15 or 31; returns `(d, min)`.
fn asym_quants(x: &[f32], levels: f32, out: &mut [u8; QK]) -> (f32, f32) {
    let (min, max) = min_max(x);
    let d = (max - min) / levels;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    for (o, &v) in out.iter_mut().zip(x) {
        *o = (((v - min) * id + 0.5) as i32).min(levels as i32) as u8;
    }
    (d, min)
}

fn pack_nibbles(q: &[u8; QK], out: &mut [u8]) {
    for j in 0..QK / 2 {
        out[j] = (q[j] & 0xF) | ((q[j + QK / 2] & 0xF) << 4);
    }
}

fn high_bits(q: &[u8; QK]) -> [u8; 4] {
    let mut qh = 0u32;
    for (j, &v) in q.iter().enumerate() {
        qh |= (((v & 0x10) >> 4) as u32) << j;
    }
    qh.to_le_bytes()
}

fn q4_0(x: &[f32], b: &mut [u8]) {
    let mut q = [0u8; QK];
    let d = sym_quants(x, 8.0, &mut q);
    put_f16(b, 0, d);
    pack_nibbles(&q, &mut b[2..18]);
}

fn q4_1(x: &[f32], b: &mut [u8]) {
    let mut q = [0u8; QK];
    let (d, m) = asym_quants(x, 15.0, &mut q);
    put_f16(b, 0, d);
    put_f16(b, 2, m);
    pack_nibbles(&q, &mut b[4..20]);
}

fn q5_0(x: &[f32], b: &mut [u8]) {
    let mut q = [0u8; QK];
    let d = sym_quants(x, 16.0, &mut q);
    put_f16(b, 0, d);
    b[2..6].copy_from_slice(&high_bits(&q));
    pack_nibbles(&q, &mut b[6..22]);
}

fn q5_1(x: &[f32], b: &mut [u8]) {
    let mut q = [0u8; QK];
    let (d, m) = asym_quants(x, 31.0, &mut q);
    put_f16(b, 0, d);
    put_f16(b, 2, m);
    b[4..8].copy_from_slice(&high_bits(&q));
    pack_nibbles(&q, &mut b[8..24]);
}

fn q8_0(x: &[f32], b: &mut [u8]) {
    let amax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
    let d = amax / 127.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    put_f16(b, 0, d);
    for (o, &v) in b[2..34].iter_mut().zip(x) {
        *o = ((v * id).round() as i8) as u8;
    }
}

/// `make_qkx2_quants`: scale and (negated) min for `x` with weights `w`, quants in `l`.
#[allow(clippy::too_many_arguments)]
fn make_qkx2(x: &[f32], w: &[f32], nmax: i32, l: &mut [u8], rmin: f32, rdelta: f32, nstep: i32) -> (f32, f32) {
    let n = x.len();
    let (mut min, mut max) = (x[0], x[0]);
    let mut sum_w = w[0];
    let mut sum_x = sum_w * x[0];
    for i in 1..n {
        if x[i] < min {
            min = x[i];
        }
        if x[i] > max {
            max = x[i];
        }
        sum_w += w[i];
        sum_x += w[i] * x[i];
    }
    if min > 0.0 {
        min = 0.0;
    }
    if max == min {
        l.fill(0);
        return (0.0, -min);
    }
    let nmaxf = nmax as f32;
    let mut iscale = nmaxf / (max - min);
    let mut scale = 1.0 / iscale;
    let mut best_error = 0f32;
    for i in 0..n {
        let q = nearest_int(iscale * (x[i] - min)).clamp(0, nmax);
        l[i] = q as u8;
        let diff = scale * l[i] as f32 + min - x[i];
        best_error += w[i] * (diff * diff);
    }
    let mut aux = [0u8; 32];
    for is in 0..=nstep {
        iscale = (rmin + rdelta * is as f32 + nmaxf) / (max - min);
        let (mut sum_l, mut sum_l2, mut sum_xl) = (0f32, 0f32, 0f32);
        for i in 0..n {
            let q = nearest_int(iscale * (x[i] - min)).clamp(0, nmax);
            aux[i] = q as u8;
            let lf = q as f32;
            sum_l += w[i] * lf;
            sum_l2 += w[i] * lf * lf;
            sum_xl += w[i] * lf * x[i];
        }
        let dd = sum_w * sum_l2 - sum_l * sum_l;
        if dd > 0.0 {
            let mut this_scale = (sum_w * sum_xl - sum_x * sum_l) / dd;
            let mut this_min = (sum_l2 * sum_x - sum_l * sum_xl) / dd;
            if this_min > 0.0 {
                this_min = 0.0;
                this_scale = sum_xl / sum_l2;
            }
            let mut cur_error = 0f32;
            for i in 0..n {
                let diff = this_scale * aux[i] as f32 + this_min - x[i];
                cur_error += w[i] * (diff * diff);
            }
            if cur_error < best_error {
                l[..n].copy_from_slice(&aux[..n]);
                best_error = cur_error;
                scale = this_scale;
                min = this_min;
            }
        }
    }
    (scale, -min)
}

/// Shared Q4_K / Q5_K part: fills the 12 scale bytes at `b[4..16]`, d and dmin, and
/// returns the 256 quants (0..=nmax).
fn kquant_scales(x: &[f32], b: &mut [u8], nmax: i32, rmin: f32, nstep: i32) -> [u8; QK_K] {
    let mut l = [0u8; QK_K];
    let (mut scales, mut mins) = ([0f32; 8], [0f32; 8]);
    let (mut max_scale, mut max_min) = (0f32, 0f32);
    for j in 0..8 {
        let xs = &x[32 * j..32 * j + 32];
        let sum_x2: f32 = xs.iter().fold(0.0, |s, v| s + v * v);
        let av_x = (sum_x2 / 32.0).sqrt();
        let mut w = [0f32; 32];
        for (w, v) in w.iter_mut().zip(xs) {
            *w = av_x + v.abs();
        }
        (scales[j], mins[j]) = make_qkx2(xs, &w, nmax, &mut l[32 * j..32 * j + 32], rmin, 0.1, nstep);
        if scales[j] > max_scale {
            max_scale = scales[j];
        }
        if mins[j] > max_min {
            max_min = mins[j];
        }
    }
    let inv_scale = if max_scale > 0.0 { 63.0 / max_scale } else { 0.0 };
    let inv_min = if max_min > 0.0 { 63.0 / max_min } else { 0.0 };
    let s = &mut b[4..16];
    s.fill(0);
    for j in 0..8 {
        // C stores nearest_int into a uint8_t before MIN(63, ·): values wrap modulo 256.
        let ls = (nearest_int(inv_scale * scales[j]) as u8).min(63);
        let lm = (nearest_int(inv_min * mins[j]) as u8).min(63);
        if j < 4 {
            s[j] = ls;
            s[j + 4] = lm;
        } else {
            s[j + 4] = (ls & 0xF) | ((lm & 0xF) << 4);
            s[j - 4] |= (ls >> 4) << 6;
            s[j] |= (lm >> 4) << 6;
        }
    }
    put_f16(b, 0, max_scale / 63.0);
    put_f16(b, 2, max_min / 63.0);
    let (d_all, dmin_all) = (f16_round(max_scale / 63.0), f16_round(max_min / 63.0));
    let (sc, mn) = super::blocks::scales_mins_k4(&b[4..16]);
    for j in 0..8 {
        let d = d_all * sc[j] as f32;
        if d == 0.0 {
            continue;
        }
        let dm = dmin_all * mn[j] as f32;
        for i in 0..32 {
            l[32 * j + i] = nearest_int((x[32 * j + i] + dm) / d).clamp(0, nmax) as u8;
        }
    }
    l
}

fn q4_k(x: &[f32], b: &mut [u8]) {
    let l = kquant_scales(x, b, 15, -1.0, 20);
    let q = &mut b[16..144];
    for c in 0..4 {
        for i in 0..32 {
            q[32 * c + i] = l[64 * c + i] | (l[64 * c + 32 + i] << 4);
        }
    }
}

fn q5_k(x: &[f32], b: &mut [u8]) {
    let l = kquant_scales(x, b, 31, -0.5, 15);
    let (qh, ql) = b[16..176].split_at_mut(32);
    qh.fill(0);
    let (mut m1, mut m2) = (1u8, 2u8);
    for c in 0..4 {
        for j in 0..32 {
            let mut l1 = l[64 * c + j];
            if l1 > 15 {
                l1 -= 16;
                qh[j] |= m1;
            }
            let mut l2 = l[64 * c + j + 32];
            if l2 > 15 {
                l2 -= 16;
                qh[j] |= m2;
            }
            ql[32 * c + j] = l1 | (l2 << 4);
        }
        m1 <<= 2;
        m2 <<= 2;
    }
}

/// `make_qx_quants` with `rmse_type = 1` (weights `x²`), no importance weights: the scale
/// for signed quants in `−nmax..nmax`, quants (offset by `nmax`) in `l`.
fn make_qx_rmse1(x: &[f32], nmax: i32, l: &mut [i8]) -> f32 {
    let (max, amax) = signed_max(x);
    if amax < 1e-15 {
        l.fill(0);
        return 0.0;
    }
    let nmaxf = nmax as f32;
    let mut iscale = -nmaxf / max;
    let (mut sumlx, mut suml2) = (0f32, 0f32);
    for (i, &v) in x.iter().enumerate() {
        let q = nearest_int(iscale * v).clamp(-nmax, nmax - 1);
        l[i] = (q + nmax) as i8;
        let w = v * v;
        sumlx += w * v * q as f32;
        suml2 += w * q as f32 * q as f32;
    }
    let mut scale = if suml2 != 0.0 { sumlx / suml2 } else { 0.0 };
    let mut best = scale * sumlx;
    for is in -9..=9 {
        if is == 0 {
            continue;
        }
        iscale = -(nmaxf + 0.1 * is as f32) / max;
        sumlx = 0.0;
        suml2 = 0.0;
        for &v in x {
            let q = nearest_int(iscale * v).clamp(-nmax, nmax - 1);
            let w = v * v;
            sumlx += w * v * q as f32;
            suml2 += w * q as f32 * q as f32;
        }
        if suml2 > 0.0 && sumlx * sumlx > best * suml2 {
            for (i, &v) in x.iter().enumerate() {
                l[i] = (nearest_int(iscale * v).clamp(-nmax, nmax - 1) + nmax) as i8;
            }
            scale = sumlx / suml2;
            best = scale * sumlx;
        }
    }
    scale
}

fn q6_k(x: &[f32], b: &mut [u8]) {
    let mut l = [0i8; QK_K];
    let mut scales = [0f32; 16];
    let (mut max_scale, mut max_abs_scale) = (0f32, 0f32);
    for ib in 0..16 {
        let s = make_qx_rmse1(&x[16 * ib..16 * ib + 16], 32, &mut l[16 * ib..16 * ib + 16]);
        scales[ib] = s;
        if s.abs() > max_abs_scale {
            max_abs_scale = s.abs();
            max_scale = s;
        }
    }
    if max_abs_scale < 1e-15 {
        b.fill(0);
        return;
    }
    let iscale = -128.0 / max_scale;
    put_f16(b, 208, 1.0 / iscale);
    let d_all = f16_round(1.0 / iscale);
    for ib in 0..16 {
        // C: MIN(127, nearest_int(·)) stored into an int8_t.
        b[192 + ib] = (nearest_int(iscale * scales[ib]).min(127) as i8) as u8;
    }
    for j in 0..16 {
        let d = d_all * (b[192 + j] as i8) as f32;
        if d == 0.0 {
            continue;
        }
        for i in 0..16 {
            l[16 * j + i] = (nearest_int(x[16 * j + i] / d).clamp(-32, 31) + 32) as i8;
        }
    }
    let (ql, rest) = b.split_at_mut(128);
    let qh = &mut rest[..64];
    for h in 0..2 {
        let (ql, qh, l) = (&mut ql[64 * h..64 * h + 64], &mut qh[32 * h..32 * h + 32], &l[128 * h..128 * h + 128]);
        for i in 0..32 {
            let q = |k: usize| l[i + 32 * k] as u8;
            ql[i] = (q(0) & 0xF) | ((q(2) & 0xF) << 4);
            ql[i + 32] = (q(1) & 0xF) | ((q(3) & 0xF) << 4);
            qh[i] = (q(0) >> 4) | ((q(1) >> 4) << 2) | ((q(2) >> 4) << 4) | ((q(3) >> 4) << 6);
        }
    }
}
