//! ggml block layouts (as in ggml's `ggml-common.h`) and scalar dequantization.
//!
//! Every quantized row is a run of fixed-size blocks; all multi-byte fields are little
//! endian and unaligned. Offsets within one block, in bytes:
//!
//! ```text
//! Q4_0 (18 B, 32 values):  d:f16 @0 | qs[16] @2          x = d·(q − 8)       q: low nibble = i, high = i+16
//! Q4_1 (20 B, 32 values):  d @0 | m @2 | qs[16] @4        x = d·q + m
//! Q5_0 (22 B, 32 values):  d @0 | qh[4] @2 | qs[16] @6    x = d·(q − 16)      bit 4 of value i = bit i of qh
//! Q5_1 (24 B, 32 values):  d @0 | m @2 | qh[4] @4 | qs @8 x = d·q + m
//! Q8_0 (34 B, 32 values):  d @0 | qs:i8[32] @2           x = d·q
//! Q4_K (144 B, 256 values): d @0 | dmin @2 | scales[12] @4 | qs[128] @16
//!      8 sub-blocks of 32, 6-bit scale and min each:    x = d·sc_j·q − dmin·m_j
//! Q5_K (176 B): d @0 | dmin @2 | scales[12] @4 | qh[32] @16 | qs[128] @48
//! Q6_K (210 B): ql[128] @0 | qh[64] @128 | scales:i8[16] @192 | d @208
//!      16 sub-blocks of 16, 6-bit values:               x = d·sc_j·(q − 32)
//! ```

use crate::load::gguf::GgmlType;

/// Values per block of the 32-value formats.
pub const QK: usize = 32;
/// Values per super-block of the K formats.
pub const QK_K: usize = 256;

/// An IEEE half at byte `off` of `b`, widened.
#[inline]
pub fn f16_at(b: &[u8], off: usize) -> f32 {
    half::f16::from_bits(u16::from_le_bytes([b[off], b[off + 1]])).to_f32()
}

/// Q4_K / Q5_K: the 6-bit scale and min of sub-block `j` (0..8) from the 12 packed bytes.
/// Bytes 0..4 hold scales 0..3 (low 6 bits), bytes 4..8 mins 0..3; sub-blocks 4..7 keep
/// their low 4 bits in bytes 8..12 and their top 2 bits in the spare bits of bytes 0..8.
#[inline]
pub fn scale_min_k4(j: usize, s: &[u8]) -> (u8, u8) {
    if j < 4 {
        (s[j] & 63, s[j + 4] & 63)
    } else {
        ((s[j + 4] & 0xF) | ((s[j - 4] >> 6) << 4), (s[j + 4] >> 4) | ((s[j] >> 6) << 4))
    }
}

/// All 8 scales and 8 mins of a Q4_K / Q5_K super-block.
#[inline]
pub fn scales_mins_k4(s: &[u8]) -> ([u8; 8], [u8; 8]) {
    let (mut sc, mut mn) = ([0u8; 8], [0u8; 8]);
    for j in 0..8 {
        (sc[j], mn[j]) = scale_min_k4(j, s);
    }
    (sc, mn)
}

/// The 5th bit of value `i` (0..32) of a Q5_0 / Q5_1 block, as 0 or 16.
#[inline]
fn q5_high(qh: u32, i: usize) -> u8 {
    (((qh >> i) & 1) << 4) as u8
}

