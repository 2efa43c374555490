//! Tokenizers that reproduce llama.cpp's (`llama-vocab.cpp`) token ids exactly.
//!
//! * `from_gguf` reads `tokenizer.ggml.*` and runs llama.cpp's algorithms natively:
//!   SentencePiece BPE (`llama`: Llama 2, Mistral, Phi-3, Gemma 1–3), byte-level BPE (`gpt2`:
//!   Llama 3, Qwen, SmolLM, GPT-2, StarCoder, ...; pre-tokenizer regexes per
//!   `tokenizer.ggml.pre`), SentencePiece-style BPE (`gemma4`) and WordPiece (`bert`).
//! * `from_hf_dir` runs a Hugging Face `tokenizer.json` with the `tokenizers` crate.
//!
//! `encode(text, add_special, parse_special)` has llama.cpp's meaning: `add_special` adds BOS
//! / EOS as the vocabulary asks; special tokens written in the text are first cut out of it
//! (longest first) — control tokens only with `parse_special`, user-defined tokens always.
//!
//! Checked against llama.cpp: every `ggml-vocab-*.gguf` test vector, and whole texts (a 4 MB
//! novel, random multi-script text) through `llama-tokenize` for 20 vocabularies. Known
//! differences: llama.cpp picks the EOT id among several candidates in hash-map order (we take
//! the lowest id; the end-of-generation set is the same), and equal-length special tokens
//! overlapping in the text are tried in id order. `decode` concatenates token pieces without
//! llama.cpp's `clean_up_tokenization_spaces` pass, so byte-level BPE round-trips exactly.

mod bpe;
pub(crate) mod bytelevel;
mod gguf;
pub(crate) mod hf;
pub(crate) mod pretok;
mod spm;
mod special;
mod stream;
mod strtab;
mod vocab;
mod wpm;

use std::path::Path;
use std::sync::Arc;

use anyhow::{bail, Result};

pub use stream::StreamDecoder;

use special::SpecialIds;
use vocab::{attr, Frag, Vocab};

/// Longest text `encode` takes in one call (offsets inside the models are 32-bit).
const MAX_TEXT: usize = 1 << 30;

/// A tokenizer; cloning is cheap (the tables are shared).
#[derive(Clone)]
pub struct Tokenizer {
    inner: Arc<Inner>,
    eog_ids: Vec<u32>,
}

pub(crate) enum Model {
    Spm(spm::Mergeable),
    Bpe(bpe::BpeModel),
    Wpm(wpm::WpmModel),
    Hf(Box<hf::HfModel>),
}

pub(crate) struct Inner {
    vocab: Vocab,
    model: Model,
    ids: SpecialIds,
    /// End-of-generation tokens as the vocabulary marks them (sorted).
    eog: Vec<u32>,
    add_bos: bool,
    add_eos: bool,
    /// SentencePiece: a space is put before the text (and taken off again when decoding).
    add_space_prefix: bool,
    /// The bytes of each token (`token_to_piece` with specials rendered).
    pieces: strtab::PackedBytes,
    /// A short description: "SPM", "BPE (llama-bpe)", ...
    kind: String,
}

/// How token texts map to bytes.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum PieceStyle {
    /// GPT-2 byte alphabet.
    ByteLevel,
    /// "▁" is a space, `<0xXX>` tokens are bytes (SentencePiece, WordPiece in GGUF, Gemma 4).
    Escaped,
}

/// llama.cpp's `token_to_piece(special = true)` for every token, packed (each piece is
/// built and copied in at once: a vector of 262k boxed pieces cost Gemma 3 ~13 MB at its
/// peak). `custom` may give a token's piece instead (WordPiece's "##" continuations).
pub(crate) fn build_pieces(vocab: &Vocab, style: PieceStyle, custom: impl Fn(u32, &str) -> Option<Vec<u8>>) -> Result<strtab::PackedBytes> {
    strtab::PackedBytes::new(vocab.iter().map(|(id, text)| {
        if let Some(p) = custom(id, text) {
            return p;
        }
        let a = vocab.attr(id);
        if a & (attr::SPECIAL | attr::USER_DEFINED) != 0 {
            text.as_bytes().to_vec()
        } else if a & attr::NORMAL != 0 {
            match style {
                PieceStyle::ByteLevel => bytelevel::decode(text),
                PieceStyle::Escaped => text.replace('\u{2581}', " ").into_bytes(),
            }
        } else if a & attr::BYTE != 0 {
            parse_byte_token(text).map(|b| vec![b]).unwrap_or_default()
        } else {
            Vec::new()
        }
    }))
}

