//! Byte-level BPE as llama.cpp runs it (`llm_tokenizer_bpe_session`): split the text with the
//! pre-tokenizer regexes, map each piece to GPT-2's byte alphabet, then merge adjacent
//! symbols by merge rank (lowest first, ties leftmost) and look the results up in the
//! vocabulary; a result that is not a token falls back to byte tokens.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};

use anyhow::{anyhow, Context, Result};
use tokenizers::utils::SysRegex;

use super::bytelevel;
use super::pretok::PreTokenizer;
use super::strtab::StrTable;
use super::vocab::Vocab;

const NONE: u32 = u32::MAX;

pub struct BpeModel {
    pub pre: PreTokenizer,
    regexes: Vec<SysRegex>,
    /// Every string that takes part in a merge, interned.
    pieces: StrTable,
    /// (left piece, right piece) → (rank, merged piece).
    ranks: HashMap<(u32, u32), (u32, u32)>,
}

#[derive(Clone, Copy)]
struct Sym {
    start: u32,
    len: u32,
    piece: u32,
    prev: i32,
    next: i32,
}

/// (rank, left, right, left piece, right piece); `Reverse` makes the max-heap a min-heap.
type Entry = Reverse<(u32, i32, i32, u32, u32)>;

#[derive(Default)]
struct Scratch {
    syms: Vec<Sym>,
    heap: BinaryHeap<Entry>,
    word: String,
}

impl BpeModel {
    /// `merges` are GGUF `tokenizer.ggml.merges` strings "left right", highest priority first.
    pub fn new(pre: PreTokenizer, merges: &[&str]) -> Result<Self> {
        let regexes = pre
            .regexes
            .iter()
            .map(|r| SysRegex::new(r).map_err(|e| anyhow!("{e}")).with_context(|| format!("bad pre-tokenizer regex {r:?}")))
            .collect::<Result<Vec<_>>>()?;
        let mut pieces = StrTable::with_capacity(merges.len() + 256);
        let mut ranks = HashMap::with_capacity(merges.len());
        for (rank, m) in merges.iter().enumerate() {
            // llama.cpp splits at the first space after the first byte; a merge without one
            // can never apply.
            let Some(pos) = m.as_bytes().iter().skip(1).position(|&b| b == b' ').map(|p| p + 1) else {
                continue;
            };
            let (a, b) = (&m[..pos], &m[pos + 1..]);
            let (ia, ib) = (pieces.intern(a)?, pieces.intern(b)?);
            let merged = pieces.intern(&format!("{a}{b}"))?;
            ranks.entry((ia, ib)).or_insert((rank as u32, merged));
        }
        pieces.shrink_to_fit();
        ranks.shrink_to_fit();
        Ok(Self { pre, regexes, pieces, ranks })
    }


    /// Split `text` into pre-tokens (byte ranges).
    pub fn split(&self, text: &str) -> Vec<(usize, usize)> {
        let mut spans = vec![(0, text.len())];
        for re in &self.regexes {
            let mut next = Vec::with_capacity(spans.len() * 2);
            for &(s, e) in &spans {
                let chunk = &text[s..e];
                let mut prev = 0;
                for (ms, me) in re.find_iter(chunk) {
                    if ms == me {
                        continue;
                    }
                    if ms > prev {
                        next.push((s + prev, s + ms));
                    }
                    next.push((s + ms, s + me));
                    prev = me;
                }
                if prev < chunk.len() {
                    next.push((s + prev, e));
                }
            }
            spans = next;
        }
        spans
    }

    /// Tokenize one raw-text fragment, appending ids to `out`.
    pub fn tokenize(&self, vocab: &Vocab, text: &str, out: &mut Vec<u32>) {
        if text.is_empty() {
            return;
        }
        let escaped;
        let text = if self.pre.escape_whitespace {
            escaped = text.replace(' ', "\u{2581}");
            escaped.as_str()
        } else {
            text
        };
        let mut scratch = Scratch::default();
        // Words repeat a lot in real text: remember the ids of short ones for this call.
        let mut cache: HashMap<&str, (usize, usize)> = HashMap::new();
        let mut cached: Vec<u32> = Vec::new();
        for (s, e) in self.split(text) {
            let raw = &text[s..e];
            let cacheable = raw.len() <= 32;
            if cacheable {
                if let Some(&(a, b)) = cache.get(raw) {
                    out.extend_from_slice(&cached[a..b]);
                    continue;
                }
            }
            let first = out.len();
            scratch.word.clear();
            if self.pre.byte_encode {
                bytelevel::encode_into(raw.as_bytes(), &mut scratch.word);
            } else {
                scratch.word.push_str(raw);
            }
            self.word(vocab, &mut scratch, out);
            if cacheable {
                let a = cached.len();
                cached.extend_from_slice(&out[first..]);
                cache.insert(raw, (a, cached.len()));
            }
        }
    }

    fn word(&self, vocab: &Vocab, sc: &mut Scratch, out: &mut Vec<u32>) {
        let word = sc.word.as_str();
        if word.is_empty() {
            return;
        }
        if self.pre.ignore_merges || (self.pre.gemma4 && word.bytes().all(|b| b == b'\n')) {
            if let Some(id) = vocab.id(word) {
                out.push(id);
                return;
            }
        }
        let syms = &mut sc.syms;
        syms.clear();
        for (i, (start, c)) in word.char_indices().enumerate() {
            let len = c.len_utf8();
            let piece = self.pieces.id(&word[start..start + len]).unwrap_or(NONE);
            syms.push(Sym { start: start as u32, len: len as u32, piece, prev: i as i32 - 1, next: i as i32 + 1 });
        }
        if let Some(last) = syms.last_mut() {
            last.next = -1;
        }
        let heap = &mut sc.heap;
        heap.clear();
        let add = |syms: &[Sym], heap: &mut BinaryHeap<Entry>, l: i32, r: i32| {
            if l < 0 || r < 0 {
                return;
            }
            let (pl, pr) = (syms[l as usize].piece, syms[r as usize].piece);
            if pl == NONE || pr == NONE {
                return;
            }
            if let Some(&(rank, _)) = self.ranks.get(&(pl, pr)) {
                heap.push(Reverse((rank, l, r, pl, pr)));
            }
        };
        for i in 1..syms.len() as i32 {
            add(syms, heap, i - 1, i);
        }
        while let Some(Reverse((_, l, r, pl, pr))) = heap.pop() {
            let (ls, rs) = (syms[l as usize], syms[r as usize]);
            if ls.len == 0 || rs.len == 0 || ls.piece != pl || rs.piece != pr {
                continue; // outdated
            }
            let merged = self.ranks[&(pl, pr)].1;
            let left = &mut syms[l as usize];
            left.len += rs.len;
            left.piece = merged;
            left.next = rs.next;
            syms[r as usize].len = 0;
            if rs.next >= 0 {
                syms[rs.next as usize].prev = l;
            }
            add(syms, heap, ls.prev, l);
            add(syms, heap, l, rs.next);
        }
        for s in syms.iter().filter(|s| s.len > 0) {
            let piece = &word[s.start as usize..(s.start + s.len) as usize];
            if let Some(id) = vocab.id(piece) {
                out.push(id);
                continue;
            }
            // Not a token: emit its bytes one by one, dropping those without a token.
            for &b in piece.as_bytes() {
                let id = if self.pre.byte_encode {
                    if b < 0x80 {
                        vocab.id(std::str::from_utf8(&[b]).expect("ascii"))
                    } else {
                        None
                    }
                } else {
                    vocab.id(&format!("<0x{b:02X}>"))
                };
                out.extend(id);
            }
        }
    }
}
