//! HTTP downloads from a Hugging Face-style hub: resumable (`.part` file + `Range`), retried with
//! backoff, checksum-verified, and moved into place atomically only once verified.
//!
//! Redirects are followed by hand: the hub answers a file request with a redirect to its CDN and
//! puts the file's sha256 in `X-Linked-Etag` on that redirect, which an automatic redirect would
//! hide. The token is only sent to the hub's own host, never to the CDN.

use std::fs::{File, OpenOptions};
use std::io::{self, IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use sha2::{Digest, Sha256};
use ureq::http::Response;
use ureq::{Agent, Body};

use super::alias::is_sha256;
use super::url::{join_url, origin};
use crate::util::human_bytes;

/// What to download and what it must turn out to be.
pub(crate) struct Want<'a> {
    pub url: String,
    pub dest: &'a Path,
    /// Known checksum (pinned, or from a listing); otherwise the hub's ETag is used when it is one.
    pub sha256: Option<String>,
    pub size: Option<u64>,
    /// "repo/file", for messages.
    pub label: String,
}

/// A verified file now at `Want::dest`.
#[derive(Debug, Clone)]
pub(crate) struct Got {
    pub size: u64,
    pub sha256: String,
}

/// Why one attempt failed: retry (connection cut, 5xx), give up (404, bad checksum), or the host
/// could not be reached at all (final unless this download reached it before: then a blip).
enum Failure {
    Retry(anyhow::Error),
    Fatal(anyhow::Error),
    Unreached(anyhow::Error),
}

impl<E: Into<anyhow::Error>> From<E> for Failure {
    fn from(e: E) -> Self {
        Failure::Fatal(e.into())
    }
}

/// A response at the end of a redirect chain, with the checksum hints gathered on the way.
struct Reply {
    resp: Response<Body>,
    sha256: Option<String>,
}

pub(crate) struct Http {
    agent: Agent,
    pub token: Option<String>,
    pub quiet: bool,
    pub retries: u32,
    pub backoff: Duration,
}

impl Http {
    pub fn new(token: Option<String>, quiet: bool) -> Self {
        let config = Agent::config_builder()
            .http_status_as_error(false)
            .max_redirects(0)
            .timeout_resolve(Some(Duration::from_secs(5)))
            .timeout_connect(Some(Duration::from_secs(5)))
            .timeout_recv_response(Some(Duration::from_secs(30)))
            .timeout_per_read(Some(Duration::from_secs(60)))
            .user_agent(concat!("smelt/", env!("CARGO_PKG_VERSION")))
            .build();
        Http { agent: config.new_agent(), token, quiet, retries: 4, backoff: Duration::from_millis(500) }
    }

    /// GET a small JSON document (an API listing), retrying transient failures.
    pub fn get_json(&self, url: &str, what: &str) -> Result<serde_json::Value> {
        let text = self.retrying(what, &ProgressBar::hidden(), |reached| {
            let mut reply = self.get(url, 0)?;
            *reached = true;
            let status = reply.resp.status().as_u16();
            transient(status, what)?;
            check_status(status, what)?;
            let text = reply.resp.body_mut().read_to_string();
            text.map_err(|e| Failure::Retry(anyhow!("reading {url}: {e}")))
        })?;
        serde_json::from_str(&text).with_context(|| format!("{what}: the hub's answer is not JSON"))
    }

