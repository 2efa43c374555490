//! The model cache on disk:
//!
//! ```text
//! $SMELT_HOME/models/<entry>/smelt-manifest.json   what this entry is, where it came from, checksums
//! $SMELT_HOME/models/<entry>/<files>               the GGUF file, or a Hugging Face model folder
//! $SMELT_HOME/tmp/                                 scratch space (pip downloads), same filesystem
//! ```
//!
//! `<entry>` is the alias name (`smollm2-135m`) or `org--name[@rev][--file]` for hub repos.
//! Files are moved into an entry only once verified, and the manifest is written last: an entry
//! without a manifest is an interrupted download, never used as a model.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::download::hex;
use super::ModelKind;
use crate::util::write_atomic;

pub(crate) const MANIFEST: &str = "smelt-manifest.json";

/// What the cache knows about one entry.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) struct Manifest {
    /// The spec that names it (`smollm2-135m`, `org/name`, `org/name:file.gguf`).
    pub name: String,
    pub kind: ModelKind,
    /// Where it came from (`hub:org/name@rev`, `pip:pkg==ver`).
    pub source: String,
    /// The GGUF file, relative to the entry folder (`"."` for a model folder).
    pub entry: String,
    pub fetched_at: String,
    pub files: Vec<FileRecord>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) struct FileRecord {
    pub name: String,
    pub size: u64,
    pub sha256: String,
}

/// One model in the cache, for `smelt list`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CachedModel {
    /// The spec that names it; pass it to `resolve` or `remove`.
    pub name: String,
    pub kind: ModelKind,
    /// The GGUF file or the model folder.
    pub path: PathBuf,
    /// Everything in the entry's folder, partial downloads included.
    pub size_on_disk: u64,
    pub source: String,
    pub fetched_at: String,
    /// False for an interrupted download (no manifest yet): `remove` it or fetch it again.
    pub complete: bool,
}

pub(crate) struct Cache {
    root: PathBuf,
}

impl Cache {
    pub fn new(root: PathBuf) -> Self {
        Cache { root }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn models_dir(&self) -> PathBuf {
        self.root.join("models")
    }

    pub fn entry_dir(&self, entry: &str) -> PathBuf {
        self.models_dir().join(entry)
    }

    pub fn tmp_dir(&self) -> PathBuf {
        self.root.join("tmp")
    }

    /// The manifest of an entry, if it has a readable one.
    pub fn manifest(&self, dir: &Path) -> Option<Manifest> {
        let text = std::fs::read_to_string(dir.join(MANIFEST)).ok()?;
        serde_json::from_str(&text).ok()
    }

    pub fn write_manifest(&self, dir: &Path, m: &Manifest) -> Result<()> {
        let json = serde_json::to_string_pretty(m)?;
        write_atomic(&dir.join(MANIFEST), format!("{json}\n").as_bytes())
    }

    /// Forget an entry's manifest before repairing it, so a crash midway leaves it incomplete.
    pub fn invalidate(&self, dir: &Path) -> Result<()> {
        match std::fs::remove_file(dir.join(MANIFEST)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e).context("cannot reset the cache manifest"),
            _ => Ok(()),
        }
    }

    /// Files of `m` that are missing or differ from the record: by size, or also by sha256
    /// when `deep` (slow: reads everything).
    pub fn damaged(&self, dir: &Path, m: &Manifest, deep: bool) -> Vec<String> {
        let ok = |f: &FileRecord| {
            let path = dir.join(&f.name);
            let size_ok = std::fs::metadata(&path).is_ok_and(|md| md.is_file() && md.len() == f.size);
            size_ok && (!deep || sha256_file(&path).is_ok_and(|sha| sha == f.sha256))
        };
        m.files.iter().filter(|f| !ok(f)).map(|f| f.name.clone()).collect()
    }

    pub fn list(&self) -> Result<Vec<CachedModel>> {
        let dir = self.models_dir();
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", dir.display())),
        };
        let mut out = Vec::new();
        for entry in entries {
            let path = entry?.path();
            if path.is_dir() {
                out.push(self.describe(&path));
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    fn describe(&self, dir: &Path) -> CachedModel {
        let size_on_disk = dir_size(dir);
        let folder = dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        match self.manifest(dir) {
            Some(m) => CachedModel {
                path: m.kind.path_in(dir, &m.entry),
                name: m.name,
                kind: m.kind,
                size_on_disk,
                source: m.source,
                fetched_at: m.fetched_at,
                complete: true,
            },
            None => CachedModel {
                name: folder,
                kind: ModelKind::Unknown,
                path: dir.to_path_buf(),
                size_on_disk,
                source: "interrupted download".into(),
                fetched_at: String::new(),
                complete: false,
            },
        }
    }

    /// Delete the entry named `name` (its spec, or its folder name); returns bytes freed.
    pub fn remove(&self, name: &str) -> Result<u64> {
        let found =
            self.list()?.into_iter().find(|m| m.name == name || folder_name(&m.path, &self.models_dir()) == name);
        let Some(model) = found else {
            bail!("no cached model named '{name}' (see `smelt list`)");
        };
        let dir = self.models_dir().join(folder_name(&model.path, &self.models_dir()));
        std::fs::remove_dir_all(&dir).with_context(|| format!("cannot remove {}", dir.display()))?;
        Ok(model.size_on_disk)
    }
}

impl ModelKind {
    pub(crate) fn path_in(self, dir: &Path, entry: &str) -> PathBuf {
        match self {
            ModelKind::Gguf => dir.join(entry),
            _ => dir.to_path_buf(),
        }
    }
}

/// The entry folder (first component under `models/`) that holds `path`.
fn folder_name(path: &Path, models: &Path) -> String {
    let rel = path.strip_prefix(models).unwrap_or(path);
    rel.components().next().map(|c| c.as_os_str().to_string_lossy().into_owned()).unwrap_or_default()
}

fn dir_size(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(md) if md.is_dir() => dir_size(&e.path()),
            Ok(md) => md.len(),
            Err(_) => 0,
        })
        .sum()
}

pub(crate) fn sha256_file(path: &Path) -> io::Result<String> {
    let mut hasher = Sha256::new();
    io::copy(&mut File::open(path)?, &mut hasher)?;
    Ok(hex(&hasher.finalize()))
}

/// The current time as RFC 3339 UTC (`2025-01-31T12:00:00Z`).
pub(crate) fn now_rfc3339() -> String {
    let secs = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    rfc3339(secs)
}

fn rfc3339(secs: u64) -> String {
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days as i64);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z", rem / 3600, rem / 60 % 60, rem % 60)
}

/// Days since 1970-01-01 → (year, month, day) in the proleptic Gregorian calendar
/// (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_735_689_599), "2024-12-31T23:59:59Z");
        assert_eq!(rfc3339(4_107_542_400), "2100-03-01T00:00:00Z");
    }
}