/// Dequantize one block `b` (exactly `t.type_size()` bytes) into `out` (`t.block_size()` values).
///
/// Panics on a type without a scalar dequantizer here (see [`dequant_supported`]).
pub fn dequantize_block(t: GgmlType, b: &[u8], out: &mut [f32]) {
    debug_assert_eq!(b.len(), t.type_size());
    debug_assert_eq!(out.len(), t.block_size());
    match t {
        GgmlType::Q4_0 => {
            let d = f16_at(b, 0);
            for i in 0..16 {
                out[i] = d * ((b[2 + i] & 0xF) as i32 - 8) as f32;
                out[i + 16] = d * ((b[2 + i] >> 4) as i32 - 8) as f32;
            }
        }
        GgmlType::Q4_1 => {
            let (d, m) = (f16_at(b, 0), f16_at(b, 2));
            for i in 0..16 {
                out[i] = d * (b[4 + i] & 0xF) as f32 + m;
                out[i + 16] = d * (b[4 + i] >> 4) as f32 + m;
            }
        }
        GgmlType::Q5_0 => {
            let d = f16_at(b, 0);
            let qh = u32::from_le_bytes([b[2], b[3], b[4], b[5]]);
            for i in 0..16 {
                let lo = (b[6 + i] & 0xF) | q5_high(qh, i);
                let hi = (b[6 + i] >> 4) | q5_high(qh, i + 16);
                out[i] = d * (lo as i32 - 16) as f32;
                out[i + 16] = d * (hi as i32 - 16) as f32;
            }
        }
        GgmlType::Q5_1 => {
            let (d, m) = (f16_at(b, 0), f16_at(b, 2));
            let qh = u32::from_le_bytes([b[4], b[5], b[6], b[7]]);
            for i in 0..16 {
                out[i] = d * ((b[8 + i] & 0xF) | q5_high(qh, i)) as f32 + m;
                out[i + 16] = d * ((b[8 + i] >> 4) | q5_high(qh, i + 16)) as f32 + m;
            }
        }
        GgmlType::Q8_0 => {
            let d = f16_at(b, 0);
            for i in 0..32 {
                out[i] = d * (b[2 + i] as i8) as f32;
            }
        }
        GgmlType::Q4_K | GgmlType::Q5_K => {
            let (d, dmin) = (f16_at(b, 0), f16_at(b, 2));
            let (sc, mn) = scales_mins_k4(&b[4..16]);
            let q5 = t == GgmlType::Q5_K;
            let (qh, qs) = if q5 { (&b[16..48], &b[48..176]) } else { (&b[0..0], &b[16..144]) };
            // Chunk c of 64 values: sub-block 2c in the low nibbles of 32 bytes, 2c+1 in the high.
            for c in 0..4 {
                let (d1, m1) = (d * sc[2 * c] as f32, dmin * mn[2 * c] as f32);
                let (d2, m2) = (d * sc[2 * c + 1] as f32, dmin * mn[2 * c + 1] as f32);
                for l in 0..32 {
                    let q = qs[32 * c + l];
                    let (h1, h2) = if q5 { (((qh[l] >> (2 * c)) & 1) << 4, ((qh[l] >> (2 * c + 1)) & 1) << 4) } else { (0, 0) };
                    out[64 * c + l] = d1 * ((q & 0xF) | h1) as f32 - m1;
                    out[64 * c + 32 + l] = d2 * ((q >> 4) | h2) as f32 - m2;
                }
            }
        }
        GgmlType::Q6_K => {
            let d = f16_at(b, 208);
            let v = q6k_values(b);
            for (i, (o, &q)) in out[..256].iter_mut().zip(&v).enumerate() {
                *o = d * (b[192 + i / 16] as i8) as f32 * (q as i32 - 32) as f32;
            }
        }
        _ => panic!("no scalar dequantizer for {t}"),
    }
}

/// The 256 six-bit values (0..64, unsigned) of a Q6_K block, in order: sub-block `j` (scale
/// `scales[j]`) is values `16j..16j + 16` (ggml's `dequantize_row_q6_K`).
pub fn q6k_values(blk: &[u8]) -> [u8; 256] {
    let mut v = [0u8; 256];
    for h in 0..2 {
        let (ql, qh) = (&blk[64 * h..64 * h + 64], &blk[128 + 32 * h..128 + 32 * h + 32]);
        for l in 0..32 {
            let o = &mut v[128 * h..];
            o[l] = (ql[l] & 15) | ((qh[l] & 3) << 4);
            o[l + 32] = (ql[l + 32] & 15) | (((qh[l] >> 2) & 3) << 4);
            o[l + 64] = (ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4);
            o[l + 96] = (ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4);
        }
    }
    v
}

/// Whether [`dequantize_block`] handles `t` (exactly the types smelt's kernels multiply).
pub fn dequant_supported(t: GgmlType) -> bool {
    use GgmlType::*;
    matches!(t, Q4_0 | Q4_1 | Q5_0 | Q5_1 | Q8_0 | Q4_K | Q5_K | Q6_K)
}

/// Dequantize a whole row: `src` holds `dst.len() / block_size` blocks.
pub fn dequantize_row(t: GgmlType, src: &[u8], dst: &mut [f32]) {
    let (bs, ts) = (t.block_size(), t.type_size());
    debug_assert_eq!(src.len() / ts * bs, dst.len());
    for (b, o) in src.chunks_exact(ts).zip(dst.chunks_exact_mut(bs)) {
        dequantize_block(t, b, o);
    }
}
