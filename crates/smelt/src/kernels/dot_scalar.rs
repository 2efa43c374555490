//! Portable scalar dot products of one quantized weight row with one quantized activation
//! row: the reference every SIMD kernel is tested against, and the fallback elsewhere.
//!
//! Each block's integer part is computed exactly in i32; only the per-block scaling and
//! the sum over blocks are in f32, in block order:
//! - Q4_0 / Q5_0 / Q8_0: `Σ_b dw·da·Σ_i w_i·a_i` with signed `w` (nibble − 8, 5-bit − 16, i8);
//! - Q4_1 / Q5_1: `Σ_b (dw·da·Σ_i q_i·a_i + mw·s_b)` with `s_b = da·Σ_i a_i`;
//! - Q4_K / Q5_K: `Σ_B (d·da·Σ_j sc_j·Σ_i q_i·a_i − dmin·da·Σ_j m_j·Σ_i a_i)`;
//! - Q6_K: `Σ_B d·da·Σ_j sc_j·Σ_i (q_i − 32)·a_i` (over runs of 16).

use super::blocks::{f16_at, scales_mins_k4, QK, QK_K};
use super::quant::ActRow;
use crate::load::gguf::GgmlType;

/// `W_row · a` for a row of blocks of type `t`. `w.len()` must be a whole number of
/// blocks and `a` must have the matching length (see [`super::quant::ActFormat`]).
pub fn dot(t: GgmlType, w: &[u8], a: ActRow<'_>) -> f32 {
    let ts = t.type_size();
    let mut acc = 0f32;
    for (b, blk) in w.chunks_exact(ts).enumerate() {
        acc += match t {
            GgmlType::Q4_0 | GgmlType::Q5_0 | GgmlType::Q8_0 => {
                let qa = &a.qs[b * QK..(b + 1) * QK];
                let mut w = [0i8; QK];
                signed_quants(t, blk, &mut w);
                let sumi: i32 = w.iter().zip(qa).map(|(&x, &y)| x as i32 * y as i32).sum();
                f16_at(blk, 0) * a.d[b] * sumi as f32
            }
            GgmlType::Q4_1 | GgmlType::Q5_1 => {
                let qa = &a.qs[b * QK..(b + 1) * QK];
                let mut q = [0u8; QK];
                unsigned_quants(t, blk, &mut q);
                let sumi: i32 = q.iter().zip(qa).map(|(&x, &y)| x as i32 * y as i32).sum();
                f16_at(blk, 0) * a.d[b] * sumi as f32 + f16_at(blk, 2) * a.s[b]
            }
            GgmlType::Q4_K | GgmlType::Q5_K => dot_q45k(t, blk, &a, b),
            GgmlType::Q6_K => dot_q6k(blk, &a, b),
            _ => panic!("no dot kernel for {t}"),
        };
    }
    acc
}

/// Q4_0 / Q5_0 / Q8_0: the 32 signed quants of a block.
fn signed_quants(t: GgmlType, b: &[u8], w: &mut [i8; QK]) {
    match t {
        GgmlType::Q4_0 => {
            for i in 0..16 {
                w[i] = (b[2 + i] & 0xF) as i8 - 8;
                w[i + 16] = (b[2 + i] >> 4) as i8 - 8;
            }
        }
        GgmlType::Q5_0 => {
            let qh = u32::from_le_bytes([b[2], b[3], b[4], b[5]]);
            for i in 0..16 {
                w[i] = ((b[6 + i] & 0xF) | (((qh >> i) & 1) << 4) as u8) as i8 - 16;
                w[i + 16] = ((b[6 + i] >> 4) | (((qh >> (i + 16)) & 1) << 4) as u8) as i8 - 16;
            }
        }
        GgmlType::Q8_0 => {
            for i in 0..QK {
                w[i] = b[2 + i] as i8;
            }
        }
        _ => unreachable!(),
    }
}

/// Q4_1 / Q5_1: the 32 unsigned quants of a block.
fn unsigned_quants(t: GgmlType, b: &[u8], q: &mut [u8; QK]) {
    let (qs, qh) = match t {
        GgmlType::Q4_1 => (&b[4..20], 0),
        _ => (&b[8..24], u32::from_le_bytes([b[4], b[5], b[6], b[7]])),
    };
    for i in 0..16 {
        q[i] = (qs[i] & 0xF) | (((qh >> i) & 1) << 4) as u8;
        q[i + 16] = (qs[i] >> 4) | (((qh >> (i + 16)) & 1) << 4) as u8;
    }
}

/// Q4_K / Q5_K super-block `b` of the row.
fn dot_q45k(t: GgmlType, blk: &[u8], a: &ActRow<'_>, b: usize) -> f32 {
    let (sc, mn) = scales_mins_k4(&blk[4..16]);
    let qa = &a.qs[b * QK_K..(b + 1) * QK_K];
    let bs = &a.bsums[b * 16..(b + 1) * 16];
    let q5 = t == GgmlType::Q5_K;
    let (qh, qs) = if q5 { (&blk[16..48], &blk[48..176]) } else { (&blk[0..0], &blk[16..144]) };
    let (mut sumi, mut summ) = (0i32, 0i32);
    for c in 0..4 {
        let (mut lo, mut hi) = (0i32, 0i32);
        for l in 0..32 {
            let (h1, h2) = if q5 { (((qh[l] >> (2 * c)) & 1) << 4, ((qh[l] >> (2 * c + 1)) & 1) << 4) } else { (0, 0) };
            lo += ((qs[32 * c + l] & 0xF) | h1) as i32 * qa[64 * c + l] as i32;
            hi += ((qs[32 * c + l] >> 4) | h2) as i32 * qa[64 * c + 32 + l] as i32;
        }
        sumi += sc[2 * c] as i32 * lo + sc[2 * c + 1] as i32 * hi;
        for j in [2 * c, 2 * c + 1] {
            summ += mn[j] as i32 * (bs[2 * j] as i32 + bs[2 * j + 1] as i32);
        }
    }
    let (d, dmin) = (f16_at(blk, 0), f16_at(blk, 2));
    d * a.d[b] * sumi as f32 - dmin * a.d[b] * summ as f32
}

/// Q6_K super-block `b` of the row.
fn dot_q6k(blk: &[u8], a: &ActRow<'_>, b: usize) -> f32 {
    let qa = &a.qs[b * QK_K..(b + 1) * QK_K];
    let mut sumi = 0i32;
    for h in 0..2 {
        let ql = &blk[64 * h..64 * h + 64];
        let qh = &blk[128 + 32 * h..160 + 32 * h];
        let mut run = [0i32; 8]; // Σ over each run of 16 in this half
        for l in 0..32 {
            let q = [
                ((ql[l] & 0xF) | ((qh[l] & 3) << 4)) as i32 - 32,
                ((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) as i32 - 32,
                ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i32 - 32,
                ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i32 - 32,
            ];
            for (g, q) in q.iter().enumerate() {
                run[2 * g + l / 16] += q * qa[128 * h + 32 * g + l] as i32;
            }
        }
        for (j, r) in run.iter().enumerate() {
            sumi += (blk[192 + 8 * h + j] as i8) as i32 * r;
        }
    }
    f16_at(blk, 208) * a.d[b] * sumi as f32
}
