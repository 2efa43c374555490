//! Gated feed-forward: `down(act(gate(x)) * up(x))`.

use anyhow::Result;
use candle_core::Tensor;

use super::config::Activation;
use super::linear::Linear;

/// gate and up projections: separate, or fused into one matrix (Phi-3: gate rows first).
#[derive(Debug, Clone)]
pub enum GateUp {
    Separate { gate: Linear, up: Linear },
    Fused(Linear),
}

#[derive(Debug, Clone)]
pub struct Mlp {
    pub gate_up: GateUp,
    pub down: Linear,
    pub activation: Activation,
}

impl Mlp {
    /// `x: (s, hidden) -> (s, hidden)`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (gate, up) = match &self.gate_up {
            GateUp::Separate { gate, up } => (gate.forward(x)?, up.forward(x)?),
            GateUp::Fused(w) => {
                let gu = w.forward(x)?;
                let ff = gu.dims()[1] / 2;
                (gu.narrow(1, 0, ff)?, gu.narrow(1, ff, ff)?)
            }
        };
        if self.activation == Activation::Silu && (gate.track_op() || up.track_op()) {
            // Training: fused silu(gate) · up with its backward pass.
            return self.down.forward(&crate::train::kernels::swiglu::swiglu(&gate, &up)?);
        }
        let act = match self.activation {
            Activation::Silu => candle_nn::ops::silu(&gate)?,
            Activation::GeluTanh => gate.gelu()?,
            Activation::Gelu => gate.gelu_erf()?,
        };
        self.down.forward(&(act * up)?)
    }
}
