//! Test support shared by the unit tests and `tests/kernels.rs`: random blocks and the
//! error bounds a product must meet.
//!
//! Bounds, for one output `y = Σ_i w_i·x_i` (w dequantized, x the f32 activation):
//! - **rounding** ([`rounding_bound`]): every kernel computes each block's integer part
//!   exactly and then adds at most `nb + 8` f32 products in some order, each partial sum
//!   bounded by `B = Σ_i (|w_i| + 2|o_i|)·|a_i|`, where `a` is the quantized activation and
//!   `o_i` the offset a block adds to its scaled quants (Q4_1/Q5_1 `m`, Q4_K/Q5_K
//!   `dmin·m_j`; Q4_0/Q5_0/Q8_0 when a kernel makes their quants unsigned: 8·d, 16·d,
//!   128·d), which enters through a separate product. So two correct kernels differ by at
//!   most `2·(nb + 8)·ε·B`; we allow 4× that.
//! - **activation quantization** ([`act_quant_bound`]): `|x_i − a_i| ≤ d_i/2` with
//!   `d_i = amax(block of i)/127`, so `|Σ w_i·(x_i − a_i)| ≤ Σ |w_i|·d_i/2`. This is a
//!   guaranteed bound, not a statistical one, so a test using it cannot fail by bad luck —
//!   and a kernel that mixes up any quant, scale or block is off by far more.

use super::blocks::{f16_at, scale_min_k4};
use super::quant::ActFormat;
use crate::load::gguf::GgmlType;
use crate::sample::Rng;

/// Every type with a smelt kernel.
pub const TYPES: [GgmlType; 8] = [
    GgmlType::Q4_0,
    GgmlType::Q4_1,
    GgmlType::Q5_0,
    GgmlType::Q5_1,
    GgmlType::Q8_0,
    GgmlType::Q4_K,
    GgmlType::Q5_K,
    GgmlType::Q6_K,
];

/// Byte offsets of the f16 scale fields of a block of `t`.
fn f16_fields(t: GgmlType) -> &'static [usize] {
    match t {
        GgmlType::Q4_0 | GgmlType::Q5_0 | GgmlType::Q8_0 => &[0],
        GgmlType::Q4_1 | GgmlType::Q5_1 | GgmlType::Q4_K | GgmlType::Q5_K => &[0, 2],
        GgmlType::Q6_K => &[208],
        _ => panic!("no kernel type: {t}"),
    }
}

/// `rows × cols` values of `t` as random blocks: every quant, high-bit and packed-scale byte
/// uniformly random (all bit patterns occur), the f16 scales random in ±`scale`.
pub fn random_blocks(rng: &mut Rng, t: GgmlType, rows: usize, cols: usize, scale: f32) -> Vec<u8> {
    let n = rows * cols / t.block_size() * t.type_size();
    let mut v: Vec<u8> = (0..n).map(|_| rng.next_u64() as u8).collect();
    for blk in v.chunks_exact_mut(t.type_size()) {
        for &off in f16_fields(t) {
            let x = ((rng.next_f64() * 2.0 - 1.0) as f32) * scale;
            blk[off..off + 2].copy_from_slice(&half::f16::from_f32(x).to_le_bytes());
        }
    }
    v
}

/// Random activations, roughly N(0, 1) with a few large outliers like real hidden states.
pub fn random_acts(rng: &mut Rng, n: usize) -> Vec<f32> {
    (0..n)
        .map(|_| {
            let x = rng.next_normal() as f32;
            if rng.next_f64() < 0.01 {
                x * 20.0
            } else {
                x
            }
        })
        .collect()
}

/// Per value of one row: the magnitude of the block offset `o_i` (see the module docs).
pub fn offsets(t: GgmlType, row: &[u8]) -> Vec<f32> {
    let (bs, ts) = (t.block_size(), t.type_size());
    let mut out = Vec::with_capacity(row.len() / ts * bs);
    for b in row.chunks_exact(ts) {
        match t {
            GgmlType::Q4_1 | GgmlType::Q5_1 => out.extend(std::iter::repeat_n(f16_at(b, 2).abs(), bs)),
            // Kernels may treat these as unsigned quants with offset −8·d, −16·d, −128·d.
            GgmlType::Q4_0 => out.extend(std::iter::repeat_n(8.0 * f16_at(b, 0).abs(), bs)),
            GgmlType::Q5_0 => out.extend(std::iter::repeat_n(16.0 * f16_at(b, 0).abs(), bs)),
            GgmlType::Q8_0 => out.extend(std::iter::repeat_n(128.0 * f16_at(b, 0).abs(), bs)),
            GgmlType::Q4_K | GgmlType::Q5_K => {
                for j in 0..8 {
                    let m = f16_at(b, 2) * scale_min_k4(j, &b[4..16]).1 as f32;
                    out.extend(std::iter::repeat_n(m.abs(), 32));
                }
            }
            _ => out.extend(std::iter::repeat_n(0.0, bs)),
        }
    }
    out
}

/// Allowed difference between two kernels' results for one output (module docs).
/// `w`: dequantized weight row, `o`: its [`offsets`], `a`: dequantized activation row.
pub fn rounding_bound(w: &[f32], o: &[f32], a: &[f32], nb: usize) -> f64 {
    let b: f64 = w.iter().zip(o).zip(a).map(|((&w, &o), &a)| (w.abs() as f64 + 2.0 * o as f64) * a.abs() as f64).sum();
    4.0 * 2.0 * (nb as f64 + 8.0) * f32::EPSILON as f64 * b
}

/// Bound on `|y − Σ w_i·x_i|` from quantizing `x` in `format` (module docs), plus rounding.
pub fn act_quant_bound(format: ActFormat, w: &[f32], o: &[f32], x: &[f32], nb: usize) -> f64 {
    let bs = format.block();
    let mut bound = 0f64;
    for (wb, xb) in w.chunks(bs).zip(x.chunks(bs)) {
        let d = xb.iter().fold(0f32, |m, v| m.max(v.abs())) as f64 / 127.0;
        // (1 + 1e-6): x·(1/d) is itself rounded before rounding to an integer.
        bound += wb.iter().map(|&w| w.abs() as f64).sum::<f64>() * d / 2.0 * (1.0 + 1e-6);
    }
    bound + rounding_bound(w, o, x, nb)
}

/// `Σ w_i·x_i` in f64.
pub fn dot_f64(w: &[f32], x: &[f32]) -> f64 {
    w.iter().zip(x).map(|(&w, &x)| w as f64 * x as f64).sum()
}
