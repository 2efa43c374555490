//! Weights repacked at load for the AVX-512 kernels (`x86/packed.rs`): rows in groups of 16,
//! "one weight row per 32-bit lane". One 512-bit `vpdpbusd` multiplies 4 values of 16 rows
//! by the same 4 activation values (broadcast from memory), so a 16-row group's outputs
//! accumulate in one vector per activation row: no horizontal sums, no shuffles, and every
//! unpacked weight vector serves all the activation rows of a tile (12 in prefill).
//!
//! Types: Q4_0, Q4_1, Q8_0, Q4_K (its sub-blocks of 32 are blocks here, with scale `d·sc`
//! and offset `−dmin·m`) and Q6_K (a block of 32 is two of its sub-blocks of 16, with a
//! scale `d·sc` each and offset `−32`), so one kernel shape serves all five.
//! A group holds the bytes of its 16 file rows, reordered (Q4_K's 6-bit scales and mins
//! spread to a byte each: 3% more); rows past the matrix's end are zero (scale 0). The
//! file's pages are released as a tensor is packed (every 16 MiB), so the model is resident
//! once ([`QWeight::packed`](super::QWeight)).
//!
//! Group layout (`nb` blocks of 32 values per row; `QB` quant bytes per row and block: 16
//! for the 4-bit types, 32 for Q8_0, 24 for Q6_K):
//! - quants: block `b` at `b·16·QB`, chunk `c` (4 bytes of each row) at `+ 64c`, row `i`
//!   at `+ 4i`:
//!   - Q4_0 / Q4_1 / Q4_K: byte `e` of chunk `c` (c < 4) holds value `4c + e` of the block
//!     in its low nibble and value `16 + 4c + e` in its high nibble (ggml's Q4_0 order);
//!   - Q8_0: chunk `c` (c < 8) is values `4c..4c + 4`, each `q ^ 0x80` (`q + 128`, unsigned,
//!     as `vpdpbusd` wants);
//!   - Q6_K: chunks 0–3 hold the low 4 bits of the 6-bit values as Q4_0 does; chunk 4 holds
//!     the 2 high bits of the first sub-block's values (byte `e`, bits `2c..2c + 2`: value
//!     `4c + e`), chunk 5 those of the second (value `16 + 4c + e`);
//! - then the fields, from `F = nb·16·QB`, 16 rows each:
//!   - Q4_0, Q8_0: `d` (f16) of block `b` at `F + 32b`;
//!   - Q4_1: `d` as Q4_0, `m` (f16) at `F + 32·nb + 32b`;
//!   - Q4_K: `sc` (u8) at `F + 16b`, `m` (u8) at `F + 16·nb + 16b`, then per super-block `s`
//!     `d` (f16) at `F + 32·nb + 32s` and `dmin` (f16) at `F + 32·nb + 32·nb/8 + 32s`;
//!   - Q6_K: the scales (i8) of block `b`'s two sub-blocks at `F + 32b` and `F + 32b + 16`,
//!     then per super-block `s` `d` (f16) at `F + 32·nb + 32s`.
//!
//! Activations ([`PActs`]) are quantized exactly as [`ActFormat::B32`] (so integer sums
//! equal the reference kernels'), row after row, with each block's integer start value
//! (`−8·Σq` for Q4_0, `−128·Σq` for the flipped Q8_0 quants, `−32·Σq` over each half for
//! Q6_K) beside its scale and sum.
//!
//! [`ActFormat::B32`]: super::quant::ActFormat

use super::blocks::QK;
use rayon::prelude::*;
use crate::load::gguf::GgmlType;

/// Weight rows per group (lanes of a 512-bit vector of i32).
pub const RG: usize = 16;

/// Whether `t` has a packed layout.
pub fn supports(t: GgmlType) -> bool {
    matches!(t, GgmlType::Q4_0 | GgmlType::Q4_1 | GgmlType::Q8_0 | GgmlType::Q4_K | GgmlType::Q6_K)
}

