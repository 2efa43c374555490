//! A tiny Hugging Face hub look-alike on 127.0.0.1 for the hub tests (std only, one thread per
//! connection, `Connection: close`). Two listeners share one state: the hub itself and a "CDN"
//! on another port that LFS files redirect to, as on the real hub.
//!
//! * `GET /api/models/{repo}/revision/{rev}` → JSON listing (`sha`, `siblings[]`)
//! * `GET /{repo}/resolve/{rev}/{file}` → the file (`X-Linked-Etag` = sha256 for LFS files, which
//!   are answered with a 302 to the CDN), `Range: bytes=N-` honoured
//! * one-shot cuts (send N body bytes then drop the connection), ignored `Range`, forced statuses,
//!   repos that need a token; every request is logged with its headers.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};

use sha2::{Digest, Sha256};

pub fn sha256_hex(data: &[u8]) -> String {
    Sha256::digest(data).iter().map(|b| format!("{b:02x}")).collect()
}

#[derive(Clone, Debug)]
pub struct Request {
    /// "hub" or "cdn".
    pub server: &'static str,
    pub path: String,
    pub headers: HashMap<String, String>,
}

impl Request {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(String::as_str)
    }
}

#[derive(Clone, Default)]
pub struct FileOpts {
    /// Stored with Git LFS: sha256 in `X-Linked-Etag`, served through a redirect to the CDN.
    pub lfs: bool,
    /// Announce this sha256 instead of the real one (a corrupted upload).
    pub fake_sha: Option<String>,
}

#[derive(Default)]
struct State {
    /// "org/name/resolve/rev/file" → (data, options)
    files: HashMap<String, (Vec<u8>, FileOpts)>,
    /// "org/name/revision/rev" → JSON
    listings: HashMap<String, String>,
    /// sha256 → data, for the CDN
    blobs: HashMap<String, Vec<u8>>,
    /// path → bytes of body to send before dropping the connection (one shot)
    cuts: HashMap<String, usize>,
    /// path suffix → status to answer once instead of the file
    failures: HashMap<String, u16>,
    ignore_range: bool,
    /// repos that answer 401 without `Authorization: Bearer {token}`
    gated: HashMap<String, String>,
    requests: Vec<Request>,
}

pub struct FakeHub {
    pub url: String,
    #[allow(dead_code)]
    pub cdn_url: String,
    state: Arc<Mutex<State>>,
}

impl FakeHub {
    pub fn start() -> FakeHub {
        let state = Arc::new(Mutex::new(State::default()));
        let hub = TcpListener::bind("127.0.0.1:0").unwrap();
        let cdn = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", hub.local_addr().unwrap());
        let cdn_url = format!("http://{}", cdn.local_addr().unwrap());
        serve(hub, "hub", state.clone(), cdn_url.clone());
        serve(cdn, "cdn", state.clone(), cdn_url.clone());
        FakeHub { url, cdn_url, state }
    }

    /// A repo at `rev` (also reachable at its `commit`) holding `files`.
    pub fn add_repo(&self, repo: &str, rev: &str, commit: &str, files: &[(&str, &[u8], FileOpts)]) {
        let mut st = self.state.lock().unwrap();
        let mut siblings = Vec::new();
        for (name, data, opts) in files {
            let sha = sha256_hex(data);
            let mut sib = serde_json::json!({"rfilename": name, "size": data.len()});
            if opts.lfs {
                sib["lfs"] =
                    serde_json::json!({"sha256": opts.fake_sha.clone().unwrap_or(sha.clone()), "size": data.len()});
                st.blobs.insert(sha, data.to_vec());
            }
            siblings.push(sib);
            for r in [rev, commit] {
                st.files.insert(format!("{repo}/resolve/{r}/{name}"), (data.to_vec(), opts.clone()));
            }
        }
        let listing = serde_json::json!({"id": repo, "sha": commit, "siblings": siblings}).to_string();
        for r in [rev, commit] {
            st.listings.insert(format!("{repo}/revision/{r}"), listing.clone());
        }
    }

    /// Cut the next response to a path ending in `path_suffix` after `after` body bytes.
    pub fn cut_once(&self, path_suffix: &str, after: usize) {
        self.state.lock().unwrap().cuts.insert(path_suffix.to_string(), after);
    }

    /// Answer the next request for a path ending in `path_suffix` with `status`.
    pub fn fail_once(&self, path_suffix: &str, status: u16) {
        self.state.lock().unwrap().failures.insert(path_suffix.to_string(), status);
    }

    pub fn ignore_range(&self) {
        self.state.lock().unwrap().ignore_range = true;
    }

    pub fn gate(&self, repo: &str, token: &str) {
        self.state.lock().unwrap().gated.insert(repo.to_string(), token.to_string());
    }

    pub fn requests(&self) -> Vec<Request> {
        self.state.lock().unwrap().requests.clone()
    }
}

fn serve(listener: TcpListener, name: &'static str, state: Arc<Mutex<State>>, cdn_url: String) {
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let (state, cdn_url) = (state.clone(), cdn_url.clone());
            std::thread::spawn(move || {
                let _ = handle(stream, name, &state, &cdn_url);
            });
        }
    });
}

