//! Incremental decoding for streaming output: a token may end in the middle of a UTF-8
//! character (byte tokens, byte-level BPE), so bytes of an unfinished character are held
//! back until the tokens that complete it arrive.

use super::Tokenizer;

pub struct StreamDecoder<'a> {
    tok: &'a Tokenizer,
    skip_special: bool,
    pending: Vec<u8>,
    /// Still before the first text: the SentencePiece prefix space is to be removed.
    at_start: bool,
}

impl<'a> StreamDecoder<'a> {
    /// `skip_special`: drop control tokens (BOS, EOS, "<|im_end|>", ...) from the text.
    pub fn new(tok: &'a Tokenizer, skip_special: bool) -> Self {
        Self { tok, skip_special, pending: Vec::new(), at_start: true }
    }

    /// Add a token; returns the text that is now complete (possibly empty).
    pub fn push(&mut self, id: u32) -> String {
        let special = self.tok.is_special(id);
        if special && self.skip_special {
            return String::new();
        }
        let mut piece = self.tok.piece(id);
        if self.at_start && !special {
            if self.tok.add_space_prefix() {
                piece = piece.strip_prefix(b" ").unwrap_or(piece);
            }
            self.at_start = false;
        }
        self.pending.extend_from_slice(piece);
        self.take_complete()
    }

    /// The rest of the text; an unfinished character becomes U+FFFD.
    pub fn finish(mut self) -> String {
        let rest = std::mem::take(&mut self.pending);
        String::from_utf8_lossy(&rest).into_owned()
    }

    /// Bytes waiting for the rest of their character.
    pub fn pending_bytes(&self) -> &[u8] {
        &self.pending
    }

    fn take_complete(&mut self) -> String {
        let mut out = String::new();
        let mut start = 0;
        loop {
            match std::str::from_utf8(&self.pending[start..]) {
                Ok(s) => {
                    out.push_str(s);
                    start = self.pending.len();
                    break;
                }
                Err(e) => {
                    let valid = e.valid_up_to();
                    out.push_str(std::str::from_utf8(&self.pending[start..start + valid]).expect("validated"));
                    match e.error_len() {
                        // Invalid bytes that no later byte can fix: replace them now.
                        Some(bad) => {
                            out.push('\u{FFFD}');
                            start += valid + bad;
                        }
                        // An unfinished character at the end: keep it for later.
                        None => {
                            start += valid;
                            break;
                        }
                    }
                }
            }
        }
        self.pending.drain(..start);
        out
    }
}