/// Whether `t`'s rows are packed in whole super-blocks of 256 (8 blocks of 32).
fn super_blocks(t: GgmlType) -> bool {
    matches!(t, GgmlType::Q4_K | GgmlType::Q6_K)
}

/// Quant bytes per row and block of 32.
fn quant_bytes(t: GgmlType) -> usize {
    match t {
        GgmlType::Q8_0 => 32,
        GgmlType::Q6_K => 24,
        _ => 16,
    }
}

/// Bytes of a ggml row of `nb` blocks of 32 values.
fn ggml_row_bytes(t: GgmlType, nb: usize) -> usize {
    nb * 32 / t.block_size() * t.type_size()
}

/// Bytes of one group's fields (after its quants).
fn field_bytes(t: GgmlType, nb: usize) -> usize {
    match t {
        GgmlType::Q4_1 => 64 * nb,
        GgmlType::Q4_K => 32 * nb + 64 * (nb / 8),
        GgmlType::Q6_K => 32 * nb + 32 * (nb / 8),
        _ => 32 * nb,
    }
}

/// Zeroed storage for a packed matrix: an anonymous memory map, so its pages come fresh
/// (zero) from the kernel, page-aligned (the kernels want 64 bytes), and go back to it when
/// the matrix is dropped. Through the allocator (`alloc_zeroed`), glibc served these sizes
/// from its heap whenever its dynamic mmap threshold had risen, and then `calloc` wrote
/// zeros over the fresh pages serially: a page fault per 4 KiB inside a `memset`.
struct Storage(Option<memmap2::MmapMut>);

impl Storage {
    fn zeroed(len: usize) -> Storage {
        if len == 0 {
            return Storage(None);
        }
        let map = memmap2::MmapOptions::new().len(len).map_anon().unwrap_or_else(|e| panic!("cannot map {len} bytes for a packed matrix: {e}"));
        populate(&map);
        Storage(Some(map))
    }
    fn bytes(&self) -> &[u8] {
        self.0.as_deref().unwrap_or(&[])
    }
    fn bytes_mut(&mut self) -> &mut [u8] {
        self.0.as_deref_mut().unwrap_or(&mut [])
    }
}

/// Map in the fresh pages of `map` ahead of the packing, in 4 MiB pieces on the pool's
/// threads (Linux's `MADV_POPULATE_WRITE`, 5.14+): one call maps in a thousand pages, where
/// the packing's first writes would take a fault for each 4 KiB. Where the call is refused
/// (older kernels, other systems) the writes fault them in as before; the bytes are zero
/// either way.
fn populate(map: &memmap2::MmapMut) {
    #[cfg(target_os = "linux")]
    {
        const PIECE: usize = 4 << 20;
        let pieces: Vec<usize> = (0..map.len()).step_by(PIECE).collect();
        pieces.par_iter().for_each(|&a| {
            let _ = map.advise_range(memmap2::Advice::PopulateWrite, a, PIECE.min(map.len() - a));
        });
    }
    #[cfg(not(target_os = "linux"))]
    let _ = map;
}

/// A packed `(rows, cols)` matrix.
pub struct Packed {
    storage: Storage,
    pub dtype: GgmlType,
    pub rows: usize,
    /// Blocks of 32 per row.
    pub nb: usize,
    /// Bytes from one group of 16 rows to the next (a multiple of 64).
    pub gstride: usize,
}

impl std::fmt::Debug for Packed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Packed({} [{}, {}])", self.dtype, self.rows, self.nb * QK)
    }
}

/// One row's blocks in the packed order: per block its quant bytes (`QB`) and fields.
struct RowParts {
    quants: Vec<u8>,
    /// f16 bytes: Q4_0 / Q8_0 `d`, Q4_1 `d` then `m` (2 per block); Q4_K per super-block `d`, `dmin`.
    halves: Vec<[u8; 2]>,
    /// Q4_K: per block its 6-bit scale and min; Q6_K: its two sub-blocks' scales (i8 bits).
    scmin: Vec<(u8, u8)>,
}

