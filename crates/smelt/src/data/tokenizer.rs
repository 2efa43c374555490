//! Train a byte-level BPE tokenizer (GPT-2 style) on a corpus with the `tokenizers` crate,
//! and write it as a Hugging Face tokenizer folder (`tokenizer.json` + `tokenizer_config.json`).
//!
//! Byte-level BPE has no unknown tokens (every byte is in the base alphabet) and exports
//! exactly to GGUF as `tokenizer.ggml.model = "gpt2"`, `tokenizer.ggml.pre = "gpt-2"`
//! (llama.cpp's GPT-2 split regex is the one the `ByteLevel` pre-tokenizer uses).
//!
//! Vocabulary layout: the special tokens first (`<|endoftext|>` = 0, which is BOS, EOS and
//! the document separator; `<|im_start|>` = 1, `<|im_end|>` = 2 for the ChatML template),
//! then the 256 byte symbols, then the merges in the order they were learned.

use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::{BpeTrainerBuilder, BPE};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::{AddedToken, TokenizerBuilder};

use super::corpus::Corpus;
use crate::util::write_atomic;

/// Document separator, BOS and EOS.
pub const EOT: &str = "<|endoftext|>";
pub const IM_START: &str = "<|im_start|>";
pub const IM_END: &str = "<|im_end|>";
pub const SPECIAL_TOKENS: [&str; 3] = [EOT, IM_START, IM_END];

/// ChatML, as SmolLM2 and Qwen use it.
pub const CHAT_TEMPLATE: &str = "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

/// Smallest vocabulary that holds the special tokens, the 256 bytes and one merge.
pub const MIN_VOCAB: usize = SPECIAL_TOKENS.len() + 256 + 1;

#[derive(Debug, Clone)]
pub struct TokenizerTrainOptions {
    pub vocab_size: usize,
    /// A pair must occur at least this often to be merged.
    pub min_frequency: u64,
    /// `model_max_length` written to tokenizer_config.json.
    pub model_max_length: usize,
    pub show_progress: bool,
}

impl Default for TokenizerTrainOptions {
    fn default() -> Self {
        TokenizerTrainOptions { vocab_size: 4096, min_frequency: 2, model_max_length: 2048, show_progress: false }
    }
}

/// What training produced, for the report.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TokenizerReport {
    pub vocab_size: usize,
    pub merges: usize,
    pub documents: usize,
    pub bytes: usize,
}

/// A trained tokenizer as the two JSON files of a Hugging Face tokenizer folder.
pub struct TrainedTokenizer {
    pub tokenizer_json: String,
    pub tokenizer_config_json: String,
    pub report: TokenizerReport,
}

