//! RMSNorm with its backward pass: `y = x · r · w` with `r = 1/√(mean(x²) + ε)` per row.
//!
//! Backward, with `x̂ = x·r` and upstream `g`: `dw = Σ_rows g ⊙ x̂` and
//! `dx = r · (g⊙w − x̂ · mean(g⊙w⊙x̂))`. `r` is recomputed rather than stored.

use candle_core::{CpuStorage, CustomOp2, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::f32_data;
use crate::train::simd::multiversion;

/// Rows per parallel task (fixed: results do not depend on the thread count).
const ROWS: usize = 32;

multiversion! {
    fn inv_rms(x: &[f32], eps: f32) -> f32 {
        let mut acc = [0f32; 16];
        let mut c = x.chunks_exact(16);
        for xs in &mut c {
            for i in 0..16 {
                acc[i] += xs[i] * xs[i];
            }
        }
        let tail: f32 = c.remainder().iter().map(|v| v * v).sum();
        let ss = acc.iter().sum::<f32>() + tail;
        1.0 / (ss / x.len() as f32 + eps).sqrt()
    }
}

multiversion! {
    fn norm_row(x: &[f32], w: &[f32], y: &mut [f32], r: f32) {
        for i in 0..x.len() {
            y[i] = x[i] * r * w[i];
        }
    }
}

multiversion! {
    /// dx for one row; adds g ⊙ x̂ into `dw`.
    fn back_row(x: &[f32], w: &[f32], g: &[f32], dx: &mut [f32], dw: &mut [f32], r: f32) {
        let d = x.len();
        // Σ g·w·x in 16 lanes (a single running sum would not vectorise)
        let mut acc = [0f32; 16];
        let mut i0 = 0;
        while i0 + 16 <= d {
            for i in 0..16 {
                acc[i] += g[i0 + i] * w[i0 + i] * x[i0 + i];
            }
            i0 += 16;
        }
        let dot = acc.iter().sum::<f32>() + (i0..d).map(|i| g[i] * w[i] * x[i]).sum::<f32>();
        let c = dot * r * r / d as f32;
        for i in 0..d {
            dx[i] = r * (g[i] * w[i] - x[i] * c);
            dw[i] += g[i] * x[i] * r;
        }
    }
}

struct RmsNormOp {
    eps: f32,
}

impl CustomOp2 for RmsNormOp {
    fn name(&self) -> &'static str {
        "fused-rms-norm"
    }

    fn cpu_fwd(&self, xs: &CpuStorage, xl: &Layout, ws: &CpuStorage, wl: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = f32_data(xs, xl, "rms norm")?;
        let w = f32_data(ws, wl, "rms norm")?;
        let d = w.len();
        if xl.dims().last() != Some(&d) {
            candle_core::bail!("rms norm: input {:?} vs weight {d}", xl.dims());
        }
        let mut y = vec![0f32; x.len()];
        y.par_chunks_mut(ROWS * d).zip(x.par_chunks(ROWS * d)).for_each(|(yc, xc)| {
            for (yr, xr) in yc.chunks_mut(d).zip(xc.chunks(d)) {
                norm_row(xr, w, yr, inv_rms(xr, self.eps));
            }
        });
        Ok((CpuStorage::F32(y), xl.shape().clone()))
    }

    fn bwd(&self, x: &Tensor, w: &Tensor, _res: &Tensor, g: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (xv, wv, gv) = (x.contiguous()?, w.contiguous()?, g.contiguous()?);
        let (xv, wv, gv) = (super::tensor_vec(&xv)?, super::tensor_vec(&wv)?, super::tensor_vec(&gv)?);
        let d = wv.len();
        let mut dx = vec![0f32; xv.len()];
        let partial: Vec<Vec<f32>> = dx
            .par_chunks_mut(ROWS * d)
            .zip(xv.par_chunks(ROWS * d).zip(gv.par_chunks(ROWS * d)))
            .map(|(dxc, (xc, gc))| {
                let mut dw = vec![0f32; d];
                for ((dxr, xr), gr) in dxc.chunks_mut(d).zip(xc.chunks(d)).zip(gc.chunks(d)) {
                    back_row(xr, &wv, gr, dxr, &mut dw, inv_rms(xr, self.eps));
                }
                dw
            })
            .collect();
        let mut dw = vec![0f32; d];
        for p in &partial {
            for (a, b) in dw.iter_mut().zip(p) {
                *a += b;
            }
        }
        Ok((Some(Tensor::from_vec(dx, x.shape(), x.device())?), Some(Tensor::from_vec(dw, w.shape(), w.device())?)))
    }
}

/// `x: (..., d)`, `w: (d)`: differentiable RMSNorm over the last dimension.
pub fn rms_norm(x: &Tensor, w: &Tensor, eps: f64) -> Result<Tensor> {
    x.contiguous()?.apply_op2(&w.contiguous()?, RmsNormOp { eps: eps as f32 })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::norm::rms_norm_reference;
    use candle_core::{Device, Var};

    #[test]
    fn matches_reference_values_and_grads() {
        let dev = Device::Cpu;
        let x = Var::from_tensor(&crate::util::randn(32, 0f32, 2.0, (37, 40), &dev).unwrap()).unwrap();
        let w = Var::from_tensor(&crate::util::randn(33, 1f32, 0.3, 40, &dev).unwrap()).unwrap();
        let up = crate::util::randn(34, 0f32, 1.0, (37, 40), &dev).unwrap();
        let a = rms_norm(&x, &w, 1e-5).unwrap();
        let b = rms_norm_reference(&x, &w, 1e-5).unwrap();
        crate::train::kernels::assert_close(&a, &b, 1e-5);
        let ga = (a * &up).unwrap().sum_all().unwrap().backward().unwrap();
        let gb = (b * &up).unwrap().sum_all().unwrap().backward().unwrap();
        crate::train::kernels::assert_close(ga.get(&x).unwrap(), gb.get(&x).unwrap(), 1e-5);
        crate::train::kernels::assert_close(ga.get(&w).unwrap(), gb.get(&w).unwrap(), 1e-4);
    }
}