/// A file row taken apart into `p` (its buffers reused).
fn row_parts(t: GgmlType, src: &[u8], p: &mut RowParts) {
    p.quants.clear();
    p.halves.clear();
    p.scmin.clear();
    if t == GgmlType::Q4_K {
        for blk in src.chunks_exact(144) {
            p.halves.push([blk[0], blk[1]]);
            p.halves.push([blk[2], blk[3]]);
            let (sc, mn) = super::blocks::scales_mins_k4(&blk[4..16]);
            for j in 0..8 {
                p.scmin.push((sc[j], mn[j]));
                // Values of sub-block j: nibble (j % 2) of bytes 32·(j/2) .. +32.
                let q = &blk[16 + 32 * (j / 2)..16 + 32 * (j / 2) + 32];
                let v = |i: usize| (q[i] >> (4 * (j % 2))) & 15;
                p.quants.extend_from_slice(&std::array::from_fn::<u8, 16, _>(|i| v(i) | (v(i + 16) << 4)));
            }
        }
        return;
    }
    if t == GgmlType::Q6_K {
        for blk in src.chunks_exact(210) {
            p.halves.push([blk[208], blk[209]]);
            let v = super::blocks::q6k_values(blk);
            for b in 0..8 {
                p.scmin.push((blk[192 + 2 * b], blk[192 + 2 * b + 1]));
                let v = &v[32 * b..32 * b + 32];
                p.quants.extend_from_slice(&std::array::from_fn::<u8, 16, _>(|i| (v[i] & 15) | ((v[i + 16] & 15) << 4)));
                // The 2 high bits: value 4c + e of a half in byte e, bits 2c..2c + 2.
                let high = |half: usize, e: usize| (0..4).fold(0u8, |h, c| h | ((v[16 * half + 4 * c + e] >> 4) << (2 * c)));
                p.quants.extend_from_slice(&std::array::from_fn::<u8, 8, _>(|i| high(i / 4, i % 4)));
            }
        }
        return;
    }
    let q0 = if t == GgmlType::Q4_1 { 4 } else { 2 };
    for blk in src.chunks_exact(t.type_size()) {
        p.halves.push([blk[0], blk[1]]);
        if t == GgmlType::Q4_1 {
            p.halves.push([blk[2], blk[3]]);
        }
        let q = &blk[q0..q0 + quant_bytes(t)];
        if t == GgmlType::Q8_0 {
            p.quants.extend_from_slice(&std::array::from_fn::<u8, 32, _>(|i| q[i] ^ 0x80));
        } else {
            p.quants.extend_from_slice(q);
        }
    }
}

/// [`super::blocks::q6k_values`] backwards: the 192 quant bytes (`ql`, `qh`) of a Q6_K block.
fn q6k_quants(v: &[u8; 256], out: &mut [u8]) {
    for h in 0..2 {
        let o = &v[128 * h..];
        for l in 0..32 {
            out[64 * h + l] = (o[l] & 15) | ((o[l + 64] & 15) << 4);
            out[64 * h + l + 32] = (o[l + 32] & 15) | ((o[l + 96] & 15) << 4);
            out[128 + 32 * h + l] = (o[l] >> 4) | ((o[l + 32] >> 4) << 2) | ((o[l + 64] >> 4) << 4) | ((o[l + 96] >> 4) << 6);
        }
    }
}

