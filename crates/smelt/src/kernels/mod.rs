//! smelt's quantized matrix kernels: `y = x · Wᵀ` with `W` kept in ggml block format,
//! straight from the model file's memory map.
//!
//! - [`QWeight`]: a zero-copy view of a quantized `(rows, cols)` matrix in the file; on
//!   AVX-512 VNNI CPUs, Q4_0/Q4_1/Q8_0/Q4_K/Q6_K weights are repacked at load ([`packed`]:
//!   16 weight rows per SIMD vector, one lane each, activations broadcast, no horizontal
//!   sums) and the file's pages released, so the model is still resident once.
//!   [`QWeight::transposed_int8`] adds a Q8_0 `Wᵀ` for training's backward products.
//! - [`QWeight::matmul_into`] / [`QWeight::forward`]: quantize each activation row once to
//!   8 bits ([`quant`]), then integer dot products per block ([`dot_scalar`], the x86
//!   SIMD kernels in `x86/`), tiled and spread over rayon's pool ([`matmul`]).
//! - [`Isa`]: the instruction set used, detected once at run time (override with
//!   `SMELT_KERNEL_ISA=scalar|avx2|vnni|neon|dotprod`, e.g. to compare). aarch64 runs the
//!   NEON kernels in `arm.rs` on the file's layout (with `sdot` where the CPU has it).
//! - [`blocks`]: the ggml block layouts and scalar dequantization (embedding lookups).
//!
//! Types: Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K, Q6_K. Others are left to candle.
//! Every SIMD kernel is tested against the scalar one, and the scalar one against the
//! dequantized weights (see [`testing`] for the error bounds).

pub mod blocks;
pub mod dot_scalar;
pub mod matmul;
pub mod packed;
pub mod quant;
pub mod quantize;
#[doc(hidden)]
pub mod testing;
#[cfg(test)]
mod tests;
#[cfg(target_arch = "x86_64")]
mod x86;
#[cfg(target_arch = "aarch64")]
mod arm;

use std::sync::OnceLock;

use anyhow::{bail, Context, Result};
use candle_core::{CpuStorage, CustomOp1, Layout, Shape, Tensor};

use crate::load::gguf::{Bytes, GgmlType};

/// Instruction set of the kernels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isa {
    /// Portable Rust; the reference for tests.
    Scalar,
    /// AVX2 + FMA + F16C.
    Avx2,
    /// AVX2 plus AVX-512 F/BW/VL/VNNI (Ice Lake, Zen 4 and later).
    Avx512Vnni,
    /// aarch64 baseline NEON.
    Neon,
    /// NEON with the ARMv8.2 dot product (`sdot`: Apple M1+, Graviton 2+, Cortex-A55/A76+).
    NeonDot,
}

impl Isa {
    /// Whether this CPU can run `self`.
    pub fn is_available(self) -> bool {
        match self {
            Isa::Scalar => true,
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") && is_x86_feature_detected!("f16c"),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512Vnni => {
                Isa::Avx2.is_available()
                    && is_x86_feature_detected!("avx512f")
                    && is_x86_feature_detected!("avx512bw")
                    && is_x86_feature_detected!("avx512vl")
                    && is_x86_feature_detected!("avx512vnni")
            }
            #[cfg(target_arch = "aarch64")]
            Isa::Neon => std::arch::is_aarch64_feature_detected!("neon"),
            #[cfg(target_arch = "aarch64")]
            Isa::NeonDot => Isa::Neon.is_available() && std::arch::is_aarch64_feature_detected!("dotprod"),
            #[allow(unreachable_patterns)]
            _ => false,
        }
    }

    /// Every instruction set this CPU can run, the portable one first.
    pub fn available() -> Vec<Isa> {
        [Isa::Scalar, Isa::Avx2, Isa::Avx512Vnni, Isa::Neon, Isa::NeonDot].into_iter().filter(|i| i.is_available()).collect()
    }

    /// The one the kernels use: the best available, or `SMELT_KERNEL_ISA` when set (and available).
    pub fn current() -> Isa {
        static ISA: OnceLock<Isa> = OnceLock::new();
        *ISA.get_or_init(|| {
            let best = *Isa::available().last().unwrap_or(&Isa::Scalar);
            let wanted = match std::env::var("SMELT_KERNEL_ISA").ok().as_deref() {
                Some("scalar") => Isa::Scalar,
                Some("avx2") => Isa::Avx2,
                Some("vnni") => Isa::Avx512Vnni,
                Some("neon") => Isa::Neon,
                Some("dotprod") => Isa::NeonDot,
                _ => best,
            };
            if wanted.is_available() {
                wanted
            } else {
                best
            }
        })
    }
}

