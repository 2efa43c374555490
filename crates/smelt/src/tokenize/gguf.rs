//! Build a tokenizer from GGUF `tokenizer.ggml.*` metadata, with llama.cpp's defaults
//! (`llama_vocab::impl::load`) and strict checks: malformed metadata is a one-line error.

use anyhow::{bail, Context, Result};

use super::bpe::BpeModel;
use super::pretok::PreTokenizer;
use super::spm;
use super::special::SpecialIds;
use super::vocab::{attr, Vocab};
use super::wpm::WpmModel;
use super::{build_pieces, parse_byte_token, Inner, Model, PieceStyle};
use crate::load::gguf::{GgufFile, Value};

const KEY_MODEL: &str = "tokenizer.ggml.model";
const KEY_TOKENS: &str = "tokenizer.ggml.tokens";
const KEY_SCORES: &str = "tokenizer.ggml.scores";
const KEY_TYPES: &str = "tokenizer.ggml.token_type";
const KEY_MERGES: &str = "tokenizer.ggml.merges";

enum Kind {
    Spm,
    Bpe,
    Wpm,
}

fn array<'a>(f: &'a GgufFile, key: &str) -> Result<Option<&'a [Value]>> {
    match f.get(key) {
        None => Ok(None),
        Some(v) => v.as_array().map(Some).with_context(|| format!("GGUF {key} is not an array")),
    }
}

fn strings<'a>(f: &'a GgufFile, key: &str) -> Result<Option<Vec<&'a str>>> {
    let Some(a) = array(f, key)? else { return Ok(None) };
    a.iter()
        .enumerate()
        .map(|(i, v)| v.as_str().with_context(|| format!("GGUF {key}[{i}] is not a string")))
        .collect::<Result<Vec<_>>>()
        .map(Some)
}

