//! Evaluation: perplexity and task accuracy.

pub mod perplexity;
pub mod task;
