//! A frozen linear layer for fine-tuning: `y = x · Wᵀ` where `W` gets no gradient (LoRA,
//! QLoRA), so the backward pass computes only `dx = dy · W`.
//!
//! * Quantized `W` stays in its ggml blocks: the forward pass is smelt's quantized kernel
//!   (the one inference runs), the backward pass dequantizes `W` a band of rows at a time
//!   (in parallel) and multiplies each band into `dx` — the f32 matrix never exists whole.
//!   On AVX-512 VNNI CPUs the backward product runs on the int8 kernels instead
//!   ([`Backward::Int8`]): `Wᵀ` requantized to Q8_0 once ([`QWeight::transposed_int8`]), `dy`
//!   quantized per block of 32 like any activation — 4× f32's multiply rate, and the
//!   precision of bf16 (8 significant bits on `dy`, 8 on `W`). Elsewhere, where bf16
//!   products are faster than f32 ([`bf16::preferred`]: AMD Zen 4, not Intel's Xeons) the
//!   band products run in bf16 with f32 accumulation ([`super::bf16`]).
//!   [`set_low_precision_backward`]`(false)` (`smelt finetune --f32`) keeps f32.
//! * Dense `W` (a Hugging Face base): plain products, but without candle's `dW = xᵀ · dy`
//!   that a frozen weight does not need.
//!
//! The oracle is the dense f32 product of the dequantized weight (tests below).

use std::sync::atomic::{AtomicBool, Ordering};

use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::bf16;
use super::f32_data;
use super::gemm::{matmul_par, Mat};
use crate::kernels::QWeight;

/// Rows of a quantized weight dequantized together in the backward pass.
const BAND: usize = 256;
/// The same for the bf16 path (fewer passes over `dx`).
const BAND_BF16: usize = 512;

static LOW_PRECISION: AtomicBool = AtomicBool::new(true);

/// Whether frozen quantized weights' backward products may run in int8 or bf16 (default:
/// yes, where faster); `false` keeps f32.
pub fn set_low_precision_backward(on: bool) {
    LOW_PRECISION.store(on, Ordering::Relaxed);
}

/// The precision of a frozen quantized weight's backward product `dx = dy · W`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backward {
    /// Dequantized f32 bands, f32 products.
    F32,
    /// Dequantized bands rounded to bf16, f32 accumulation (where the CPU has it).
    Bf16,
    /// `dy` and a Q8_0 `Wᵀ` on the int8 kernels (where they run and `Wᵀ` fits its budget;
    /// f32 otherwise).
    Int8,
}

/// The fastest backward precision allowed here: int8 on AVX-512 VNNI, bf16 where it beats
/// f32 ([`bf16::preferred`]), else f32; f32 when [`set_low_precision_backward`]`(false)`.
pub fn backward_mode() -> Backward {
    if !LOW_PRECISION.load(Ordering::Relaxed) {
        Backward::F32
    } else if crate::kernels::Isa::Avx512Vnni.is_available() {
        Backward::Int8
    } else if bf16::preferred() {
        Backward::Bf16
    } else {
        Backward::F32
    }
}

/// [`quant_backward`] into a new `dx`: the int8 product fills it without a zero fill first.
pub fn quant_backward_vec(q: &QWeight, dy: &[f32], m: usize, mode: Backward) -> Vec<f32> {
    if mode == Backward::Int8 {
        if let Some(dx) = q.backward_int8_vec(dy, m) {
            return dx;
        }
    }
    let mut dx = vec![0f32; m * q.cols()];
    quant_backward(q, dy, m, &mut dx, mode);
    dx
}

/// `dx (m × cols) = dy (m × rows) · W` for a quantized `W (rows × cols)` in the precision
/// `mode`: int8 through `Wᵀ`, or band by band (bf16 products when asked and available).
pub fn quant_backward(q: &QWeight, dy: &[f32], m: usize, dx: &mut [f32], mode: Backward) {
    if mode == Backward::Int8 && q.backward_int8(dy, m, dx) {
        return;
    }
    let use_bf16 = mode == Backward::Bf16 && bf16::available();
    let (rows, cols) = (q.rows(), q.cols());
    assert!(dy.len() >= m * rows && dx.len() >= m * cols, "frozen backward: buffer sizes");
    let band_rows = if use_bf16 { BAND_BF16 } else { BAND };
    let mut band = vec![0f32; band_rows.min(rows) * cols];
    for r0 in (0..rows).step_by(band_rows) {
        let n = band_rows.min(rows - r0);
        band[..n * cols].par_chunks_mut(cols).enumerate().for_each(|(i, out)| q.dequantize_row(r0 + i, out));
        // dy[:, r0..r0+n] (m × n, row stride `rows`) · band (n × cols)
        let dy_band = Mat { ptr: dy[r0..].as_ptr(), rows: m, cols: n, rs: rows as isize, cs: 1 };
        if use_bf16 {
            let (a, b) = (bf16::pack_a(dy_band), bf16::pack_b(Mat::rows(&band, n, cols)));
            bf16::matmul_packed(dx, &a, &b, 1.0, r0 > 0);
        } else {
            matmul_par(dx, dy_band, Mat::rows(&band, n, cols), 1.0, r0 > 0);
        }
    }
}

struct FrozenQuant {
    w: QWeight,
    mode: Backward,
}

fn out_shape(lead: &[usize], rows: usize) -> Shape {
    let mut out = lead.to_vec();
    out.push(rows);
    Shape::from(out)
}

