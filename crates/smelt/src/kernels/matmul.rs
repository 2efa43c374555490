//! `y = x · Wᵀ` over quantized weights: activation quantization, tiling and threads.
//!
//! Work is cut into tasks of (a run of weight rows) × (a run of activation rows). Inside a
//! task, every group of up to [`GROUP`] activation rows is multiplied with all of the
//! task's weight rows by [`Tile`] kernel calls of 1, 2, 4 or 8 rows, which unpack each
//! weight block once for all their rows. The task's weight rows are sized to stay in L1
//! while the activation groups stream past, so for prefill each weight byte comes from
//! memory once per task rather than once per activation row. For decode (one activation
//! group) tasks are simply large contiguous row ranges, a few per thread; products too
//! small to be worth waking the pool for run on the calling thread.
//!
//! Nothing is allocated per call: the quantized activations live in a thread-local
//! scratch buffer that only grows.

use rayon::prelude::*;

use super::packed::PActs;
use std::mem::MaybeUninit;
use super::quant::{ActFormat, ActRow, QActs};
use super::{dot_scalar, Isa, QWeight};

/// Activation rows per group (the largest tile; one panel group).
pub const GROUP: usize = super::quant::PANEL_ROWS;

/// One kernel call: `rows` consecutive weight rows against `nr` activation rows
/// (1, 2, 4, or 8 where [`max_tile_rows`] allows).
///
/// Contract (what the `unsafe` kernels rely on): `w.len() >= rows · row_bytes`, `row_bytes`
/// is a whole number of blocks, and each of `acts[..nr]` holds the quants, scales and sums
/// of one activation row of `row_bytes / type_size · block_size` values in the weight's
/// [`ActFormat`]. With `panel`, those rows are also consecutive rows of one panel group
/// of [`super::quant::Panels`] holding all their full chunks, and `panel` points at the
/// first one. The output for weight row `j`, activation row `r` goes to `y[r·ldy + j]`.
#[derive(Clone, Copy)]
pub struct Tile<'a> {
    pub w: &'a [u8],
    pub row_bytes: usize,
    pub rows: usize,
    pub acts: [ActRow<'a>; GROUP],
    pub nr: usize,
    /// SIMD B32 prefill: the activation panels of the tile's first row
    /// ([`QActs::panel_row`]); its rows are consecutive rows of one panel group.
    pub panel: Option<PanelRef>,
}

/// Base pointers of a tile's first `R` activation rows, for kernels that index them with
/// constant offsets: quants, scales, and the B32 sums `s` / the K256 16-value sums `bs`.
pub struct ActPtrs<const R: usize> {
    pub q: [*const i8; R],
    pub d: [*const f32; R],
    pub s: [*const f32; R],
    pub bs: [*const i16; R],
}

impl Tile<'_> {
    #[inline]
    pub fn act_ptrs<const R: usize>(&self) -> ActPtrs<R> {
        ActPtrs {
            q: std::array::from_fn(|r| self.acts[r].qs.as_ptr()),
            d: std::array::from_fn(|r| self.acts[r].d.as_ptr()),
            s: std::array::from_fn(|r| self.acts[r].s.as_ptr()),
            bs: std::array::from_fn(|r| self.acts[r].bsums.as_ptr()),
        }
    }
}

/// `$f::<{ $t }, nr>(tl, y, ldy)` for a tile of `nr` = 1, 2 or 4 rows: the SIMD modules'
/// dispatch from run-time tile height to const-generic kernel.
macro_rules! by_nr {
    ($f:ident, $t:expr, $tl:expr, $y:expr, $ldy:expr) => {
        match $tl.nr {
            1 => $f::<{ $t }, 1>($tl, $y, $ldy),
            2 => $f::<{ $t }, 2>($tl, $y, $ldy),
            4 => $f::<{ $t }, 4>($tl, $y, $ldy),
            n => unreachable!("{n}-row tile"),
        }
    };
}
#[allow(unused_imports)] // used by the x86 or the aarch64 kernels, whichever are built
pub(crate) use by_nr;

/// Panel pointers `(quants, scales, sums)` of one activation row, see [`super::quant::Panels`].
#[derive(Clone, Copy)]
pub struct PanelRef {
    pub q: *const i8,
    pub d: *const f32,
    pub s: *const f32,
}

impl PanelRef {
    /// The same for the row `r` rows further on (within the panel group).
    fn row(self, r: usize) -> PanelRef {
        use super::quant::PANEL_Q;
        PanelRef { q: self.q.wrapping_add(r * PANEL_Q), d: self.d.wrapping_add(r * 8), s: self.s.wrapping_add(r * 8) }
    }
}

