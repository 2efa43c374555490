//! SwiGLU's gate: `silu(g) · u` with its backward pass:
//! `du = dy · silu(g)`, `dg = dy · u · σ(g) · (1 + g · (1 − σ(g)))`.

use candle_core::{CpuStorage, CustomOp2, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::f32_data;
use crate::train::simd::{exp, multiversion};

const CHUNK: usize = 1 << 14;

multiversion! {
    fn fwd_chunk(g: &[f32], u: &[f32], y: &mut [f32]) {
        for i in 0..y.len() {
            let s = 1.0 / (1.0 + exp(-g[i]));
            y[i] = g[i] * s * u[i];
        }
    }
}

multiversion! {
    fn bwd_chunk(g: &[f32], u: &[f32], dy: &[f32], dg: &mut [f32], du: &mut [f32]) {
        for i in 0..dg.len() {
            let s = 1.0 / (1.0 + exp(-g[i]));
            du[i] = dy[i] * g[i] * s;
            dg[i] = dy[i] * u[i] * s * (1.0 + g[i] * (1.0 - s));
        }
    }
}

struct SwiGluOp;

impl CustomOp2 for SwiGluOp {
    fn name(&self) -> &'static str {
        "fused-swiglu"
    }

    fn cpu_fwd(&self, gs: &CpuStorage, gl: &Layout, us: &CpuStorage, ul: &Layout) -> Result<(CpuStorage, Shape)> {
        let (g, u) = (f32_data(gs, gl, "swiglu")?, f32_data(us, ul, "swiglu")?);
        if gl.shape() != ul.shape() {
            candle_core::bail!("swiglu: gate {:?} vs up {:?}", gl.dims(), ul.dims());
        }
        let mut y = vec![0f32; g.len()];
        y.par_chunks_mut(CHUNK)
            .zip(g.par_chunks(CHUNK).zip(u.par_chunks(CHUNK)))
            .for_each(|(y, (g, u))| fwd_chunk(g, u, y));
        Ok((CpuStorage::F32(y), gl.shape().clone()))
    }

    fn bwd(&self, g: &Tensor, u: &Tensor, _res: &Tensor, dy: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (gv, uv, dyv) = (super::tensor_vec(g)?, super::tensor_vec(u)?, super::tensor_vec(dy)?);
        let mut dg = vec![0f32; gv.len()];
        let mut du = vec![0f32; gv.len()];
        dg.par_chunks_mut(CHUNK)
            .zip(du.par_chunks_mut(CHUNK))
            .zip(gv.par_chunks(CHUNK).zip(uv.par_chunks(CHUNK)).zip(dyv.par_chunks(CHUNK)))
            .for_each(|((dg, du), ((g, u), dy))| bwd_chunk(g, u, dy, dg, du));
        Ok((Some(Tensor::from_vec(dg, g.shape(), g.device())?), Some(Tensor::from_vec(du, u.shape(), u.device())?)))
    }
}

/// Differentiable `silu(gate) · up`.
pub fn swiglu(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    gate.contiguous()?.apply_op2(&up.contiguous()?, SwiGluOp)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    #[test]
    fn matches_reference_values_and_grads() {
        let dev = Device::Cpu;
        let g = Var::from_tensor(&crate::util::randn(39, 0f32, 3.0, (9, 50), &dev).unwrap()).unwrap();
        let u = Var::from_tensor(&crate::util::randn(40, 0f32, 1.0, (9, 50), &dev).unwrap()).unwrap();
        let up = crate::util::randn(41, 0f32, 1.0, (9, 50), &dev).unwrap();
        let a = swiglu(&g, &u).unwrap();
        let b = (candle_nn::ops::silu(&g).unwrap() * u.as_tensor()).unwrap();
        crate::train::kernels::assert_close(&a, &b, 1e-6);
        let ga = (a * &up).unwrap().sum_all().unwrap().backward().unwrap();
        let gb = (b * &up).unwrap().sum_all().unwrap().backward().unwrap();
        crate::train::kernels::assert_close(ga.get(&g).unwrap(), gb.get(&g).unwrap(), 1e-5);
        crate::train::kernels::assert_close(ga.get(&u).unwrap(), gb.get(&u).unwrap(), 1e-6);
    }
}
