//! Weights repacked at load for the AVX-512 kernels (`x86/packed.rs`): blocks in groups of
//! 16, laid out "one block per 32-bit lane", so that one 512-bit `vpdpbusd` multiplies 4
//! values of 16 blocks at once and every block's integer sum stays in its own lane. The
//! inner loop then has no horizontal reductions and no shuffles, and one scale multiply
//! serves 16 blocks — about a fifth of the instructions of the ggml layout per weight
//! byte, which is what lets decode run at memory speed.
//!
//! Types: Q4_0, Q4_1, Q8_0 and Q4_K. A packed row holds the bytes of the file's row,
//! reordered (plus padding to 64 bytes; Q4_K's 6-bit scales and mins are spread to a byte
//! each: 3% more); the file's pages are released once a tensor is packed, so the model is
//! resident once ([`QWeight::packed`](super::QWeight)). Q4_K's sub-blocks of 32 are lanes
//! like the other types' blocks, with scale `d·sc` and offset `−dmin·m` (see
//! [`pack_row_q4k`]), so one kernel shape serves all four.
//!
//! Row layout, blocks in groups `g` of `nt = min(16, nb − 16g)` lanes:
//! - quants: group `g` at byte `g·64·C` (C chunks: 4 for Q4, 8 for Q8), chunk `c` at
//!   `+ c·4·nt`, lane `b` at `+ 4b`:
//!   - Q4_0/Q4_1: the packed bytes `qs_b[4c..4c+4]` — low nibbles are values `4c..4c+4`
//!     of block `16g + b`, high nibbles values `16+4c..16+4c+4`;
//!   - Q8_0: `qs_b[4c..4c+4] ^ 0x80` (the quant + 128, unsigned, as `vpdpbusd` wants);
//! - then `d` of every block (f16), then for Q4_1 `m` of every block (f16).
//!
//! Activations ([`PActs`]) are quantized exactly as [`ActFormat::B32`] (so integer sums
//! equal the reference kernels') and laid out to match: per group, chunk `k` (values
//! `4k..4k+4` of each block) at `k·4·nt`, lane `b` at `+ 4b`. The Q4 kernels
//! pair weight chunk `c`'s low nibbles with activation chunk `c` and its high nibbles with
//! chunk `c + 4`.
//!
//! [`ActFormat::B32`]: super::quant::ActFormat

use super::blocks::QK;
use crate::load::gguf::GgmlType;

/// Blocks per group (lanes of a 512-bit vector of i32).
pub const LANES: usize = 16;

/// Whether `t` has a packed layout.
pub fn supports(t: GgmlType) -> bool {
    matches!(t, GgmlType::Q4_0 | GgmlType::Q4_1 | GgmlType::Q8_0 | GgmlType::Q4_K)
}

/// Bytes of a ggml row of `nb` blocks of 32 values.
fn ggml_row_bytes(t: GgmlType, nb: usize) -> usize {
    nb * 32 / t.block_size() * t.type_size()
}

/// Bytes of a packed row before padding: quants, then the per-lane fields.
fn packed_row_bytes(t: GgmlType, nb: usize) -> usize {
    match t {
        // quants, sc and m bytes per sub-block, (d, dmin) per super-block
        GgmlType::Q4_K => nb * 16 + 2 * nb + nb / 8 * 4,
        _ => ggml_row_bytes(t, nb),
    }
}

/// Quant bytes per lane and chunk count: (bytes of quants per block, chunks per group).
fn quant_bytes(t: GgmlType) -> usize {
    match t {
        GgmlType::Q8_0 => 32,
        _ => 16,
    }
}

/// 64-byte aligned storage.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Line([u8; 64]);

/// A packed `(rows, cols)` matrix.
pub struct Packed {
    lines: Vec<Line>,
    pub dtype: GgmlType,
    pub rows: usize,
    /// Blocks per row.
    pub nb: usize,
    /// Bytes from one row to the next (a multiple of 64).
    pub stride: usize,
}

