//! LoRA adapters: low-rank updates of a model's linear layers, for fine-tuning
//! (`smelt finetune`) and at inference (`--lora DIR[:SCALE]`, `smelt export --merge-lora`).
//!
//! * [`layer`] — [`LoraDelta`], the update one [`Linear`](crate::model::linear::Linear) carries;
//! * [`config`] — rank, alpha, dropout, target modules, rsLoRA;
//! * [`targets`] — the decoder's linear layers under PEFT's module names, and the row
//!   layout of q/k projections in GGUF llama files;
//! * [`adapter`] — an adapter in PEFT's format (`adapter_config.json` +
//!   `adapter_model.safetensors`), loaded, saved, attached, merged;
//! * [`fused`] — the training path of an adapted layer as one op with its backward pass;
//! * [`trainable`] — fresh adapters as trainable variables (PEFT's initialisation).

pub mod adapter;
pub mod config;
pub mod fused;
pub mod layer;
pub mod targets;
pub mod trainable;

pub use adapter::{Adapter, AdapterSpec};
pub use config::LoraConfig;
pub use layer::LoraDelta;
