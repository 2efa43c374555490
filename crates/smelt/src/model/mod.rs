//! The forward pass: one generic decoder configured per architecture.

pub mod attention;
pub mod config;
pub mod decode_step;
pub mod decoder;
pub mod kv_cache;
pub mod linear;
pub mod mlp;
pub mod norm;
pub mod rope;

pub use config::{Arch, ModelConfig};
pub use decoder::{Decoder, Logits, SeqInput};
pub use kv_cache::{KvCache, KvType};
