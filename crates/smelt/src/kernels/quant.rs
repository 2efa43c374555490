//! Activation quantization: each f32 activation row is turned once into 8-bit blocks, so
//! that every weight row can be multiplied with integer dot products.
//!
//! Two formats, chosen by the weight type:
//! - [`ActFormat::B32`] (for Q4_0 … Q8_0): blocks of 32 with an f32 scale `d` and
//!   `s = d·Σq` (ggml's Q8_1, with f32 instead of f16 fields; Q4_1/Q5_1 need `s` for their
//!   offset `m`, the others ignore it).
//! - [`ActFormat::K256`] (for the K-quants): blocks of 256 with an f32 scale and the sums
//!   of each run of 16 quants (ggml's Q8_K), which carry the K-quants' mins and offsets.
//!
//! Both use `d = amax/127`, `q = round_ties_even(x/d)` in −127..=127, so
//! `|x − d·q| ≤ d/2` for every value. The SIMD versions compute bit-identical results
//! (for finite input; a block with a NaN gets `d = NaN`, whatever its quants).

use super::blocks::{QK, QK_K};
use crate::load::gguf::GgmlType;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ActFormat {
    #[default]
    B32,
    K256,
}

impl ActFormat {
    /// The activation format a weight type is multiplied with (`None`: no kernel).
    pub fn for_weight(t: GgmlType) -> Option<ActFormat> {
        use GgmlType::*;
        match t {
            Q4_0 | Q4_1 | Q5_0 | Q5_1 | Q8_0 => Some(ActFormat::B32),
            Q4_K | Q5_K | Q6_K => Some(ActFormat::K256),
            _ => None,
        }
    }

    pub fn block(self) -> usize {
        match self {
            ActFormat::B32 => QK,
            ActFormat::K256 => QK_K,
        }
    }
}

/// `m` quantized activation rows of length `k`, struct-of-arrays; reused between calls.
#[derive(Debug, Default, Clone)]
pub struct QActs {
    pub format: ActFormat,
    pub m: usize,
    pub k: usize,
    /// B32 only: [`Panels`] were built (SIMD prefill kernels).
    pub interleaved: bool,
    pub panels: Panels,
    /// `(m, k)` quants.
    pub qs: Vec<i8>,
    /// `(m, k / block)` scales.
    pub d: Vec<f32>,
    /// B32 only: `(m, k / 32)`, `d·Σq` of each block.
    pub s: Vec<f32>,
    /// K256 only: `(m, k / 16)`, Σq of each run of 16.
    pub bsums: Vec<i16>,
}

/// Rows per activation panel.
pub const PANEL_ROWS: usize = 8;
/// Quants per row and chunk (8 blocks of 32).
pub const PANEL_Q: usize = 8 * QK;

/// B32 activations re-laid for the SIMD prefill kernels, so that a tile of up to 8 rows
/// reads everything from three base pointers plus constant offsets (no per-row pointers
/// competing for registers). For row group `g` (rows `8g..8g+8`) and chunk `c` (blocks
/// `8c..8c+8`, full chunks only), row `r` of the group has at index `(g·nc + c)·8 + r`:
/// 256 quants, dword-interleaved by [`interleave8`], in `q` (×256), and the 8 block
/// scales and sums in `d` and `s` (×8). Chunk `c + 1` of a row is 8 rows further on.
#[derive(Debug, Default, Clone)]
pub struct Panels {
    /// Full chunks per row (`nb / 8`).
    pub chunks: usize,
    pub q: Vec<i8>,
    pub d: Vec<f32>,
    pub s: Vec<f32>,
}

/// One quantized activation row.
#[derive(Debug, Clone, Copy)]
pub struct ActRow<'a> {
    pub qs: &'a [i8],
    pub d: &'a [f32],
    pub s: &'a [f32],
    pub bsums: &'a [i16],
}

impl QActs {
    /// Size the buffers for `m` rows of `k` (allocates only when they grow).
    pub fn reset(&mut self, format: ActFormat, m: usize, k: usize) {
        assert_eq!(k % format.block(), 0, "row length {k} is not a multiple of {}", format.block());
        let nb = k / format.block();
        self.format = format;
        self.m = m;
        self.k = k;
        self.interleaved = false;
        self.qs.resize(m * k, 0);
        self.d.resize(m * nb, 0.0);
        let (ns, nbs) = match format {
            ActFormat::B32 => (m * nb, 0),
            ActFormat::K256 => (0, m * k / 16),
        };
        self.s.resize(ns, 0.0);
        self.bsums.resize(nbs, 0);
    }

