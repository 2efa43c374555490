//! Fine-tuning a model with LoRA adapters (`smelt finetune`): the pipeline from JSONL
//! records to an adapter folder.
//!
//! * [`data`] — chat or prompt/completion records → tokens, with the chat template and
//!   the mask of trained (assistant / completion) tokens;
//! * [`pack`] — examples packed into token-budgeted micro-batches;
//! * [`trainer`] — the loop: frozen base (quantized weights stay quantized) + trainable
//!   adapters ([`crate::lora`]) through the shared step code in [`crate::train::step`].

pub mod data;
pub mod pack;
pub mod trainer;

pub use trainer::{finetune, FinetuneConfig, FinetuneOptions, FinetuneOutcome};