/// Bytes of weight rows a prefill task keeps hot while activation groups stream past.
const TASK_WEIGHT_BYTES: usize = 16 << 10;
/// Bytes of packed weight groups a prefill task keeps in L2 while its activation panels pass.
#[cfg(target_arch = "x86_64")]
const TASK_GROUP_BYTES: usize = 256 << 10;
/// Below this many multiply-adds a product runs on the calling thread.
const PARALLEL_MIN_MACS: usize = 1 << 17;

/// A raw output pointer shared by tasks that write disjoint elements.
#[derive(Clone, Copy)]
struct OutPtr(*mut f32);
// SAFETY: every task writes a disjoint set of elements (its own weight rows × activation
// rows), and the buffer outlives the parallel loop that uses it.
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}

impl OutPtr {
    /// # Safety
    /// `i` is within the output buffer.
    unsafe fn at(self, i: usize) -> *mut f32 {
        self.0.add(i)
    }
}

thread_local! {
    /// Quantized activations, reused across calls on this thread (taken out while in use,
    /// so a nested call on the same thread gets a fresh buffer instead of a borrow panic).
    static SCRATCH: std::cell::Cell<QActs> = std::cell::Cell::new(QActs::default());
}

/// Quantize `x: (m, k)` into `acts` with `isa`.
pub fn quantize_acts(isa: Isa, acts: &mut QActs, format: ActFormat, x: &[f32], m: usize, k: usize) {
    acts.reset(format, m, k);
    for i in 0..m {
        let xr = &x[i * k..(i + 1) * k];
        let (qs, d, s, bsums) = acts.row_mut(i);
        match (isa, format) {
            #[cfg(target_arch = "x86_64")]
            (Isa::Avx2, ActFormat::B32) => unsafe { super::x86::avx2::quantize_row_b32(xr, qs, d, s) },
            #[cfg(target_arch = "x86_64")]
            (Isa::Avx2, ActFormat::K256) => unsafe { super::x86::avx2::quantize_row_k256(xr, qs, d, bsums) },
            #[cfg(target_arch = "x86_64")]
            (Isa::Avx512Vnni, ActFormat::B32) => unsafe { super::x86::vnni::quantize_row_b32(xr, qs, d, s) },
            #[cfg(target_arch = "x86_64")]
            (Isa::Avx512Vnni, ActFormat::K256) => unsafe { super::x86::vnni::quantize_row_k256(xr, qs, d, bsums) },
            (_, ActFormat::B32) => super::quant::quantize_row_b32(xr, qs, d, s),
            (_, ActFormat::K256) => super::quant::quantize_row_k256(xr, qs, d, bsums),
        }
    }
}

/// The tallest tile a kernel takes: 8 rows where its registers allow (AVX-512's 32 vector
/// registers and the interleaved 32-value kernels), else 4.
pub fn max_tile_rows(isa: Isa, panels: bool) -> usize {
    if isa == Isa::Avx512Vnni && panels {
        8
    } else {
        4
    }
}

/// Run the rows of `tl` with `isa`, as tiles of 8, 4, 2 and 1 rows.
fn run_tile(isa: Isa, w: &QWeight, tl: &Tile<'_>, y: *mut f32, ldy: usize) {
    let max = max_tile_rows(isa, tl.panel.is_some());
    let mut r0 = 0;
    while r0 < tl.nr {
        let nr = [8, 4, 2, 1].into_iter().find(|&n| n <= max && n <= tl.nr - r0).unwrap();
        let sub = Tile {
            acts: std::array::from_fn(|r| tl.acts[(r0 + r).min(GROUP - 1)]),
            nr,
            panel: tl.panel.map(|p| p.row(r0)),
            ..*tl
        };
        // SAFETY: rows r0.. of the tile's output.
        let ys = unsafe { y.add(r0 * ldy) };
        match isa {
            // SAFETY: `isa` is available (checked by the caller); the tile is built by
            // `matmul_into` within the bounds it validated; `ys` has room for nr rows of
            // stride ldy.
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => unsafe { super::x86::avx2::tile(w.dtype(), &sub, ys, ldy) },
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512Vnni => unsafe { super::x86::vnni::tile(w.dtype(), &sub, ys, ldy) },
            #[cfg(target_arch = "aarch64")]
            Isa::Neon => unsafe { super::arm::neon::tile(w.dtype(), &sub, ys, ldy) },
            #[cfg(target_arch = "aarch64")]
            Isa::NeonDot => unsafe { super::arm::dotprod::tile(w.dtype(), &sub, ys, ldy) },
            _ => {
                for j in 0..sub.rows {
                    let row = &sub.w[j * sub.row_bytes..(j + 1) * sub.row_bytes];
                    for r in 0..nr {
                        // SAFETY: as above, ys[r·ldy + j] is inside this tile's output.
                        unsafe { *ys.add(r * ldy + j) = dot_scalar::dot(w.dtype(), row, sub.acts[r]) };
                    }
                }
            }
        }
        r0 += nr;
    }
}

