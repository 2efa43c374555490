//! The one configuration that describes every supported decoder.
//!
//! Architectures differ only in data: norm style, activation, qkv layout, rope variant,
//! sliding windows, soft-capping, tied embeddings. The loaders (`load::gguf_config`,
//! `load::hf_config`) fill this in; `model::decoder` reads nothing else.

use anyhow::{bail, Result};

/// Model families smelt knows. Used for naming, defaults and tensor-name mapping only —
/// the forward pass is driven by the fields of [`ModelConfig`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arch {
    Llama,
    Mistral,
    Phi3,
    Gemma,
    Gemma2,
    Gemma3,
    Qwen2,
    Qwen3,
}

impl Arch {
    /// From a GGUF `general.architecture` or a HF `model_type`.
    pub fn parse(s: &str) -> Result<Arch> {
        Ok(match s {
            "llama" => Arch::Llama,
            "mistral" => Arch::Mistral,
            "phi3" => Arch::Phi3,
            "gemma" => Arch::Gemma,
            "gemma2" => Arch::Gemma2,
            "gemma3" | "gemma3_text" => Arch::Gemma3,
            "qwen2" => Arch::Qwen2,
            "qwen3" => Arch::Qwen3,
            other => bail!(
                "unknown architecture {other:?} (smelt supports llama, mistral, phi3, gemma, gemma2, gemma3, qwen2, qwen3)"
            ),
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Arch::Llama => "llama",
            Arch::Mistral => "mistral",
            Arch::Phi3 => "phi3",
            Arch::Gemma => "gemma",
            Arch::Gemma2 => "gemma2",
            Arch::Gemma3 => "gemma3",
            Arch::Qwen2 => "qwen2",
            Arch::Qwen3 => "qwen3",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// SwiGLU: silu(gate) * up.
    Silu,
    /// GeGLU with the tanh approximation (`gelu_pytorch_tanh`).
    GeluTanh,
    /// GeGLU with the exact erf form.
    Gelu,
}

/// How the two halves of each rotated pair are laid out inside a head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RopeLayout {
    /// Pairs are (i, i + d/2): Hugging Face `rotate_half`, llama.cpp "neox".
    Half,
    /// Pairs are (2i, 2i + 1): llama.cpp "normal" rope; GGUF llama files store q/k rows
    /// permuted for it.
    Interleaved,
}

/// Frequency scaling applied on top of `theta`.
#[derive(Debug, Clone, PartialEq)]
pub enum RopeScaling {
    None,
    /// Positions divided by `factor` (all frequencies divided by `factor`).
    Linear { factor: f64 },
    /// Llama 3.x: low frequencies divided by `factor`, high kept, a smooth band between.
    Llama3 { factor: f64, low_freq_factor: f64, high_freq_factor: f64, original_max: usize },
    /// Per-frequency divisors (Phi-3 longrope / GGUF `rope_freqs`), plus a magnitude
    /// factor applied to cos and sin.
    Factors { factors: Vec<f64>, attn_factor: f64 },
    /// Phi-3 longrope: short factors when the context fits the original training length,
    /// long ones beyond it; `attn_factor` multiplies cos and sin.
    LongRope { short: Vec<f64>, long: Vec<f64>, original_max: usize, attn_factor: f64 },
}

/// One rotary embedding variant (models with local and global layers have two).
#[derive(Debug, Clone, PartialEq)]
pub struct RopeConfig {
    pub theta: f64,
    /// Number of leading dimensions of each head that are rotated (partial rotary).
    pub rotary_dim: usize,
    pub layout: RopeLayout,
    pub scaling: RopeScaling,
}

/// Per-layer attention settings.
#[derive(Debug, Clone, PartialEq)]
pub struct LayerConfig {
    /// Keys at distance >= window from the query are masked (query_pos - key_pos >= window).
    pub sliding_window: Option<usize>,
    /// Index into [`ModelConfig::ropes`].
    pub rope: usize,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ModelConfig {
    pub arch: Arch,
    pub vocab_size: usize,
    pub hidden: usize,
    pub intermediate: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    pub norm_eps: f64,
    pub activation: Activation,
    /// Context length the model was trained for.
    pub max_position: usize,
    pub tie_embeddings: bool,
    /// Token embeddings are multiplied by this (Gemma: sqrt(hidden)).
    pub embed_scale: Option<f64>,
    /// Scale applied to q·k (1/sqrt(head_dim) unless the model says otherwise).
    pub attn_scale: f64,
    pub attn_softcap: Option<f64>,
    pub final_softcap: Option<f64>,
    /// RMSNorm applied per head to q and k before rope (Gemma 3, Qwen 3).
    pub qk_norm: bool,
    /// Extra norms after attention and after the MLP (Gemma 2/3 "sandwich").
    pub sandwich_norms: bool,
    pub ropes: Vec<RopeConfig>,
    pub layers: Vec<LayerConfig>,
}

impl ModelConfig {
    pub fn n_layers(&self) -> usize {
        self.layers.len()
    }

    /// Reject shapes the decoder cannot run, with the offending numbers in the message.
    pub fn validate(&self) -> Result<()> {
        let c = self;
        if c.vocab_size == 0 || c.hidden == 0 || c.intermediate == 0 || c.layers.is_empty() {
            bail!("model config has a zero dimension (vocab {}, hidden {}, ffn {}, layers {})", c.vocab_size, c.hidden, c.intermediate, c.layers.len());
        }
        if c.n_heads == 0 || c.n_kv_heads == 0 || c.n_heads % c.n_kv_heads != 0 {
            bail!("model config: {} attention heads cannot share {} kv heads", c.n_heads, c.n_kv_heads);
        }
        if c.head_dim == 0 || c.head_dim % 2 != 0 {
            bail!("model config: head dim {} must be even and non-zero", c.head_dim);
        }
        for (i, r) in c.ropes.iter().enumerate() {
            if r.rotary_dim == 0 || r.rotary_dim > c.head_dim || r.rotary_dim % 2 != 0 {
                bail!("model config: rope {i} rotates {} of {} head dims", r.rotary_dim, c.head_dim);
            }
            if !(r.theta > 0.0) {
                bail!("model config: rope theta {} must be positive", r.theta);
            }
        }
        for (i, l) in c.layers.iter().enumerate() {
            if l.rope >= c.ropes.len() {
                bail!("model config: layer {i} uses rope {} of {}", l.rope, c.ropes.len());
            }
            if l.sliding_window == Some(0) {
                bail!("model config: layer {i} has a zero sliding window");
            }
        }
        // Guard absurd sizes before anything is allocated from them.
        let per_layer = (c.hidden as u128) * (c.head_dim as u128) * ((c.n_heads + 2 * c.n_kv_heads) as u128)
            + 3 * (c.hidden as u128) * (c.intermediate as u128);
        if per_layer * (c.layers.len() as u128) > 1u128 << 40 {
            bail!("model config describes more than 10^12 parameters; refusing");
        }
        Ok(())
    }

    /// Parameter count implied by the shapes (embeddings counted once when tied).
    pub fn n_params(&self) -> usize {
        let c = self;
        let attn = c.hidden * c.head_dim * (2 * c.n_heads + 2 * c.n_kv_heads);
        let mlp = 3 * c.hidden * c.intermediate;
        let norms = c.hidden * if c.sandwich_norms { 4 } else { 2 } + if c.qk_norm { 2 * c.head_dim } else { 0 };
        let emb = c.vocab_size * c.hidden * if c.tie_embeddings { 1 } else { 2 };
        c.layers.len() * (attn + mlp + norms) + emb + c.hidden
    }
}
