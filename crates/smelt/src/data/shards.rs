//! Token shards on disk: raw little-endian u16 (vocabularies up to 65,536) or u32 ids,
//! `train-NNN.bin` / `val-NNN.bin`, described by `meta.json` (written last: a folder with
//! a `meta.json` is complete). Read back through memory maps.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use memmap2::Mmap;
use serde::{Deserialize, Serialize};

use crate::util::write_atomic;

pub const FORMAT: &str = "smelt-tokens-1";

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SplitMeta {
    pub tokens: u64,
    pub documents: u64,
    pub shards: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DataMeta {
    pub format: String,
    /// 2 (u16) or 4 (u32).
    pub token_bytes: usize,
    pub vocab_size: usize,
    /// Appended after every document.
    pub eot_id: u32,
    /// Hash of the tokenizer.json copied beside the shards.
    pub tokenizer_sha256: String,
    pub train: SplitMeta,
    pub val: SplitMeta,
    /// The `data prepare` report.
    pub stats: serde_json::Value,
}

impl DataMeta {
    pub fn read(dir: &Path) -> Result<DataMeta> {
        let p = dir.join("meta.json");
        let text = std::fs::read_to_string(&p)
            .with_context(|| format!("{}: not a prepared data folder (no meta.json; run smelt data prepare)", dir.display()))?;
        let m: DataMeta = serde_json::from_str(&text).with_context(|| format!("{} is not valid", p.display()))?;
        if m.format != FORMAT {
            bail!("{}: format {:?}, smelt reads {FORMAT:?}", p.display(), m.format);
        }
        if m.token_bytes != 2 && m.token_bytes != 4 {
            bail!("{}: token_bytes must be 2 or 4, got {}", p.display(), m.token_bytes);
        }
        Ok(m)
    }
}

/// Bytes per token for a vocabulary.
pub fn token_bytes_for(vocab_size: usize) -> usize {
    if vocab_size <= 1 << 16 {
        2
    } else {
        4
    }
}

/// Write `tokens` as shards of at most `shard_tokens` ids; returns the shard file names.
pub fn write_shards(dir: &Path, split: &str, tokens: &[u32], token_bytes: usize, shard_tokens: usize) -> Result<Vec<String>> {
    let mut names = Vec::new();
    for (i, chunk) in tokens.chunks(shard_tokens.max(1)).enumerate() {
        let name = format!("{split}-{i:03}.bin");
        let mut bytes = Vec::with_capacity(chunk.len() * token_bytes);
        for &t in chunk {
            if token_bytes == 2 {
                bytes.extend_from_slice(&(t as u16).to_le_bytes());
            } else {
                bytes.extend_from_slice(&t.to_le_bytes());
            }
        }
        write_atomic(&dir.join(&name), &bytes)?;
        names.push(name);
    }
    Ok(names)
}

/// One split's tokens, memory-mapped, addressed as one sequence.
pub struct TokenSplit {
    maps: Vec<Mmap>,
    /// Token index where each shard starts.
    starts: Vec<u64>,
    len: u64,
    token_bytes: usize,
}

impl TokenSplit {
    pub fn open(dir: &Path, meta: &DataMeta, split: &SplitMeta) -> Result<TokenSplit> {
        let mut maps = Vec::new();
        let mut starts = Vec::new();
        let mut len = 0u64;
        for name in &split.shards {
            if name.contains('/') || name.contains("..") {
                bail!("meta.json: shard name {name:?} leaves the folder");
            }
            let p: PathBuf = dir.join(name);
            let f = std::fs::File::open(&p).with_context(|| format!("cannot open shard {}", p.display()))?;
            // SAFETY: read-only map of a file smelt wrote and does not modify while training.
            let m = unsafe { Mmap::map(&f) }.with_context(|| format!("cannot map {}", p.display()))?;
            if m.len() % meta.token_bytes != 0 {
                bail!("shard {} has {} bytes, not a whole number of {}-byte tokens", p.display(), m.len(), meta.token_bytes);
            }
            starts.push(len);
            len += (m.len() / meta.token_bytes) as u64;
            maps.push(m);
        }
        if len != split.tokens {
            bail!("{}: meta.json says {} tokens but the shards hold {len}", dir.display(), split.tokens);
        }
        Ok(TokenSplit { maps, starts, len, token_bytes: meta.token_bytes })
    }

    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn get(&self, i: u64) -> u32 {
        let s = self.starts.partition_point(|&st| st <= i) - 1;
        let off = ((i - self.starts[s]) as usize) * self.token_bytes;
        let b = &self.maps[s][off..off + self.token_bytes];
        if self.token_bytes == 2 {
            u16::from_le_bytes([b[0], b[1]]) as u32
        } else {
            u32::from_le_bytes([b[0], b[1], b[2], b[3]])
        }
    }

    /// Tokens `start..start + n` (may span shards).
    pub fn window(&self, start: u64, n: usize) -> Vec<u32> {
        assert!(start + n as u64 <= self.len, "window past the end of the split");
        (start..start + n as u64).map(|i| self.get(i)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_roundtrip_across_boundaries() {
        let dir = std::env::temp_dir().join(format!("smelt-shards-{}", std::process::id()));
        let tokens: Vec<u32> = (0..1000).map(|i| (i * 37) % 70000).collect();
        for tb in [2usize, 4] {
            let toks: Vec<u32> = tokens.iter().map(|&t| if tb == 2 { t % 65536 } else { t }).collect();
            let names = write_shards(&dir, "train", &toks, tb, 300).unwrap();
            assert_eq!(names.len(), 4);
            let split = SplitMeta { tokens: 1000, documents: 1, shards: names };
            let meta = DataMeta {
                format: FORMAT.into(),
                token_bytes: tb,
                vocab_size: 70000,
                eot_id: 0,
                tokenizer_sha256: String::new(),
                train: split.clone(),
                val: split.clone(),
                stats: serde_json::Value::Null,
            };
            let s = TokenSplit::open(&dir, &meta, &split).unwrap();
            assert_eq!(s.window(290, 20), toks[290..310]);
            assert_eq!(s.window(0, 1000), toks);
        }
        std::fs::remove_dir_all(dir).unwrap();
    }
}
