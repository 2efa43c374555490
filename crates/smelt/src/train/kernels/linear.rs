//! A trainable dense linear layer `y = x · Wᵀ` as one op, so that its forward product and
//! both backward products (`dx = dy · W`, `dW = dyᵀ · x`) run on [`super::gemm`] — smelt's
//! AVX-512 kernel where the CPU has it — instead of candle's matmul (the `gemm` crate's
//! AVX2 kernels on stable Rust). candle's `matmul` is the oracle in the tests.

use candle_core::{CpuStorage, CustomOp2, Layout, Result, Shape, Tensor};

use super::f32_data;
use super::gemm::{matmul_par, Mat};

struct DenseLinear;

impl CustomOp2 for DenseLinear {
    fn name(&self) -> &'static str {
        "dense-linear"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout, ws: &CpuStorage, wl: &Layout) -> Result<(CpuStorage, Shape)> {
        let (rows, cols) = wl.shape().dims2()?;
        let Some((&k, lead)) = l.dims().split_last() else { candle_core::bail!("linear: scalar input") };
        if k != cols {
            candle_core::bail!("linear: input has {k} features, the weight expects {cols}");
        }
        let (x, w) = (f32_data(s, l, "linear")?, f32_data(ws, wl, "linear")?);
        let m: usize = lead.iter().product();
        let mut y = vec![0f32; m * rows];
        matmul_par(&mut y, Mat::rows(x, m, cols), Mat::rows(w, rows, cols).t(), 1.0, false);
        let mut out = lead.to_vec();
        out.push(rows);
        Ok((CpuStorage::F32(y), Shape::from(out)))
    }

    fn bwd(&self, x: &Tensor, w: &Tensor, _y: &Tensor, dy: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (rows, cols) = w.dims2()?;
        let dyv = super::tensor_vec(dy)?;
        let m = dyv.len() / rows;
        let dx = if x.track_op() {
            let wv = super::tensor_vec(w)?;
            let mut dx = vec![0f32; m * cols];
            matmul_par(&mut dx, Mat::rows(&dyv, m, rows), Mat::rows(&wv, rows, cols), 1.0, false);
            Some(Tensor::from_vec(dx, x.shape(), x.device())?)
        } else {
            None
        };
        let dw = if w.track_op() {
            let xv = super::tensor_vec(x)?;
            let mut dw = vec![0f32; rows * cols];
            matmul_par(&mut dw, Mat::rows(&dyv, m, rows).t(), Mat::rows(&xv, m, cols), 1.0, false);
            Some(Tensor::from_vec(dw, w.shape(), w.device())?)
        } else {
            None
        };
        Ok((dx, dw))
    }
}

/// `x (..., in) · Wᵀ` for a dense f32 `W: (out, in)`, differentiable in both.
pub fn dense_linear(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    x.contiguous()?.apply_op2(&w.contiguous()?, DenseLinear)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    #[test]
    fn matches_candle_matmul_values_and_grads() {
        let dev = Device::Cpu;
        let w = Var::from_tensor(&crate::util::randn(29, 0f32, 1.0, (48, 40), &dev).unwrap()).unwrap();
        let x = Var::from_tensor(&crate::util::randn(30, 0f32, 1.0, (3, 9, 40), &dev).unwrap()).unwrap();
        let probe = crate::util::randn(31, 0f32, 1.0, (3, 9, 48), &dev).unwrap();
        let ours = dense_linear(&x, &w).unwrap();
        let oracle = x.as_tensor().broadcast_matmul(&w.t().unwrap()).unwrap();
        crate::train::kernels::assert_close(&ours, &oracle, 1e-5);
        let g1 = (ours * &probe).unwrap().sum_all().unwrap().backward().unwrap();
        let g2 = (oracle * &probe).unwrap().sum_all().unwrap().backward().unwrap();
        for v in [&x, &w] {
            crate::train::kernels::assert_close(g1.get(v).unwrap(), g2.get(v).unwrap(), 1e-5);
        }
    }
}