/// `<0xXX>` → the byte.
pub(crate) fn parse_byte_token(text: &str) -> Option<u8> {
    let hex = text.strip_prefix("<0x")?.strip_suffix('>')?;
    if hex.len() != 2 {
        return None;
    }
    u8::from_str_radix(hex, 16).ok()
}

impl Tokenizer {
    /// The tokenizer a GGUF file describes (`tokenizer.ggml.*`).
    pub fn from_gguf(f: &crate::load::gguf::GgufFile) -> Result<Self> {
        Ok(Self::from_inner(gguf::load(f)?))
    }

    /// The tokenizer of a Hugging Face model folder: `tokenizer.json` plus
    /// `tokenizer_config.json` (and `special_tokens_map.json`) for BOS/EOS and their flags.
    pub fn from_hf_dir(dir: &Path) -> Result<Self> {
        Ok(Self::from_inner(hf::load(dir)?))
    }

    fn from_inner(inner: Inner) -> Self {
        let eog_ids = inner.eog.clone();
        Self { inner: Arc::new(inner), eog_ids }
    }

    /// Tokenize `text`. `add_special`: add BOS/EOS as the vocabulary asks (see `add_bos`).
    /// `parse_special`: control tokens written in the text (e.g. "<|im_start|>") become
    /// those tokens; otherwise they are tokenized as plain text. User-defined tokens are
    /// matched either way, as in llama.cpp.
    pub fn encode(&self, text: &str, add_special: bool, parse_special: bool) -> Result<Vec<u32>> {
        let inner = &*self.inner;
        if text.len() > MAX_TEXT {
            bail!("text of {} bytes is too long to tokenize at once (limit {MAX_TEXT})", text.len());
        }
        if let Model::Hf(hf) = &inner.model {
            return hf.encode(text, add_special, parse_special, inner);
        }
        let frags = inner.vocab.partition(text, parse_special);
        let mut out = Vec::with_capacity(text.len() / 3 + 2);
        let bos = || inner.ids.bos.ok_or_else(|| anyhow::anyhow!("the vocabulary asks for a BOS token but has none"));
        let eos = || inner.ids.eos.ok_or_else(|| anyhow::anyhow!("the vocabulary asks for an EOS token but has none"));
        match &inner.model {
            Model::Spm(mergeable) => {
                if add_special && inner.add_bos {
                    out.push(bos()?);
                }
                let mut prev_special = true;
                let mut buf = String::new();
                for f in frags {
                    match f {
                        Frag::Text(t) => {
                            buf.clear();
                            if inner.add_space_prefix && prev_special {
                                buf.push('\u{2581}');
                            }
                            for c in t.chars() {
                                buf.push(if c == ' ' { '\u{2581}' } else { c });
                            }
                            spm::tokenize(&inner.vocab, mergeable, &buf, &mut out)?;
                            prev_special = false;
                        }
                        Frag::Token(id) => {
                            out.push(id);
                            prev_special = true;
                        }
                    }
                }
            }
            Model::Bpe(m) => {
                if add_special && inner.add_bos {
                    out.push(bos()?);
                }
                for f in frags {
                    match f {
                        Frag::Text(t) => m.tokenize(&inner.vocab, t, &mut out),
                        Frag::Token(id) => out.push(id),
                    }
                }
            }
            Model::Wpm(m) => {
                if add_special {
                    out.push(bos()?);
                }
                for f in frags {
                    match f {
                        Frag::Text(t) => m.tokenize(&inner.vocab, inner.ids.unk, t, &mut out)?,
                        Frag::Token(id) => out.push(id),
                    }
                }
                if add_special {
                    out.push(inner.ids.sep.ok_or_else(|| anyhow::anyhow!("the vocabulary has no separator token"))?);
                }
            }
            Model::Hf(_) => unreachable!(),
        }
        if add_special && inner.add_eos && !matches!(inner.model, Model::Wpm(_)) {
            out.push(eos()?);
        }
        Ok(out)
    }

