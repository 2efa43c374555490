//! `smelt data prepare --input FILES --tokenizer DIR --out DIR [--val-fraction 0.05]`.

use std::path::PathBuf;

use anyhow::Result;
use clap::{Args, Subcommand};

use crate::data::corpus::CorpusOptions;
use crate::data::prepare::{prepare, PrepareOptions};

#[derive(Args, Debug)]
pub struct DataArgs {
    #[command(subcommand)]
    pub command: DataCommand,
}

#[derive(Subcommand, Debug)]
pub enum DataCommand {
    /// Tokenize a corpus into training and held-out token shards (exact duplicates removed).
    Prepare(PrepareArgs),
}

#[derive(Args, Debug)]
pub struct PrepareArgs {
    /// UTF-8 text files (.txt, .md, .jsonl with a "text" field) or folders of them.
    #[arg(long, short = 'i', required = true, num_args = 1..)]
    pub input: Vec<PathBuf>,
    /// Tokenizer folder (tokenizer.json), e.g. from `smelt tokenizer train`, or a GGUF model
    /// (its vocabulary, e.g. to train a student that shares a teacher's tokenizer).
    #[arg(long)]
    pub tokenizer: PathBuf,
    /// Output folder.
    #[arg(long, short = 'o')]
    pub out: PathBuf,
    /// Fraction held out from the end of each file (cut at a line break).
    #[arg(long, default_value_t = 0.05)]
    pub val_fraction: f64,
    /// Split text files into documents on this string (default: a file is one document).
    #[arg(long)]
    pub doc_separator: Option<String>,
    /// Tokens per shard file.
    #[arg(long, default_value_t = 1 << 26)]
    pub shard_tokens: usize,
    #[arg(long)]
    pub json: bool,
}

pub fn data(a: DataArgs) -> Result<()> {
    match a.command {
        DataCommand::Prepare(p) => run_prepare(p),
    }
}

fn run_prepare(a: PrepareArgs) -> Result<()> {
    if a.shard_tokens == 0 {
        anyhow::bail!("--shard-tokens must be at least 1");
    }
    let opts = PrepareOptions {
        corpus: CorpusOptions { doc_separator: a.doc_separator.clone(), val_fraction: a.val_fraction },
        shard_tokens: a.shard_tokens,
    };
    let r = prepare(&a.input, &a.tokenizer, &a.out, &opts)?;
    if a.json {
        println!("{}", serde_json::to_string(&r)?);
    } else {
        println!("files              {}", r.files);
        println!("documents          {} training, {} held out", r.documents_train, r.documents_val);
        println!("duplicates dropped {}", r.duplicates_dropped);
        println!("bytes              {} training, {} held out", r.bytes_train, r.bytes_val);
        println!("tokens             {} training, {} held out ({:.2} bytes/token, vocabulary {})", r.tokens_train, r.tokens_val, r.bytes_per_token, r.vocab_size);
        println!("written to         {}", a.out.display());
    }
    Ok(())
}