pub fn load(f: &GgufFile) -> Result<Inner> {
    let model = f
        .get_str(KEY_MODEL)
        .context("the GGUF has no tokenizer (tokenizer.ggml.model is missing)")?;
    let kind = match model {
        "llama" => Kind::Spm,
        "gpt2" | "gemma4" => Kind::Bpe,
        "bert" => Kind::Wpm,
        "no_vocab" | "none" => bail!("the GGUF has no vocabulary (tokenizer.ggml.model = {model:?})"),
        "t5" | "rwkv" | "plamo2" | "hybriddna" | "whitespace" => {
            bail!("tokenizer model {model:?} (tokenizer.ggml.model) is not supported yet")
        }
        other => bail!("unknown tokenizer model {other:?} (tokenizer.ggml.model)"),
    };

    let texts = strings(f, KEY_TOKENS)?.context("the GGUF has no token list (tokenizer.ggml.tokens)")?;
    let n = texts.len();
    if n == 0 {
        bail!("the GGUF token list (tokenizer.ggml.tokens) is empty");
    }
    let scores = match array(f, KEY_SCORES)? {
        None => vec![0.0f32; n],
        Some(a) => {
            if a.len() != n {
                bail!("inconsistent tokenizer metadata: {n} tokens but {} scores", a.len());
            }
            a.iter()
                .enumerate()
                .map(|(i, v)| match v {
                    Value::F32(x) => Ok(*x),
                    Value::I32(x) => Ok(*x as f32),
                    _ => bail!("GGUF {KEY_SCORES}[{i}] is not a number ({v:?})"),
                })
                .collect::<Result<Vec<_>>>()?
        }
    };
    let attrs = match array(f, KEY_TYPES)? {
        None => vec![attr::NORMAL; n],
        Some(a) => {
            if a.len() != n {
                bail!("inconsistent tokenizer metadata: {n} tokens but {} token types", a.len());
            }
            a.iter()
                .enumerate()
                .map(|(i, v)| {
                    v.as_i64()
                        .and_then(attr::from_gguf_type)
                        .with_context(|| format!("bad token type {v:?} for token {i} in {KEY_TYPES} (expected 0..=6)"))
                })
                .collect::<Result<Vec<_>>>()?
        }
    };
    let mut vocab = Vocab::new(texts.iter().map(|s| s.to_string()).collect(), scores, attrs)?;
    for (id, text) in vocab.iter() {
        if vocab.has_attr(id, attr::BYTE) && parse_byte_token(text).is_none() {
            bail!("byte token {id} is {text:?}, not of the form <0xXX>");
        }
    }

    // Defaults by model type, then the metadata.
    let in_range = |id: u32| (id as usize) < n;
    let mut ids = SpecialIds::default();
    let (mut add_bos, mut add_eos, mut add_space_prefix);
    let mut pre = None;
    match kind {
        Kind::Spm => {
            (ids.bos, ids.eos, ids.unk) = (Some(1), Some(2), Some(0));
            (add_bos, add_eos, add_space_prefix) = (true, false, true);
        }
        Kind::Bpe => {
            let p = PreTokenizer::for_name(if model == "gemma4" { Some("gemma4") } else { f.get_str("tokenizer.ggml.pre") })?;
            if model == "gpt2" {
                (ids.bos, ids.eos) = (Some(11), Some(11));
            }
            if p.no_bos {
                ids.bos = None;
            }
            (add_bos, add_eos, add_space_prefix) = (p.add_bos, false, false);
            pre = Some(p);
        }
        Kind::Wpm => {
            (ids.bos, ids.unk, ids.sep, ids.pad, ids.mask) = (Some(101), Some(100), Some(102), Some(0), Some(103));
            (add_bos, add_eos, add_space_prefix) = (true, false, false);
        }
    }
    for slot in [&mut ids.bos, &mut ids.eos, &mut ids.unk, &mut ids.sep, &mut ids.pad, &mut ids.mask] {
        *slot = slot.filter(|&id| in_range(id));
    }
    let special_keys: [(&str, &mut Option<u32>); 17] = [
        ("bos_token_id", &mut ids.bos),
        ("eos_token_id", &mut ids.eos),
        ("eot_token_id", &mut ids.eot),
        ("eom_token_id", &mut ids.eom),
        ("unknown_token_id", &mut ids.unk),
        ("seperator_token_id", &mut ids.sep),
        ("padding_token_id", &mut ids.pad),
        ("mask_token_id", &mut ids.mask),
        ("fim_pre_token_id", &mut ids.fim_pre),
        ("fim_suf_token_id", &mut ids.fim_suf),
        ("fim_mid_token_id", &mut ids.fim_mid),
        ("fim_pad_token_id", &mut ids.fim_pad),
        ("fim_rep_token_id", &mut ids.fim_rep),
        ("fim_sep_token_id", &mut ids.fim_sep),
        ("prefix_token_id", &mut None),
        ("suffix_token_id", &mut None),
        ("middle_token_id", &mut None),
    ];
    let mut deprecated_fim = [None; 3];
    for (i, (key, slot)) in special_keys.into_iter().enumerate() {
        let full = format!("tokenizer.ggml.{key}");
        let Some(v) = f.get(&full) else { continue };
        let id = v.as_i64().with_context(|| format!("GGUF {full} is not an integer"))?;
        if id < 0 || id as usize >= n {
            // llama.cpp warns and keeps its default.
            tracing::warn!("GGUF {full} = {id} is outside the vocabulary of {n}; ignored");
            continue;
        }
        if i >= 14 {
            deprecated_fim[i - 14] = Some(id as u32);
        } else {
            *slot = Some(id as u32);
        }
    }
    ids.fim_pre = deprecated_fim[0].or(ids.fim_pre);
    ids.fim_suf = deprecated_fim[1].or(ids.fim_suf);
    ids.fim_mid = deprecated_fim[2].or(ids.fim_mid);

    let flag = |key: &str| -> Result<Option<bool>> {
        let full = format!("tokenizer.ggml.{key}");
        f.get(&full).map(|v| v.as_bool().with_context(|| format!("GGUF {full} is not a boolean"))).transpose()
    };
    if let Some(v) = flag("add_space_prefix")? {
        add_space_prefix = v;
    }
    if let Some(v) = flag("add_bos_token")? {
        add_bos = v;
    }
    if let Some(v) = flag("add_eos_token")? {
        add_eos = v;
    }
    if pre.as_ref().is_some_and(|p| p.gemma4) {
        add_bos = true; // llama.cpp's Gemma 4 workaround
    }

    let eog = ids.detect(&mut vocab);
    apply_strip_rules(f, &mut vocab);
    vocab.finish()?;

    let (model, style, kind) = match kind {
        Kind::Spm => (Model::Spm(spm::Mergeable::new(&vocab)), PieceStyle::Escaped, "SPM".to_string()),
        Kind::Bpe => {
            let p = pre.expect("set for BPE");
            let merges = strings(f, KEY_MERGES)?.context("the GGUF has no BPE merges (tokenizer.ggml.merges)")?;
            let style = if p.byte_encode { PieceStyle::ByteLevel } else { PieceStyle::Escaped };
            let kind = format!("BPE ({})", p.name);
            (Model::Bpe(BpeModel::new(p, &merges)?), style, kind)
        }
        Kind::Wpm => {
            let lowercase = flag("normalizer.lowercase")?.unwrap_or(true);
            let strip = flag("normalizer.strip_accents")?.unwrap_or(lowercase);
            (Model::Wpm(WpmModel::new(&vocab, lowercase, strip)?), PieceStyle::Escaped, "WPM".to_string())
        }
    };
    let pieces = build_pieces(&vocab, style, |_, _| None)?;
    Ok(Inner { vocab, model, ids, eog, add_bos, add_eos, add_space_prefix, pieces, kind })
}

/// Per-model token attributes llama.cpp sets by name (LSTRIP/RSTRIP around special tokens).
fn apply_strip_rules(f: &GgufFile, vocab: &mut Vocab) {
    let name = f.get_str("general.name").unwrap_or("").to_lowercase();
    let pre = f.get_str("tokenizer.ggml.pre").unwrap_or("");
    let arch = f.get_str("general.architecture").unwrap_or("");
    let any = |s: &str, subs: &[&str]| subs.iter().any(|x| s.contains(x));
    if any(pre, &["jina-v2-de", "jina-v2-es", "jina-v2-code"]) || any(arch, &["nomic-bert-moe", "jina-bert-v3"]) {
        if let Some(id) = vocab.id("<mask>") {
            vocab.set_attr(id, attr::LSTRIP, true);
        }
    } else if any(&name, &["phi-3", "phi3"]) {
        let partitioned: Vec<u32> =
            vocab.iter().filter(|&(id, _)| vocab.has_attr(id, attr::PARTITIONED)).map(|(id, _)| id).collect();
        for id in partitioned {
            vocab.set_attr(id, attr::RSTRIP, true);
        }
        if let Some(id) = vocab.id("</s>") {
            vocab.set_attr(id, attr::RSTRIP, true);
        }
        for t in ["<unk>", "<s>", "<|endoftext|>"] {
            if let Some(id) = vocab.id(t) {
                vocab.set_attr(id, attr::RSTRIP, false);
            }
        }
    } else if name.contains("modern-bert") {
        if let Some(id) = vocab.id("[MASK]") {
            vocab.set_attr(id, attr::LSTRIP, true);
        }
    }
}