    /// Text of `ids`. Invalid UTF-8 (a character cut off at the end) becomes U+FFFD.
    /// `skip_special` drops control and unknown tokens. With a SentencePiece space prefix the
    /// space before the first word is removed, so `decode(encode(s, true, false), true) == s`.
    pub fn decode(&self, ids: &[u32], skip_special: bool) -> String {
        let mut dec = StreamDecoder::new(self, skip_special);
        let mut s = String::new();
        for &id in ids {
            s.push_str(&dec.push(id));
        }
        s.push_str(&dec.finish());
        s
    }

    /// The raw bytes token `id` stands for (byte tokens → that byte, "▁" → space, byte-level
    /// BPE mapped back; special tokens → their text). Empty for an out-of-range id.
    pub fn token_bytes(&self, id: u32) -> Vec<u8> {
        self.piece(id).to_vec()
    }

    pub(crate) fn piece(&self, id: u32) -> &[u8] {
        self.inner.pieces.get(id).unwrap_or(&[])
    }

    /// The vocabulary string as stored (e.g. "▁the", "Ġthe", "<0x0A>").
    pub fn token_str(&self, id: u32) -> Option<&str> {
        self.inner.vocab.text(id)
    }

    pub fn token_id(&self, s: &str) -> Option<u32> {
        self.inner.vocab.id(s)
    }

    pub fn vocab_size(&self) -> usize {
        self.inner.vocab.len()
    }

    pub fn bos_id(&self) -> Option<u32> {
        self.inner.ids.bos
    }

    pub fn eos_id(&self) -> Option<u32> {
        self.inner.ids.eos
    }

    pub fn eot_id(&self) -> Option<u32> {
        self.inner.ids.eot
    }

    pub fn unk_id(&self) -> Option<u32> {
        self.inner.ids.unk
    }

    /// Whether `encode(.., add_special = true, ..)` starts with BOS.
    pub fn add_bos(&self) -> bool {
        self.inner.add_bos
    }

    pub fn add_eos(&self) -> bool {
        self.inner.add_eos
    }

    /// Tokens that end generation, as llama.cpp marks them (EOS, EOT, "<|im_end|>",
    /// "<end_of_turn>", "<|eot_id|>", "<|endoftext|>", ...), sorted.
    pub fn eog_ids(&self) -> &[u32] {
        &self.eog_ids
    }

    pub fn is_eog(&self, id: u32) -> bool {
        self.eog_ids.binary_search(&id).is_ok()
    }

    /// Replace the end-of-generation set (e.g. with `generation_config.json`'s
    /// `eos_token_id` list merged in). Out-of-range ids are an error.
    pub fn set_eog_ids(&mut self, ids: &[u32]) -> Result<()> {
        if let Some(&bad) = ids.iter().find(|&&id| id as usize >= self.vocab_size()) {
            bail!("end-of-generation token {bad} is outside the vocabulary of {}", self.vocab_size());
        }
        let mut v = ids.to_vec();
        v.sort_unstable();
        v.dedup();
        self.eog_ids = v;
        Ok(())
    }

    /// Control (and unknown) tokens: not text, dropped by `decode(.., skip_special = true)`.
    pub fn is_special(&self, id: u32) -> bool {
        self.inner.vocab.has_attr(id, attr::SPECIAL)
    }

    /// "SPM", "BPE (qwen2)", "WPM", "HF (BPE)", ...
    pub fn kind(&self) -> &str {
        &self.inner.kind
    }

    pub(crate) fn add_space_prefix(&self) -> bool {
        self.inner.add_space_prefix
    }
}

const _: () = {
    const fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Tokenizer>();
};

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("kind", &self.inner.kind)
            .field("vocab_size", &self.vocab_size())
            .field("bos", &self.bos_id())
            .field("eos", &self.eos_id())
            .field("add_bos", &self.add_bos())
            .finish()
    }
}