    pub fn row(&self, i: usize) -> ActRow<'_> {
        let nb = self.k / self.format.block();
        let (s, bsums) = match self.format {
            ActFormat::B32 => (&self.s[i * nb..(i + 1) * nb], &self.bsums[..0]),
            ActFormat::K256 => (&self.s[..0], &self.bsums[i * self.k / 16..(i + 1) * self.k / 16]),
        };
        ActRow { qs: &self.qs[i * self.k..(i + 1) * self.k], d: &self.d[i * nb..(i + 1) * nb], s, bsums }
    }

    /// Mutable views of row `i`: `(qs, d, s, bsums)`.
    pub fn row_mut(&mut self, i: usize) -> (&mut [i8], &mut [f32], &mut [f32], &mut [i16]) {
        let (k, nb) = (self.k, self.k / self.format.block());
        let qs = &mut self.qs[i * k..(i + 1) * k];
        let d = &mut self.d[i * nb..(i + 1) * nb];
        match self.format {
            ActFormat::B32 => (qs, d, &mut self.s[i * nb..(i + 1) * nb], &mut self.bsums[..0]),
            ActFormat::K256 => (qs, d, &mut self.s[..0], &mut self.bsums[i * k / 16..(i + 1) * k / 16]),
        }
    }

    /// Build the [`Panels`] of the rows (B32 only). The plain arrays stay valid; the
    /// kernels read leftover blocks (past the last full chunk) from them.
    pub fn interleave(&mut self) {
        assert!(self.format == ActFormat::B32);
        let nb = self.k / QK;
        let nc = nb / 8;
        let groups = self.m.div_ceil(PANEL_ROWS);
        let p = &mut self.panels;
        p.chunks = nc;
        p.q.resize(groups * nc * PANEL_ROWS * PANEL_Q, 0);
        p.d.resize(groups * nc * PANEL_ROWS * 8, 0.0);
        p.s.resize(groups * nc * PANEL_ROWS * 8, 0.0);
        for r in 0..self.m {
            for c in 0..nc {
                let at = ((r / PANEL_ROWS * nc + c) * PANEL_ROWS + r % PANEL_ROWS) * 8;
                let q = &mut p.q[at * QK..(at + 8) * QK];
                q.copy_from_slice(&self.qs[r * self.k + c * PANEL_Q..r * self.k + (c + 1) * PANEL_Q]);
                interleave8(q);
                p.d[at..at + 8].copy_from_slice(&self.d[r * nb + 8 * c..r * nb + 8 * c + 8]);
                p.s[at..at + 8].copy_from_slice(&self.s[r * nb + 8 * c..r * nb + 8 * c + 8]);
            }
        }
        self.interleaved = true;
    }

    /// Panel pointers of row `i`: `(quants, scales, sums)` of its first chunk.
    pub fn panel_row(&self, i: usize) -> (*const i8, *const f32, *const f32) {
        let p = &self.panels;
        let at = (i / PANEL_ROWS * p.chunks * PANEL_ROWS + i % PANEL_ROWS) * 8;
        // wrapping_add: a row with no full chunk has an empty (never read) panel.
        (p.q.as_ptr().wrapping_add(at * QK), p.d.as_ptr().wrapping_add(at), p.s.as_ptr().wrapping_add(at))
    }

    /// Dequantized row `i` (tests; not for interleaved rows).
    pub fn dequantize_row(&self, i: usize) -> Vec<f32> {
        assert!(!self.interleaved);
        let r = self.row(i);
        let bs = self.format.block();
        r.qs.iter().enumerate().map(|(j, &q)| r.d[j / bs] * q as f32).collect()
    }
}

/// Reorder each full group of 8 blocks of 32 quants (256 bytes) so that dword `i` of
/// block `b` moves to dword `8·i + b`: then dword lane `b` of the `i`-th 32-byte vector
/// belongs to block `b`, and summing `u8×i8` dot products over the 8 vectors leaves one
/// block per lane. Leftover blocks (fewer than 8) stay in place.
pub fn interleave8(qs: &mut [i8]) {
    for g in qs.chunks_exact_mut(8 * QK) {
        let mut t = [0i8; 8 * QK];
        for b in 0..8 {
            for i in 0..8 {
                t[32 * i + 4 * b..32 * i + 4 * b + 4].copy_from_slice(&g[32 * b + 4 * i..32 * b + 4 * i + 4]);
            }
        }
        g.copy_from_slice(&t);
    }
}

/// Quantize one block of values into `q`; returns its scale `d`. A NaN anywhere in the
/// block makes `d` NaN (its quants are then unspecified), so it reaches the output
/// instead of being rounded away.
#[inline]
fn quantize_block(x: &[f32], q: &mut [i8]) -> f32 {
    let amax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
    let d = if x.iter().any(|v| v.is_nan()) { f32::NAN } else { amax / 127.0 };
    let id = if d > 0.0 { 1.0 / d } else { 0.0 };
    for (q, &v) in q.iter_mut().zip(x) {
        *q = (v * id).round_ties_even() as i8;
    }
    d
}

/// Scalar reference: one row into B32 blocks.
pub fn quantize_row_b32(x: &[f32], qs: &mut [i8], d: &mut [f32], s: &mut [f32]) {
    for (b, (xb, qb)) in x.chunks_exact(QK).zip(qs.chunks_exact_mut(QK)).enumerate() {
        d[b] = quantize_block(xb, qb);
        s[b] = d[b] * qb.iter().map(|&v| v as i32).sum::<i32>() as f32;
    }
}

/// Scalar reference: one row into K256 blocks.
pub fn quantize_row_k256(x: &[f32], qs: &mut [i8], d: &mut [f32], bsums: &mut [i16]) {
    for (b, (xb, qb)) in x.chunks_exact(QK_K).zip(qs.chunks_exact_mut(QK_K)).enumerate() {
        d[b] = quantize_block(xb, qb);
        for (j, run) in qb.chunks_exact(16).enumerate() {
            bsums[16 * b + j] = run.iter().map(|&v| v as i16).sum();
        }
    }
}

/// Scalar reference: quantize `x: (m, k)` into `acts`.
pub fn quantize_scalar(acts: &mut QActs, format: ActFormat, x: &[f32], m: usize, k: usize) {
    acts.reset(format, m, k);
    for i in 0..m {
        let xr = &x[i * k..(i + 1) * k];
        let (qs, d, s, bsums) = acts.row_mut(i);
        match format {
            ActFormat::B32 => quantize_row_b32(xr, qs, d, s),
            ActFormat::K256 => quantize_row_k256(xr, qs, d, bsums),
        }
    }
}
