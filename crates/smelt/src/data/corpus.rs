//! Reading a text corpus: files (or folders of them) → UTF-8 documents, with the held-out
//! split cut from the end of each file and exact duplicates found by content hash.
//!
//! * `.txt`/`.md`/other files: UTF-8 text; one document per file, or split on a separator
//!   (`--doc-separator`, e.g. `<|endoftext|>` for TinyStories-style files). A UTF-8 BOM is
//!   dropped and CRLF line ends become LF.
//! * `.jsonl`: one JSON object per line with a string field `text`.
//!
//! The held-out part of a text file is its last `val_fraction` of bytes, cut at a line
//! break; of a `.jsonl` file, its last `val_fraction` of documents.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};

#[derive(Debug, Clone, Default)]
pub struct CorpusOptions {
    /// Split text files into documents on this string (None: a file is one document).
    pub doc_separator: Option<String>,
    /// Fraction of each file held out for evaluation (0 = none).
    pub val_fraction: f64,
}

#[derive(Debug, Clone)]
pub struct Document {
    /// Index into [`Corpus::files`].
    pub file: usize,
    pub text: String,
    pub held_out: bool,
}

#[derive(Debug, Clone, Default)]
pub struct Corpus {
    pub files: Vec<PathBuf>,
    pub docs: Vec<Document>,
}

/// Expand folders (their `.txt`, `.md`, `.jsonl` files, sorted) and check every path exists.
pub fn expand_inputs(inputs: &[PathBuf]) -> Result<Vec<PathBuf>> {
    if inputs.is_empty() {
        bail!("no input files given (--input FILE...)");
    }
    let mut out = Vec::new();
    for p in inputs {
        if p.is_dir() {
            let mut found: Vec<PathBuf> = std::fs::read_dir(p)
                .with_context(|| format!("cannot list {}", p.display()))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|f| f.is_file() && f.extension().is_some_and(|e| e == "txt" || e == "md" || e == "jsonl"))
                .collect();
            if found.is_empty() {
                bail!("{}: no .txt, .md or .jsonl files in this folder", p.display());
            }
            found.sort();
            out.extend(found);
        } else if p.is_file() {
            out.push(p.clone());
        } else {
            bail!("{}: no such file or folder", p.display());
        }
    }
    Ok(out)
}

/// The file's bytes as UTF-8 text, or a one-line error naming the first bad byte.
pub fn read_utf8(path: &Path) -> Result<String> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let text = match String::from_utf8(bytes) {
        Ok(t) => t,
        Err(e) => {
            let at = e.utf8_error().valid_up_to();
            let bytes = e.into_bytes();
            let line = bytes[..at].iter().filter(|&&b| b == b'\n').count() + 1;
            bail!(
                "{}: not valid UTF-8 (byte 0x{:02x} at offset {at}, line {line}); convert the file first, e.g. iconv -f latin1 -t utf-8",
                path.display(),
                bytes[at]
            );
        }
    };
    let text = text.strip_prefix('\u{feff}').map(str::to_string).unwrap_or(text);
    Ok(if text.contains('\r') { text.replace("\r\n", "\n") } else { text })
}

/// Byte offset where the held-out tail of `text` starts: after the line break nearest
/// to `(1 - fraction) * len` (searching forward, then backward), or `len` when nothing is held out.
pub fn held_out_start(text: &str, fraction: f64) -> usize {
    if fraction <= 0.0 || text.is_empty() {
        return text.len();
    }
    let target = ((1.0 - fraction) * text.len() as f64).floor() as usize;
    let target = target.min(text.len());
    let bytes = text.as_bytes();
    if let Some(i) = bytes[target..].iter().position(|&b| b == b'\n') {
        let cut = target + i + 1;
        if cut < text.len() {
            return cut;
        }
    }
    match bytes[..target].iter().rposition(|&b| b == b'\n') {
        Some(i) => i + 1,
        None => text.len(),
    }
}

fn split_docs<'a>(text: &'a str, sep: Option<&str>) -> Vec<&'a str> {
    let parts: Vec<&str> = match sep {
        Some(s) if !s.is_empty() => text.split(s).collect(),
        _ => vec![text],
    };
    parts.into_iter().filter(|d| !d.trim().is_empty()).collect()
}

