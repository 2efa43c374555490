//! The token table shared by every tokenizer model: id ↔ text, scores, llama.cpp token
//! attributes, and the special-token partition that runs before the model sees the text.

use aho_corasick::{AhoCorasick, MatchKind};
use anyhow::{bail, Context, Result};

use super::strtab::StrTable;

/// llama.cpp token attributes (`llama_token_attr`), a bit set.
pub mod attr {
    pub const UNDEFINED: u16 = 0;
    pub const UNKNOWN: u16 = 1 << 0;
    pub const UNUSED: u16 = 1 << 1;
    pub const NORMAL: u16 = 1 << 2;
    pub const CONTROL: u16 = 1 << 3;
    pub const USER_DEFINED: u16 = 1 << 4;
    pub const BYTE: u16 = 1 << 5;
    pub const LSTRIP: u16 = 1 << 7;
    pub const RSTRIP: u16 = 1 << 8;

    /// Attributes that make a token a candidate for the special-token partition.
    pub const PARTITIONED: u16 = CONTROL | USER_DEFINED | UNKNOWN;
    /// Attributes of tokens that are dropped when decoding without specials, and not matched
    /// in the text when `parse_special` is off.
    pub const SPECIAL: u16 = CONTROL | UNKNOWN;

    /// GGUF `tokenizer.ggml.token_type` value (`llama_token_type`) to attribute.
    pub fn from_gguf_type(t: i64) -> Option<u16> {
        Some(match t {
            0 => UNDEFINED,
            1 => NORMAL,
            2 => UNKNOWN,
            3 => CONTROL,
            4 => USER_DEFINED,
            5 => UNUSED,
            6 => BYTE,
            _ => return None,
        })
    }
}

/// One piece of the input after the special-token partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Frag<'a> {
    Text(&'a str),
    Token(u32),
}

pub struct Vocab {
    /// Token texts by id, and the index from text to id.
    texts: StrTable,
    scores: Vec<f32>,
    attrs: Vec<u16>,
    /// Partition matchers, built by `finish`: all partitioned tokens, and those that are
    /// matched even without `parse_special` (user-defined ones).
    specials_all: Option<Matcher>,
    specials_user: Option<Matcher>,
}

/// A set of special tokens and an automaton that finds which of them occur in a text.
struct Matcher {
    ids: Vec<u32>,
    ac: AhoCorasick,
}

impl Vocab {
    /// Build from parallel arrays. Duplicate token strings are an error (llama.cpp aborts on
    /// them too); empty strings are renamed `[EMPTY_<id>]` as llama.cpp does.
    pub fn new(texts: Vec<String>, scores: Vec<f32>, attrs: Vec<u16>) -> Result<Self> {
        if texts.is_empty() {
            bail!("the vocabulary is empty");
        }
        if scores.len() != texts.len() || attrs.len() != texts.len() {
            bail!(
                "inconsistent vocabulary: {} tokens, {} scores, {} token types",
                texts.len(),
                scores.len(),
                attrs.len()
            );
        }
        if texts.len() > u32::MAX as usize / 2 {
            bail!("vocabulary of {} tokens is too large", texts.len());
        }
        let mut table = StrTable::with_capacity(texts.len());
        for (i, t) in texts.into_iter().enumerate() {
            let t = if t.is_empty() { format!("[EMPTY_{i}]") } else { t };
            if let Err(prev) = table.insert(&t)? {
                bail!("inconsistent vocabulary: token {i} {t:?} duplicates token {prev}");
            }
        }
        table.shrink_to_fit();
        Ok(Self { texts: table, scores, attrs, specials_all: None, specials_user: None })
    }

    pub fn len(&self) -> usize {
        self.texts.len()
    }

    pub fn text(&self, id: u32) -> Option<&str> {
        self.texts.get(id)
    }

    pub fn score(&self, id: u32) -> f32 {
        self.scores[id as usize]
    }

    pub fn attr(&self, id: u32) -> u16 {
        self.attrs.get(id as usize).copied().unwrap_or(attr::UNDEFINED)
    }

    pub fn has_attr(&self, id: u32, a: u16) -> bool {
        self.attr(id) & a != 0
    }

    pub fn set_attr(&mut self, id: u32, a: u16, on: bool) {
        if let Some(x) = self.attrs.get_mut(id as usize) {
            if on {
                *x |= a;
            } else {
                *x &= !a;
            }
        }
    }

    pub fn replace_attr(&mut self, id: u32, a: u16) {
        if let Some(x) = self.attrs.get_mut(id as usize) {
            *x = a;
        }
    }

    pub fn id(&self, text: &str) -> Option<u32> {
        self.texts.id(text)
    }

    /// Ids in increasing order together with their text.
    pub fn iter(&self) -> impl Iterator<Item = (u32, &str)> {
        self.texts.iter()
    }

