//! The generic decoder: embeddings → N × (attention, MLP) blocks → norm → logits.
//!
//! One forward pass takes any number of sequences, each with its own new tokens and its
//! own KV cache. Their tokens are stacked into one `(Σs, hidden)` matrix for every
//! projection (the expensive part), and split per sequence only for attention — the
//! shape continuous batching in the server needs, and plain single-sequence generation
//! is the case of one.

use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor};

use super::attention::{Attention, QkvProj};
use super::config::{Arch, ModelConfig};
use super::kv_cache::{KvCache, KvType};
use super::linear::{Embedding, Linear};
use super::mlp::{GateUp, Mlp};
use super::norm::RmsNorm;
use super::rope::Rope;
use crate::load::tensors::TensorSource;

#[derive(Debug, Clone)]
pub struct Block {
    pub attn_norm: RmsNorm,
    pub attn: Attention,
    pub post_attn_norm: Option<RmsNorm>,
    pub ffn_norm: RmsNorm,
    pub mlp: Mlp,
    pub post_ffn_norm: Option<RmsNorm>,
    pub rope: usize,
}

#[derive(Debug, Clone)]
pub struct Decoder {
    pub cfg: ModelConfig,
    pub embed: Embedding,
    pub blocks: Vec<Block>,
    pub norm: RmsNorm,
    pub lm_head: Linear,
    pub ropes: Vec<Rope>,
    /// Largest context this instance can run (rope tables are built for it).
    pub n_ctx: usize,
    /// How [`Decoder::new_cache`] stores keys and values.
    pub kv_type: KvType,
    pub device: Device,
}

/// Which positions' logits a forward pass returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Logits {
    /// The last new token of each sequence: `(n_seqs, vocab)`.
    Last,
    /// Every new token: `(Σs, vocab)`.
    All,
}

/// One sequence in a batched forward pass.
pub struct SeqInput<'a> {
    pub tokens: &'a [u32],
    /// `None`: positions start at 0 and nothing is cached (training, scoring).
    pub cache: Option<&'a mut KvCache>,
}

fn linear(src: &dyn TensorSource, name: &str, bias: bool) -> Result<Linear> {
    let w = src.require(&format!("{name}.weight"))?;
    let b = if bias { src.get_dense(&format!("{name}.bias"))? } else { None };
    Linear::new(w, b).with_context(|| format!("tensor {name}"))
}

fn check_linear(l: &Linear, name: &str, out: usize, inp: usize) -> Result<()> {
    if l.out_features != out || l.in_features != inp {
        bail!(
            "tensor {name} has shape [{}, {}], expected [{out}, {inp}] from the model config",
            l.out_features,
            l.in_features
        );
    }
    Ok(())
}

/// Repack every quantized projection for the fast kernels, tensors in parallel
/// ([`Linear::pack`]; a no-op where the CPU or the type has none).
fn pack_linears(blocks: &mut [Block], lm_head: &mut Linear) {
    use rayon::prelude::*;
    let mut all: Vec<&mut Linear> = vec![lm_head];
    for b in blocks.iter_mut() {
        match &mut b.attn.qkv {
            QkvProj::Separate { q, k, v } => all.extend([q, k, v]),
            QkvProj::Fused(w) => all.push(w),
        }
        all.push(&mut b.attn.o);
        match &mut b.mlp.gate_up {
            GateUp::Separate { gate, up } => all.extend([gate, up]),
            GateUp::Fused(w) => all.push(w),
        }
        all.push(&mut b.mlp.down);
    }
    all.into_par_iter().for_each(|l| l.pack());
}