/// A quantized weight matrix `(rows, cols)` (`rows` = outputs, `cols` = inputs) in ggml
/// block format, borrowed from the model file's bytes: row `r` is `cols / block_size`
/// consecutive blocks starting at `offset + r · row_bytes`. Cloning is cheap (an `Arc`).
#[derive(Clone)]
pub struct QWeight {
    bytes: Bytes,
    offset: usize,
    dtype: GgmlType,
    rows: usize,
    cols: usize,
    /// The same matrix repacked for the AVX-512 kernels ([`QWeight::packed`]).
    packed: Option<std::sync::Arc<packed::Packed>>,
    /// `Wᵀ` in packed Q8_0, built on first use by [`QWeight::transposed_int8`] (training's
    /// backward products) and shared by every clone.
    transposed: std::sync::Arc<OnceLock<Option<Transposed>>>,
}

/// A built `Wᵀ` and its share of the process's budget, given back when the last clone of
/// its weight is dropped (a server that swaps models, or a test process that loads many,
/// can build copies again).
struct Transposed {
    packed: packed::Packed,
    _claim: Claim<'static>,
}

impl std::fmt::Debug for QWeight {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "QWeight({} [{}, {}] @{})", self.dtype, self.rows, self.cols, self.offset)
    }
}

impl QWeight {
    /// Whether smelt has kernels for `t`.
    pub fn supports(t: GgmlType) -> bool {
        quant::ActFormat::for_weight(t).is_some()
    }

    /// A view of `rows × cols` values of type `dtype` at `bytes[offset..]`.
    pub fn new(bytes: Bytes, offset: usize, dtype: GgmlType, rows: usize, cols: usize) -> Result<QWeight> {
        if !Self::supports(dtype) {
            bail!("smelt has no quantized kernel for {dtype}");
        }
        let bs = dtype.block_size();
        if cols == 0 || !cols.is_multiple_of(bs) {
            bail!("a {dtype} row needs a multiple of {bs} values, got {cols}");
        }
        let size = rows
            .checked_mul(cols / bs)
            .and_then(|b| b.checked_mul(dtype.type_size()))
            .context("quantized tensor size overflows")?;
        if offset.checked_add(size).is_none_or(|end| end > bytes.len()) {
            bail!("{dtype} tensor [{rows}, {cols}] at offset {offset} runs past the end of the data ({} bytes)", bytes.len());
        }
        Ok(QWeight { bytes, offset, dtype, rows, cols, packed: None, transposed: Default::default() })
    }

    /// A weight over its own bytes (tests, weights quantized in memory).
    pub fn from_vec(data: Vec<u8>, dtype: GgmlType, rows: usize, cols: usize) -> Result<QWeight> {
        Self::new(Bytes::Owned(std::sync::Arc::new(data)), 0, dtype, rows, cols)
    }

    pub fn dtype(&self) -> GgmlType {
        self.dtype
    }

    /// Whether [`QWeight::packed`] would repack this weight: a packed layout exists for its
    /// type and the CPU runs the packed kernels (AVX-512 VNNI), unless `SMELT_PACK=0`.
    pub fn packs(&self) -> bool {
        static ON: OnceLock<bool> = OnceLock::new();
        let on = *ON.get_or_init(|| std::env::var("SMELT_PACK").map_or(true, |v| v != "0"));
        on && packed::supports(self.dtype) && Isa::Avx512Vnni.is_available()
    }

    /// The weight with a packed copy for the fast kernels ([`packed`]), when [`Self::packs`].
    /// The file's pages of the original are released as the packing goes, 16 MiB at a time
    /// (they are read back from the page cache only if something asks for the ggml bytes
    /// again: embedding lookups, LoRA training, export), so the model stays resident once.
    pub fn packed(mut self) -> QWeight {
        if self.packed.is_none() && self.packs() {
            let nb = self.cols / 32; // packed rows count blocks (or sub-blocks) of 32
            let (bytes, offset) = (&self.bytes, self.offset);
            let p = packed::Packed::new_releasing(self.dtype, self.data(), self.rows, nb, |a, len| bytes.release(offset + a, len));
            self.packed = Some(std::sync::Arc::new(p));
        }
        self
    }

    pub fn packed_view(&self) -> Option<&packed::Packed> {
        self.packed.as_deref()
    }

