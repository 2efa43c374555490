//! WordPiece (BERT) as llama.cpp runs it (`llm_tokenizer_wpm_session`): lower-case and strip
//! accents, split at whitespace, punctuation and CJK characters, then greedily take the
//! longest vocabulary token from each word prefixed with "▁" (the GGUF converter turns
//! word-initial tokens into "▁word" and drops the "##" of continuations).

use anyhow::{anyhow, Result};
use tokenizers::utils::SysRegex;
use tokenizers::NormalizedString;

use super::vocab::Vocab;

pub struct WpmModel {
    pub lowercase: bool,
    pub strip_accents: bool,
    max_token_len: usize,
    punct: SysRegex,
    mark: SysRegex,
    control: SysRegex,
}

fn re(p: &str) -> Result<SysRegex> {
    SysRegex::new(p).map_err(|e| anyhow!("bad regex {p:?}: {e}"))
}

fn is_chinese_char(c: u32) -> bool {
    (0x4E00..=0x9FFF).contains(&c)
        || (0x3400..=0x4DBF).contains(&c)
        || (0x20000..=0x2A6DF).contains(&c)
        || (0x2A700..=0x2B73F).contains(&c)
        || (0x2B740..=0x2B81F).contains(&c)
        || (0x2B920..=0x2CEAF).contains(&c)
        || (0xF900..=0xFAFF).contains(&c)
        || (0x2F800..=0x2FA1F).contains(&c)
}

impl WpmModel {
    pub fn new(vocab: &Vocab, lowercase: bool, strip_accents: bool) -> Result<Self> {
        let max_token_len = vocab.iter().map(|(_, t)| t.len()).max().unwrap_or(0);
        Ok(Self {
            lowercase,
            strip_accents,
            max_token_len,
            punct: re(r"\A\p{P}\z")?,
            mark: re(r"\A\p{M}\z")?,
            control: re(r"\A[\p{Cc}\p{Cf}\p{Co}\p{Cs}]\z")?, // not Cn, as llama.cpp
        })
    }

    fn is(re: &SysRegex, s: &str) -> bool {
        re.find_iter(s).next().is_some()
    }

    fn words(&self, text: &str) -> Vec<String> {
        let mut words = vec![String::new()];
        let mut buf = [0u8; 4];
        for c in text.chars() {
            let c = if self.strip_accents && !c.is_ascii() {
                // llama.cpp keeps the first code point of the canonical decomposition.
                let mut n = NormalizedString::from(c.encode_utf8(&mut buf) as &str);
                n.nfd();
                n.get().chars().next().unwrap_or(c)
            } else {
                c
            };
            if c.is_whitespace() {
                if !words.last().expect("non-empty").is_empty() {
                    words.push(String::new());
                }
                continue;
            }
            let s = c.encode_utf8(&mut buf);
            let ascii = c.is_ascii();
            let control = if ascii { c.is_ascii_control() } else { Self::is(&self.control, s) };
            if c == '\0' || c == '\u{FFFD}' || control {
                continue;
            }
            if self.strip_accents && !ascii && Self::is(&self.mark, s) {
                continue;
            }
            // ASCII punctuation here is Unicode P or S; beyond ASCII only P splits.
            let punct = if ascii { c.is_ascii_punctuation() } else { Self::is(&self.punct, s) };
            let out = if self.lowercase { c.to_lowercase().next().unwrap_or(c) } else { c };
            let last = words.last_mut().expect("non-empty");
            if punct || is_chinese_char(c as u32) {
                if !last.is_empty() {
                    words.push(String::new());
                }
                words.last_mut().expect("non-empty").push(out);
                words.push(String::new());
            } else {
                last.push(out);
            }
        }
        if words.last().is_some_and(String::is_empty) {
            words.pop();
        }
        words
    }

    pub fn tokenize(&self, vocab: &Vocab, unk: Option<u32>, text: &str, out: &mut Vec<u32>) -> Result<()> {
        for word in self.words(text) {
            if word.is_empty() {
                continue;
            }
            let w = format!("\u{2581}{word}");
            let n = w.len();
            let start = out.len();
            let mut i = 0;
            while i < n {
                let mut matched = false;
                let mut j = n.min(i + self.max_token_len + 1);
                while j > i {
                    if let Some(id) = w.get(i..j).and_then(|p| vocab.id(p)) {
                        out.push(id);
                        matched = true;
                        i = j;
                        break;
                    }
                    j -= 1;
                }
                if !matched {
                    out.truncate(start);
                    break;
                }
            }
            if out.len() == start {
                out.push(unk.ok_or_else(|| anyhow!("word {word:?} has no tokens and the vocabulary has no unknown token"))?);
            }
        }
        Ok(())
    }
}