impl std::fmt::Debug for Packed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Packed({} [{}, {}])", self.dtype, self.rows, self.nb * QK)
    }
}

impl Packed {
    /// Pack `rows` rows of `nb` blocks of `t` from ggml bytes (`data`, rows back to back).
    pub fn new(t: GgmlType, data: &[u8], rows: usize, nb: usize) -> Packed {
        assert!(supports(t));
        let rb = ggml_row_bytes(t, nb);
        assert_eq!(data.len(), rows * rb);
        let stride = packed_row_bytes(t, nb).div_ceil(64) * 64;
        let mut lines = vec![Line([0; 64]); rows * stride / 64];
        // SAFETY: `Line` is 64 plain bytes; the vector holds rows · stride of them.
        let bytes = unsafe { std::slice::from_raw_parts_mut(lines.as_mut_ptr() as *mut u8, rows * stride) };
        for (src, dst) in data.chunks_exact(rb).zip(bytes.chunks_exact_mut(stride)) {
            pack_row(t, src, nb, dst);
        }
        Packed { lines, dtype: t, rows, nb, stride }
    }

    pub fn bytes(&self) -> &[u8] {
        // SAFETY: as in `new`.
        unsafe { std::slice::from_raw_parts(self.lines.as_ptr() as *const u8, self.rows * self.stride) }
    }

    pub fn row(&self, r: usize) -> &[u8] {
        &self.bytes()[r * self.stride..(r + 1) * self.stride]
    }

    /// Row `r` back in ggml's layout (tests: packing must lose nothing).
    pub fn unpack_row(&self, r: usize) -> Vec<u8> {
        let t = self.dtype;
        let (nb, qb) = (self.nb, quant_bytes(t));
        let p = self.row(r);
        if t == GgmlType::Q4_K {
            return unpack_row_q4k(p, nb);
        }
        let mut out = vec![0u8; nb * t.type_size()];
        let hd = nb * qb;
        for b in 0..nb {
            let blk = &mut out[b * t.type_size()..(b + 1) * t.type_size()];
            blk[0..2].copy_from_slice(&p[hd + 2 * b..hd + 2 * b + 2]);
            let q0 = if t == GgmlType::Q4_1 {
                blk[2..4].copy_from_slice(&p[hd + 2 * nb + 2 * b..hd + 2 * nb + 2 * b + 2]);
                4
            } else {
                2
            };
            for i in 0..qb {
                let v = p[quant_at(t, nb, b, i)];
                blk[q0 + i] = if t == GgmlType::Q8_0 { v ^ 0x80 } else { v };
            }
        }
        out
    }
}

/// Byte offset, within a packed row of `nb` blocks, of quant byte `i` of block `b`.
#[inline]
fn quant_at(t: GgmlType, nb: usize, b: usize, i: usize) -> usize {
    let (g, lane) = (b / LANES, b % LANES);
    let nt = (nb - g * LANES).min(LANES);
    g * LANES * quant_bytes(t) + (i / 4) * 4 * nt + 4 * lane + i % 4
}

/// Q4_K: sub-block `b` (32 values) becomes a lane like a Q4_0 block (byte `i` holds values
/// `i` and `i + 16`); its 6-bit scale and min become bytes at `nb·16 + b` and
/// `nb·17 + b`; each super-block's `d` and `dmin` (f16) follow at `nb·18 + 4·s`.
fn pack_row_q4k(src: &[u8], nb: usize, dst: &mut [u8]) {
    let hd = nb * 16;
    for (sb, blk) in src.chunks_exact(144).enumerate() {
        dst[hd + 2 * nb + 4 * sb..hd + 2 * nb + 4 * sb + 4].copy_from_slice(&blk[0..4]);
        let (sc, mn) = super::blocks::scales_mins_k4(&blk[4..16]);
        for j in 0..8 {
            let b = 8 * sb + j;
            dst[hd + b] = sc[j];
            dst[hd + nb + b] = mn[j];
            // Values of sub-block j: nibble (j % 2) of bytes 32·(j/2) .. +32.
            let q = &blk[16 + 32 * (j / 2)..16 + 32 * (j / 2) + 32];
            let v = |i: usize| (q[i] >> (4 * (j % 2))) & 15;
            for i in 0..16 {
                dst[quant_at(GgmlType::Q4_K, nb, b, i)] = v(i) | (v(i + 16) << 4);
            }
        }
    }
}