fn jsonl_docs(path: &Path, text: &str) -> Result<Vec<String>> {
    let mut docs = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let v: serde_json::Value = serde_json::from_str(line)
            .with_context(|| format!("{}:{}: not a JSON object", path.display(), i + 1))?;
        let t = v
            .get("text")
            .and_then(|t| t.as_str())
            .with_context(|| format!("{}:{}: no string field \"text\"", path.display(), i + 1))?;
        if !t.trim().is_empty() {
            docs.push(t.to_string());
        }
    }
    Ok(docs)
}

impl Corpus {
    pub fn read(inputs: &[PathBuf], opts: &CorpusOptions) -> Result<Corpus> {
        if !(0.0..1.0).contains(&opts.val_fraction) {
            bail!("--val-fraction must be in [0, 1), got {}", opts.val_fraction);
        }
        let files = expand_inputs(inputs)?;
        let mut docs = Vec::new();
        for (fi, path) in files.iter().enumerate() {
            let text = read_utf8(path)?;
            let is_jsonl = path.extension().is_some_and(|e| e == "jsonl");
            if is_jsonl {
                let all = jsonl_docs(path, &text)?;
                let n_val = (all.len() as f64 * opts.val_fraction).round() as usize;
                let n_train = all.len() - n_val;
                for (i, t) in all.into_iter().enumerate() {
                    docs.push(Document { file: fi, text: t, held_out: i >= n_train });
                }
            } else {
                let cut = held_out_start(&text, opts.val_fraction);
                let (train, val) = text.split_at(cut);
                for (part, held_out) in [(train, false), (val, true)] {
                    for d in split_docs(part, opts.doc_separator.as_deref()) {
                        docs.push(Document { file: fi, text: d.to_string(), held_out });
                    }
                }
            }
        }
        if docs.is_empty() {
            let names: Vec<String> = files.iter().map(|f| f.display().to_string()).collect();
            bail!("the corpus is empty: {} contain no text", names.join(", "));
        }
        Ok(Corpus { files, docs })
    }

    pub fn len(&self) -> usize {
        self.docs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.docs.is_empty()
    }

    pub fn total_bytes(&self) -> usize {
        self.docs.iter().map(|d| d.text.len()).sum()
    }

    /// Every document's text, training and held-out alike.
    pub fn documents(&self) -> impl Iterator<Item = &str> {
        self.docs.iter().map(|d| d.text.as_str())
    }

    /// Drop exact duplicates (same bytes), keeping the first training copy: training
    /// documents are considered before held-out ones, so a held-out document that also
    /// appears in training is dropped (no leakage). Returns how many were dropped.
    pub fn dedup(&mut self) -> usize {
        let mut seen = HashSet::new();
        let mut keep = vec![true; self.docs.len()];
        let order = (0..self.docs.len()).filter(|&i| !self.docs[i].held_out).chain((0..self.docs.len()).filter(|&i| self.docs[i].held_out));
        for i in order {
            let digest: [u8; 32] = Sha256::digest(self.docs[i].text.as_bytes()).into();
            keep[i] = seen.insert(digest);
        }
        let before = self.docs.len();
        let mut it = keep.into_iter();
        self.docs.retain(|_| it.next().unwrap());
        before - self.docs.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn held_out_cut_at_line_break() {
        let text = "line one\nline two\nline three\nline four\n";
        let cut = held_out_start(text, 0.25);
        assert!(text[..cut].ends_with('\n'));
        assert_eq!(&text[cut..], "line four\n");
        assert_eq!(held_out_start(text, 0.0), text.len());
        // No line break after the target: cut at the previous one.
        assert_eq!(held_out_start("aaaa\nbbbbbbbbbbbbbbbbbbbbb", 0.1), 5);
        assert_eq!(held_out_start("no newline at all", 0.5), 17);
    }

    #[test]
    fn dedup_prefers_training_copy() {
        let mut c = Corpus {
            files: vec![],
            docs: vec![
                Document { file: 0, text: "b".into(), held_out: true },
                Document { file: 0, text: "a".into(), held_out: false },
                Document { file: 0, text: "b".into(), held_out: false },
                Document { file: 0, text: "a".into(), held_out: false },
            ],
        };
        assert_eq!(c.dedup(), 2);
        let left: Vec<(&str, bool)> = c.docs.iter().map(|d| (d.text.as_str(), d.held_out)).collect();
        assert_eq!(left, [("a", false), ("b", false)]);
    }

    #[test]
    fn separators_and_blank_docs() {
        assert_eq!(split_docs("a<|e|>\n<|e|>b", Some("<|e|>")), ["a", "b"]);
        assert_eq!(split_docs("  \n", None).len(), 0);
    }
}