    /// Download `want` into place (resuming a `.part` left by an earlier attempt).
    pub fn download(&self, want: &Want) -> Result<Got> {
        let part = part_path(want.dest);
        if let Some(dir) = part.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        }
        let bar = self.progress_bar(want);
        let result = self.download_with_retries(want, &part, &bar);
        bar.finish_and_clear();
        let got = result?;
        File::open(&part)?.sync_all()?;
        std::fs::rename(&part, want.dest).with_context(|| format!("cannot move {} into place", want.dest.display()))?;
        Ok(got)
    }

    fn download_with_retries(&self, want: &Want, part: &Path, bar: &ProgressBar) -> Result<Got> {
        let mut fresh_retry_done = false;
        self.retrying(&want.label, bar, |reached| {
            let (got, expected, resumed) = self.attempt(want, part, bar, reached)?;
            match verify(&got, expected.as_deref(), want, part) {
                Ok(()) => Ok(got),
                // A stale prefix from an earlier run can poison a resumed file: one clean try.
                Err(e) if resumed && !fresh_retry_done => {
                    fresh_retry_done = true;
                    Err(Failure::Retry(e))
                }
                Err(e) => Err(Failure::Fatal(e)),
            }
        })
    }

    /// Run `f` until it succeeds, fails for good, or runs out of retries (exponential backoff).
    /// `f` sets its flag once the server answered: from then on, "unreachable" is a blip.
    fn retrying<T>(
        &self,
        label: &str,
        bar: &ProgressBar,
        mut f: impl FnMut(&mut bool) -> Result<T, Failure>,
    ) -> Result<T> {
        let mut reached = false;
        for attempt in 0.. {
            let err = match f(&mut reached) {
                Ok(v) => return Ok(v),
                Err(Failure::Fatal(e)) => return Err(e),
                Err(Failure::Unreached(e)) if !reached => return Err(e),
                Err(Failure::Retry(e) | Failure::Unreached(e)) if attempt < self.retries => e,
                Err(Failure::Retry(e) | Failure::Unreached(e)) => {
                    return Err(e.context(format!("gave up after {} attempts", attempt + 1)))
                }
            };
            let wait = self.backoff * 2u32.pow(attempt.min(6));
            bar.suspend(|| {
                if !self.quiet {
                    eprintln!("smelt: {label}: {err:#}; retrying in {:.1}s", wait.as_secs_f32())
                }
            });
            std::thread::sleep(wait);
        }
        unreachable!("the retry loop returns")
    }

    /// One request: returns what was written, the expected checksum, and whether it resumed.
    fn attempt(
        &self,
        want: &Want,
        part: &Path,
        bar: &ProgressBar,
        reached: &mut bool,
    ) -> Result<(Got, Option<String>, bool), Failure> {
        let mut have = std::fs::metadata(part).map(|m| m.len()).unwrap_or(0);
        if want.size.is_some_and(|size| have > size) {
            have = truncate(part)?;
        }
        if have > 0 && want.size == Some(have) {
            // Complete but never moved into place (interrupted before the rename).
            let got = Got { size: have, sha256: hex(&hash_prefix(part, have)?.finalize()) };
            return Ok((got, want.sha256.clone(), true));
        }
        let reply = self.get(&want.url, have)?;
        if !*reached && !self.quiet && !io::stderr().is_terminal() {
            // No progress bar: one line, once the hub has answered.
            let size = want.size.map(|s| format!(" ({})", human_bytes(s))).unwrap_or_default();
            eprintln!("smelt: downloading {}{size}", want.label);
        }
        *reached = true;
        let status = reply.resp.status().as_u16();
        let headers = reply.resp.headers();
        let total = match status {
            200 => {
                if have > 0 {
                    have = truncate(part)?; // the server ignored Range: start over
                }
                content_length(headers)
            }
            206 => match content_range(headers) {
                Some((start, total)) if start == have => total,
                _ => {
                    truncate(part)?;
                    return Err(Failure::Retry(anyhow!("server resumed at the wrong offset")));
                }
            },
            416 if have > 0 => {
                truncate(part)?;
                return Err(Failure::Retry(anyhow!("server refused to resume")));
            }
            s => {
                transient(s, &want.label)?;
                check_status(s, &want.label)?;
                return Err(Failure::Fatal(anyhow!("{}: unexpected HTTP status {s}", want.label)));
            }
        };
        let total = total.or(want.size);
        let expected = choose_sha(want, reply.sha256.as_deref())?;
        if let (Some(t), Some(s)) = (total, want.size) {
            if t != s {
                return Err(Failure::Fatal(anyhow!("{}: hub serves {t} bytes, expected {s}", want.label)));
            }
        }
        bar.set_length(total.unwrap_or(0));
        bar.set_position(have);
        let mut hasher = hash_prefix(part, have)?;
        let mut out = OpenOptions::new().create(true).append(true).open(part)?;
        let limit = total.map_or(u64::MAX, |t| t.saturating_sub(have));
        let body = reply.resp.into_body().into_reader().take(limit);
        let n = copy_hashing(body, &mut out, &mut hasher, bar).map_err(|e| Failure::Retry(e.into()))?;
        out.flush()?;
        let size = have + n;
        if total.is_some_and(|t| size < t) {
            return Err(Failure::Retry(anyhow!("connection closed after {size} bytes")));
        }
        let got = Got { size, sha256: hex(&hasher.finalize()) };
        Ok((got, expected, have > 0))
    }

    /// GET `url` (from byte `from`), following redirects by hand.
    fn get(&self, url: &str, from: u64) -> Result<Reply, Failure> {
        let hub_origin = origin(url).to_string();
        let mut url = url.to_string();
        let mut sha256 = None;
        for hop in 0..10 {
            let mut req = self.agent.get(&url).header("Accept-Encoding", "identity");
            if from > 0 {
                req = req.header("Range", format!("bytes={from}-"));
            }
            if let Some(token) = self.token.as_ref().filter(|_| origin(&url) == hub_origin) {
                req = req.header("Authorization", format!("Bearer {token}"));
            }
            let resp = req.call().map_err(|e| classify(e, &url))?;
            sha256 = sha256.or_else(|| linked_sha(&resp, hop == 0));
            if !resp.status().is_redirection() {
                return Ok(Reply { resp, sha256 });
            }
            let location = resp.headers().get("location").and_then(|v| v.to_str().ok());
            let location = location.ok_or_else(|| anyhow!("redirect without a Location from {url}"))?;
            url = join_url(&url, location);
        }
        Err(Failure::Fatal(anyhow!("too many redirects fetching {url}")))
    }

    fn progress_bar(&self, want: &Want) -> ProgressBar {
        if self.quiet {
            return ProgressBar::hidden();
        }
        if !io::stderr().is_terminal() {
            return ProgressBar::hidden();
        }
        let style = ProgressStyle::with_template("{msg} {wide_bar} {bytes}/{total_bytes} {bytes_per_sec} eta {eta}")
            .expect("valid template");
        let bar = ProgressBar::new(want.size.unwrap_or(0)).with_style(style);
        bar.set_message(want.label.clone());
        bar
    }
}

