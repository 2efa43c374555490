//! Teacher and student must share a tokenizer: the same number of tokens and the same
//! token strings in the same order. Checked by comparing the strings themselves (a hash of
//! them names the vocabulary in caches).

use anyhow::{bail, Result};
use sha2::{Digest, Sha256};

use crate::tokenize::Tokenizer;

/// SHA-256 over the vocabulary: its size, then every token string (NUL-terminated).
pub fn vocab_sha256(tok: &Tokenizer) -> String {
    let mut h = Sha256::new();
    h.update((tok.vocab_size() as u64).to_le_bytes());
    for id in 0..tok.vocab_size() as u32 {
        h.update(tok.token_str(id).unwrap_or("").as_bytes());
        h.update([0u8]);
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// An error naming the first difference unless `a` and `b` have the same vocabulary.
pub fn check_same_vocab(a: &Tokenizer, a_name: &str, b: &Tokenizer, b_name: &str) -> Result<()> {
    let (na, nb) = (a.vocab_size(), b.vocab_size());
    if na != nb {
        bail!("the {a_name} and the {b_name} do not share a tokenizer: {na} tokens vs {nb} (distillation needs the same vocabulary; prepare the data with the teacher's tokenizer, e.g. smelt data prepare --tokenizer TEACHER.gguf)");
    }
    for id in 0..na as u32 {
        let (x, y) = (a.token_str(id), b.token_str(id));
        if x != y {
            bail!(
                "the {a_name} and the {b_name} do not share a tokenizer: token {id} is {:?} vs {:?} (same size, {na} tokens, but different vocabularies)",
                x.unwrap_or(""),
                y.unwrap_or("")
            );
        }
    }
    Ok(())
}