/// [`row_parts`] backwards: the file row.
fn row_from_parts(t: GgmlType, p: &RowParts, nb: usize) -> Vec<u8> {
    let qb = quant_bytes(t);
    if t == GgmlType::Q6_K {
        let mut out = vec![0u8; nb / 8 * 210];
        for (sb, blk) in out.chunks_exact_mut(210).enumerate() {
            let mut v = [0u8; 256];
            for b in 0..8 {
                let q = &p.quants[(8 * sb + b) * 24..(8 * sb + b + 1) * 24];
                for i in 0..32 {
                    let (e, c) = (i % 4, (i % 16) / 4);
                    let low = (q[i % 16] >> (4 * (i / 16))) & 15;
                    v[32 * b + i] = low | (((q[16 + 4 * (i / 16) + e] >> (2 * c)) & 3) << 4);
                }
                let (a, c) = p.scmin[8 * sb + b];
                blk[192 + 2 * b] = a;
                blk[193 + 2 * b] = c;
            }
            q6k_quants(&v, blk);
            blk[208..210].copy_from_slice(&p.halves[sb]);
        }
        return out;
    }
    if t == GgmlType::Q4_K {
        let mut out = vec![0u8; nb / 8 * 144];
        for (sb, blk) in out.chunks_exact_mut(144).enumerate() {
            blk[0..2].copy_from_slice(&p.halves[2 * sb]);
            blk[2..4].copy_from_slice(&p.halves[2 * sb + 1]);
            let sc: [u8; 8] = std::array::from_fn(|j| p.scmin[8 * sb + j].0);
            let mn: [u8; 8] = std::array::from_fn(|j| p.scmin[8 * sb + j].1);
            // ggml's 12-byte packing of eight 6-bit scales and mins (the inverse of scale_min_k4).
            for j in 0..4 {
                blk[4 + j] = (sc[j] & 63) | ((sc[j + 4] >> 4) << 6);
                blk[8 + j] = (mn[j] & 63) | ((mn[j + 4] >> 4) << 6);
                blk[12 + j] = (sc[j + 4] & 15) | ((mn[j + 4] & 15) << 4);
            }
            for j in 0..8 {
                let q = &p.quants[(8 * sb + j) * 16..(8 * sb + j + 1) * 16];
                let at = 16 + 32 * (j / 2);
                for (i, &v) in q.iter().enumerate() {
                    blk[at + i] |= (v & 15) << (4 * (j % 2));
                    blk[at + i + 16] |= (v >> 4) << (4 * (j % 2));
                }
            }
        }
        return out;
    }
    let per = if t == GgmlType::Q4_1 { 2 } else { 1 };
    let flip = if t == GgmlType::Q8_0 { 0x80 } else { 0 };
    let mut out = Vec::with_capacity(ggml_row_bytes(t, nb));
    for b in 0..nb {
        for h in 0..per {
            out.extend_from_slice(&p.halves[per * b + h]);
        }
        out.extend(p.quants[b * qb..(b + 1) * qb].iter().map(|&v| v ^ flip));
    }
    out
}

impl Packed {
    /// Pack `rows` rows of `nb` blocks of `t` from ggml bytes (`data`, rows back to back).
    pub fn new(t: GgmlType, data: &[u8], rows: usize, nb: usize) -> Packed {
        Self::new_releasing(t, data, rows, nb, |_, _| {})
    }

