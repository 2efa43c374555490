//! Rotary embedding with its backward pass. The rotation is orthogonal, so the gradient is
//! the upstream gradient rotated back (by −θ). `x: (b, heads, seq, head_dim)`; the first
//! `rotary_dim` dims of each head rotate, the rest pass through.

use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::f32_data;
use crate::model::config::RopeLayout;

/// Rows (one head at one position) per parallel task.
const ROWS: usize = 64;

struct RopeOp {
    /// `(seq, rotary_dim / 2)` for the rows' positions.
    cos: Vec<f32>,
    sin: Vec<f32>,
    rotary_dim: usize,
    layout: RopeLayout,
}

impl RopeOp {
    /// Rotate every row of `x` (`(…, seq, head_dim)` flattened) by `sign · θ`.
    fn rotate(&self, x: &[f32], dims: &[usize], sign: f32) -> Vec<f32> {
        let (seq, hd) = (dims[dims.len() - 2], dims[dims.len() - 1]);
        let half = self.rotary_dim / 2;
        let mut y = x.to_vec();
        y.par_chunks_mut(ROWS * hd).enumerate().for_each(|(ci, chunk)| {
            for (j, row) in chunk.chunks_mut(hd).enumerate() {
                let p = (ci * ROWS + j) % seq;
                let (c, s) = (&self.cos[p * half..(p + 1) * half], &self.sin[p * half..(p + 1) * half]);
                for i in 0..half {
                    let (a, b) = match self.layout {
                        RopeLayout::Half => (i, i + half),
                        RopeLayout::Interleaved => (2 * i, 2 * i + 1),
                    };
                    let (x0, x1, sn) = (row[a], row[b], sign * s[i]);
                    row[a] = x0 * c[i] - x1 * sn;
                    row[b] = x1 * c[i] + x0 * sn;
                }
            }
        });
        y
    }
}

impl CustomOp1 for RopeOp {
    fn name(&self) -> &'static str {
        "fused-rope"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = f32_data(s, l, "rope")?;
        Ok((CpuStorage::F32(self.rotate(x, l.dims(), 1.0)), l.shape().clone()))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, g: &Tensor) -> Result<Option<Tensor>> {
        let gv = super::tensor_vec(&g.contiguous()?)?;
        Ok(Some(Tensor::from_vec(self.rotate(&gv, arg.dims(), -1.0), arg.shape(), arg.device())?))
    }
}

/// Differentiable rotation of `x: (b, heads, seq, head_dim)` with `cos`, `sin`:
/// `(seq, rotary_dim / 2)` for its positions.
pub fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor, rotary_dim: usize, layout: RopeLayout) -> Result<Tensor> {
    let (_, _, seq, hd) = x.dims4()?;
    if rotary_dim > hd || rotary_dim % 2 != 0 || cos.dims() != [seq, rotary_dim / 2] {
        candle_core::bail!("rope: rotary dim {rotary_dim}, head dim {hd}, cos {:?}", cos.dims());
    }
    let op = RopeOp { cos: super::tensor_vec(cos)?, sin: super::tensor_vec(sin)?, rotary_dim, layout };
    x.contiguous()?.apply_op1(op)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::rope::{rope_half_reference, rope_interleaved_reference};
    use candle_core::{Device, Var};

    #[test]
    fn matches_reference_values_and_grads() {
        let dev = Device::Cpu;
        let x = Var::from_tensor(&crate::util::randn(35, 0f32, 1.0, (2, 3, 7, 8), &dev).unwrap()).unwrap();
        let cos = crate::util::randn(36, 0f32, 1.0, (7, 4), &dev).unwrap();
        let sin = crate::util::randn(37, 0f32, 1.0, (7, 4), &dev).unwrap();
        let up = crate::util::randn(38, 0f32, 1.0, (2, 3, 7, 8), &dev).unwrap();
        for layout in [RopeLayout::Half, RopeLayout::Interleaved] {
            let a = rope(&x, &cos, &sin, 8, layout).unwrap();
            let b = match layout {
                RopeLayout::Half => rope_half_reference(&x, &cos, &sin).unwrap(),
                RopeLayout::Interleaved => rope_interleaved_reference(&x, &cos, &sin).unwrap(),
            };
            crate::train::kernels::assert_close(&a, &b, 1e-6);
            let ga = (a * &up).unwrap().sum_all().unwrap().backward().unwrap();
            let gb = (b * &up).unwrap().sum_all().unwrap().backward().unwrap();
            crate::train::kernels::assert_close(ga.get(&x).unwrap(), gb.get(&x).unwrap(), 1e-6);
        }
    }
}
