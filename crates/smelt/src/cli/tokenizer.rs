//! `smelt tokenizer train --input FILES --vocab-size N --out DIR`.

use std::path::PathBuf;

use anyhow::Result;
use clap::{Args, Subcommand};

use crate::data::corpus::{Corpus, CorpusOptions};
use crate::data::tokenizer::{train_tokenizer, TokenizerTrainOptions};

#[derive(Args, Debug)]
pub struct TokenizerArgs {
    #[command(subcommand)]
    pub command: TokenizerCommand,
}

#[derive(Subcommand, Debug)]
pub enum TokenizerCommand {
    /// Train a byte-level BPE tokenizer (tokenizer.json + tokenizer_config.json with a ChatML template).
    Train(TokenizerTrainArgs),
}

#[derive(Args, Debug)]
pub struct TokenizerTrainArgs {
    /// UTF-8 text files (.txt, .md, .jsonl with a "text" field) or folders of them.
    #[arg(long, short = 'i', required = true, num_args = 1..)]
    pub input: Vec<PathBuf>,
    /// Vocabulary size, special tokens and the 256 byte tokens included.
    #[arg(long, default_value_t = 4096)]
    pub vocab_size: usize,
    /// Merge only pairs seen at least this often.
    #[arg(long, default_value_t = 2)]
    pub min_frequency: u64,
    /// Split text files into documents on this string (default: a file is one document).
    #[arg(long)]
    pub doc_separator: Option<String>,
    /// model_max_length written to tokenizer_config.json.
    #[arg(long, default_value_t = 2048)]
    pub max_length: usize,
    /// Output folder.
    #[arg(long, short = 'o')]
    pub out: PathBuf,
    #[arg(long)]
    pub json: bool,
}

pub fn tokenizer(a: TokenizerArgs) -> Result<()> {
    match a.command {
        TokenizerCommand::Train(t) => train(t),
    }
}

fn train(a: TokenizerTrainArgs) -> Result<()> {
    let corpus = Corpus::read(&a.input, &CorpusOptions { doc_separator: a.doc_separator.clone(), val_fraction: 0.0 })?;
    let opts = TokenizerTrainOptions {
        vocab_size: a.vocab_size,
        min_frequency: a.min_frequency,
        model_max_length: a.max_length,
        show_progress: false,
    };
    let trained = train_tokenizer(&corpus, &opts)?;
    trained.save(&a.out)?;
    let r = &trained.report;
    if a.json {
        println!("{}", serde_json::to_string(r)?);
    } else {
        println!(
            "trained a byte-level BPE tokenizer: {} tokens ({} merges) from {} documents, {} bytes -> {}",
            r.vocab_size,
            r.merges,
            r.documents,
            r.bytes,
            a.out.display()
        );
    }
    Ok(())
}
