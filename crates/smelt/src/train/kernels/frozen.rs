//! A frozen linear layer for fine-tuning: `y = x · Wᵀ` where `W` gets no gradient (LoRA,
//! QLoRA), so the backward pass computes only `dx = dy · W`.
//!
//! * Quantized `W` stays in its ggml blocks: the forward pass is smelt's quantized kernel
//!   (the one inference runs), the backward pass dequantizes `W` a band of rows at a time
//!   (`BAND` rows, in parallel) and multiplies each band into `dx` — the f32 matrix never
//!   exists whole.
//! * Dense `W` (a Hugging Face base): plain products, but without candle's `dW = xᵀ · dy`
//!   that a frozen weight does not need.
//!
//! The oracle is the dense f32 product of the dequantized weight (tests below).

use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::f32_data;
use super::gemm::{matmul_par, Mat};
use crate::kernels::QWeight;

/// Rows of a quantized weight dequantized together in the backward pass.
const BAND: usize = 256;

struct FrozenQuant(QWeight);

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
        let (rows, cols) = (self.0.rows(), self.0.cols());
        let Some((&k, lead)) = l.dims().split_last() else { candle_core::bail!("frozen linear: scalar input") };
        if k != cols {
            candle_core::bail!("frozen linear: input has {k} features, the weight expects {cols}");
        }
        let x = f32_data(s, l, "frozen linear")?;
        let m: usize = lead.iter().product();
        let mut y = vec![0f32; m * rows];
        self.0.matmul_into(x, m, &mut y).map_err(|e| candle_core::Error::Msg(format!("{e:#}")))?;
        Ok((CpuStorage::F32(y), out_shape(lead, rows)))
    }

    fn bwd(&self, x: &Tensor, _y: &Tensor, dy: &Tensor) -> Result<Option<Tensor>> {
        let (rows, cols) = (self.0.rows(), self.0.cols());
        let dyv = super::tensor_vec(dy)?;
        let m = dyv.len() / rows;
        let mut dx = vec![0f32; m * cols];
        let mut band = vec![0f32; BAND.min(rows) * cols];
        for r0 in (0..rows).step_by(BAND) {
            let n = BAND.min(rows - r0);
            band[..n * cols].par_chunks_mut(cols).enumerate().for_each(|(i, out)| self.0.dequantize_row(r0 + i, out));
            // dy[:, r0..r0+n] (m × n, row stride `rows`) · band (n × cols)
            let dy_band = Mat { ptr: dyv[r0..].as_ptr(), rows: m, cols: n, rs: rows as isize, cs: 1 };
            matmul_par(&mut dx, dy_band, Mat::rows(&band, n, cols), 1.0, r0 > 0);
        }
        Ok(Some(Tensor::from_vec(dx, x.shape(), x.device())?))
    }
}

struct FrozenDense;

impl CustomOp2 for FrozenDense {
    fn name(&self) -> &'static str {
        "frozen-linear"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout, ws: &CpuStorage, wl: &Layout) -> Result<(CpuStorage, Shape)> {
        let (rows, cols) = wl.shape().dims2()?;
        let Some((&k, lead)) = l.dims().split_last() else { candle_core::bail!("frozen linear: scalar input") };
        if k != cols {
            candle_core::bail!("frozen linear: input has {k} features, the weight expects {cols}");
        }
        let (x, w) = (f32_data(s, l, "frozen linear")?, f32_data(ws, wl, "frozen linear")?);
        let m: usize = lead.iter().product();
        let mut y = vec![0f32; m * rows];
        matmul_par(&mut y, Mat::rows(x, m, cols), Mat::rows(w, rows, cols).t(), 1.0, false);
        Ok((CpuStorage::F32(y), out_shape(lead, rows)))
    }

    fn bwd(&self, x: &Tensor, w: &Tensor, _y: &Tensor, dy: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (rows, cols) = w.dims2()?;
        let dyv = super::tensor_vec(dy)?;
        let wv = super::tensor_vec(w)?;
        let m = dyv.len() / rows;
        let mut dx = vec![0f32; m * cols];
        matmul_par(&mut dx, Mat::rows(&dyv, m, rows), Mat::rows(&wv, rows, cols), 1.0, false);
        Ok((Some(Tensor::from_vec(dx, x.shape(), x.device())?), None))
    }
}

/// `x (..., in) · Wᵀ` for a quantized `W` that gets no gradient; `x` does.
pub fn frozen_quant(x: &Tensor, w: &QWeight) -> Result<Tensor> {
    x.contiguous()?.apply_op1(FrozenQuant(w.clone()))
}

/// `x (..., in) · Wᵀ` for a dense f32 `W: (out, in)` that gets no gradient; `x` does.
pub fn frozen_dense(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    x.contiguous()?.apply_op2(&w.detach().contiguous()?, FrozenDense)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::testing::random_blocks;
    use crate::load::gguf::GgmlType;
    use crate::sample::Rng;
    use candle_core::{Device, Var};

    fn check(t: GgmlType, rows: usize, cols: usize) {
        let dev = Device::Cpu;
        let mut rng = Rng::new(7);
        let q = QWeight::from_vec(random_blocks(&mut rng, t, rows, cols, 0.5), t, rows, cols).unwrap();
        let w = Tensor::from_vec(q.to_f32(), (rows, cols), &dev).unwrap();
        let x = Var::from_tensor(&Tensor::randn(0f32, 1.0, (2, 5, cols), &dev).unwrap()).unwrap();
        let probe = Tensor::randn(0f32, 1.0, (2, 5, rows), &dev).unwrap();
        let ours = frozen_quant(&x, &q).unwrap();
        let oracle = x.as_tensor().broadcast_matmul(&w.t().unwrap()).unwrap();
        // Forward: 8-bit activations, so close but not exact.
        crate::train::kernels::assert_close(&ours, &oracle, 2e-2);
        let g1 = (ours * &probe).unwrap().sum_all().unwrap().backward().unwrap();
        let g2 = (oracle * &probe).unwrap().sum_all().unwrap().backward().unwrap();
        // Backward: the same f32 products of the dequantized weight.
        crate::train::kernels::assert_close(g1.get(&x).unwrap(), g2.get(&x).unwrap(), 1e-5);
    }

    #[test]
    fn quantized_backward_matches_dense_oracle() {
        check(GgmlType::Q4_1, 300, 64); // two bands, the second partial
        check(GgmlType::Q8_0, 17, 96);
        check(GgmlType::Q4_K, 40, 256);
        check(GgmlType::Q6_K, 600, 256);
    }

    #[test]
    fn dense_backward_matches_candle() {
        let dev = Device::Cpu;
        let w = Tensor::randn(0f32, 1.0, (24, 40), &dev).unwrap();
        let x = Var::from_tensor(&Tensor::randn(0f32, 1.0, (7, 40), &dev).unwrap()).unwrap();
        let probe = Tensor::randn(0f32, 1.0, (7, 24), &dev).unwrap();
        let ours = frozen_dense(&x, &w).unwrap();
        let oracle = x.as_tensor().matmul(&w.t().unwrap()).unwrap();
        crate::train::kernels::assert_close(&ours, &oracle, 1e-5);
        let g1 = (ours * &probe).unwrap().sum_all().unwrap().backward().unwrap();
        let g2 = (oracle * &probe).unwrap().sum_all().unwrap().backward().unwrap();
        crate::train::kernels::assert_close(g1.get(&x).unwrap(), g2.get(&x).unwrap(), 1e-5);
    }
}
