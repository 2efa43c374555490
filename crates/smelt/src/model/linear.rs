//! Weight matrices: dense f32 (trainable, from safetensors or unquantized GGUF tensors) or
//! ggml-quantized, kept in their block format: smelt's own kernels ([`QWeight`], read in
//! place from the file's memory map) for the common types, candle's for the rest.

use std::sync::Arc;

use anyhow::{bail, Result};
use candle_core::quantized::{QMatMul, QTensor};
use candle_core::{DType, Module, Tensor};

use crate::kernels::QWeight;

/// A weight as loaded.
#[derive(Debug, Clone)]
pub enum Weight {
    Dense(Tensor),
    /// Quantized, multiplied by smelt's kernels (zero-copy from the model file).
    Quant(QWeight),
    /// Quantized in a type smelt has no kernel for (Q2_K, Q3_K, ...): candle's kernels.
    Candle(Arc<QTensor>),
}

impl Weight {
    /// Shape in row-major order, e.g. `[out, in]` for a projection.
    pub fn dims(&self) -> Vec<usize> {
        match self {
            Weight::Dense(t) => t.dims().to_vec(),
            Weight::Quant(q) => vec![q.rows(), q.cols()],
            Weight::Candle(q) => q.shape().dims().to_vec(),
        }
    }

    /// A dense f32 copy (dequantizing if needed).
    pub fn to_dense(&self) -> Result<Tensor> {
        Ok(match self {
            Weight::Dense(t) => t.clone(),
            Weight::Quant(q) => Tensor::from_vec(q.to_f32(), (q.rows(), q.cols()), &candle_core::Device::Cpu)?,
            Weight::Candle(q) => q.dequantize(&q.device())?,
        })
    }

    pub fn dtype_name(&self) -> String {
        match self {
            Weight::Dense(t) => format!("{:?}", t.dtype()).to_uppercase(),
            Weight::Quant(q) => q.dtype().to_string(),
            Weight::Candle(q) => format!("{:?}", q.dtype()),
        }
    }
}

/// The f32 matrix behind one of candle's quantized products.
fn qmatmul_dense(q: &QMatMul) -> Result<Tensor> {
    Ok(match q {
        QMatMul::QTensor(t) => t.dequantize(&t.device())?,
        QMatMul::Tensor(t) | QMatMul::TensorF16(t) => t.to_dtype(candle_core::DType::F32)?,
    })
}

/// `y = x Wᵀ + b` with `W: (out, in)`.
#[derive(Debug, Clone)]
pub struct Linear {
    weight: LinearWeight,
    bias: Option<Tensor>,
    pub in_features: usize,
    pub out_features: usize,
    /// LoRA updates added to the output (fine-tuning, `--lora` at inference).
    pub adapters: Vec<crate::lora::LoraDelta>,
}

