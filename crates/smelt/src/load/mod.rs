//! Loading: parse model files (GGUF, Hugging Face folders) into a config, weights and tokenizer.

pub mod gguf;
pub mod gguf_config;
pub mod hf_config;
pub mod tensors;