impl Decoder {
    /// Build from weights. Norm weights are expected in the `x * w` convention (loaders
    /// fold Gemma's `1 + w`).
    pub fn load(cfg: &ModelConfig, src: &dyn TensorSource, n_ctx: usize, device: &Device) -> Result<Decoder> {
        cfg.validate()?;
        let (h, hd) = (cfg.hidden, cfg.head_dim);
        let (nh, nkv) = (cfg.n_heads, cfg.n_kv_heads);
        let norm = |name: &str, dim: usize| -> Result<RmsNorm> {
            let w = src.require_dense(name)?;
            if w.dims() != [dim] {
                bail!("tensor {name} has shape {:?}, expected [{dim}]", w.dims());
            }
            Ok(RmsNorm::new(w, cfg.norm_eps))
        };
        let embed = Embedding::new(src.require("token_embd.weight")?)?;
        if embed.hidden != h || embed.vocab != cfg.vocab_size {
            bail!(
                "tensor token_embd.weight has shape [{}, {}], expected [{}, {h}]",
                embed.vocab,
                embed.hidden,
                cfg.vocab_size
            );
        }
        let lm_head = match src.get("output.weight")? {
            Some(w) if !cfg.tie_embeddings => Linear::new(w, None)?,
            _ => embed.as_linear()?,
        };
        check_linear(&lm_head, "output.weight", cfg.vocab_size, h)?;
        let qkv_bias = src.get("blk.0.attn_q.bias")?.is_some() || src.get("blk.0.attn_qkv.bias")?.is_some();

        let mut blocks = Vec::with_capacity(cfg.n_layers());
        for (i, lc) in cfg.layers.iter().enumerate() {
            let p = format!("blk.{i}");
            let qkv = if src.get(&format!("{p}.attn_qkv.weight"))?.is_some() {
                let w = linear(src, &format!("{p}.attn_qkv"), qkv_bias)?;
                check_linear(&w, &format!("{p}.attn_qkv.weight"), (nh + 2 * nkv) * hd, h)?;
                QkvProj::Fused(w)
            } else {
                let q = linear(src, &format!("{p}.attn_q"), qkv_bias)?;
                let k = linear(src, &format!("{p}.attn_k"), qkv_bias)?;
                let v = linear(src, &format!("{p}.attn_v"), qkv_bias)?;
                check_linear(&q, &format!("{p}.attn_q.weight"), nh * hd, h)?;
                check_linear(&k, &format!("{p}.attn_k.weight"), nkv * hd, h)?;
                check_linear(&v, &format!("{p}.attn_v.weight"), nkv * hd, h)?;
                QkvProj::Separate { q, k, v }
            };
            let o = linear(src, &format!("{p}.attn_output"), false)?;
            check_linear(&o, &format!("{p}.attn_output.weight"), h, nh * hd)?;
            let (q_norm, k_norm) = if cfg.qk_norm {
                (Some(norm(&format!("{p}.attn_q_norm.weight"), hd)?), Some(norm(&format!("{p}.attn_k_norm.weight"), hd)?))
            } else {
                (None, None)
            };
            let ff = cfg.intermediate;
            let gate_up = if src.get(&format!("{p}.ffn_gate.weight"))?.is_some() {
                let gate = linear(src, &format!("{p}.ffn_gate"), false)?;
                let up = linear(src, &format!("{p}.ffn_up"), false)?;
                check_linear(&gate, &format!("{p}.ffn_gate.weight"), ff, h)?;
                check_linear(&up, &format!("{p}.ffn_up.weight"), ff, h)?;
                GateUp::Separate { gate, up }
            } else {
                let w = linear(src, &format!("{p}.ffn_up"), false)?;
                check_linear(&w, &format!("{p}.ffn_up.weight"), 2 * ff, h)?;
                GateUp::Fused(w)
            };
            let down = linear(src, &format!("{p}.ffn_down"), false)?;
            check_linear(&down, &format!("{p}.ffn_down.weight"), h, ff)?;
            let (post_attn_norm, post_ffn_norm) = if cfg.sandwich_norms {
                (Some(norm(&format!("{p}.post_attention_norm.weight"), h)?), Some(norm(&format!("{p}.post_ffw_norm.weight"), h)?))
            } else {
                (None, None)
            };
            blocks.push(Block {
                attn_norm: norm(&format!("{p}.attn_norm.weight"), h)?,
                attn: Attention {
                    qkv,
                    o,
                    q_norm,
                    k_norm,
                    n_heads: nh,
                    n_kv_heads: nkv,
                    head_dim: hd,
                    scale: cfg.attn_scale,
                    softcap: cfg.attn_softcap,
                    sliding_window: lc.sliding_window,
                },
                post_attn_norm,
                ffn_norm: norm(&format!("{p}.ffn_norm.weight"), h)?,
                mlp: Mlp { gate_up, down: down.clone(), activation: cfg.activation },
                post_ffn_norm,
                rope: lc.rope,
            });
        }
        let ropes = cfg.ropes.iter().map(|r| Rope::new(r, n_ctx, device)).collect::<Result<Vec<_>>>()?;
        let mut blocks = blocks;
        let mut lm_head = lm_head;
        pack_linears(&mut blocks, &mut lm_head);
        let decoder = Decoder {
            cfg: cfg.clone(),
            embed,
            blocks,
            norm: norm("output_norm.weight", h)?,
            lm_head,
            ropes,
            n_ctx,
            kv_type: KvType::default(),
            device: device.clone(),
        };
        // SmolLM2's 94 MiB file kept 7 MiB mapped after its load: the 1.7 MB header and 64
        // KiB windows around 60 norm vectors (`/proc/PID/pagemap` during `smelt bench`).
        src.release_mapped();
        Ok(decoder)
    }