    /// `Wᵀ (cols × rows)` requantized to Q8_0 and packed, so that a frozen weight's
    /// backward product `dx = dy · W` runs on the int8 kernels as `dy · (Wᵀ)ᵀ` (4× the
    /// multiply rate of f32 on AVX-512 VNNI). Built once, on first use, in parallel; `None`
    /// where the packed kernels do not run, `rows` is not a multiple of 32, or the copies
    /// built so far would pass [`transposed_budget`] bytes (then the caller keeps its f32
    /// path). Q8_0 of the dequantized weight: each value within 1/254 of its block's largest.
    pub fn transposed_int8(&self) -> Option<&packed::Packed> {
        self.transposed.get_or_init(|| self.build_transposed()).as_ref().map(|t| &t.packed)
    }

    /// `dx (m × cols) = dy (m × rows) · W` on the int8 kernels through
    /// [`Self::transposed_int8`] (`dy` quantized to 8 bits per block of 32, as activations
    /// are); `false`, with nothing written, where there is no transposed copy.
    pub fn backward_int8(&self, dy: &[f32], m: usize, dx: &mut [f32]) -> bool {
        self.backward_int8_uninit(dy, m, as_uninit(&mut dx[..m * self.cols]))
    }

    /// [`Self::backward_int8`] into `dx` that may start uninitialized (every element is
    /// written when it returns `true`).
    fn backward_int8_uninit(&self, dy: &[f32], m: usize, dx: &mut [std::mem::MaybeUninit<f32>]) -> bool {
        #[cfg(target_arch = "x86_64")]
        if let Some(t) = self.transposed_int8() {
            matmul::packed_matmul(t, &dy[..m * self.rows], m, dx);
            return true;
        }
        let _ = (dy, m, dx);
        false
    }

    fn build_transposed(&self) -> Option<Transposed> {
        use rayon::prelude::*;
        static BUILT: Budget = Budget::new();
        let (rows, cols) = (self.rows, self.cols);
        if !rows.is_multiple_of(32) || !Isa::Avx512Vnni.is_available() {
            return None;
        }
        let ts = GgmlType::Q8_0.type_size();
        let rb = (rows / 32) * ts; // bytes of one transposed row
        let claim = BUILT.claim(cols * rb, transposed_budget())?;
        // Bands of 32 weight rows: each is one Q8_0 block of every transposed row, written
        // straight into place. The build holds this Q8_0 matrix, then the packed copy:
        // twice the result, not three times as with a buffer per band.
        let mut t = vec![0u8; cols * rb];
        let out = SyncPtr(t.as_mut_ptr());
        (0..rows / 32).into_par_iter().for_each(|band| {
            let out = &out;
            let mut w = vec![0f32; 32 * cols];
            for (i, row) in w.chunks_exact_mut(cols).enumerate() {
                self.dequantize_row(32 * band + i, row);
            }
            let mut col = [0f32; 32];
            let mut blk = vec![0u8; ts];
            for j in 0..cols {
                for (i, v) in col.iter_mut().enumerate() {
                    *v = w[i * cols + j];
                }
                quantize::quantize_row(GgmlType::Q8_0, &col, &mut blk);
                // SAFETY: band `band` of row `j` is written by this task only, inside `t`.
                unsafe { std::ptr::copy_nonoverlapping(blk.as_ptr(), out.0.add(j * rb + band * ts), ts) };
            }
        });
        Some(Transposed { packed: packed::Packed::new(GgmlType::Q8_0, &t, cols, rows / 32), _claim: claim })
    }

    pub fn rows(&self) -> usize {
        self.rows
    }
    pub fn cols(&self) -> usize {
        self.cols
    }
    pub fn row_bytes(&self) -> usize {
        self.cols / self.dtype.block_size() * self.dtype.type_size()
    }

    /// All the blocks, row after row.
    pub fn data(&self) -> &[u8] {
        &self.bytes[self.offset..self.offset + self.rows * self.row_bytes()]
    }

    pub fn row(&self, r: usize) -> &[u8] {
        let rb = self.row_bytes();
        &self.data()[r * rb..(r + 1) * rb]
    }

    /// Row `r` as f32 into `out` (`cols` values).
    pub fn dequantize_row(&self, r: usize, out: &mut [f32]) {
        blocks::dequantize_row(self.dtype, self.row(r), out);
    }

    /// Rows `ids` as f32, `(ids.len(), cols)`: an embedding lookup that touches only those
    /// rows. A mapped file's pages around them are released again afterwards
    /// ([`Self::release_rows`]).
    pub fn gather_rows(&self, ids: &[u32]) -> Result<Vec<f32>> {
        let mut out = vec![0f32; ids.len() * self.cols];
        for (i, &id) in ids.iter().enumerate() {
            if id as usize >= self.rows {
                bail!("row {id} is out of range for a table of {} rows", self.rows);
            }
            self.dequantize_row(id as usize, &mut out[i * self.cols..(i + 1) * self.cols]);
        }
        self.release_rows(ids);
        Ok(out)
    }

