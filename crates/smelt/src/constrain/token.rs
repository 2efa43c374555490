//! From bytes to tokens: each token's bytes cached once per vocabulary, and the check
//! "may this token come next?" made cheap enough to run on a handful of sampled candidates
//! every step, and on the whole vocabulary when it must.

use anyhow::{bail, Result};

use super::JsonConstraint;
use crate::tokenize::Tokenizer;

/// Every token's bytes, flat, plus which tokens can never appear inside JSON text
/// (control/special tokens, empty tokens) and which end generation.
#[derive(Debug, Clone)]
pub struct TokenTable {
    bytes: Vec<u8>,
    /// Token `id` is `bytes[offsets[id]..offsets[id + 1]]`.
    offsets: Vec<u32>,
    /// Per token: its first byte, or NEVER (special or empty: never inside the document),
    /// or EOG (ends generation).
    kind: Vec<u16>,
    /// Sorted end-of-generation ids.
    eog: Vec<u32>,
}

const NEVER: u16 = 256;
const EOG: u16 = 257;

/// How many tokens [`TokenFilter`] checks one by one before it works out which first bytes
/// can come next (256 one-byte checks) to reject the rest without running the recogniser.
const FIRST_BYTE_AFTER: usize = 48;

impl TokenTable {
    pub fn new(tok: &Tokenizer) -> TokenTable {
        let n = tok.vocab_size() as u32;
        Self::from_parts((0..n).map(|id| tok.token_bytes(id)), |id| tok.is_special(id), tok.eog_ids())
    }

    /// From raw pieces (in id order), a "special" predicate and the end-of-generation ids.
    pub fn from_parts(pieces: impl IntoIterator<Item = Vec<u8>>, special: impl Fn(u32) -> bool, eog: &[u32]) -> TokenTable {
        let mut eog = eog.to_vec();
        eog.sort_unstable();
        eog.dedup();
        let mut bytes = Vec::new();
        let mut offsets = vec![0u32];
        let mut kind = Vec::new();
        for (id, p) in pieces.into_iter().enumerate() {
            kind.push(match p.first() {
                _ if eog.binary_search(&(id as u32)).is_ok() => EOG,
                Some(&b) if !special(id as u32) => b as u16,
                _ => NEVER,
            });
            bytes.extend_from_slice(&p);
            offsets.push(bytes.len() as u32);
        }
        TokenTable { bytes, offsets, kind, eog }
    }

    pub fn len(&self) -> usize {
        self.kind.len()
    }

    pub fn is_empty(&self) -> bool {
        self.kind.is_empty()
    }

    fn kind(&self, id: u32) -> u16 {
        self.kind.get(id as usize).copied().unwrap_or(NEVER)
    }

    /// The bytes of token `id` (empty when out of range).
    pub fn bytes(&self, id: u32) -> &[u8] {
        let i = id as usize;
        if i >= self.len() {
            return &[];
        }
        &self.bytes[self.offsets[i] as usize..self.offsets[i + 1] as usize]
    }

    /// An end-of-generation token (of the tokenizer, or given to `from_parts`).
    pub fn is_eog(&self, id: u32) -> bool {
        self.eog.binary_search(&id).is_ok()
    }

    /// May token `id` come next? End-of-generation tokens only once the document is
    /// complete; special tokens never.
    pub fn allows(&self, c: &JsonConstraint, id: u32) -> bool {
        match self.kind(id) {
            EOG => c.can_finish(),
            NEVER => false,
            _ => c.accepts(self.bytes(id)),
        }
    }

    /// Record the chosen token (an end-of-generation token only checks that the document
    /// may end). Errors, changing nothing, on a token [`allows`](Self::allows) refuses.
    pub fn advance(&self, c: &mut JsonConstraint, id: u32) -> Result<()> {
        match self.kind(id) {
            EOG if c.can_finish() => Ok(()),
            EOG => bail!("end of generation before the JSON document is complete"),
            NEVER => bail!("token {id} cannot appear in JSON text"),
            _ => c.advance(self.bytes(id)),
        }
    }
}

/// [`TokenTable::allows`] for one decoding step, getting cheaper the more it is asked: after
/// a few dozen checks it learns which first bytes can come next and rejects every other
/// token by a table lookup.
pub struct TokenFilter<'a> {
    table: &'a TokenTable,
    c: &'a JsonConstraint,
    checks: usize,
    first: Option<[bool; 256]>,
}

impl<'a> TokenFilter<'a> {
    pub fn new(table: &'a TokenTable, c: &'a JsonConstraint) -> Self {
        TokenFilter { table, c, checks: 0, first: None }
    }

    pub fn allows(&mut self, id: u32) -> bool {
        let t = self.table;
        let first = match t.kind(id) {
            EOG => return self.c.can_finish(),
            NEVER => return false,
            b => b as usize,
        };
        if self.first.is_none() {
            self.checks += 1;
            if self.checks > FIRST_BYTE_AFTER {
                let mut mask = [false; 256];
                for (b, ok) in mask.iter_mut().enumerate() {
                    *ok = self.c.accepts(&[b as u8]);
                }
                self.first = Some(mask);
            }
        }
        let bytes = t.bytes(id);
        match &self.first {
            Some(mask) if !mask[first] => false,
            Some(_) if bytes.len() == 1 => true,
            _ => self.c.accepts(bytes),
        }
    }
}

/// The first of `candidates` (best first) that may come next.
pub fn pick_token(c: &JsonConstraint, table: &TokenTable, candidates: impl IntoIterator<Item = u32>) -> Option<u32> {
    let mut f = TokenFilter::new(table, c);
    candidates.into_iter().find(|&id| f.allows(id))
}

/// The allowed token with the highest logit in the whole vocabulary (the fallback when no
/// sampled candidate fits). None only if no token at all may come next.
pub fn pick_best(c: &JsonConstraint, table: &TokenTable, logits: &[f32]) -> Option<u32> {
    let mut f = TokenFilter::new(table, c);
    crate::sample::best_allowed(logits, &mut |id| f.allows(id))
}
