//! `smelt data prepare`: corpus → deduplicated documents → token ids (an end-of-text token
//! after every document) → train / held-out shards, with the tokenizer copied beside them
//! so a training run needs nothing else. The tokenizer is a folder (`tokenizer.json`) or a
//! GGUF model, whose vocabulary is then kept as `tokenizer.gguf`.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use rayon::prelude::*;
use serde::Serialize;
use sha2::{Digest, Sha256};

use super::corpus::{Corpus, CorpusOptions};
use super::shards::{token_bytes_for, write_shards, DataMeta, SplitMeta, FORMAT};
use crate::tokenize::Tokenizer;
use crate::util::write_atomic;

#[derive(Debug, Clone)]
pub struct PrepareOptions {
    pub corpus: CorpusOptions,
    /// Tokens per shard file.
    pub shard_tokens: usize,
}

impl Default for PrepareOptions {
    fn default() -> Self {
        PrepareOptions { corpus: CorpusOptions { doc_separator: None, val_fraction: 0.05 }, shard_tokens: 1 << 26 }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct PrepareReport {
    pub files: usize,
    pub documents_train: usize,
    pub documents_val: usize,
    pub duplicates_dropped: usize,
    pub bytes_train: usize,
    pub bytes_val: usize,
    pub tokens_train: u64,
    pub tokens_val: u64,
    pub bytes_per_token: f64,
    pub vocab_size: usize,
}

/// A Hugging Face tokenizer folder (`tokenizer.json`, optionally `tokenizer_config.json`).
pub fn load_tokenizer_dir(dir: &Path) -> Result<Tokenizer> {
    if !dir.join("tokenizer.json").is_file() {
        bail!("{}: no tokenizer.json here (give the folder written by smelt tokenizer train)", dir.display());
    }
    Tokenizer::from_hf_dir(dir).with_context(|| format!("{}: tokenizer", dir.display()))
}

/// The tokenizer file written beside the shards when the tokenizer came from a GGUF model:
/// a GGUF with the model's `tokenizer.*` metadata and no tensors.
pub const TOKENIZER_GGUF: &str = "tokenizer.gguf";

/// A tokenizer for `data prepare`, and the files that reproduce it beside the shards:
/// a tokenizer folder (`tokenizer.json` ...) or a `.gguf` model (its vocabulary only).
pub fn open_tokenizer(path: &Path) -> Result<(Tokenizer, Vec<(String, Vec<u8>)>)> {
    if path.is_dir() {
        let tok = load_tokenizer_dir(path)?;
        let mut files = Vec::new();
        for name in ["tokenizer.json", "tokenizer_config.json"] {
            let src = path.join(name);
            if src.is_file() {
                files.push((name.to_string(), std::fs::read(&src).with_context(|| format!("cannot read {}", src.display()))?));
            }
        }
        return Ok((tok, files));
    }
    if !path.is_file() {
        bail!("{}: no such tokenizer folder or GGUF model", path.display());
    }
    let f = crate::load::gguf::GgufFile::open(path).with_context(|| format!("{}: not a tokenizer folder nor a GGUF model", path.display()))?;
    let tok = Tokenizer::from_gguf(&f).with_context(|| format!("{}: tokenizer", path.display()))?;
    let mut w = crate::load::gguf::GgufWriter::new();
    for (k, v) in &f.metadata {
        if k.starts_with("tokenizer.") || k == "general.architecture" || k == "general.name" {
            w.kv(k, v.clone());
        }
    }
    Ok((tok, vec![(TOKENIZER_GGUF.to_string(), w.to_bytes())]))
}

/// The tokenizer of a prepared data folder (or checkpoint): `tokenizer.json`, else
/// `tokenizer.gguf`.
pub fn load_data_tokenizer(dir: &Path) -> Result<Tokenizer> {
    if dir.join("tokenizer.json").is_file() {
        return Tokenizer::from_hf_dir(dir).with_context(|| format!("{}: tokenizer", dir.display()));
    }
    let g = dir.join(TOKENIZER_GGUF);
    if g.is_file() {
        let f = crate::load::gguf::GgufFile::open(&g)?;
        return Tokenizer::from_gguf(&f).with_context(|| format!("{}: tokenizer", g.display()));
    }
    bail!("{}: no tokenizer.json or {TOKENIZER_GGUF} (prepare the data with smelt data prepare)", dir.display())
}

/// The id appended after each document: the tokenizer's EOS, else `<|endoftext|>`.
pub fn end_of_text_id(tok: &Tokenizer) -> Result<u32> {
    tok.eos_id()
        .or_else(|| tok.token_id(super::tokenizer::EOT))
        .context("the tokenizer has no end-of-text token (eos_token in tokenizer_config.json)")
}

pub fn sha256_file(path: &Path) -> Result<String> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    Ok(Sha256::digest(&bytes).iter().map(|b| format!("{b:02x}")).collect())
}

/// `tokenizer`: a tokenizer folder or a GGUF model (see [`open_tokenizer`]).
pub fn prepare(inputs: &[PathBuf], tokenizer: &Path, out: &Path, opts: &PrepareOptions) -> Result<PrepareReport> {
    let (tok, tok_files) = open_tokenizer(tokenizer)?;
    let eot = end_of_text_id(&tok)?;
    let mut corpus = Corpus::read(inputs, &opts.corpus)?;
    let duplicates_dropped = corpus.dedup();

    // Tokenize documents in parallel; order is kept, so the output is deterministic.
    let encoded: Vec<Vec<u32>> = corpus
        .docs
        .par_iter()
        .map(|d| tok.encode(&d.text, false, false))
        .collect::<Result<_>>()?;
    let mut train = Vec::new();
    let mut val = Vec::new();
    let (mut docs_train, mut docs_val, mut bytes_train, mut bytes_val) = (0, 0, 0, 0);
    for (d, ids) in corpus.docs.iter().zip(encoded) {
        let (dst, n, b) = if d.held_out {
            (&mut val, &mut docs_val, &mut bytes_val)
        } else {
            (&mut train, &mut docs_train, &mut bytes_train)
        };
        dst.extend_from_slice(&ids);
        dst.push(eot);
        *n += 1;
        *b += d.text.len();
    }
    if train.is_empty() {
        bail!("no training text left (everything was held out or duplicated); lower --val-fraction");
    }
    if opts.corpus.val_fraction > 0.0 && val.is_empty() {
        bail!("the held-out split is empty: the corpus is too small for --val-fraction {}", opts.corpus.val_fraction);
    }

    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    // An old meta.json would describe shards that are about to change.
    let meta_path = out.join("meta.json");
    if meta_path.exists() {
        std::fs::remove_file(&meta_path).with_context(|| format!("cannot replace {}", meta_path.display()))?;
    }
    let vocab_size = tok.vocab_size();
    let tb = token_bytes_for(vocab_size);
    let train_shards = write_shards(out, "train", &train, tb, opts.shard_tokens)?;
    let val_shards = write_shards(out, "val", &val, tb, opts.shard_tokens)?;
    for stale in ["tokenizer.json", "tokenizer_config.json", TOKENIZER_GGUF] {
        if out.join(stale).is_file() && !tok_files.iter().any(|(n, _)| n == stale) {
            std::fs::remove_file(out.join(stale)).with_context(|| format!("cannot replace {}", out.join(stale).display()))?;
        }
    }
    for (name, bytes) in &tok_files {
        write_atomic(&out.join(name), bytes)?;
    }
    let report = PrepareReport {
        files: corpus.files.len(),
        documents_train: docs_train,
        documents_val: docs_val,
        duplicates_dropped,
        bytes_train,
        bytes_val,
        tokens_train: train.len() as u64,
        tokens_val: val.len() as u64,
        bytes_per_token: (bytes_train + bytes_val) as f64 / (train.len() + val.len()) as f64,
        vocab_size,
    };
    let meta = DataMeta {
        format: FORMAT.to_string(),
        token_bytes: tb,
        vocab_size,
        eot_id: eot,
        tokenizer_sha256: sha256_file(&out.join(&tok_files[0].0))?,
        train: SplitMeta { tokens: train.len() as u64, documents: docs_train as u64, shards: train_shards },
        val: SplitMeta { tokens: val.len() as u64, documents: docs_val as u64, shards: val_shards },
        stats: serde_json::to_value(&report)?,
    };
    write_atomic(&meta_path, serde_json::to_string_pretty(&meta)?.as_bytes())?;
    Ok(report)
}