/// Turn a final HTTP status into an error naming the thing and what to do about it.
fn check_status(status: u16, what: &str) -> Result<()> {
    match status {
        200..=299 => Ok(()),
        404 => bail!("not found on the hub: {what} (check the repo, file and revision names)"),
        401 | 403 => bail!("access denied to {what} (HTTP {status}): the repo may be gated or private; set HF_TOKEN to a token that can read it"),
        s => bail!("{what}: the hub answered HTTP {s}"),
    }
}

/// Statuses worth another try (overload, gateway trouble, rate limits).
fn transient(status: u16, what: &str) -> Result<(), Failure> {
    match status {
        408 | 429 | 500 | 502 | 503 | 504 => Err(Failure::Retry(anyhow!("{what}: the hub answered HTTP {status}"))),
        _ => Ok(()),
    }
}

/// The checksum to verify against: the known one, else the hub's when it is a sha256.
fn choose_sha(want: &Want, from_hub: Option<&str>) -> Result<Option<String>, Failure> {
    match (&want.sha256, from_hub) {
        (Some(known), Some(hub)) if known != hub => {
            Err(Failure::Fatal(anyhow!("{}: the hub serves a file with sha256 {hub}, expected {known}", want.label)))
        }
        (Some(known), _) => Ok(Some(known.clone())),
        (None, hub) => Ok(hub.map(str::to_string)),
    }
}

fn verify(got: &Got, expected: Option<&str>, want: &Want, part: &Path) -> Result<()> {
    if let Some(sha) = expected.filter(|sha| *sha != got.sha256) {
        let _ = std::fs::remove_file(part);
        bail!("checksum mismatch for {}: expected sha256 {sha}, got {} — download discarded", want.label, got.sha256);
    }
    if let Some(size) = want.size.filter(|s| *s != got.size) {
        let _ = std::fs::remove_file(part);
        bail!("size mismatch for {}: expected {size} bytes, got {} — download discarded", want.label, got.size);
    }
    Ok(())
}