    /// Row `id` as f32 into `out` (`cols` values), its mapped pages released again as
    /// [`Self::gather_rows`] releases them, allocating nothing (the decode step's lookup).
    pub fn gather_row_into(&self, id: u32, out: &mut [f32]) -> Result<()> {
        if id as usize >= self.rows || out.len() != self.cols {
            bail!("row {id} of a table of {} rows into {} values (expected {})", self.rows, out.len(), self.cols);
        }
        self.dequantize_row(id as usize, out);
        if matches!(self.bytes, Bytes::Mapped(_)) {
            let (a, b) = self.row_window(id);
            self.bytes.release(a, b - a);
        }
        Ok(())
    }

    /// The 64 KiB-aligned window (Linux's default `fault_around_bytes`) around row `id`,
    /// clipped to the table: what reading the row maps in.
    fn row_window(&self, id: u32) -> (usize, usize) {
        const WINDOW: usize = 64 << 10;
        let (start, end, rb) = (self.offset, self.offset + self.rows * self.row_bytes(), self.row_bytes());
        let (a, b) = (start + id as usize * rb, start + (id as usize + 1) * rb);
        ((a / WINDOW * WINDOW).max(start), b.div_ceil(WINDOW).saturating_mul(WINDOW).min(end))
    }

    /// Drop the mapped pages that reading rows `ids` brought into this process (no effect
    /// on owned bytes). A page fault on a file mapping maps the whole aligned 64 KiB window
    /// around it from the page cache (the kernel's fault-around), so looking up the 512
    /// random tokens of a prompt left ~31 MiB of TinyLlama's embedding table resident, and
    /// a long generation would map the whole table, which nothing else reads.
    fn release_rows(&self, ids: &[u32]) {
        if !matches!(self.bytes, Bytes::Mapped(_)) || ids.is_empty() {
            return;
        }
        let mut spans: Vec<(usize, usize)> = ids.iter().map(|&id| self.row_window(id)).collect();
        spans.sort_unstable();
        let mut cur = spans[0];
        for &(a, b) in &spans[1..] {
            if a <= cur.1 {
                cur.1 = cur.1.max(b);
            } else {
                self.bytes.release(cur.0, cur.1 - cur.0);
                cur = (a, b);
            }
        }
        self.bytes.release(cur.0, cur.1 - cur.0);
    }

    /// The whole matrix as f32, `(rows, cols)`.
    pub fn to_f32(&self) -> Vec<f32> {
        let mut out = vec![0f32; self.rows * self.cols];
        blocks::dequantize_row(self.dtype, self.data(), &mut out);
        out
    }

    /// `y (m, rows) = x (m, cols) · Wᵀ` with the current [`Isa`].
    pub fn matmul_into(&self, x: &[f32], m: usize, y: &mut [f32]) -> Result<()> {
        self.matmul_with(Isa::current(), x, m, y)
    }

    /// Same with a chosen instruction set (tests, benchmarks).
    pub fn matmul_with(&self, isa: Isa, x: &[f32], m: usize, y: &mut [f32]) -> Result<()> {
        if !isa.is_available() {
            bail!("this CPU cannot run {isa:?} kernels");
        }
        if x.len() != m * self.cols || y.len() != m * self.rows {
            bail!(
                "quantized matmul sizes: x has {} values for ({m}, {}), y has {} for ({m}, {})",
                x.len(),
                self.cols,
                y.len(),
                self.rows
            );
        }
        matmul::matmul_into(isa, self, x, m, as_uninit(y));
        Ok(())
    }

    /// `x (m, cols) · Wᵀ` into a new `(m, rows)` vector, which the kernels fill without
    /// zeroing it first (a fresh output's zero fill was ~5% of a LoRA step).
    pub fn matmul_vec(&self, x: &[f32], m: usize) -> Result<Vec<f32>> {
        if x.len() != m * self.cols {
            bail!("quantized matmul sizes: x has {} values for ({m}, {})", x.len(), self.cols);
        }
        let n = m * self.rows;
        let mut y = Vec::with_capacity(n);
        matmul::matmul_into(Isa::current(), self, x, m, &mut y.spare_capacity_mut()[..n]);
        // SAFETY: `matmul_into` wrote all `n` elements (its contract).
        unsafe { y.set_len(n) };
        Ok(y)
    }

