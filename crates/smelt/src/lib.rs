//! smelt — run, serve, specialise and train small language models on your own hardware.
//!
//! The modules follow the life of a request:
//! `hub` (get a model) → `load` (parse GGUF / HF folders) → `tokenize` → `template` (chat)
//! → `model` (the generic decoder forward pass) → `sample` → `generate` (the decode loop),
//! with `constrain` (JSON output) beside `sample`, `eval` (perplexity) beside it all and `cli`
//! on top.

pub mod cli;
pub mod constrain;
pub mod data;
pub mod distill;
pub mod eval;
pub mod export;
pub mod finetune;
pub mod generate;
pub mod hub;
pub mod bench;
pub mod kernels;
pub mod load;
pub mod lora;
pub mod model;
pub mod quantize;
pub mod sample;
pub mod serve;
pub mod template;
pub mod tokenize;
pub mod train;
pub mod util;
