//! Model spec strings — the MODEL argument of every command — and what they name:
//!
//! * an alias: `smollm2-135m`
//! * a local file or folder: `./model.gguf`, `/models/SmolLM2-135M-Instruct`
//! * a hub repo as a model folder: `org/name`, `org/name@revision`
//! * one GGUF file of a hub repo: `org/name:file.gguf`, `org/name@revision:file.gguf`
//!
//! An alias wins over a same-named file in the current folder (write `./name` for the file).

use std::path::{Path, PathBuf};

use anyhow::{bail, Result};

use super::alias::Alias;

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Spec<'a> {
    Alias(&'a Alias),
    Local(PathBuf),
    Repo(RepoRef),
}

/// A hub repository at a revision, whole (model folder) or one file of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RepoRef {
    pub repo: String,
    pub revision: String,
    pub file: Option<String>,
}

pub(crate) const MAIN: &str = "main";

impl RepoRef {
    /// The canonical spec (`org/name@rev:file`), as listed by `smelt list`.
    pub fn name(&self) -> String {
        let mut s = self.repo.clone();
        if self.revision != MAIN {
            s = format!("{s}@{}", self.revision);
        }
        match &self.file {
            Some(f) => format!("{s}:{f}"),
            None => s,
        }
    }

    /// The cache folder: `org--name[@rev][--file]`, with `/` turned into `--`.
    pub fn entry(&self) -> String {
        let mut s = self.repo.replace('/', "--");
        if self.revision != MAIN {
            s = format!("{s}@{}", self.revision.replace('/', "--"));
        }
        match &self.file {
            Some(f) => format!("{s}--{}", f.replace('/', "--")),
            None => s,
        }
    }
}

pub(crate) fn parse<'a>(spec: &str, aliases: &'a [Alias]) -> Result<Spec<'a>> {
    let spec = spec.trim();
    if spec.is_empty() {
        bail!("empty model name");
    }
    if let Some(a) = aliases.iter().find(|a| a.name == spec) {
        return Ok(Spec::Alias(a));
    }
    let path = Path::new(spec);
    if path.exists() {
        return Ok(Spec::Local(path.to_path_buf()));
    }
    if looks_like_path(spec) {
        bail!("no such file or folder: {spec}");
    }
    if spec.contains('/') {
        return parse_repo(spec).map(Spec::Repo);
    }
    let names: Vec<_> = aliases.iter().map(|a| a.name.as_str()).collect();
    bail!("unknown model '{spec}': not a file, a folder, an alias ({}) or a hub repo (org/name)", names.join(", "))
}

fn looks_like_path(spec: &str) -> bool {
    let repo_part = spec.split(':').next().unwrap_or(spec);
    spec.starts_with(['/', '.', '~', '\\'])
        || (!spec.contains(':') && spec.ends_with(".gguf"))
        || repo_part.matches('/').count() > 1
}

/// `org/name[@revision][:file]`.
pub(crate) fn parse_repo(spec: &str) -> Result<RepoRef> {
    let (repo_rev, file) = match spec.split_once(':') {
        Some((r, f)) => (r, Some(f)),
        None => (spec, None),
    };
    let (repo, revision) = match repo_rev.split_once('@') {
        Some((r, rev)) => (r, rev),
        None => (repo_rev, MAIN),
    };
    check_repo_id(repo, spec)?;
    if revision.is_empty()
        || !revision.chars().all(|c| c.is_ascii_alphanumeric() || "-_./".contains(c))
        || has_dot_segment(revision)
    {
        bail!("bad revision '{revision}' in '{spec}'");
    }
    if let Some(f) = file {
        let bad = f.is_empty() || f.starts_with('/') || f.contains('\\') || has_dot_segment(f);
        if bad || !f.ends_with(".gguf") {
            bail!("bad file '{f}' in '{spec}': expected org/name:file.gguf");
        }
    }
    Ok(RepoRef { repo: repo.into(), revision: revision.into(), file: file.map(str::to_string) })
}

fn check_repo_id(repo: &str, spec: &str) -> Result<()> {
    let ok_part = |p: &str| {
        !p.is_empty()
            && p.len() <= 96
            && p.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
            && !p.starts_with(['-', '.'])
            && !p.ends_with(['-', '.'])
            && !p.contains("--")
            && !p.contains("..")
    };
    match repo.split_once('/') {
        Some((org, name)) if ok_part(org) && ok_part(name) => Ok(()),
        _ => bail!("bad hub repo '{repo}' in '{spec}': expected org/name"),
    }
}

fn has_dot_segment(s: &str) -> bool {
    s.split('/').any(|seg| seg.is_empty() || seg == "." || seg == "..")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hub::alias::aliases;

    fn repo(spec: &str) -> RepoRef {
        parse_repo(spec).unwrap()
    }

    #[test]
    fn repo_specs() {
        let r = repo("org/name");
        assert_eq!((r.repo.as_str(), r.revision.as_str(), r.file.as_deref()), ("org/name", "main", None));
        assert_eq!(r.entry(), "org--name");
        let r = repo("Org/My.Model-1@refs/pr/3:sub/m.Q4_0.gguf");
        assert_eq!(r.revision, "refs/pr/3");
        assert_eq!(r.file.as_deref(), Some("sub/m.Q4_0.gguf"));
        assert_eq!(r.name(), "Org/My.Model-1@refs/pr/3:sub/m.Q4_0.gguf");
        assert_eq!(r.entry(), "Org--My.Model-1@refs--pr--3--sub--m.Q4_0.gguf");
    }

    #[test]
    fn bad_specs_are_rejected() {
        for bad in ["org/", "/name", "org/na me", "org/x@", "org/x:../a.gguf", "org/x:a.bin", "org/x@a/../b", "o--r/x"]
        {
            assert!(parse_repo(bad).is_err(), "{bad} should be rejected");
        }
        let err = parse("no-such-model", aliases()).unwrap_err().to_string();
        assert!(err.contains("unknown model") && err.contains("smollm2-135m"), "{err}");
        let err = parse("./missing/model.gguf", aliases()).unwrap_err().to_string();
        assert!(err.contains("no such file"), "{err}");
        assert!(parse("missing.gguf", aliases()).unwrap_err().to_string().contains("no such file"));
        assert!(parse("a/b/c", aliases()).unwrap_err().to_string().contains("no such file"));
    }

    #[test]
    fn aliases_and_paths() {
        assert!(matches!(parse("smollm2-135m", aliases()).unwrap(), Spec::Alias(a) if a.name == "smollm2-135m"));
        let here = env!("CARGO_MANIFEST_DIR");
        assert_eq!(parse(here, aliases()).unwrap(), Spec::Local(PathBuf::from(here)));
        assert!(matches!(parse("org/name", aliases()).unwrap(), Spec::Repo(_)));
    }
}