    /// Build the special-token matchers; call after the attributes are final.
    pub fn finish(&mut self) -> Result<()> {
        let mut all = Vec::new();
        let mut user = Vec::new();
        for (i, &a) in self.attrs.iter().enumerate() {
            if a & attr::PARTITIONED != 0 {
                all.push(i as u32);
                if a & attr::SPECIAL == 0 {
                    user.push(i as u32);
                }
            }
        }
        self.specials_all = self.matcher(all)?;
        self.specials_user = self.matcher(user)?;
        Ok(())
    }

    fn matcher(&self, mut ids: Vec<u32>) -> Result<Option<Matcher>> {
        if ids.is_empty() {
            return Ok(None);
        }
        // llama.cpp tries longer tokens first; among equal lengths we go by id.
        let text = |id: u32| self.texts.get(id).unwrap_or_default();
        ids.sort_by_key(|&id| (std::cmp::Reverse(text(id).len()), id));
        let ac = AhoCorasick::builder()
            .match_kind(MatchKind::Standard)
            .build(ids.iter().map(|&id| text(id).as_bytes()))
            .context("cannot build the special-token matcher")?;
        Ok(Some(Matcher { ids, ac }))
    }

    /// llama.cpp's `tokenizer_st_partition`: split `text` at occurrences of special tokens,
    /// trying each token in turn (longest first) on the pieces still unmatched. Control and
    /// unknown tokens take part only with `parse_special`; user-defined tokens always do.
    pub fn partition<'a>(&self, text: &'a str, parse_special: bool) -> Vec<Frag<'a>> {
        let mut frags = Vec::new();
        if text.is_empty() {
            return frags;
        }
        frags.push(Frag::Text(text));
        let matcher = if parse_special { &self.specials_all } else { &self.specials_user };
        let Some(m) = matcher else { return frags };

        // Only tokens that occur somewhere can split anything: find them in one pass.
        let mut present = vec![false; m.ids.len()];
        let mut any = false;
        for mat in m.ac.find_overlapping_iter(text) {
            present[mat.pattern().as_usize()] = true;
            any = true;
        }
        if !any {
            return frags;
        }
        for (k, &id) in m.ids.iter().enumerate() {
            if present[k] {
                frags = self.split_on(frags, id);
            }
        }
        frags
    }

    fn split_on<'a>(&self, frags: Vec<Frag<'a>>, id: u32) -> Vec<Frag<'a>> {
        let tok = self.texts.get(id).unwrap_or_default();
        let a = self.attr(id);
        let mut out = Vec::with_capacity(frags.len() + 2);
        for f in frags {
            let Frag::Text(mut s) = f else {
                out.push(f);
                continue;
            };
            while let Some(pos) = s.find(tok) {
                let mut left = &s[..pos];
                if a & attr::LSTRIP != 0 {
                    left = left.trim_end_matches(is_c_space);
                }
                if !left.is_empty() {
                    out.push(Frag::Text(left));
                }
                out.push(Frag::Token(id));
                s = &s[pos + tok.len()..];
                if a & attr::RSTRIP != 0 {
                    s = s.trim_start_matches(is_c_space);
                }
            }
            if !s.is_empty() {
                out.push(Frag::Text(s));
            }
        }
        out
    }
}

/// C `isspace` in the "C" locale.
fn is_c_space(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\n' | '\x0b' | '\x0c' | '\r')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vocab(toks: &[(&str, u16)]) -> Vocab {
        let texts = toks.iter().map(|t| t.0.to_string()).collect();
        let attrs = toks.iter().map(|t| t.1).collect();
        let mut v = Vocab::new(texts, vec![0.0; toks.len()], attrs).unwrap();
        v.finish().unwrap();
        v
    }

    #[test]
    fn partition_longest_first_and_control_gating() {
        let v = vocab(&[
            ("a", attr::NORMAL),
            ("<s>", attr::CONTROL),
            ("<|x|>", attr::USER_DEFINED),
            ("x|>", attr::USER_DEFINED),
        ]);
        use Frag::*;
        assert_eq!(v.partition("a<s>b", false), vec![Text("a<s>b")]);
        assert_eq!(v.partition("a<s>b", true), vec![Text("a"), Token(1), Text("b")]);
        // The longer user-defined token wins over the shorter one inside it.
        assert_eq!(v.partition("<|x|>x|>", false), vec![Token(2), Token(3)]);
        assert_eq!(v.partition("", true), vec![]);
    }

    #[test]
    fn partition_strips() {
        let v = vocab(&[("a", attr::NORMAL), ("<e>", attr::CONTROL | attr::RSTRIP | attr::LSTRIP)]);
        use Frag::*;
        assert_eq!(v.partition("x \n<e>  \ty", true), vec![Text("x"), Token(1), Text("y")]);
        assert_eq!(v.partition("<e> ", true), vec![Token(1)]);
    }

    #[test]
    fn rejects_inconsistent() {
        assert!(Vocab::new(vec!["a".into(), "a".into()], vec![0.0; 2], vec![attr::NORMAL; 2]).is_err());
        assert!(Vocab::new(vec!["a".into()], vec![], vec![attr::NORMAL]).is_err());
        assert!(Vocab::new(vec![], vec![], vec![]).is_err());
    }
}