/// How a product is cut into tasks: `n_w` runs of `wr` weight units (rows, or packed
/// groups of 16 rows) × `n_a` runs of `ga` activation units (row groups or panels); task `t`
/// is weight run `t % n_w`, activation run `t / n_w`.
struct Plan {
    threads: usize,
    wr: usize,
    n_w: usize,
    ga: usize,
    n_a: usize,
}

impl Plan {
    /// `macs` multiply-adds over `w_units` weight units of `unit_bytes` each and `a_units`
    /// activation units. Decode (one activation unit) splits the weight units evenly, a few
    /// runs per thread; prefill gives each task about `task_bytes` of weights (at least
    /// `min_units`) to keep in cache while its activation units stream past.
    fn new(macs: usize, w_units: usize, a_units: usize, unit_bytes: usize, task_bytes: usize, min_units: usize) -> Plan {
        let threads = if macs < PARALLEL_MIN_MACS { 1 } else { rayon::current_num_threads().max(1) };
        let wr = if a_units == 1 {
            w_units.div_ceil(4 * threads)
        } else {
            (task_bytes / unit_bytes).max(min_units).min(w_units.div_ceil(threads))
        }
        .max(1);
        let n_w = w_units.div_ceil(wr);
        // Split activation units too when there are too few weight tasks to balance threads.
        let n_a = (4 * threads).div_ceil(n_w).clamp(1, a_units);
        let ga = a_units.div_ceil(n_a);
        let n_a = a_units.div_ceil(ga);
        Plan { threads, wr, n_w, ga, n_a }
    }

    /// Run `task(t)` for every task, on the pool when it pays.
    fn run(&self, task: impl Fn(usize) + Sync + Send) {
        let tasks = self.n_w * self.n_a;
        if self.threads == 1 || tasks == 1 {
            (0..tasks).for_each(task);
        } else {
            (0..tasks).into_par_iter().for_each(task);
        }
    }
}

thread_local! {
    /// Activations quantized for the packed kernels (as [`SCRATCH`]).
    static PSCRATCH: std::cell::Cell<PActs> = std::cell::Cell::new(PActs::default());
}

/// `y = x · Wᵀ` over a packed weight with the AVX-512 VNNI kernels (the caller checked
/// that the CPU has them).
///
/// Tasks are (a run of 16-row weight groups) × (a run of 12-row activation panels); inside
/// a task each panel (12 rows × k quants, in L1) meets every group of the run, whose bytes
/// stay in L2 between panels. Decode (one panel) splits the groups evenly over the threads.
#[cfg(target_arch = "x86_64")]
pub(crate) fn packed_matmul(p: &super::packed::Packed, x: &[f32], m: usize, y: &mut [MaybeUninit<f32>]) {
    use super::packed::{PANEL, RG};
    use super::x86::packed as xp;
    use crate::load::gguf::GgmlType;
    let (n, nb) = (p.rows, p.nb);
    let k = nb * super::blocks::QK;
    let mut acts = PSCRATCH.with(|s| s.take());
    // SAFETY: the CPU has AVX-512 VNNI (checked by the caller).
    acts.quantize(x, m, k, |x, q, d, s| unsafe { super::x86::vnni::quantize_row_b32(x, q, d, s) });
    let (ng, np) = (p.groups(), m.div_ceil(PANEL));
    let plan = Plan::new(m * n * k, ng, np, p.gstride, TASK_GROUP_BYTES, 1);
    let (gw, n_w, pa) = (plan.wr, plan.n_w, plan.ga);
    let out = OutPtr(y.as_mut_ptr() as *mut f32);
    let shared = &acts;
    let base = p.bytes().as_ptr() as usize;
    let gstride = p.gstride;
    let task = |t: usize| {
        let (tw, ta) = (t % n_w, t / n_w);
        for pi in ta * pa..((ta + 1) * pa).min(np) {
            let a0 = PANEL * pi;
            let nr = (m - a0).min(PANEL);
            for g in tw * gw..((tw + 1) * gw).min(ng) {
                let w = (base + g * gstride) as *const u8;
                let live = (n - g * RG).min(RG);
                let mut r0 = 0;
                while r0 < nr {
                    let h = [12, 8, 4, 2, 1].into_iter().find(|&h| h <= nr - r0).unwrap();
                    let a = shared.row(a0 + r0);
                    // SAFETY: group g of the packed weight, activation rows a0 + r0 .. + h (< m)
                    // of one panel, and output elements (a0 + r0 + r, 16g + i), i < live,
                    // written by this task only.
                    unsafe {
                        let yp = out.at((a0 + r0) * n + g * RG);
                        macro_rules! go {
                            ($h:literal) => {{
                                match p.dtype {
                                    GgmlType::Q4_0 => xp::tile::<{ xp::Q4_0 }, $h>(w, nb, a, yp, n, live),
                                    GgmlType::Q4_1 => xp::tile::<{ xp::Q4_1 }, $h>(w, nb, a, yp, n, live),
                                    GgmlType::Q8_0 => xp::tile::<{ xp::Q8_0 }, $h>(w, nb, a, yp, n, live),
                                    GgmlType::Q4_K => xp::tile::<{ xp::Q4_K }, $h>(w, nb, a, yp, n, live),
                                    GgmlType::Q6_K => xp::tile::<{ xp::Q6_K }, $h>(w, nb, a, yp, n, live),
                                    t => unreachable!("no packed kernel for {t}"),
                                }
                            }};
                        }
                        match h {
                            12 => go!(12),
                            8 => go!(8),
                            4 => go!(4),
                            2 => go!(2),
                            _ => go!(1),
                        }
                    }
                    r0 += h;
                }
            }
        }
    };
    plan.run(task);
    PSCRATCH.with(|s| s.set(acts));
}