fn unpack_row_q4k(p: &[u8], nb: usize) -> Vec<u8> {
    let hd = nb * 16;
    let mut out = vec![0u8; nb / 8 * 144];
    for (sb, blk) in out.chunks_exact_mut(144).enumerate() {
        blk[0..4].copy_from_slice(&p[hd + 2 * nb + 4 * sb..hd + 2 * nb + 4 * sb + 4]);
        let sc: [u8; 8] = std::array::from_fn(|j| p[hd + 8 * sb + j]);
        let mn: [u8; 8] = std::array::from_fn(|j| p[hd + nb + 8 * sb + j]);
        // ggml's 12-byte packing of eight 6-bit scales and mins (the inverse of scale_min_k4).
        for j in 0..4 {
            blk[4 + j] = (sc[j] & 63) | ((sc[j + 4] >> 4) << 6);
            blk[8 + j] = (mn[j] & 63) | ((mn[j + 4] >> 4) << 6);
            blk[12 + j] = (sc[j + 4] & 15) | ((mn[j + 4] & 15) << 4);
        }
        for j in 0..8 {
            let b = 8 * sb + j;
            for i in 0..16 {
                let v = p[quant_at(GgmlType::Q4_K, nb, b, i)];
                let at = 16 + 32 * (j / 2);
                blk[at + i] |= (v & 15) << (4 * (j % 2));
                blk[at + i + 16] |= (v >> 4) << (4 * (j % 2));
            }
        }
    }
    out
}

fn pack_row(t: GgmlType, src: &[u8], nb: usize, dst: &mut [u8]) {
    if t == GgmlType::Q4_K {
        return pack_row_q4k(src, nb, dst);
    }
    let ts = t.type_size();
    let qb = quant_bytes(t);
    let hd = nb * qb;
    let q0 = if t == GgmlType::Q4_1 { 4 } else { 2 };
    for (b, blk) in src.chunks_exact(ts).enumerate() {
        dst[hd + 2 * b..hd + 2 * b + 2].copy_from_slice(&blk[0..2]);
        if t == GgmlType::Q4_1 {
            dst[hd + 2 * nb + 2 * b..hd + 2 * nb + 2 * b + 2].copy_from_slice(&blk[2..4]);
        }
        let (g, lane) = (b / LANES, b % LANES);
        let nt = (nb - g * LANES).min(LANES);
        let base = g * LANES * qb + 4 * lane;
        for (c, four) in blk[q0..q0 + qb].chunks_exact(4).enumerate() {
            let at = base + c * 4 * nt;
            let mut v = u32::from_le_bytes(four.try_into().unwrap());
            if t == GgmlType::Q8_0 {
                v ^= 0x8080_8080;
            }
            dst[at..at + 4].copy_from_slice(&v.to_le_bytes());
        }
    }
}

/// Activation rows per panel: a tile's rows sit at constant offsets from one base pointer.
pub const PANEL: usize = 8;
/// Bytes of quants per (group, row) slot.
pub const SLOT_Q: usize = LANES * QK;