    /// [`Packed::new`], in steps of about 16 MiB of `data`: `done(start, len)` is called
    /// with each range of `data` once it is packed, so a caller reading a mapped file can
    /// drop those pages as it goes. (Released only at the end, Gemma 3's 262k-row embedding
    /// table had its 168 MiB of file pages and its packed copy resident at once: the peak of
    /// the whole run.)
    pub fn new_releasing(t: GgmlType, data: &[u8], rows: usize, nb: usize, done: impl Fn(usize, usize)) -> Packed {
        assert!(supports(t) && (!super_blocks(t) || nb.is_multiple_of(8)));
        let rb = ggml_row_bytes(t, nb);
        assert_eq!(data.len(), rows * rb);
        let qb = quant_bytes(t);
        let f = nb * RG * qb;
        let gstride = (f + field_bytes(t, nb)).div_ceil(64) * 64;
        let groups = rows.div_ceil(RG);
        let mut storage = Storage::zeroed(groups * gstride);
        let bytes = storage.bytes_mut();
        // Groups in parallel (loading a 1.1B model packs ~0.6–1.2 GB), each row taken apart
        // into buffers reused within the task.
        let empty = || -> Vec<RowParts> { (0..RG).map(|_| RowParts { quants: Vec::with_capacity(nb * qb), halves: Vec::new(), scmin: Vec::new() }).collect() };
        let pack = |parts: &mut Vec<RowParts>, (dst, src): (&mut [u8], &[u8])| {
            let nr = src.len() / rb;
            for (p, src) in parts.iter_mut().zip(src.chunks_exact(rb)) {
                row_parts(t, src, p);
            }
            // Quants: each 64-byte line (chunk c of block b) gets its 16 rows' 4 bytes in turn.
            for (l, line) in dst[..f].chunks_exact_mut(64).enumerate() {
                let (b, c) = (l / (qb / 4), l % (qb / 4));
                for (i, p) in parts[..nr].iter().enumerate() {
                    line[4 * i..4 * i + 4].copy_from_slice(&p.quants[b * qb + 4 * c..b * qb + 4 * c + 4]);
                }
            }
            for (i, p) in parts[..nr].iter().enumerate() {
                match t {
                    GgmlType::Q4_K => {
                        for (b, &(sc, mn)) in p.scmin.iter().enumerate() {
                            dst[f + 16 * b + i] = sc;
                            dst[f + 16 * nb + 16 * b + i] = mn;
                        }
                        for sb in 0..nb / 8 {
                            let (d, dmin) = (f + 32 * nb + 32 * sb + 2 * i, f + 32 * nb + 32 * (nb / 8) + 32 * sb + 2 * i);
                            dst[d..d + 2].copy_from_slice(&p.halves[2 * sb]);
                            dst[dmin..dmin + 2].copy_from_slice(&p.halves[2 * sb + 1]);
                        }
                    }
                    GgmlType::Q6_K => {
                        for (b, &(sa, sb)) in p.scmin.iter().enumerate() {
                            dst[f + 32 * b + i] = sa;
                            dst[f + 32 * b + 16 + i] = sb;
                        }
                        for (s, d) in p.halves.iter().enumerate() {
                            dst[f + 32 * nb + 32 * s + 2 * i..f + 32 * nb + 32 * s + 2 * i + 2].copy_from_slice(d);
                        }
                    }
                    GgmlType::Q4_1 => {
                        for b in 0..nb {
                            dst[f + 32 * b + 2 * i..f + 32 * b + 2 * i + 2].copy_from_slice(&p.halves[2 * b]);
                            dst[f + 32 * nb + 32 * b + 2 * i..f + 32 * nb + 32 * b + 2 * i + 2].copy_from_slice(&p.halves[2 * b + 1]);
                        }
                    }
                    _ => {
                        for b in 0..nb {
                            dst[f + 32 * b + 2 * i..f + 32 * b + 2 * i + 2].copy_from_slice(&p.halves[b]);
                        }
                    }
                }
            }
        };
        const STEP_BYTES: usize = 16 << 20;
        let step = (STEP_BYTES / (RG * rb)).max(1); // groups per step
        for (i, (dst, src)) in bytes.chunks_mut(step * gstride).zip(data.chunks(step * RG * rb)).enumerate() {
            dst.par_chunks_mut(gstride).zip(src.par_chunks(RG * rb)).for_each_init(empty, &pack);
            done(i * step * RG * rb, src.len());
        }
        Packed { storage, dtype: t, rows, nb, gstride }
    }

    pub fn bytes(&self) -> &[u8] {
        self.storage.bytes()
    }

    /// Groups of 16 rows (the last one padded with zero rows).
    pub fn groups(&self) -> usize {
        self.rows.div_ceil(RG)
    }