impl CustomOp1 for FrozenQuant {
    fn name(&self) -> &'static str {
        "frozen-qlinear"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let (rows, cols) = (self.w.rows(), self.w.cols());
        let Some((&k, lead)) = l.dims().split_last() else { candle_core::bail!("frozen linear: scalar input") };
        if k != cols {
            candle_core::bail!("frozen linear: input has {k} features, the weight expects {cols}");
        }
        let x = f32_data(s, l, "frozen linear")?;
        let m: usize = lead.iter().product();
        let y = self.w.matmul_vec(x, m).map_err(|e| candle_core::Error::Msg(format!("{e:#}")))?;
        Ok((CpuStorage::F32(y), out_shape(lead, rows)))
    }

    fn bwd(&self, x: &Tensor, _y: &Tensor, dy: &Tensor) -> Result<Option<Tensor>> {
        let rows = self.w.rows();
        let dx = super::with_data(dy, |dyv| {
            Ok(quant_backward_vec(&self.w, dyv, dyv.len() / rows, self.mode))
        })?;
        Ok(Some(Tensor::from_vec(dx, x.shape(), x.device())?))
    }
}

/// `x (..., in) · Wᵀ` for a quantized `W` that gets no gradient; `x` does.
pub fn frozen_quant(x: &Tensor, w: &QWeight) -> Result<Tensor> {
    frozen_quant_with(x, w, backward_mode())
}

/// [`frozen_quant`] with the backward precision given (each only where available).
pub fn frozen_quant_with(x: &Tensor, w: &QWeight, mode: Backward) -> Result<Tensor> {
    x.contiguous()?.apply_op1(FrozenQuant { w: w.clone(), mode })
}

/// `x (..., in) · Wᵀ` for a dense f32 `W: (out, in)` that gets no gradient; `x` does (the
/// trainable op with `W` detached: its backward pass skips `dW`).
pub fn frozen_dense(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    super::linear::dense_linear(x, &w.detach())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::testing::random_blocks;
    use crate::load::gguf::GgmlType;
    use crate::sample::Rng;
    use candle_core::{Device, Var};

    fn check(t: GgmlType, rows: usize, cols: usize) {
        check_with(t, rows, cols, Backward::F32, 1e-5);
        if bf16::available() {
            // bf16 products: dy and the dequantized weight rounded to 8 significant bits.
            check_with(t, rows, cols, Backward::Bf16, 2e-2);
        }
        // int8: dy and Wᵀ quantized to 8 bits per block of 32 (f32 where it does not run).
        check_with(t, rows, cols, Backward::Int8, 2e-2);
    }

    fn check_with(t: GgmlType, rows: usize, cols: usize, mode: Backward, tol: f32) {
        let dev = Device::Cpu;
        let mut rng = Rng::new(7);
        let q = QWeight::from_vec(random_blocks(&mut rng, t, rows, cols, 0.5), t, rows, cols).unwrap();
        let w = Tensor::from_vec(q.to_f32(), (rows, cols), &dev).unwrap();
        let x = Var::from_tensor(&crate::util::randn(24, 0f32, 1.0, (2, 5, cols), &dev).unwrap()).unwrap();
        let probe = crate::util::randn(25, 0f32, 1.0, (2, 5, rows), &dev).unwrap();
        if mode == Backward::Int8 && rows % 32 == 0 && crate::kernels::Isa::Avx512Vnni.is_available() {
            assert!(q.transposed_int8().is_some(), "{t} [{rows}, {cols}]: no int8 copy");
        }
        let ours = frozen_quant_with(&x, &q, mode).unwrap();
        let oracle = x.as_tensor().broadcast_matmul(&w.t().unwrap()).unwrap();
        // Forward: 8-bit activations, so close but not exact.
        crate::train::kernels::assert_close(&ours, &oracle, 2e-2);
        let g1 = (ours * &probe).unwrap().sum_all().unwrap().backward().unwrap();
        let g2 = (oracle * &probe).unwrap().sum_all().unwrap().backward().unwrap();
        // Backward: the same products of the dequantized weight (f32, or bf16-rounded inputs).
        crate::train::kernels::assert_close(g1.get(&x).unwrap(), g2.get(&x).unwrap(), tol);
    }

    #[test]
    fn quantized_backward_matches_dense_oracle() {
        check(GgmlType::Q4_1, 300, 64); // two bands, the second partial
        check(GgmlType::Q8_0, 17, 96);
        check(GgmlType::Q4_K, 40, 256);
        check(GgmlType::Q6_K, 600, 256);
        check(GgmlType::Q4_0, 1100, 64); // bf16 bands of 512: three, the last partial
        // Rows in whole blocks of 32: Wᵀ has an int8 copy.
        check(GgmlType::Q4_1, 576, 64);
        check(GgmlType::Q4_K, 64, 256);
        check(GgmlType::Q6_K, 96, 512);
    }

    #[test]
    fn dense_backward_matches_candle() {
        let dev = Device::Cpu;
        let w = crate::util::randn(26, 0f32, 1.0, (24, 40), &dev).unwrap();
        let x = Var::from_tensor(&crate::util::randn(27, 0f32, 1.0, (7, 40), &dev).unwrap()).unwrap();
        let probe = crate::util::randn(28, 0f32, 1.0, (7, 24), &dev).unwrap();
        let ours = frozen_dense(&x, &w).unwrap();
        let oracle = x.as_tensor().matmul(&w.t().unwrap()).unwrap();
        crate::train::kernels::assert_close(&ours, &oracle, 1e-5);
        let g1 = (ours * &probe).unwrap().sum_all().unwrap().backward().unwrap();
        let g2 = (oracle * &probe).unwrap().sum_all().unwrap().backward().unwrap();
        crate::train::kernels::assert_close(g1.get(&x).unwrap(), g2.get(&x).unwrap(), 1e-5);
    }
}
