//! The decoder's linear layers under PEFT's module names, and the q/k row layout.
//!
//! GGUF llama/mistral files store the q and k projection rows permuted for llama.cpp's
//! interleaved rope; adapters (PEFT's files) use Hugging Face's row order. An update's `B`
//! rows follow its layer's output rows, so `B` of `q_proj`/`k_proj` is permuted on the way
//! into such a model and back on the way out.

use anyhow::{bail, Result};
use candle_core::Tensor;

use crate::model::attention::QkvProj;
use crate::model::config::RopeLayout;
use crate::model::linear::Linear;
use crate::model::mlp::GateUp;
use crate::model::Decoder;

/// One adaptable layer: block index, PEFT module path (`self_attn.q_proj`), the layer.
pub struct Target<'a> {
    pub layer: usize,
    pub module: &'static str,
    pub linear: &'a mut Linear,
}

impl Target<'_> {
    /// The short module name (`q_proj`).
    pub fn short(&self) -> &'static str {
        self.module.rsplit('.').next().unwrap_or(self.module)
    }
}

/// Every linear layer of every block that LoRA can adapt.
pub fn targets_mut(dec: &mut Decoder) -> Vec<Target<'_>> {
    let mut out = Vec::new();
    for (i, b) in dec.blocks.iter_mut().enumerate() {
        match &mut b.attn.qkv {
            QkvProj::Separate { q, k, v } => {
                out.push(Target { layer: i, module: "self_attn.q_proj", linear: q });
                out.push(Target { layer: i, module: "self_attn.k_proj", linear: k });
                out.push(Target { layer: i, module: "self_attn.v_proj", linear: v });
            }
            QkvProj::Fused(w) => out.push(Target { layer: i, module: "self_attn.qkv_proj", linear: w }),
        }
        out.push(Target { layer: i, module: "self_attn.o_proj", linear: &mut b.attn.o });
        match &mut b.mlp.gate_up {
            GateUp::Separate { gate, up } => {
                out.push(Target { layer: i, module: "mlp.gate_proj", linear: gate });
                out.push(Target { layer: i, module: "mlp.up_proj", linear: up });
            }
            GateUp::Fused(w) => out.push(Target { layer: i, module: "mlp.gate_up_proj", linear: w }),
        }
        out.push(Target { layer: i, module: "mlp.down_proj", linear: &mut b.mlp.down });
    }
    out
}

/// How `B` rows of a module are reordered between Hugging Face's layout and the model's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RowOrder {
    Same,
    /// Interleaved-rope permutation over this many heads.
    Interleaved(usize),
}

pub fn row_order(dec: &Decoder, module: &str) -> RowOrder {
    let interleaved = dec.cfg.ropes.iter().any(|r| r.layout == RopeLayout::Interleaved);
    match module {
        "self_attn.q_proj" if interleaved => RowOrder::Interleaved(dec.cfg.n_heads),
        "self_attn.k_proj" if interleaved => RowOrder::Interleaved(dec.cfg.n_kv_heads),
        _ => RowOrder::Same,
    }
}

/// Rows in Hugging Face order → the model's.
pub fn to_model_rows(b: &Tensor, order: RowOrder) -> Result<Tensor> {
    Ok(match order {
        RowOrder::Same => b.clone(),
        RowOrder::Interleaved(heads) => crate::model::rope::permute_rows_for_interleaved(b, heads)?,
    })
}

/// Rows in the model's order → Hugging Face's (the inverse of [`to_model_rows`]).
pub fn to_hf_rows(b: &Tensor, order: RowOrder) -> Result<Tensor> {
    Ok(match order {
        RowOrder::Same => b.clone(),
        RowOrder::Interleaved(heads) => {
            let (rows, cols) = b.dims2()?;
            if rows % heads != 0 || (rows / heads) % 2 != 0 {
                bail!("cannot reorder {rows} rows over {heads} heads");
            }
            let hd = rows / heads;
            b.reshape((heads, hd / 2, 2, cols))?.transpose(1, 2)?.reshape((rows, cols))?
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn row_orders_are_inverse() {
        let b = Tensor::arange(0f32, 64.0 * 3.0, &candle_core::Device::Cpu).unwrap().reshape((64, 3)).unwrap();
        let o = RowOrder::Interleaved(4);
        let m = to_model_rows(&b, o).unwrap();
        assert_ne!(m.to_vec2::<f32>().unwrap(), b.to_vec2::<f32>().unwrap());
        assert_eq!(to_hf_rows(&m, o).unwrap().to_vec2::<f32>().unwrap(), b.to_vec2::<f32>().unwrap());
    }
}
