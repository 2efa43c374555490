//! Token texts packed in one buffer, found by id or by text.
//!
//! A `Vec<String>` beside a `HashMap<String, u32>` costs some 100 bytes per token beyond the
//! text (two string headers, two heap blocks, the map's slots): 54 MB for Gemma 3's 262k
//! tokens, a fifth of the 270M model's file. Here each entry costs its bytes, a 4-byte end
//! offset and a 4-byte slot (plus the table's spare capacity): ~10 MB for Gemma 3.

use anyhow::{bail, Result};
use hashbrown::{DefaultHashBuilder, HashTable};
use std::hash::BuildHasher;

/// Byte strings back to back (`ends[i]` is where string `i` ends).
#[derive(Default, Clone)]
pub struct PackedBytes {
    data: Vec<u8>,
    ends: Vec<u32>,
}

#[allow(clippy::len_without_is_empty)]
impl PackedBytes {
    /// Pack `items` in order; fails past 4 GiB of bytes.
    pub fn new<B: AsRef<[u8]>>(items: impl IntoIterator<Item = B>) -> Result<Self> {
        let mut p = PackedBytes::default();
        for b in items {
            p.push(b.as_ref())?;
        }
        p.data.shrink_to_fit();
        p.ends.shrink_to_fit();
        Ok(p)
    }

    fn push(&mut self, b: &[u8]) -> Result<u32> {
        let end = self.data.len() + b.len();
        if end > u32::MAX as usize {
            bail!("token table larger than 4 GiB");
        }
        self.data.extend_from_slice(b);
        self.ends.push(end as u32);
        Ok(self.ends.len() as u32 - 1)
    }

    pub fn len(&self) -> usize {
        self.ends.len()
    }

    pub fn get(&self, i: u32) -> Option<&[u8]> {
        let i = i as usize;
        let end = *self.ends.get(i)? as usize;
        let start = if i == 0 { 0 } else { self.ends[i - 1] as usize };
        Some(&self.data[start..end])
    }

    #[cfg(test)]
    fn iter(&self) -> impl Iterator<Item = &[u8]> {
        (0..self.len() as u32).map(|i| self.get(i).unwrap_or_default())
    }
}

/// Distinct strings with ids in insertion order, and a hash index from text to id.
#[derive(Default, Clone)]
pub struct StrTable {
    strs: PackedBytes,
    /// Ids, placed by the hash of their bytes (always hashed as `&[u8]`: a `&str` hashes
    /// differently, and the table rehashes stored entries from their bytes when it grows).
    index: HashTable<u32>,
    hasher: DefaultHashBuilder,
}

#[allow(clippy::len_without_is_empty)]
impl StrTable {
    pub fn with_capacity(n: usize) -> Self {
        StrTable {
            strs: PackedBytes { data: Vec::new(), ends: Vec::with_capacity(n) },
            index: HashTable::with_capacity(n),
            hasher: DefaultHashBuilder::default(),
        }
    }

    pub fn len(&self) -> usize {
        self.strs.len()
    }

    pub fn get(&self, id: u32) -> Option<&str> {
        // SAFETY: only `&str`s are pushed, so every stored range is valid UTF-8.
        self.strs.get(id).map(|b| unsafe { std::str::from_utf8_unchecked(b) })
    }

    pub fn id(&self, s: &str) -> Option<u32> {
        let h = self.hasher.hash_one(s.as_bytes());
        self.index.find(h, |&i| self.strs.get(i) == Some(s.as_bytes())).copied()
    }

    /// Add `s` as the next id, or `Err(existing id)` when it is already there.
    pub fn insert(&mut self, s: &str) -> Result<std::result::Result<u32, u32>> {
        if let Some(prev) = self.id(s) {
            return Ok(Err(prev));
        }
        let id = self.strs.push(s.as_bytes())?;
        let (strs, hasher) = (&self.strs, &self.hasher);
        self.index.insert_unique(hasher.hash_one(s.as_bytes()), id, |&i| hasher.hash_one(strs.get(i).unwrap_or_default()));
        Ok(Ok(id))
    }

    /// The id of `s`, added if new.
    pub fn intern(&mut self, s: &str) -> Result<u32> {
        Ok(self.insert(s)?.unwrap_or_else(|prev| prev))
    }

    /// Give back spare capacity once the table is complete.
    pub fn shrink_to_fit(&mut self) {
        self.strs.data.shrink_to_fit();
        self.strs.ends.shrink_to_fit();
        let (strs, hasher) = (&self.strs, &self.hasher);
        self.index.shrink_to_fit(|&i| hasher.hash_one(strs.get(i).unwrap_or_default()));
    }

    /// Ids in order with their text.
    pub fn iter(&self) -> impl Iterator<Item = (u32, &str)> {
        (0..self.len() as u32).map(|i| (i, self.get(i).unwrap_or_default()))
    }

    /// Heap bytes held (the buffer, the offsets and the index's slots and control bytes).
    #[cfg(test)]
    fn heap_bytes(&self) -> usize {
        self.strs.data.capacity() + 4 * self.strs.ends.capacity() + self.index.capacity() * 5
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_and_texts_round_trip() {
        let words = ["", "a", "ab", "▁the", "<0x0A>", "b", "é", "ab "];
        let mut t = StrTable::with_capacity(2);
        for (i, w) in words.iter().enumerate() {
            assert_eq!(t.insert(w).unwrap(), Ok(i as u32));
        }
        assert_eq!(t.insert("ab").unwrap(), Err(2));
        assert_eq!(t.intern("new").unwrap(), words.len() as u32);
        assert_eq!(t.intern("a").unwrap(), 1);
        t.shrink_to_fit();
        for (i, w) in words.iter().enumerate() {
            assert_eq!(t.get(i as u32), Some(*w));
            assert_eq!(t.id(w), Some(i as u32), "{w:?}");
        }
        assert_eq!(t.id("abc"), None);
        assert_eq!(t.get(99), None);
        assert_eq!(t.iter().map(|(_, s)| s).take(3).collect::<Vec<_>>(), vec!["", "a", "ab"]);
    }

    #[test]
    fn packed_bytes_keep_order_and_empties() {
        let p = PackedBytes::new([&b"xy"[..], b"", b"\xff\x00", b"z"]).unwrap();
        assert_eq!(p.len(), 4);
        assert_eq!(p.iter().collect::<Vec<_>>(), vec![&b"xy"[..], b"", b"\xff\x00", b"z"]);
        assert_eq!(p.get(4), None);
    }

    #[test]
    fn a_large_vocabulary_costs_little_more_than_its_text() {
        let mut t = StrTable::with_capacity(0);
        let mut text = 0;
        for i in 0..100_000u32 {
            let s = format!("tok{i}");
            text += s.len();
            t.intern(&s).unwrap();
        }
        t.shrink_to_fit();
        for i in (0..100_000u32).step_by(997) {
            assert_eq!(t.id(&format!("tok{i}")), Some(i));
        }
        // Text, a 4-byte offset and at most ~2 slots of 5 bytes per entry.
        assert!(t.heap_bytes() <= text + 100_000 * (4 + 2 * 5), "{} bytes for {text} of text", t.heap_bytes());
    }
}