    /// Group `g`'s bytes.
    pub fn group(&self, g: usize) -> &[u8] {
        &self.bytes()[g * self.gstride..(g + 1) * self.gstride]
    }

    /// Row `r` back in ggml's layout (tests: packing must lose nothing).
    pub fn unpack_row(&self, r: usize) -> Vec<u8> {
        let (t, nb, qb) = (self.dtype, self.nb, quant_bytes(self.dtype));
        let (g, i) = (r / RG, r % RG);
        let src = self.group(g);
        let f = nb * RG * qb;
        let mut p = RowParts { quants: Vec::new(), halves: Vec::new(), scmin: Vec::new() };
        for b in 0..nb {
            for c in 0..qb / 4 {
                let at = b * RG * qb + 64 * c + 4 * i;
                p.quants.extend_from_slice(&src[at..at + 4]);
            }
        }
        let half = |at: usize| [src[at], src[at + 1]];
        match t {
            GgmlType::Q4_K => {
                p.scmin = (0..nb).map(|b| (src[f + 16 * b + i], src[f + 16 * nb + 16 * b + i])).collect();
                for sb in 0..nb / 8 {
                    p.halves.push(half(f + 32 * nb + 32 * sb + 2 * i));
                    p.halves.push(half(f + 32 * nb + 32 * (nb / 8) + 32 * sb + 2 * i));
                }
            }
            GgmlType::Q6_K => {
                p.scmin = (0..nb).map(|b| (src[f + 32 * b + i], src[f + 32 * b + 16 + i])).collect();
                p.halves = (0..nb / 8).map(|s| half(f + 32 * nb + 32 * s + 2 * i)).collect();
            }
            GgmlType::Q4_1 => {
                for b in 0..nb {
                    p.halves.push(half(f + 32 * b + 2 * i));
                    p.halves.push(half(f + 32 * nb + 32 * b + 2 * i));
                }
            }
            _ => p.halves = (0..nb).map(|b| half(f + 32 * b + 2 * i)).collect(),
        }
        row_from_parts(t, &p, nb)
    }
}

/// Activation rows per panel: the rows of a kernel tile sit at constant offsets from one
/// pointer per field, so a 12-row tile needs 4 address registers, not 48.
pub const PANEL: usize = 12;

/// Activations for the packed kernels: `m` rows of `k` values quantized as
/// [`ActFormat::B32`](super::quant::ActFormat), with per block its scale `d`, its sum
/// `s = d·Σq`, and the integer start values `−8·Σq` (Q4_0), `−128·Σq` (Q8_0's flipped
/// quants) and `−32·Σq` over each half of 16 (Q6_K's sub-blocks), exact in i32.
///
/// Laid out in panels of [`PANEL`] rows: block `b` of row `i` (panel `p = i / 12`, place
/// `r = i % 12`) is slot `(p·nb + b)·12 + r`: its 32 quants at `32·slot`, its fields at `slot`.
#[derive(Debug, Default, Clone)]
pub struct PActs {
    pub m: usize,
    pub k: usize,
    pub qs: Vec<i8>,
    pub d: Vec<f32>,
    pub s: Vec<f32>,
    pub isum8: Vec<i32>,
    pub isum128: Vec<i32>,
    /// `−32·Σq` over values 0..16 and 16..32 of the block.
    pub isum32: Vec<[i32; 2]>,
    /// Scratch for one row in the plain B32 layout (kept between calls).
    plain: Plain,
}

/// One row's quants, scales and sums in the plain B32 layout.
#[derive(Debug, Default, Clone)]
struct Plain {
    q: Vec<i8>,
    d: Vec<f32>,
    s: Vec<f32>,
}

impl Plain {
    /// Sized for rows of `k` values.
    fn fit(&mut self, k: usize) {
        self.q.resize(k, 0);
        self.d.resize(k / QK, 0.0);
        self.s.resize(k / QK, 0.0);
    }
}

