//! Data for training: corpus reading and cleaning, tokenizer training, token shards.
//!
//! `smelt tokenizer train` → [`tokenizer`]; `smelt data prepare` → [`prepare`] (which uses
//! [`corpus`] and writes [`shards`]); `smelt train` reads the shards back.

pub mod corpus;
pub mod prepare;
pub mod shards;
pub mod tokenizer;

pub use corpus::{Corpus, CorpusOptions};
pub use shards::{DataMeta, TokenSplit};
