//! Weight matrices: dense f32 (trainable, from safetensors or unquantized GGUF tensors) or
//! ggml-quantized (kept in their block format and multiplied by candle's quantized kernels).

use std::sync::Arc;

use anyhow::{bail, Result};
use candle_core::quantized::{QMatMul, QTensor};
use candle_core::{Module, Tensor};

/// A weight as loaded: dense f32 or quantized blocks.
#[derive(Debug, Clone)]
pub enum Weight {
    Dense(Tensor),
    Quant(Arc<QTensor>),
}

impl Weight {
    /// Shape in row-major order, e.g. `[out, in]` for a projection.
    pub fn dims(&self) -> Vec<usize> {
        match self {
            Weight::Dense(t) => t.dims().to_vec(),
            Weight::Quant(q) => q.shape().dims().to_vec(),
        }
    }

    /// A dense f32 copy (dequantizing if needed).
    pub fn to_dense(&self) -> Result<Tensor> {
        Ok(match self {
            Weight::Dense(t) => t.clone(),
            Weight::Quant(q) => q.dequantize(&q.device())?,
        })
    }

    pub fn dtype_name(&self) -> String {
        match self {
            Weight::Dense(t) => format!("{:?}", t.dtype()).to_uppercase(),
            Weight::Quant(q) => format!("{:?}", q.dtype()),
        }
    }
}

/// `y = x Wᵀ + b` with `W: (out, in)`.
#[derive(Debug, Clone)]
pub struct Linear {
    weight: LinearWeight,
    bias: Option<Tensor>,
    pub in_features: usize,
    pub out_features: usize,
}

#[derive(Debug, Clone)]
enum LinearWeight {
    Dense(Tensor),
    Quant(QMatMul),
}

impl Linear {
    pub fn new(weight: Weight, bias: Option<Tensor>) -> Result<Linear> {
        let dims = weight.dims();
        let [out_features, in_features] = dims[..] else {
            bail!("a linear weight must be 2-D, got shape {dims:?}");
        };
        if let Some(b) = &bias {
            if b.dims() != [out_features] {
                bail!("bias shape {:?} does not match {out_features} outputs", b.dims());
            }
        }
        let weight = match weight {
            Weight::Dense(t) => LinearWeight::Dense(t),
            Weight::Quant(q) => LinearWeight::Quant(QMatMul::from_arc(q)?),
        };
        Ok(Linear { weight, bias, in_features, out_features })
    }

    /// `x: (..., in) -> (..., out)`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let y = match &self.weight {
            LinearWeight::Dense(w) => {
                let dims = x.dims();
                let lead = &dims[..dims.len() - 1];
                let rows: usize = lead.iter().product();
                let y = x.reshape((rows, self.in_features))?.matmul(&w.t()?)?;
                let mut out = lead.to_vec();
                out.push(self.out_features);
                y.reshape(out)?
            }
            LinearWeight::Quant(q) => q.forward(x)?,
        };
        Ok(match &self.bias {
            Some(b) => y.broadcast_add(b)?,
            None => y,
        })
    }

    /// The dense weight, when this layer is dense (training, export).
    pub fn dense_weight(&self) -> Option<&Tensor> {
        match &self.weight {
            LinearWeight::Dense(w) => Some(w),
            LinearWeight::Quant(_) => None,
        }
    }

    pub fn bias(&self) -> Option<&Tensor> {
        self.bias.as_ref()
    }
}

/// Token embedding table `(vocab, hidden)`.
#[derive(Debug, Clone)]
pub struct Embedding {
    table: Weight,
    pub vocab: usize,
    pub hidden: usize,
}

impl Embedding {
    pub fn new(table: Weight) -> Result<Embedding> {
        let dims = table.dims();
        let [vocab, hidden] = dims[..] else {
            bail!("the token embedding must be 2-D, got shape {dims:?}");
        };
        Ok(Embedding { table, vocab, hidden })
    }

    /// `ids: (b, s) u32 -> (b, s, hidden)`.
    pub fn forward(&self, ids: &Tensor) -> Result<Tensor> {
        Ok(match &self.table {
            Weight::Dense(t) => {
                let (b, s) = ids.dims2()?;
                t.index_select(&ids.flatten_all()?, 0)?.reshape((b, s, self.hidden))?
            }
            Weight::Quant(q) => q.embedding(ids)?,
        })
    }

    /// The same table used as the output projection (tied embeddings).
    pub fn as_linear(&self) -> Result<Linear> {
        Linear::new(self.table.clone(), None)
    }

    pub fn weight(&self) -> &Weight {
        &self.table
    }
}