/// One panel's slots of each [`PActs`] field.
type PanelParts<'a> = (&'a mut [i8], &'a mut [f32], &'a mut [f32], &'a mut [i32], &'a mut [i32], &'a mut [[i32; 2]]);

/// One activation row's pointers at block 0, as the kernels take them: block `b` is
/// `b·PANEL` slots further on, the next row of the panel one slot.
#[derive(Clone, Copy)]
pub struct PActRow {
    pub qs: *const i8,
    pub d: *const f32,
    pub s: *const f32,
    pub isum8: *const i32,
    pub isum128: *const i32,
    pub isum32: *const [i32; 2],
}

impl PActs {
    /// Quantize `x: (m, k)` (`k` a multiple of 32). `quantize_row` is the B32 quantizer
    /// (SIMD or scalar; they agree bit for bit).
    pub fn quantize(&mut self, x: &[f32], m: usize, k: usize, quantize_row: impl Fn(&[f32], &mut [i8], &mut [f32], &mut [f32]) + Sync) {
        use rayon::prelude::*;
        let nb = k / QK;
        self.m = m;
        self.k = k;
        let slots = m.div_ceil(PANEL) * PANEL * nb;
        self.qs.resize(slots * QK, 0);
        self.d.resize(slots, 0.0);
        self.s.resize(slots, 0.0);
        self.isum8.resize(slots, 0);
        self.isum128.resize(slots, 0);
        self.isum32.resize(slots, [0; 2]);
        let ps = PANEL * nb; // slots per panel
        // Panel p: its rows quantized in the plain layout (`plain`: one row's quants, scales
        // and sums), then spread to their slots.
        let panel = |plain: &mut Plain, p: usize, (qs, d, s, i8s, i128s, i32s): PanelParts<'_>| {
            plain.fit(k);
            for r in 0..PANEL.min(m - p * PANEL) {
                let i = p * PANEL + r;
                quantize_row(&x[i * k..(i + 1) * k], &mut plain.q, &mut plain.d, &mut plain.s);
                for (b, qb) in plain.q.chunks_exact(QK).enumerate() {
                    let at = b * PANEL + r;
                    qs[at * QK..(at + 1) * QK].copy_from_slice(qb);
                    let lo: i32 = qb[..16].iter().map(|&v| v as i32).sum();
                    let hi: i32 = qb[16..].iter().map(|&v| v as i32).sum();
                    d[at] = plain.d[b];
                    s[at] = plain.s[b];
                    i8s[at] = -8 * (lo + hi);
                    i128s[at] = -128 * (lo + hi);
                    i32s[at] = [-32 * lo, -32 * hi];
                }
            }
        };
        if m * k >= 1 << 16 {
            // Prefill: one task per panel, each with its own row scratch.
            let sums = (self.isum8.par_chunks_mut(ps), self.isum128.par_chunks_mut(ps), self.isum32.par_chunks_mut(ps));
            (self.qs.par_chunks_mut(ps * QK), self.d.par_chunks_mut(ps), self.s.par_chunks_mut(ps), sums)
                .into_par_iter()
                .enumerate()
                .for_each_init(Plain::default, |plain, (p, (qs, d, s, (i8s, i128s, i32s)))| panel(plain, p, (qs, d, s, i8s, i128s, i32s)));
        } else {
            // Decode and small products: on this thread, with the kept scratch (no allocation).
            let sums = self.isum8.chunks_mut(ps).zip(self.isum128.chunks_mut(ps)).zip(self.isum32.chunks_mut(ps));
            let parts = self.qs.chunks_mut(ps * QK).zip(self.d.chunks_mut(ps)).zip(self.s.chunks_mut(ps)).zip(sums);
            for (p, (((qs, d), s), ((i8s, i128s), i32s))) in parts.enumerate() {
                panel(&mut self.plain, p, (qs, d, s, i8s, i128s, i32s));
            }
        }
    }

    /// The slot of block `b` of row `i`.
    pub fn slot(&self, i: usize, b: usize) -> usize {
        let nb = self.k / QK;
        (i / PANEL * nb + b) * PANEL + i % PANEL
    }

    pub fn row(&self, i: usize) -> PActRow {
        let at = self.slot(i, 0);
        PActRow {
            qs: self.qs[at * QK..].as_ptr(),
            d: self.d[at..].as_ptr(),
            s: self.s[at..].as_ptr(),
            isum8: self.isum8[at..].as_ptr(),
            isum128: self.isum128[at..].as_ptr(),
            isum32: self.isum32[at..].as_ptr(),
        }
    }
}

