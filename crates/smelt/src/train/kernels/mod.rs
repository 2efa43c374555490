//! Fused forward + backward kernels for the decoder's training path, as candle custom ops.
//!
//! The decoder's modules switch to these when their input tracks gradients; each keeps a
//! plain-ops version (`model::norm::rms_norm_reference`, `model::rope::rope_*_reference`,
//! the unfused attention and activation) that the tests compare against, values and
//! gradients. Work is split into fixed-size chunks over rows, so results do not depend on
//! the number of threads (a resumed run reproduces an uninterrupted one bit for bit).

pub mod attention;
pub mod bf16;
pub mod f32x512;
pub mod frozen;
pub mod gemm;
pub mod linear;
pub mod rmsnorm;
pub mod rope;
pub mod swiglu;

use candle_core::{CpuStorage, Layout, Result};

/// The contiguous f32 data a custom op was given.
pub(crate) fn f32_data<'a>(s: &'a CpuStorage, l: &Layout, what: &str) -> Result<&'a [f32]> {
    let CpuStorage::F32(v) = s else { candle_core::bail!("{what}: f32 only") };
    let Some((a, b)) = l.contiguous_offsets() else { candle_core::bail!("{what}: contiguous input only") };
    Ok(&v[a..b])
}

/// Run `f` on a tensor's f32 data: borrowed where it is contiguous f32 on the CPU (no
/// copy of a large activation or gradient), else a contiguous copy.
pub(crate) fn with_data<R>(t: &candle_core::Tensor, f: impl FnOnce(&[f32]) -> Result<R>) -> Result<R> {
    if t.is_contiguous() && t.dtype() == candle_core::DType::F32 && t.device().is_cpu() {
        return crate::train::optim::with_f32(t, f).map_err(|e| candle_core::Error::Msg(format!("{e:#}")))?;
    }
    f(&tensor_vec(t)?)
}

/// A tensor's data as a contiguous f32 vector (copied).
pub(crate) fn tensor_vec(t: &candle_core::Tensor) -> Result<Vec<f32>> {
    t.flatten_all()?.to_vec1::<f32>()
}

/// Test helper: the largest absolute difference, relative to the largest magnitude, is below `tol`.
#[cfg(test)]
pub(crate) fn assert_close(a: &candle_core::Tensor, b: &candle_core::Tensor, tol: f32) {
    let a = tensor_vec(a).unwrap();
    let b = tensor_vec(b).unwrap();
    assert_eq!(a.len(), b.len());
    let scale = b.iter().fold(1e-6f32, |m, v| m.max(v.abs()));
    let diff = a.iter().zip(&b).fold(0f32, |m, (x, y)| m.max((x - y).abs()));
    assert!(diff / scale < tol, "max difference {diff} (scale {scale}, tolerance {tol})");
}
