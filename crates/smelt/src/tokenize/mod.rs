//! TEMPORARY stub (replaced by the tokenizer branch).
#![allow(unused)]
use anyhow::Result;
pub struct Tokenizer;
impl Tokenizer {
    pub fn from_gguf(_f: &crate::load::gguf::GgufFile) -> Result<Self> { anyhow::bail!("stub") }
    pub fn from_hf_dir(_d: &std::path::Path) -> Result<Self> { anyhow::bail!("stub") }
    pub fn vocab_size(&self) -> usize { 0 }
    pub fn eog_ids(&self) -> &[u32] { &[] }
    pub fn add_eog_ids(&mut self, _ids: &[u32]) {}
}
pub struct StreamDecoder<'a>(&'a Tokenizer);
impl<'a> StreamDecoder<'a> {
    pub fn new(t: &'a Tokenizer) -> Self { StreamDecoder(t) }
    pub fn push(&mut self, _id: u32) -> String { String::new() }
    pub fn finish(&mut self) -> String { String::new() }
}
