//! One low-rank update of a linear layer: `Δy = scale · B · A · dropout(x)` with
//! `A: (r, in)`, `B: (out, r)` (PEFT's `lora_A.weight`, `lora_B.weight`).

use anyhow::{bail, Result};
use candle_core::Tensor;

/// A low-rank update attached to a [`Linear`](crate::model::linear::Linear). Trainable when
/// `a`/`b` are candle variables (the fine-tuning decoder), fixed otherwise (inference).
#[derive(Debug, Clone)]
pub struct LoraDelta {
    pub a: Tensor,
    pub b: Tensor,
    /// `alpha / r` (or `alpha / √r` with rsLoRA), times any user scale.
    pub scale: f64,
    /// Dropout on the adapter's input, applied only while training (`a` tracks gradients).
    pub dropout: f32,
}

impl LoraDelta {
    pub fn new(a: Tensor, b: Tensor, scale: f64, dropout: f32) -> Result<LoraDelta> {
        let (r, _) = a.dims2()?;
        let (_, rb) = b.dims2()?;
        if r != rb {
            bail!("LoRA A has rank {r} but B has {rb}");
        }
        if !(0.0..1.0).contains(&dropout) {
            bail!("LoRA dropout must be in [0, 1), got {dropout}");
        }
        Ok(LoraDelta { a, b, scale, dropout })
    }

    pub fn rank(&self) -> usize {
        self.a.dims()[0]
    }

    /// `x: (..., in) -> (..., out)`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let dims = x.dims();
        let (lead, k) = dims.split_at(dims.len() - 1);
        let rows: usize = lead.iter().product();
        let mut x = x.reshape((rows, k[0]))?;
        if self.dropout > 0.0 && self.a.track_op() {
            x = candle_nn::ops::dropout(&x, self.dropout)?;
        }
        let h = x.matmul(&self.a.t()?)?; // (rows, r)
        let y = (h.matmul(&self.b.t()?)? * self.scale)?;
        let mut out = lead.to_vec();
        out.push(self.b.dims()[0]);
        Ok(y.reshape(out)?)
    }

    /// The dense update `scale · B · A`, `(out, in)` (merging into the base weight).
    pub fn delta_weight(&self) -> Result<Tensor> {
        Ok((self.b.matmul(&self.a)? * self.scale)?)
    }
}