/// Lanes per row of an interleaved tail group of `nt` blocks, or `None` when the group is
/// laid out like the others (full, or more than half full).
///
/// A row whose blocks do not fill whole groups ends in a group of `nt < 16` blocks, which
/// costs a kernel as much as a full one: SmolLM2's 576-wide rows (18 blocks) spend 44% of
/// their instructions on 2 live lanes of 16. When `nt ≤ 8` the tail group of a panel's rows
/// is interleaved instead: row `r` of the panel takes lanes `(r % P)·L .. + nt` of slot
/// `r / P` (`L` = `nt` rounded up to a power of two, at least 2; `P = 16 / L` rows per
/// vector), so one `vpdpbusd` serves `P` rows, and the kernel broadcasts the weight row's
/// `L` tail lanes to all `P` places.
pub fn tail_lanes(nt: usize) -> Option<usize> {
    (nt <= LANES / 2).then(|| nt.next_power_of_two().max(LANES / PANEL))
}

/// `m` activation rows quantized for the packed kernels (see the module docs), in panels
/// of [`PANEL`] rows: for panel `p`, group `g` and row `r` (`i = PANEL·p + r`), slot
/// `(p·ng + g)·PANEL + r` holds the group's quants (at `slot·SLOT_Q`, lane layout) and its
/// blocks' `d`, `Σq`, `d·Σq` (at `slot·16`). A tile of rows then reads everything from four
/// base pointers plus constant offsets, so the kernels keep their registers for data.
#[derive(Debug, Default, Clone)]
pub struct PActs {
    pub m: usize,
    pub k: usize,
    pub qs: Vec<i8>,
    pub d: Vec<f32>,
    /// `−8·Σq` per block: Q4_0's offset as the kernels start from it (Q8_0's is 16 times it).
    pub isum: Vec<i32>,
    pub s: Vec<f32>,
    /// Scratch: one row in the plain layout, its scales and sums.
    plain: (Vec<i8>, Vec<f32>, Vec<f32>),
}

/// One row's pointers at group 0, as the kernels take them: group `g` of the row is at
/// `+ g·PANEL·SLOT_Q` quants and `+ g·PANEL·16` scales, the next row at `+ SLOT_Q` / `+ 16`.
#[derive(Clone, Copy)]
pub struct PActRow {
    /// The row's place in its panel (0..PANEL): an interleaved tail group is laid out per
    /// panel, not per row.
    pub r: usize,
    pub qs: *const i8,
    pub d: *const f32,
    pub isum: *const i32,
    pub s: *const f32,
}

impl PActs {
    /// Quantize `x: (m, k)` (`k` a multiple of 32). `quantize_row` is the B32 quantizer
    /// (SIMD or scalar; they agree bit for bit).
    pub fn quantize(&mut self, x: &[f32], m: usize, k: usize, quantize_row: impl Fn(&[f32], &mut [i8], &mut [f32], &mut [f32])) {
        let nb = k / QK;
        let ng = nb.div_ceil(LANES);
        let slots = m.div_ceil(PANEL) * ng * PANEL;
        self.m = m;
        self.k = k;
        self.qs.resize(slots * SLOT_Q, 0);
        self.d.resize(slots * LANES, 0.0);
        self.isum.resize(slots * LANES, 0);
        self.s.resize(slots * LANES, 0.0);
        let (mut q, mut d, mut s) = std::mem::take(&mut self.plain);
        q.resize(k, 0);
        d.resize(nb, 0.0);
        s.resize(nb, 0.0);
        // An interleaved tail group's slots hold several rows and unused lanes: clear them
        // (the buffers are reused across calls).
        let nt_last = nb - (ng - 1) * LANES;
        if tail_lanes(nt_last).is_some() {
            for p in 0..m.div_ceil(PANEL) {
                let s0 = (p * ng + ng - 1) * PANEL;
                self.qs[s0 * SLOT_Q..(s0 + PANEL) * SLOT_Q].fill(0);
                self.d[s0 * LANES..(s0 + PANEL) * LANES].fill(0.0);
                self.s[s0 * LANES..(s0 + PANEL) * LANES].fill(0.0);
                self.isum[s0 * LANES..(s0 + PANEL) * LANES].fill(0);
            }
        }
        for i in 0..m {
            quantize_row(&x[i * k..(i + 1) * k], &mut q, &mut d, &mut s);
            for b in 0..nb {
                let (q0, cs, si) = self.lane_pos(i, b);
                let src = &q[b * QK..(b + 1) * QK];
                for c in 0..QK / 4 {
                    self.qs[q0 + c * cs..q0 + c * cs + 4].copy_from_slice(&src[4 * c..4 * c + 4]);
                }
                self.d[si] = d[b];
                self.s[si] = s[b];
                self.isum[si] = -8 * src.iter().map(|&v| v as i32).sum::<i32>();
            }
        }
        self.plain = (q, d, s);
    }