#[derive(Debug, Clone)]
enum LinearWeight {
    Dense(Tensor),
    Quant(QWeight),
    Candle(QMatMul),
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
            Weight::Quant(q) => LinearWeight::Quant(q),
            Weight::Candle(q) => LinearWeight::Candle(QMatMul::from_arc(q)?),
        };
        Ok(Linear { weight, bias, in_features, out_features, adapters: Vec::new() })
    }

    /// `x: (..., in) -> (..., out)`. When `x` tracks gradients and the weight does not (a
    /// frozen base under LoRA), the product runs as a frozen op whose backward pass gives
    /// only `dx` (quantized weights stay quantized).
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        use crate::train::kernels::frozen::{frozen_dense, frozen_quant};
        let train_x = x.track_op();
        if let ([a], None) = (&self.adapters[..], &self.bias) {
            if train_x || a.a.track_op() {
                // Training: frozen base + adapter in one op (lora::fused).
                use crate::lora::fused::{lora_linear, Frozen};
                let w = match &self.weight {
                    LinearWeight::Dense(w) if !w.track_op() => Some(Frozen::Dense(w.contiguous()?)),
                    LinearWeight::Quant(q) => Some(Frozen::Quant(q.clone())),
                    _ => None,
                };
                if let Some(w) = w {
                    return Ok(lora_linear(x, w, &a.a, &a.b, a.scale, a.dropout)?);
                }
            }
        }
        let y = match &self.weight {
            LinearWeight::Dense(w) if train_x && !w.track_op() => frozen_dense(x, w)?,
            // Training a dense weight: one op whose three products run on smelt's kernels.
            LinearWeight::Dense(w) if train_x || w.track_op() => crate::train::kernels::linear::dense_linear(x, w)?,
            // Inference in f32 on the CPU (e.g. a distillation teacher): the same kernels,
            // about twice candle's matmul where the CPU has AVX-512.
            LinearWeight::Dense(w) if w.dtype() == DType::F32 && x.dtype() == DType::F32 && w.device().is_cpu() => {
                crate::train::kernels::linear::dense_linear(x, w)?
            }
            LinearWeight::Dense(w) => {
                let dims = x.dims();
                let lead = &dims[..dims.len() - 1];
                let rows: usize = lead.iter().product();
                let y = x.reshape((rows, self.in_features))?.matmul(&w.t()?)?;
                let mut out = lead.to_vec();
                out.push(self.out_features);
                y.reshape(out)?
            }
            LinearWeight::Quant(q) if train_x => frozen_quant(x, q)?,
            LinearWeight::Quant(q) => q.forward(x)?,
            // candle's quantized kernels have no backward pass: dequantize for this product.
            LinearWeight::Candle(q) if train_x => frozen_dense(x, &qmatmul_dense(q)?)?,
            LinearWeight::Candle(q) => q.forward(x)?,
        };
        let mut y = match &self.bias {
            Some(b) => y.broadcast_add(b)?,
            None => y,
        };
        for a in &self.adapters {
            y = (y + a.forward(x)?)?;
        }
        Ok(y)
    }

    /// Repack a quantized weight for the fast kernels where the CPU has them
    /// ([`QWeight::packed`]); other weights are left as they are.
    pub fn pack(&mut self) {
        if let LinearWeight::Quant(q) = &mut self.weight {
            if q.packs() {
                *q = q.clone().packed();
            }
        }
    }

    /// The weight as loaded (for merging adapters, export).
    pub fn weight(&self) -> Result<Weight> {
        Ok(match &self.weight {
            LinearWeight::Dense(t) => Weight::Dense(t.clone()),
            LinearWeight::Quant(q) => Weight::Quant(q.clone()),
            LinearWeight::Candle(QMatMul::QTensor(t)) => Weight::Candle(t.clone()),
            LinearWeight::Candle(q) => Weight::Dense(qmatmul_dense(q)?),
        })
    }

    /// The dense weight, when this layer is dense (training, export).
    pub fn dense_weight(&self) -> Option<&Tensor> {
        match &self.weight {
            LinearWeight::Dense(w) => Some(w),
            LinearWeight::Quant(_) | LinearWeight::Candle(_) => None,
        }
    }

    /// The quantized weight, when smelt's kernels multiply this layer.
    pub fn quant_weight(&self) -> Option<&QWeight> {
        match &self.weight {
            LinearWeight::Quant(q) => Some(q),
            _ => None,
        }
    }

    pub fn bias(&self) -> Option<&Tensor> {
        self.bias.as_ref()
    }

    /// The quantized weight and the bias, when there are no adapters: then `forward(x)`
    /// is `x · Wᵀ + b` on smelt's kernels.
    pub fn quant_parts(&self) -> Option<(&QWeight, Option<&Tensor>)> {
        match (&self.weight, self.adapters.is_empty()) {
            (LinearWeight::Quant(q), true) => Some((q, self.bias.as_ref())),
            _ => None,
        }
    }

    /// The quantized weight when it is the whole layer (no bias, no adapters): then
    /// `forward(x)` is exactly `x · Wᵀ` on smelt's kernels.
    pub fn plain_quant(&self) -> Option<&QWeight> {
        match (&self.weight, &self.bias, self.adapters.is_empty()) {
            (LinearWeight::Quant(q), None, true) => Some(q),
            _ => None,
        }
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
            Weight::Quant(q) => {
                let (b, s) = ids.dims2()?;
                let rows = q.gather_rows(&ids.flatten_all()?.to_vec1::<u32>()?)?;
                Tensor::from_vec(rows, (b, s, self.hidden), ids.device())?
            }
            Weight::Candle(q) => q.embedding(ids)?,
        })
    }

    /// The same table used as the output projection (tied embeddings); shares its storage.
    pub fn as_linear(&self) -> Result<Linear> {
        Linear::new(self.table.clone(), None)
    }

    pub fn weight(&self) -> &Weight {
        &self.table
    }
}