/// Scalar reference of one packed product (weight row `r` of `p`, activation row `i` of
/// `acts`), written from the layout's definition; the tests hold the SIMD kernel to it.
pub fn dot_ref(p: &Packed, r: usize, acts: &PActs, i: usize) -> f32 {
    let (t, nb, qb) = (p.dtype, p.nb, quant_bytes(p.dtype));
    let (g, lane) = (r / RG, r % RG);
    let w = p.group(g);
    let f = nb * RG * qb;
    let f16 = |at: usize| half::f16::from_le_bytes([w[at], w[at + 1]]).to_f32();
    // (scale, offset) of block b: w = scale·q + offset.
    let field = |b: usize| -> (f32, f32) {
        match t {
            GgmlType::Q4_K => {
                let (d, dmin) = (f16(f + 32 * nb + 32 * (b / 8) + 2 * lane), f16(f + 32 * nb + 32 * (nb / 8) + 32 * (b / 8) + 2 * lane));
                (d * w[f + 16 * b + lane] as f32, -dmin * w[f + 16 * nb + 16 * b + lane] as f32)
            }
            GgmlType::Q4_1 => (f16(f + 32 * b + 2 * lane), f16(f + 32 * nb + 32 * b + 2 * lane)),
            _ => (f16(f + 32 * b + 2 * lane), 0.0),
        }
    };
    let mut y = 0f32;
    if t == GgmlType::Q6_K {
        // Two sub-blocks of 16 per block, each `d·sc·(q − 32)`.
        for b in 0..nb {
            let byte = |e: usize| w[b * RG * qb + 64 * (e / 4) + 4 * lane + e % 4];
            let d = f16(f + 32 * nb + 32 * (b / 8) + 2 * lane);
            let at = acts.slot(i, b);
            for half in 0..2 {
                let mut sum = 0i32;
                for v in 16 * half..16 * half + 16 {
                    let (e, c) = (v % 4, (v % 16) / 4);
                    let low = (byte(v % 16) >> (4 * half)) & 15;
                    let high = (byte(16 + 4 * half + e) >> (2 * c)) & 3;
                    sum += ((low | (high << 4)) as i32 - 32) * acts.qs[at * QK + v] as i32;
                }
                let sc = w[f + 32 * b + 16 * half + lane] as i8 as f32;
                y += d * sc * acts.d[at] * sum as f32;
            }
        }
        return y;
    }
    for b in 0..nb {
        let byte = |e: usize| w[b * RG * qb + 64 * (e / 4) + 4 * lane + e % 4];
        let mut sum = 0i32;
        for v in 0..QK {
            let q = match t {
                GgmlType::Q8_0 => byte(v) as i32 - 128,
                GgmlType::Q4_0 => ((byte(v % 16) >> (4 * (v / 16))) & 15) as i32 - 8,
                _ => ((byte(v % 16) >> (4 * (v / 16))) & 15) as i32,
            };
            sum += q * acts.qs[acts.slot(i, b) * QK + v] as i32;
        }
        let (sc, off) = field(b);
        let at = acts.slot(i, b);
        y += sc * acts.d[at] * sum as f32 + off * acts.s[at];
    }
    y
}
