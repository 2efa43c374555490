//! Loading: parse model files (GGUF, Hugging Face folders) into a config, weights and tokenizer.

pub mod gguf;
