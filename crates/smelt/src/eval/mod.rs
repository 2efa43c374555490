//! Evaluation: perplexity (and, later, task accuracy).

pub mod perplexity;
