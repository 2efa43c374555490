//! Trainable weights: one candle [`Var`] per tensor under the canonical (GGUF) names, and a
//! [`TensorSource`] over them, so `Decoder::load` builds from them the very decoder that
//! inference runs — one model definition for training and generation.
//!
//! Llama tensors (d = dim, f = ffn, h·hd = query width, kv·hd = key/value width, V = vocab):
//! `token_embd (V, d)`, per block `attn_norm (d)`, `attn_q (h·hd, d)`, `attn_k (kv·hd, d)`,
//! `attn_v (kv·hd, d)`, `attn_output (d, h·hd)`, `ffn_norm (d)`, `ffn_gate (f, d)`,
//! `ffn_up (f, d)`, `ffn_down (d, f)`; `output_norm (d)`; `output (V, d)` unless tied.

use std::collections::HashMap;

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor, Var};

use crate::load::tensors::TensorSource;
use crate::model::linear::Weight;
use crate::model::{Decoder, ModelConfig};
use crate::sample::Rng;

pub struct Param {
    pub name: String,
    pub var: Var,
    /// Weight decay applies (matrices), or not (norm gains).
    pub decay: bool,
}

/// All trainable tensors of a model, in a fixed order (checkpoints and the optimizer
/// state follow it).
pub struct Params {
    pub cfg: ModelConfig,
    pub list: Vec<Param>,
}

/// Canonical names and shapes of a Llama-style model's tensors, in checkpoint order.
pub fn llama_tensor_shapes(cfg: &ModelConfig) -> Vec<(String, Vec<usize>)> {
    let (d, f, v) = (cfg.hidden, cfg.intermediate, cfg.vocab_size);
    let (q, kv) = (cfg.n_heads * cfg.head_dim, cfg.n_kv_heads * cfg.head_dim);
    let mut out = vec![("token_embd.weight".to_string(), vec![v, d])];
    for i in 0..cfg.n_layers() {
        let p = |s: &str| format!("blk.{i}.{s}.weight");
        out.push((p("attn_norm"), vec![d]));
        out.push((p("attn_q"), vec![q, d]));
        out.push((p("attn_k"), vec![kv, d]));
        out.push((p("attn_v"), vec![kv, d]));
        out.push((p("attn_output"), vec![d, q]));
        out.push((p("ffn_norm"), vec![d]));
        out.push((p("ffn_gate"), vec![f, d]));
        out.push((p("ffn_up"), vec![f, d]));
        out.push((p("ffn_down"), vec![d, f]));
    }
    out.push(("output_norm.weight".to_string(), vec![d]));
    if !cfg.tie_embeddings {
        out.push(("output.weight".to_string(), vec![v, d]));
    }
    out
}

/// Stable 64-bit hash of a name (FNV-1a), to give each tensor its own random stream.
fn name_hash(s: &str) -> u64 {
    s.bytes().fold(0xcbf29ce484222325u64, |h, b| (h ^ b as u64).wrapping_mul(0x100000001b3))
}

impl Params {
    /// Fresh weights: norms 1, matrices N(0, 0.02²), and the two projections that write
    /// into the residual stream (`attn_output`, `ffn_down`) N(0, (0.02/√(2·layers))²)
    /// (GPT-2 / llama2.c). Each tensor draws from its own seeded stream, so the result
    /// does not depend on thread count or tensor order.
    pub fn init(cfg: &ModelConfig, seed: u64, device: &Device) -> Result<Params> {
        cfg.validate()?;
        let std = 0.02f64;
        let resid_std = std / (2.0 * cfg.n_layers() as f64).sqrt();
        let mut list = Vec::new();
        for (name, shape) in llama_tensor_shapes(cfg) {
            let n: usize = shape.iter().product();
            let t = if shape.len() == 1 {
                Tensor::ones(shape.as_slice(), DType::F32, device)?
            } else {
                let s = if name.ends_with("attn_output.weight") || name.ends_with("ffn_down.weight") { resid_std } else { std };
                let mut rng = Rng::new(seed ^ name_hash(&name));
                let data: Vec<f32> = (0..n).map(|_| (rng.next_normal() * s) as f32).collect();
                Tensor::from_vec(data, shape.as_slice(), device)?
            };
            list.push(Param { decay: shape.len() > 1, var: Var::from_tensor(&t)?, name });
        }
        Ok(Params { cfg: cfg.clone(), list })
    }

    /// Weights read from a file (a checkpoint or a model to fine-tune), as f32 variables.
    pub fn from_source(cfg: &ModelConfig, src: &dyn TensorSource, device: &Device) -> Result<Params> {
        cfg.validate()?;
        let mut list = Vec::new();
        for (name, shape) in llama_tensor_shapes(cfg) {
            let t = src
                .get(&name)?
                .with_context(|| format!("missing tensor {name}"))?
                .to_dense()?
                .to_dtype(DType::F32)?
                .to_device(device)?;
            if t.dims() != shape.as_slice() {
                bail!("tensor {name} has shape {:?}, the config says {shape:?}", t.dims());
            }
            list.push(Param { decay: shape.len() > 1, var: Var::from_tensor(&t)?, name });
        }
        Ok(Params { cfg: cfg.clone(), list })
    }

    pub fn n_params(&self) -> usize {
        self.list.iter().map(|p| p.var.elem_count()).sum()
    }

    pub fn get(&self, name: &str) -> Option<&Var> {
        self.list.iter().find(|p| p.name == name).map(|p| &p.var)
    }

    /// The decoder over the variables: its forward pass records the graph for backprop.
    pub fn decoder(&self, n_ctx: usize) -> Result<Decoder> {
        let src = VarSource { params: self, detached: false };
        Decoder::load(&self.cfg, &src, n_ctx, self.list[0].var.device())
    }

    /// The same weights without gradient tracking (shared storage: it sees every update),
    /// for evaluation and sampling through the fused inference kernels.
    pub fn eval_decoder(&self, n_ctx: usize) -> Result<Decoder> {
        let src = VarSource { params: self, detached: true };
        Decoder::load(&self.cfg, &src, n_ctx, self.list[0].var.device())
    }

    /// Name → tensor (for safetensors).
    pub fn tensors(&self) -> HashMap<String, Tensor> {
        self.list.iter().map(|p| (p.name.clone(), p.var.as_tensor().clone())).collect()
    }
}

struct VarSource<'a> {
    params: &'a Params,
    detached: bool,
}

impl TensorSource for VarSource<'_> {
    fn get(&self, name: &str) -> Result<Option<Weight>> {
        Ok(self.params.get(name).map(|v| {
            let t = v.as_tensor();
            Weight::Dense(if self.detached { t.detach() } else { t.clone() })
        }))
    }

    fn names(&self) -> Vec<String> {
        self.params.list.iter().map(|p| p.name.clone()).collect()
    }
}