/// Errors before any response: no route to the host (DNS, refused, connect timeout) is
/// `Unreached` so that a fallback can run at once; a connection lost after it was made is
/// worth a retry; TLS and URL errors will not get better.
fn classify(e: ureq::Error, url: &str) -> Failure {
    use io::ErrorKind as K;
    use ureq::{Error as E, Timeout as T};
    let host = origin(url).to_string();
    match &e {
        E::Tls(_) | E::BadUri(_) | E::Http(_) | E::InvalidProxyUrl => Failure::Fatal(anyhow!("{host}: {e}")),
        E::HostNotFound | E::ConnectionFailed | E::Timeout(T::Resolve | T::Connect) => {
            Failure::Unreached(anyhow!("cannot reach {url}: {e}"))
        }
        E::Io(io)
            if !matches!(
                io.kind(),
                K::ConnectionReset | K::ConnectionAborted | K::BrokenPipe | K::UnexpectedEof | K::TimedOut
            ) =>
        {
            Failure::Unreached(anyhow!("cannot reach {url}: {e}"))
        }
        _ => Failure::Retry(anyhow!("{host}: {e}")),
    }
}

/// `X-Linked-Etag` (LFS files, on the hub's redirect) or the hub's own `ETag`, when a sha256.
fn linked_sha(resp: &Response<Body>, first_hop: bool) -> Option<String> {
    let h = resp.headers();
    let pick = |name: &str| h.get(name).and_then(|v| v.to_str().ok()).map(parse_etag);
    pick("x-linked-etag").or_else(|| if first_hop { pick("etag") } else { None }).filter(|s| is_sha256(s))
}

/// `W/"abc"` → `abc`, lowercased.
pub(crate) fn parse_etag(raw: &str) -> String {
    raw.trim().trim_start_matches("W/").trim_matches('"').to_ascii_lowercase()
}

fn content_length(h: &ureq::http::HeaderMap) -> Option<u64> {
    h.get("content-length")?.to_str().ok()?.trim().parse().ok()
}

/// `Content-Range: bytes START-END/TOTAL` → (START, TOTAL if known).
pub(crate) fn parse_content_range(v: &str) -> Option<(u64, Option<u64>)> {
    let rest = v.trim().strip_prefix("bytes ")?;
    let (range, total) = rest.split_once('/')?;
    let (start, _end) = range.split_once('-')?;
    Some((start.trim().parse().ok()?, total.trim().parse().ok()))
}

fn content_range(h: &ureq::http::HeaderMap) -> Option<(u64, Option<u64>)> {
    parse_content_range(h.get("content-range")?.to_str().ok()?)
}

pub(crate) fn part_path(dest: &Path) -> PathBuf {
    let name = dest.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    dest.with_file_name(format!("{name}.part"))
}

/// Empty the partial file; returns the new length (0).
fn truncate(part: &Path) -> io::Result<u64> {
    File::create(part).map(|_| 0)
}

/// A hasher primed with the first `len` bytes already in `part`.
fn hash_prefix(part: &Path, len: u64) -> io::Result<Sha256> {
    let mut hasher = Sha256::new();
    if len > 0 {
        let mut f = File::open(part)?.take(len);
        io::copy(&mut f, &mut hasher)?;
    }
    Ok(hasher)
}

/// Copy `src` to `dst`, feeding the hasher and the progress bar; returns bytes copied.
pub(crate) fn copy_hashing(
    mut src: impl Read,
    dst: &mut impl Write,
    hasher: &mut Sha256,
    bar: &ProgressBar,
) -> io::Result<u64> {
    let mut buf = vec![0u8; 1 << 16];
    let mut total = 0u64;
    loop {
        let n = match src.read(&mut buf) {
            Ok(0) => return Ok(total),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        dst.write_all(&buf[..n])?;
        hasher.update(&buf[..n]);
        total += n as u64;
        bar.inc(n as u64);
    }
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_parsing() {
        assert_eq!(parse_etag("W/\"ABCd\""), "abcd");
        assert_eq!(parse_content_range("bytes 100-199/200"), Some((100, Some(200))));
        assert_eq!(parse_content_range("bytes 5-9/*"), Some((5, None)));
        assert_eq!(parse_content_range("items 1-2/3"), None);
    }

    #[test]
    fn statuses_name_the_cause() {
        assert!(check_status(404, "org/x/f").unwrap_err().to_string().contains("not found"));
        assert!(check_status(401, "org/x/f").unwrap_err().to_string().contains("HF_TOKEN"));
        assert!(check_status(403, "org/x/f").unwrap_err().to_string().contains("HF_TOKEN"));
        assert!(check_status(204, "x").is_ok());
    }
}
