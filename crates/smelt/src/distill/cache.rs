//! The teacher's top-k cache: one teacher pass over the training windows serves every
//! epoch. For aligned window `i` (tokens `i·seq ..= (i+1)·seq` of the training split) and
//! each of its `seq` positions: `k` token ids (u32), their probabilities at the distillation
//! temperature (f32), and the remaining mass (f32), little-endian.
//!
//! `OUT/teacher-topk/meta.json` says what the cache was built from (teacher vocabulary and
//! file, data, window size, k, T); windows are grouped into `part-NNNNN.bin` files, each
//! written atomically, so an interrupted teacher pass resumes at the first missing part.
//! A cache built from anything else is rebuilt (a different window count keeps the parts
//! that still fit).

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use memmap2::Mmap;
use serde::{Deserialize, Serialize};

use super::teacher::topk_targets;
use crate::data::TokenSplit;
use crate::model::Decoder;
use crate::train::kd_loss::TopK;
use crate::util::write_atomic;

pub const FORMAT: &str = "smelt-teacher-topk-1";
/// Windows per part file.
pub const WINDOWS_PER_PART: usize = 64;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CacheMeta {
    pub format: String,
    /// The teacher: its file name and size, and its vocabulary hash.
    pub teacher: String,
    pub teacher_bytes: u64,
    pub vocab_sha256: String,
    /// The data: tokenizer file hash and training tokens.
    pub data_tokenizer_sha256: String,
    pub train_tokens: u64,
    pub seq: usize,
    pub k: usize,
    pub temperature: f32,
    pub windows: u64,
}

impl CacheMeta {
    fn record_bytes(&self) -> usize {
        self.k * 8 + 4
    }

    fn part_windows(&self, part: usize) -> usize {
        let start = part * WINDOWS_PER_PART;
        WINDOWS_PER_PART.min(self.windows as usize - start)
    }

    fn parts(&self) -> usize {
        (self.windows as usize).div_ceil(WINDOWS_PER_PART)
    }
}

pub struct TopKCache {
    pub meta: CacheMeta,
    maps: Vec<Mmap>,
}

fn part_path(dir: &Path, i: usize) -> PathBuf {
    dir.join(format!("part-{i:05}.bin"))
}

/// Serialise top-k rows (ids, probs, tail per position).
pub fn encode_rows(t: &TopK) -> Vec<u8> {
    let n = t.tail.len();
    let mut out = Vec::with_capacity(n * (8 * t.k + 4));
    for r in 0..n {
        for &id in &t.ids[r * t.k..(r + 1) * t.k] {
            out.extend_from_slice(&id.to_le_bytes());
        }
        for &p in &t.probs[r * t.k..(r + 1) * t.k] {
            out.extend_from_slice(&p.to_le_bytes());
        }
        out.extend_from_slice(&t.tail[r].to_le_bytes());
    }
    out
}

/// Append the rows in `bytes` (whole records of `k`) to `t`.
pub fn decode_rows(bytes: &[u8], k: usize, t: &mut TopK) {
    let u = |b: &[u8]| u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
    for rec in bytes.chunks_exact(8 * k + 4) {
        t.ids.extend(rec[..4 * k].chunks_exact(4).map(u));
        t.probs.extend(rec[4 * k..8 * k].chunks_exact(4).map(|b| f32::from_bits(u(b))));
        t.tail.push(f32::from_bits(u(&rec[8 * k..])));
    }
}