    /// [`Self::backward_int8`] into a new `(m, cols)` vector (not zeroed first); `None`
    /// where there is no transposed copy.
    pub fn backward_int8_vec(&self, dy: &[f32], m: usize) -> Option<Vec<f32>> {
        let n = m * self.cols;
        let mut dx = Vec::with_capacity(n);
        if !self.backward_int8_uninit(dy, m, &mut dx.spare_capacity_mut()[..n]) {
            return None;
        }
        // SAFETY: the packed product wrote all `n` elements.
        unsafe { dx.set_len(n) };
        Some(dx)
    }

    /// `x: (..., cols) f32 → (..., rows)`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(x.contiguous()?.apply_op1_no_bwd(self)?)
    }
}

/// `y` as a slice of possibly uninitialized values, for the kernels that only write it.
fn as_uninit(y: &mut [f32]) -> &mut [std::mem::MaybeUninit<f32>] {
    // SAFETY: same layout; the kernels only store initialized values into it.
    unsafe { &mut *(y as *mut [f32] as *mut [std::mem::MaybeUninit<f32>]) }
}

/// Bytes of transposed int8 weight copies ([`QWeight::transposed_int8`]) a process may
/// build: 2 GiB (a 1–2B-parameter base), or `SMELT_INT8_BACKWARD_MB`.
pub fn transposed_budget() -> usize {
    static BUDGET: OnceLock<usize> = OnceLock::new();
    *BUDGET.get_or_init(|| std::env::var("SMELT_INT8_BACKWARD_MB").ok().and_then(|v| v.parse::<usize>().ok()).map_or(2 << 30, |mb| mb << 20))
}

/// The input of a custom op over quantized weights: a contiguous f32 `(..., k)` tensor as
/// `(values, leading dims)`, the values `lead.product()` rows of `k`. `what` names the op
/// in the errors.
pub(crate) fn op_rows<'a>(storage: &'a CpuStorage, layout: &Layout, k: usize, what: &str) -> candle_core::Result<(&'a [f32], Vec<usize>)> {
    let dims = layout.shape().dims();
    let Some((&kx, lead)) = dims.split_last() else {
        candle_core::bail!("{what} needs at least 1-D input")
    };
    if kx != k {
        candle_core::bail!("{what}: input has {kx} features, the weight expects {k}");
    }
    let CpuStorage::F32(data) = storage else {
        candle_core::bail!("{what} needs f32 input")
    };
    let Some((start, end)) = layout.contiguous_offsets() else {
        candle_core::bail!("{what} needs a contiguous input")
    };
    Ok((&data[start..end], lead.to_vec()))
}

impl CustomOp1 for QWeight {
    fn name(&self) -> &'static str {
        "smelt-qmatmul"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let (x, mut out) = op_rows(storage, layout, self.cols, "quantized matmul")?;
        let m: usize = out.iter().product();
        let y = self.matmul_vec(x, m).map_err(|e| candle_core::Error::Msg(format!("{e:#}")))?;
        out.push(self.rows);
        Ok((CpuStorage::F32(y), Shape::from(out)))
    }
}

/// A raw pointer handed to parallel tasks that write disjoint parts of its buffer.
struct SyncPtr(*mut u8);
// SAFETY: the tasks write disjoint bytes; the buffer outlives them.
unsafe impl Sync for SyncPtr {}

/// Bytes of something a process may hold at most so much of, counted as claims are made
/// and given back as they drop.
pub struct Budget(std::sync::atomic::AtomicUsize);

/// `bytes` of a [`Budget`], held until dropped.
pub struct Claim<'a> {
    budget: &'a Budget,
    bytes: usize,
}

impl Budget {
    pub const fn new() -> Budget {
        Budget(std::sync::atomic::AtomicUsize::new(0))
    }

    /// Claim `bytes` if the claims held would stay within `limit`.
    pub fn claim(&self, bytes: usize, limit: usize) -> Option<Claim<'_>> {
        use std::sync::atomic::Ordering;
        self.0
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |held| held.checked_add(bytes).filter(|&h| h <= limit))
            .ok()
            .map(|_| Claim { budget: self, bytes })
    }

    /// Bytes claimed and not yet given back.
    pub fn held(&self) -> usize {
        self.0.load(std::sync::atomic::Ordering::Acquire)
    }
}

impl Default for Budget {
    fn default() -> Budget {
        Budget::new()
    }
}

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        self.budget.0.fetch_sub(self.bytes, std::sync::atomic::Ordering::AcqRel);
    }
}
