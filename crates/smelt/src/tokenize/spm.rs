//! SentencePiece BPE as llama.cpp runs it (`llm_tokenizer_spm_session`): start from UTF-8
//! characters, repeatedly merge the adjacent pair whose concatenation is the vocabulary
//! token with the highest score (ties: leftmost), then emit each final piece as its token
//! or, when the piece is not in the vocabulary, as byte tokens `<0xXX>`.

use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashSet};

use anyhow::{anyhow, Result};

use super::vocab::Vocab;

#[derive(Clone, Copy)]
struct Sym {
    start: u32,
    len: u32,
    prev: i32,
    next: i32,
}

struct Bigram {
    score: f32,
    left: i32,
    right: i32,
    size: u32,
}

impl PartialEq for Bigram {
    fn eq(&self, o: &Self) -> bool {
        self.cmp(o) == Ordering::Equal
    }
}
impl Eq for Bigram {}
impl PartialOrd for Bigram {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Bigram {
    /// Max-heap order: higher score first, then the leftmost pair.
    fn cmp(&self, o: &Self) -> Ordering {
        self.score.total_cmp(&o.score).then_with(|| o.left.cmp(&self.left))
    }
}

/// The token for byte `b`: `<0xXX>`, else the one-character token (llama.cpp's
/// `byte_to_token` for SPM vocabularies).
pub fn byte_token(vocab: &Vocab, b: u8) -> Result<u32> {
    vocab
        .id(&format!("<0x{b:02X}>"))
        .or_else(|| if b < 0x80 { vocab.id(std::str::from_utf8(&[b]).ok()?) } else { None })
        .ok_or_else(|| anyhow!("the vocabulary has no token for byte 0x{b:02X} (no <0x{b:02X}> byte-fallback token)"))
}

/// Characters that occur in some token of two or more characters. A character outside this
/// set can never be merged with a neighbour, so the text can be cut around it and the parts
/// tokenized independently with the same result (and much smaller merge queues).
pub struct Mergeable {
    ascii: [bool; 128],
    other: HashSet<char>,
}

impl Mergeable {
    pub fn new(vocab: &Vocab) -> Self {
        let mut m = Self { ascii: [false; 128], other: HashSet::new() };
        for (_, t) in vocab.iter() {
            if t.chars().nth(1).is_some() {
                for c in t.chars() {
                    if c.is_ascii() {
                        m.ascii[c as usize] = true;
                    } else {
                        m.other.insert(c);
                    }
                }
            }
        }
        m
    }

    fn contains(&self, c: char) -> bool {
        if c.is_ascii() {
            self.ascii[c as usize]
        } else {
            self.other.contains(&c)
        }
    }
}

/// Tokenize `text` (already whitespace-escaped) and append the ids to `out`.
pub fn tokenize(vocab: &Vocab, mergeable: &Mergeable, text: &str, out: &mut Vec<u32>) -> Result<()> {
    let mut start = 0;
    for (i, c) in text.char_indices() {
        if !mergeable.contains(c) {
            tokenize_part(vocab, &text[start..i], out)?;
            tokenize_part(vocab, &text[i..i + c.len_utf8()], out)?;
            start = i + c.len_utf8();
        }
    }
    tokenize_part(vocab, &text[start..], out)
}

fn tokenize_part(vocab: &Vocab, text: &str, out: &mut Vec<u32>) -> Result<()> {
    if text.is_empty() {
        return Ok(());
    }
    if text.len() > i32::MAX as usize / 2 {
        return Err(anyhow!("text of {} bytes is too long to tokenize in one piece", text.len()));
    }
    let mut syms: Vec<Sym> = Vec::with_capacity(text.len());
    for (i, (start, c)) in text.char_indices().enumerate() {
        syms.push(Sym { start: start as u32, len: c.len_utf8() as u32, prev: i as i32 - 1, next: i as i32 + 1 });
    }
    if let Some(last) = syms.last_mut() {
        last.next = -1;
    }

    let mut queue = BinaryHeap::new();
    let try_add = |syms: &[Sym], queue: &mut BinaryHeap<Bigram>, left: i32, right: i32| {
        if left < 0 || right < 0 {
            return;
        }
        let (l, r) = (syms[left as usize], syms[right as usize]);
        let piece = &text[l.start as usize..(l.start + l.len + r.len) as usize];
        if let Some(id) = vocab.id(piece) {
            queue.push(Bigram { score: vocab.score(id), left, right, size: l.len + r.len });
        }
    };
    for i in 1..syms.len() as i32 {
        try_add(&syms, &mut queue, i - 1, i);
    }

    while let Some(b) = queue.pop() {
        let (l, r) = (syms[b.left as usize], syms[b.right as usize]);
        // Skip pairs that a previous merge already consumed.
        if l.len == 0 || r.len == 0 || l.len + r.len != b.size {
            continue;
        }
        syms[b.left as usize].len += r.len;
        syms[b.right as usize].len = 0;
        syms[b.left as usize].next = r.next;
        if r.next >= 0 {
            syms[r.next as usize].prev = b.left;
        }
        let (prev, next) = (syms[b.left as usize].prev, syms[b.left as usize].next);
        try_add(&syms, &mut queue, prev, b.left);
        try_add(&syms, &mut queue, b.left, next);
    }

    // Every merged piece is a token by construction; single characters may not be.
    let mut i = 0i32;
    while i != -1 {
        let s = syms[i as usize];
        let piece = &text[s.start as usize..(s.start + s.len) as usize];
        match vocab.id(piece) {
            Some(id) => out.push(id),
            None => {
                for &b in piece.as_bytes() {
                    out.push(byte_token(vocab, b)?);
                }
            }
        }
        i = s.next;
    }
    Ok(())
}