impl TopKCache {
    /// Open the cache in `dir` if it matches `meta`, building (or finishing) it first with
    /// the teacher; `batch` windows per teacher pass.
    pub fn build_or_open(dir: &Path, meta: CacheMeta, teacher: &Decoder, split: &TokenSplit, batch: usize, progress: bool) -> Result<TopKCache> {
        let meta_path = dir.join("meta.json");
        if meta_path.is_file() {
            let old: Option<CacheMeta> = std::fs::read_to_string(&meta_path).ok().and_then(|t| serde_json::from_str(&t).ok());
            // The window count may change: parts are per window and checked one by one.
            let same = old.is_some_and(|o| CacheMeta { windows: 0, ..o } == CacheMeta { windows: 0, ..meta.clone() });
            if !same {
                eprintln!("the teacher cache in {} was built from other settings; rebuilding it", dir.display());
                std::fs::remove_dir_all(dir).with_context(|| format!("cannot clear {}", dir.display()))?;
            }
        }
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        write_atomic(&meta_path, serde_json::to_string_pretty(&meta)?.as_bytes())?;
        let rec = meta.record_bytes() * meta.seq;
        let missing: Vec<usize> = (0..meta.parts())
            .filter(|&p| std::fs::metadata(part_path(dir, p)).map(|m| m.len() as usize != meta.part_windows(p) * rec).unwrap_or(true))
            .collect();
        if !missing.is_empty() {
            let todo: u64 = missing.iter().map(|&p| meta.part_windows(p) as u64).sum();
            let pb = ProgressBar::with_draw_target(Some(todo), if progress { ProgressDrawTarget::stderr() } else { ProgressDrawTarget::hidden() });
            pb.set_style(
                ProgressStyle::with_template("teacher pass {elapsed_precise} [{bar:30.cyan/blue}] window {pos}/{len} {per_sec} ETA {eta_precise}")
                    .expect("valid template")
                    .progress_chars("=> "),
            );
            for &p in &missing {
                let first = p * WINDOWS_PER_PART;
                let windows: Vec<Vec<u32>> = (first..first + meta.part_windows(p)).map(|w| split.window((w * meta.seq) as u64, meta.seq + 1)).collect();
                let mut bytes = Vec::with_capacity(windows.len() * rec);
                for chunk in windows.chunks(batch.max(1)) {
                    let inputs: Vec<&[u32]> = chunk.iter().map(|w| &w[..meta.seq]).collect();
                    bytes.extend(encode_rows(&topk_targets(teacher, &inputs, meta.k, meta.temperature)?));
                    pb.inc(chunk.len() as u64);
                }
                write_atomic(&part_path(dir, p), &bytes)?;
            }
            pb.finish_and_clear();
        }
        Self::open(dir, &meta)
    }

    /// Map a complete cache described by `meta`.
    pub fn open(dir: &Path, meta: &CacheMeta) -> Result<TopKCache> {
        let rec = meta.record_bytes() * meta.seq;
        let mut maps = Vec::new();
        for p in 0..meta.parts() {
            let path = part_path(dir, p);
            let f = std::fs::File::open(&path).with_context(|| format!("cannot open {}", path.display()))?;
            // SAFETY: read-only map of a file written atomically and not modified while training.
            let m = unsafe { Mmap::map(&f) }.with_context(|| format!("cannot map {}", path.display()))?;
            if m.len() != meta.part_windows(p) * rec {
                bail!("{}: {} bytes, expected {} (delete the folder to rebuild the cache)", path.display(), m.len(), meta.part_windows(p) * rec);
            }
            maps.push(m);
        }
        Ok(TopKCache { meta: meta.clone(), maps })
    }

    /// Top-k targets for the windows starting at `starts` (multiples of `seq`), rows in order.
    pub fn targets(&self, starts: &[u64]) -> Result<TopK> {
        let m = &self.meta;
        let rec = m.record_bytes() * m.seq;
        let mut t = TopK { k: m.k, ..Default::default() };
        for &s in starts {
            let w = (s / m.seq as u64) as usize;
            if s % m.seq as u64 != 0 || w as u64 >= m.windows {
                bail!("teacher cache: no window starts at token {s}");
            }
            let (p, i) = (w / WINDOWS_PER_PART, w % WINDOWS_PER_PART);
            decode_rows(&self.maps[p][i * rec..(i + 1) * rec], m.k, &mut t);
        }
        Ok(t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_roundtrip() {
        let t = TopK { k: 2, ids: vec![3, 1, 0, 7], probs: vec![0.5, 0.25, 0.9, 1e-9], tail: vec![0.25, 0.1] };
        let mut back = TopK { k: 2, ..Default::default() };
        decode_rows(&encode_rows(&t), 2, &mut back);
        assert_eq!(back, t);
    }
}
