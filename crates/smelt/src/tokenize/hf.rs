//! Tokenizers from a Hugging Face model folder: `tokenizer.json` runs in the `tokenizers`
//! crate; `tokenizer_config.json` / `special_tokens_map.json` give BOS/EOS and whether to add
//! them. The vocabulary is mirrored into our token table so that decoding, special-token
//! flags and end-of-generation detection work as for GGUF files.

use std::collections::HashSet;
use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use serde_json::Value as Json;

use super::special::SpecialIds;
use super::vocab::{attr, Vocab};
use super::{build_pieces, parse_byte_token, Inner, Model, PieceStyle};

pub struct HfModel {
    /// Extracts special added tokens from the text (`parse_special`).
    with_special: tokenizers::Tokenizer,
    /// Leaves special added tokens in the text as plain text.
    plain: tokenizers::Tokenizer,
}

impl HfModel {
    pub fn encode(&self, text: &str, add_special: bool, parse_special: bool, inner: &Inner) -> Result<Vec<u32>> {
        let t = if parse_special { &self.with_special } else { &self.plain };
        let enc = t.encode_fast(text, false).map_err(|e| anyhow!("tokenizer.json failed to encode: {e}"))?;
        let mut ids = Vec::with_capacity(enc.len() + 2);
        if add_special && inner.add_bos {
            ids.push(inner.ids.bos.context("the tokenizer asks for a BOS token but has none")?);
        }
        ids.extend_from_slice(enc.get_ids());
        if add_special && inner.add_eos {
            ids.push(inner.ids.eos.context("the tokenizer asks for an EOS token but has none")?);
        }
        Ok(ids)
    }
}

fn read_json(path: &Path) -> Result<Option<Json>> {
    match std::fs::read(path) {
        Ok(b) => serde_json::from_slice(&b).map(Some).with_context(|| format!("{} is not valid JSON", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

/// A token named in tokenizer_config.json: "text" or {"content": "text", ...}.
pub(crate) fn token_text(v: Option<&Json>) -> Option<String> {
    match v? {
        Json::String(s) => Some(s.clone()),
        Json::Object(o) => o.get("content")?.as_str().map(str::to_string),
        _ => None,
    }
}

/// Does any node of the JSON tree have `"type": ty`?
pub(crate) fn has_type(v: &Json, ty: &str) -> bool {
    match v {
        Json::Object(o) => o.get("type").and_then(Json::as_str) == Some(ty) || o.values().any(|x| has_type(x, ty)),
        Json::Array(a) => a.iter().any(|x| has_type(x, ty)),
        _ => false,
    }
}

pub fn load(dir: &Path) -> Result<Inner> {
    let tj_path = dir.join("tokenizer.json");
    let tj = read_json(&tj_path)?.with_context(|| format!("{} not found", tj_path.display()))?;
    let mut tok = tokenizers::Tokenizer::from_file(&tj_path)
        .map_err(|e| anyhow!("cannot load {}: {e}", tj_path.display()))?;
    tok.with_truncation(None).map_err(|e| anyhow!("{e}"))?;
    tok.with_padding(None);
    let config = read_json(&dir.join("tokenizer_config.json"))?.unwrap_or(Json::Null);
    let special_map = read_json(&dir.join("special_tokens_map.json"))?.unwrap_or(Json::Null);

    // Mirror the vocabulary, added tokens included, as a dense id → text table.
    let n = tok.get_vocab_size(true);
    if n == 0 {
        bail!("{} has an empty vocabulary", tj_path.display());
    }
    let mut texts: Vec<Option<String>> = vec![None; n];
    for (text, id) in tok.get_vocab(true) {
        let slot = texts.get_mut(id as usize).with_context(|| format!("token id {id} is outside the vocabulary of {n}"))?;
        *slot = Some(text);
    }
    let model_ty = tj.pointer("/model/type").and_then(Json::as_str).unwrap_or("");
    let byte_fallback = tj.pointer("/model/byte_fallback").and_then(Json::as_bool).unwrap_or(false);
    let added = tok.get_added_tokens_decoder();
    let mut seen = HashSet::new();
    let mut attrs = Vec::with_capacity(n);
    let texts: Vec<String> = texts
        .into_iter()
        .enumerate()
        .map(|(i, t)| {
            let id = i as u32;
            let a = match added.get(&id) {
                Some(at) if at.special => attr::CONTROL,
                Some(_) => attr::USER_DEFINED,
                None if byte_fallback && t.as_deref().and_then(parse_byte_token).is_some() => attr::BYTE,
                None => attr::NORMAL,
            };
            attrs.push(a);
            // Ids without a token (holes) get a name that cannot occur in text.
            let t = t.unwrap_or_else(|| format!("<|smelt:missing:{i}|>"));
            if !seen.insert(t.clone()) {
                format!("<|smelt:duplicate:{i}|>")
            } else {
                t
            }
        })
        .collect();
    let mut vocab = Vocab::new(texts, vec![0.0; n], attrs)?;

    let id_of = |name: &str| -> Option<u32> {
        token_text(config.get(name)).or_else(|| token_text(special_map.get(name))).and_then(|t| vocab.id(&t))
    };
    let mut ids = SpecialIds {
        bos: id_of("bos_token"),
        eos: id_of("eos_token"),
        unk: id_of("unk_token"),
        pad: id_of("pad_token"),
        sep: id_of("sep_token"),
        mask: id_of("mask_token"),
        ..Default::default()
    };

    // add_bos/add_eos: tokenizer_config.json, else what the post-processor does.
    let probe = tok.encode_fast("a", true).map_err(|e| anyhow!("tokenizer.json failed to encode: {e}"))?;
    let probe = probe.get_ids();
    let flag = |k: &str| config.get(k).and_then(Json::as_bool);
    let add_bos = flag("add_bos_token").unwrap_or_else(|| ids.bos.is_some() && probe.first() == ids.bos.as_ref());
    let add_eos = flag("add_eos_token").unwrap_or_else(|| ids.eos.is_some() && probe.last() == ids.eos.as_ref());
    let add_space_prefix = tj.get("normalizer").is_some_and(|v| has_type(v, "Prepend"))
        || tj.get("pre_tokenizer").is_some_and(|v| {
            has_type(v, "Metaspace") && v.pointer("/prepend_scheme").and_then(Json::as_str) != Some("never")
        });

    let eog = ids.detect(&mut vocab);
    vocab.finish()?;
    let style = if tj.get("decoder").is_some_and(|d| has_type(d, "ByteLevel")) {
        PieceStyle::ByteLevel
    } else {
        PieceStyle::Escaped
    };
    // WordPiece: "##x" continues a word; other word pieces start one.
    let word_piece = model_ty == "WordPiece";
    let pieces = build_pieces(&vocab, style, |id, text| {
        (word_piece && vocab.attr(id) == attr::NORMAL).then(|| match text.strip_prefix("##") {
            Some(rest) => rest.as_bytes().to_vec(),
            None => format!(" {text}").into_bytes(),
        })
    })?;

    let mut plain = tok.clone();
    plain.set_encode_special_tokens(true);
    let model = Model::Hf(Box::new(HfModel { with_special: tok, plain }));
    let kind = format!("HF ({})", if model_ty.is_empty() { "?" } else { model_ty });
    Ok(Inner { vocab, model, ids, eog, add_bos, add_eos, add_space_prefix, pieces, kind })
}