fn read_request(stream: &TcpStream, server: &'static str) -> std::io::Result<Request> {
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let path = line.split_whitespace().nth(1).unwrap_or("/").split('?').next().unwrap_or("/").to_string();
    let mut headers = HashMap::new();
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h)? == 0 || h.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
        }
    }
    Ok(Request { server, path, headers })
}

fn handle(mut stream: TcpStream, server: &'static str, state: &Mutex<State>, cdn_url: &str) -> std::io::Result<()> {
    let req = read_request(&stream, server)?;
    let mut st = state.lock().unwrap();
    st.requests.push(req.clone());
    let path = req.path.trim_start_matches('/').to_string();
    if let Some(key) = st.failures.keys().find(|k| path.ends_with(k.as_str())).cloned() {
        let status = st.failures.remove(&key).unwrap_or(500);
        return respond(&mut stream, status, &[], b"try again later");
    }
    if server == "cdn" {
        let Some(data) = st.blobs.get(path.trim_start_matches("blobs/")).cloned() else {
            return respond(&mut stream, 404, &[], b"no such blob");
        };
        let cut = take_cut(&mut st, &path);
        let ignore = st.ignore_range;
        drop(st);
        return send_body(&mut stream, &req, &data, &[], cut, ignore);
    }
    let repo: String = path.trim_start_matches("api/models/").split('/').take(2).collect::<Vec<_>>().join("/");
    if let Some(token) = st.gated.get(&repo) {
        if req.header("authorization") != Some(&format!("Bearer {token}")) {
            return respond(&mut stream, 401, &[], b"{\"error\":\"Access to model is restricted\"}");
        }
    }
    if let Some(key) = path.strip_prefix("api/models/") {
        return match st.listings.get(key) {
            Some(json) => respond(&mut stream, 200, &[("Content-Type", "application/json".into())], json.as_bytes()),
            None => respond(&mut stream, 404, &[], b"{\"error\":\"Repository not found\"}"),
        };
    }
    let Some((data, opts)) = st.files.get(&path).cloned() else {
        return respond(&mut stream, 404, &[("X-Error-Code", "EntryNotFound".into())], b"Entry not found");
    };
    let sha = opts.fake_sha.clone().unwrap_or_else(|| sha256_hex(&data));
    if opts.lfs {
        let headers = [
            ("Location", format!("{cdn_url}/blobs/{}", sha256_hex(&data))),
            ("X-Linked-Etag", format!("\"{sha}\"")),
            ("X-Linked-Size", data.len().to_string()),
            ("ETag", "\"0123456789abcdef0123456789abcdef01234567\"".into()),
        ];
        return respond(&mut stream, 302, &headers, b"");
    }
    let cut = take_cut(&mut st, &path);
    let ignore = st.ignore_range;
    drop(st);
    // A small (non-LFS) file: the ETag is the git blob id, not a sha256.
    let etag = [("ETag", "\"89abcdef0123456789abcdef0123456789abcdef\"".to_string())];
    send_body(&mut stream, &req, &data, &etag, cut, ignore)
}

fn take_cut(st: &mut State, path: &str) -> Option<usize> {
    let key = st.cuts.keys().find(|k| path.ends_with(k.as_str())).cloned()?;
    st.cuts.remove(&key)
}

fn send_body(
    stream: &mut TcpStream,
    req: &Request,
    data: &[u8],
    extra: &[(&str, String)],
    cut: Option<usize>,
    ignore_range: bool,
) -> std::io::Result<()> {
    let from = req
        .header("range")
        .filter(|_| !ignore_range)
        .and_then(|r| r.strip_prefix("bytes="))
        .and_then(|r| r.trim_end_matches('-').parse::<usize>().ok());
    let mut headers = extra.to_vec();
    let (status, body) = match from {
        Some(n) if n >= data.len() => {
            headers.push(("Content-Range", format!("bytes */{}", data.len())));
            return respond(stream, 416, &headers, b"");
        }
        Some(n) => {
            headers.push(("Content-Range", format!("bytes {n}-{}/{}", data.len() - 1, data.len())));
            (206, &data[n..])
        }
        None => (200, data),
    };
    match cut {
        Some(k) => {
            write_head(stream, status, &headers, body.len())?;
            stream.write_all(&body[..k.min(body.len())])?;
            stream.flush()?;
            stream.shutdown(std::net::Shutdown::Both)
        }
        None => respond(stream, status, &headers, body),
    }
}

fn write_head(stream: &mut TcpStream, status: u16, headers: &[(&str, String)], len: usize) -> std::io::Result<()> {
    let mut head = format!("HTTP/1.1 {status} X\r\nContent-Length: {len}\r\nConnection: close\r\n");
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes())
}

fn respond(stream: &mut TcpStream, status: u16, headers: &[(&str, String)], body: &[u8]) -> std::io::Result<()> {
    write_head(stream, status, headers, body.len())?;
    stream.write_all(body)?;
    stream.flush()
}