/// Train on every document of `corpus` (the held-out split is not separated here: the
/// tokenizer sees the whole corpus, as is usual; `data prepare` holds data out for the model).
pub fn train_tokenizer(corpus: &Corpus, opts: &TokenizerTrainOptions) -> Result<TrainedTokenizer> {
    if opts.vocab_size < MIN_VOCAB {
        bail!("--vocab-size {} is too small: byte-level BPE needs at least {MIN_VOCAB} (3 special tokens, 256 bytes, 1 merge)", opts.vocab_size);
    }
    if opts.vocab_size > u32::MAX as usize / 2 {
        bail!("--vocab-size {} is too large", opts.vocab_size);
    }
    if corpus.total_bytes() == 0 {
        bail!("the corpus is empty: no text to train a tokenizer on");
    }
    let specials: Vec<AddedToken> = SPECIAL_TOKENS.iter().map(|t| AddedToken::from(t.to_string(), true)).collect();
    let mut trainer = BpeTrainerBuilder::new()
        .vocab_size(opts.vocab_size)
        .min_frequency(opts.min_frequency)
        .show_progress(opts.show_progress)
        .special_tokens(specials.clone())
        .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
        .build();
    let mut tok = TokenizerBuilder::new()
        .with_model(BPE::default())
        .with_normalizer(None::<tokenizers::NormalizerWrapper>)
        .with_pre_tokenizer(Some(tokenizers::PreTokenizerWrapper::ByteLevel(ByteLevel::new(false, true, true))))
        .with_post_processor(None::<tokenizers::PostProcessorWrapper>)
        .with_decoder(Some(tokenizers::DecoderWrapper::ByteLevel(ByteLevelDecoder::default())))
        .build()
        .map_err(|e| anyhow!("cannot build the tokenizer: {e}"))?;
    // Feed lines in chunks so the trainer's word counting runs in parallel.
    let chunks = corpus.documents().flat_map(|d| chunk_text(d, 1 << 16));
    tok.train(&mut trainer, chunks).map_err(|e| anyhow!("tokenizer training failed: {e}"))?;
    tok.add_special_tokens(&specials);

    let vocab_size = tok.get_vocab_size(true);
    if vocab_size < opts.vocab_size {
        bail!(
            "the corpus supports only {vocab_size} tokens (asked for {}): no pair occurs {} times any more; lower --vocab-size or add text",
            opts.vocab_size,
            opts.min_frequency
        );
    }
    for (i, t) in SPECIAL_TOKENS.iter().enumerate() {
        if tok.token_to_id(t) != Some(i as u32) {
            bail!("internal error: special token {t} did not get id {i}");
        }
    }
    let tokenizer_json = tok.to_string(true).map_err(|e| anyhow!("cannot serialise the tokenizer: {e}"))?;
    let merges = serde_json::from_str::<serde_json::Value>(&tokenizer_json)?
        .pointer("/model/merges")
        .and_then(|m| m.as_array())
        .map_or(0, |m| m.len());
    let config = serde_json::json!({
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": EOT,
        "eos_token": EOT,
        "pad_token": EOT,
        "unk_token": null,
        "add_bos_token": false,
        "add_eos_token": false,
        "clean_up_tokenization_spaces": false,
        "model_max_length": opts.model_max_length,
        "chat_template": CHAT_TEMPLATE,
    });
    Ok(TrainedTokenizer {
        tokenizer_json,
        tokenizer_config_json: serde_json::to_string_pretty(&config)?,
        report: TokenizerReport { vocab_size, merges, documents: corpus.len(), bytes: corpus.total_bytes() },
    })
}

/// Pieces of at most about `max` bytes, cut after a newline where possible (never inside
/// a character), so training sees the same words as whole documents would give.
fn chunk_text(text: &str, max: usize) -> impl Iterator<Item = &str> {
    let mut rest = text;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let mut end = rest.len().min(max);
        if end < rest.len() {
            while !rest.is_char_boundary(end) {
                end -= 1;
            }
            end = match rest[..end].rfind('\n') {
                Some(i) => i + 1,
                None if end > 0 => end,
                None => (1..=rest.len()).find(|&i| rest.is_char_boundary(i)).unwrap_or(rest.len()),
            };
        }
        let (head, tail) = rest.split_at(end);
        rest = tail;
        Some(head)
    })
}

impl TrainedTokenizer {
    /// Write `tokenizer.json` and `tokenizer_config.json` into `dir` (created if needed).
    pub fn save(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        write_atomic(&dir.join("tokenizer.json"), self.tokenizer_json.as_bytes())?;
        write_atomic(&dir.join("tokenizer_config.json"), self.tokenizer_config_json.as_bytes())?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_cover_text_at_line_ends() {
        let text = "ab\ncd\nef\n".repeat(10);
        let parts: Vec<&str> = chunk_text(&text, 7).collect();
        assert_eq!(parts.concat(), text);
        assert!(parts.iter().all(|p| p.ends_with('\n')));
        let long = "é".repeat(10);
        assert_eq!(chunk_text(&long, 3).collect::<Vec<_>>().concat(), long);
    }
}