    /// Where block `b` of row `i` lives: (offset of its first 4 quants, bytes from one chunk
    /// of 4 to the next, index of its `d` / `Σq` / `d·Σq`).
    fn lane_pos(&self, i: usize, b: usize) -> (usize, usize, usize) {
        let nb = self.k / QK;
        let (g, lane) = (b / LANES, b % LANES);
        let nt = (nb - g * LANES).min(LANES);
        match tail_lanes(nt) {
            None => {
                let slot = self.slot(i, g);
                (slot * SLOT_Q + 4 * lane, 4 * nt, slot * LANES + lane)
            }
            Some(l) => {
                let (p, r) = (LANES / l, i % PANEL);
                let slot = self.slot(i - r + r / p, g);
                let at = (r % p) * l + lane;
                (slot * SLOT_Q + 4 * at, 4 * LANES, slot * LANES + at)
            }
        }
    }

    fn slot(&self, i: usize, g: usize) -> usize {
        let ng = (self.k / QK).div_ceil(LANES);
        (i / PANEL * ng + g) * PANEL + i % PANEL
    }

    pub fn row(&self, i: usize) -> PActRow {
        let slot = self.slot(i, 0);
        PActRow {
            r: i % PANEL,
            qs: self.qs[slot * SLOT_Q..].as_ptr(),
            d: self.d[slot * LANES..].as_ptr(),
            isum: self.isum[slot * LANES..].as_ptr(),
            s: self.s[slot * LANES..].as_ptr(),
        }
    }
}

/// Scalar reference of one packed product (weight row `w`, activation row `i` of `acts`),
/// written from the layout's definition; the tests hold the SIMD kernel to it.
pub fn dot_ref(t: GgmlType, w: &[u8], nb: usize, acts: &PActs, i: usize) -> f32 {
    let hd = nb * quant_bytes(t);
    let f16 = |at: usize| half::f16::from_le_bytes([w[at], w[at + 1]]).to_f32();
    // (scale, offset) of block b: w = scale·q + offset.
    let field = |b: usize| -> (f32, f32) {
        match t {
            GgmlType::Q4_K => {
                let (d, dmin) = (f16(hd + 2 * nb + 4 * (b / 8)), f16(hd + 2 * nb + 4 * (b / 8) + 2));
                (d * w[hd + b] as f32, -dmin * w[hd + nb + b] as f32)
            }
            GgmlType::Q4_1 => (f16(hd + 2 * b), f16(hd + 2 * nb + 2 * b)),
            _ => (f16(hd + 2 * b), 0.0),
        }
    };
    let mut y = 0f32;
    for b in 0..nb {
        let (q0, cs, si) = acts.lane_pos(i, b);
        let act = |v: usize| acts.qs[q0 + (v / 4) * cs + v % 4] as i32;
        let mut sum = 0i32;
        for v in 0..QK {
            let q = match t {
                GgmlType::Q8_0 => w[quant_at(t, nb, b, v)] as i32 - 128,
                GgmlType::Q4_0 => ((w[quant_at(t, nb, b, v % 16)] >> (4 * (v / 16))) & 15) as i32 - 8,
                _ => ((w[quant_at(t, nb, b, v % 16)] >> (4 * (v / 16))) & 15) as i32,
            };
            sum += q * act(v);
        }
        let da = acts.d[si];
        let (sc, off) = field(b);
        y += sc * da * sum as f32 + off * acts.s[si];
    }
    y
}