    pub fn new_cache(&self) -> KvCache {
        KvCache::new(self.blocks.len(), self.n_ctx, self.kv_type)
    }

    /// Hidden states after the final norm for a batch of sequences: `(Σs, hidden)`.
    pub fn hidden_states(&self, seqs: &mut [SeqInput<'_>]) -> Result<Tensor> {
        let mut lens = Vec::with_capacity(seqs.len());
        let mut pos = Vec::with_capacity(seqs.len());
        let mut ids = Vec::new();
        for s in seqs.iter() {
            if s.tokens.is_empty() {
                bail!("forward pass with no tokens");
            }
            let p = s.cache.as_ref().map_or(0, |c| c.len());
            if p + s.tokens.len() > self.n_ctx {
                bail!(
                    "{} tokens at position {p} exceed the context size of {} (raise --ctx, up to the model's {})",
                    s.tokens.len(),
                    self.n_ctx,
                    self.cfg.max_position
                );
            }
            if let Some(c) = &s.cache {
                c.reserve(s.tokens.len())?;
            }
            if let Some(&bad) = s.tokens.iter().find(|&&t| t as usize >= self.cfg.vocab_size) {
                bail!("token id {bad} is outside the vocabulary of {}", self.cfg.vocab_size);
            }
            lens.push(s.tokens.len());
            pos.push(p);
            ids.extend_from_slice(s.tokens);
        }
        let n = ids.len();
        let ids = Tensor::from_vec(ids, (1, n), &self.device)?;
        let mut x = self.embed.forward(&ids)?.squeeze(0)?; // (Σs, hidden)
        if let Some(scale) = self.cfg.embed_scale {
            x = (x * scale)?;
        }
        let mut caches: Vec<Option<&mut KvCache>> = seqs.iter_mut().map(|s| s.cache.as_deref_mut()).collect();
        for (li, b) in self.blocks.iter().enumerate() {
            let h = b.attn_norm.forward(&x)?;
            let mut a = b.attn.forward_seqs(&h, &lens, &pos, &mut caches, &self.ropes[b.rope], li)?;
            if let Some(n) = &b.post_attn_norm {
                a = n.forward(&a)?;
            }
            x = (x + a)?;
            let mut m = b.mlp.forward(&b.ffn_norm.forward(&x)?)?;
            if let Some(n) = &b.post_ffn_norm {
                m = n.forward(&m)?;
            }
            x = (x + m)?;
        }
        for (c, &len) in caches.iter_mut().zip(&lens) {
            if let Some(c) = c {
                c.commit(len);
            }
        }
        self.norm.forward(&x)
    }

    /// Logits for a batch of sequences (see [`Logits`]).
    pub fn forward(&self, seqs: &mut [SeqInput<'_>], which: Logits) -> Result<Tensor> {
        // The whole pass on a pool thread (see `in_pool`: no lock hand-off per product).
        crate::util::in_pool(|| self.forward_in_pool(seqs, which))
    }

    fn forward_in_pool(&self, seqs: &mut [SeqInput<'_>], which: Logits) -> Result<Tensor> {
        if let [SeqInput { tokens: &[token], cache: Some(cache) }] = seqs {
            if self.decode_step_runs() {
                let mut logits = vec![0f32; self.cfg.vocab_size];
                super::decode_step::step_into(self, token, cache, &mut logits)?;
                return Ok(Tensor::from_vec(logits, (1, self.cfg.vocab_size), &self.device)?);
            }
        }
        self.forward_candle(seqs, which)
    }

    /// Whether a one-token step runs [`super::decode_step`] (the model is covered, and
    /// `SMELT_DECODE_STEP` is not `candle`, which forces candle's ops for comparison).
    pub fn decode_step_runs(&self) -> bool {
        static FORCE_CANDLE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        !*FORCE_CANDLE.get_or_init(|| std::env::var("SMELT_DECODE_STEP").is_ok_and(|v| v == "candle")) && super::decode_step::supported(self)
    }

    /// [`Self::forward`] through candle's ops only (the decode step's oracle).
    pub fn forward_candle(&self, seqs: &mut [SeqInput<'_>], which: Logits) -> Result<Tensor> {
        let lens: Vec<usize> = seqs.iter().map(|s| s.tokens.len()).collect();
        let h = self.hidden_states(seqs)?;
        let h = match which {
            Logits::All => h,
            Logits::Last => {
                let mut rows = Vec::with_capacity(lens.len());
                let mut off = 0;
                for l in &lens {
                    off += l;
                    rows.push((off - 1) as u32);
                }
                let idx = Tensor::from_vec(rows, lens.len(), &self.device)?;
                h.index_select(&idx, 0)?
            }
        };
        self.logits_from_hidden(&h)
    }

    /// Output projection and final soft-cap: `(rows, hidden) -> (rows, vocab)`.
    pub fn logits_from_hidden(&self, h: &Tensor) -> Result<Tensor> {
        let mut logits = self.lm_head.forward(h)?;
        if let Some(cap) = self.cfg.final_softcap {
            logits = ((logits / cap)?.tanh()? * cap)?;
        }
        Ok(logits)
    }

    /// Convenience: one sequence, logits of its last new token as a `Vec<f32>`.
    pub fn step(&self, tokens: &[u32], cache: &mut KvCache) -> Result<Vec<f32>> {
        let mut logits = Vec::new();
        self.step_into(tokens, cache, &mut logits)?;
        Ok(logits)
    }

    /// [`Self::step`] into a reused vector: a one-token step of a covered model allocates
    /// nothing ([`super::decode_step`]) once the buffers have their size.
    pub fn step_into(&self, tokens: &[u32], cache: &mut KvCache, logits: &mut Vec<f32>) -> Result<()> {
        if let [token] = tokens {
            if self.decode_step_runs() {
                logits.resize(self.cfg.vocab_size, 0.0);
                return crate::util::in_pool(|| super::decode_step::step_into(self, *token, cache, logits));
            }
        }
        let l = self.forward(&mut [SeqInput { tokens, cache: Some(cache) }], Logits::Last)?;
        logits.clear();
        logits.extend(l.squeeze(0)?.to_vec1::<f32>()?);
        Ok(())
    }

    pub fn arch(&self) -> Arch {
        self.cfg.arch
    }
}