/// `y (m, n) = x (m, k) · Wᵀ` with `W: (n, k)` quantized. Sizes are checked by the caller
/// ([`QWeight::matmul_into`]); `isa` must be available. Every element of `y` is written (so
/// `y` may start uninitialized: [`QWeight::matmul_vec`]).
pub(super) fn matmul_into(isa: Isa, w: &QWeight, x: &[f32], m: usize, y: &mut [MaybeUninit<f32>]) {
    let (n, k) = (w.rows(), w.cols());
    debug_assert!(x.len() == m * k && y.len() == m * n);
    if m == 0 || n == 0 {
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if let (Isa::Avx512Vnni, Some(p)) = (isa, w.packed_view()) {
        return packed_matmul(p, x, m, y);
    }
    let format = ActFormat::for_weight(w.dtype()).expect("QWeight holds a kernel type");
    let mut acts = SCRATCH.with(|s| s.take());
    quantize_acts(isa, &mut acts, format, x, m, k);
    // Prefill: the SIMD 32-value kernels save a horizontal reduction per row and 8 blocks
    // on interleaved activations (decode keeps the plain layout, which is cheaper there).
    if m > 1 && format == ActFormat::B32 && matches!(isa, Isa::Avx2 | Isa::Avx512Vnni) {
        acts.interleave();
    }

    let row_bytes = w.row_bytes();
    let data = w.data();
    let groups = m.div_ceil(GROUP);
    let Plan { threads, wr, n_w, ga, n_a } = Plan::new(m * n * k, n, groups, row_bytes, TASK_WEIGHT_BYTES, 4);

    let out = OutPtr(y.as_mut_ptr() as *mut f32);
    let shared = &acts;
    let task = |t: usize| {
        let (tw, ta) = (t % n_w, t / n_w);
        let (j0, j1) = (tw * wr, ((tw + 1) * wr).min(n));
        for g in ta * ga..((ta + 1) * ga).min(groups) {
            let a0 = GROUP * g;
            let nr = (m - a0).min(GROUP);
            let tl = Tile {
                w: &data[j0 * row_bytes..j1 * row_bytes],
                row_bytes,
                rows: j1 - j0,
                acts: std::array::from_fn(|r| shared.row(a0 + r.min(nr - 1))),
                nr,
                panel: shared.interleaved.then(|| {
                    let (q, d, s) = shared.panel_row(a0);
                    PanelRef { q, d, s }
                }),
            };
            // SAFETY: element (a0 + r, j0 + j) of y, r < nr, j < j1 − j0, is in bounds and
            // written by this task only.
            run_tile(isa, w, &tl, unsafe { out.at(a0 * n + j0) }, n);
        }
    };
    Plan { threads, wr, n_w, ga, n_a }.run(task);
    SCRATCH.with(|s| s.set(acts));
}
