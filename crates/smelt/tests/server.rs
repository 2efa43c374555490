//! `smelt serve` with the real SmolLM2 model, on 127.0.0.1 only: the official OpenAI
//! Python client, concurrency (batched output equals solo output at temperature 0),
//! disconnects freeing their slot, 4xx errors that leave the server serving, a full
//! queue, and a short soak.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

/// Servers share the 2 cores: run these tests one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

struct Server {
    child: Child,
    port: u16,
    key: Option<String>,
}

impl Server {
    fn start(extra: &[&str], key: Option<&str>) -> Server {
        let model = smollm2();
        let mut cmd = smelt();
        cmd.args(["serve", model.to_str().unwrap(), "--port", "0", "--name", "smollm2", "--ctx", "1024"]).args(extra);
        if let Some(k) = key {
            cmd.args(["--api-key", k]);
        }
        let mut child = cmd.stderr(Stdio::piped()).stdout(Stdio::null()).spawn().unwrap();
        let mut err = BufReader::new(child.stderr.take().unwrap());
        let mut line = String::new();
        let port = loop {
            line.clear();
            assert!(err.read_line(&mut line).unwrap() > 0, "server exited before listening");
            if let Some(rest) = line.split("http://127.0.0.1:").nth(1) {
                break rest.split(|c: char| !c.is_ascii_digit()).next().unwrap().parse().unwrap();
            }
        };
        // Keep draining stderr so the server never blocks on a full pipe.
        std::thread::spawn(move || for _ in err.lines() {});
        Server { child, port, key: key.map(str::to_string) }
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// POST JSON; returns (status, body).
    fn post(&self, path: &str, body: &str) -> (u16, Value) {
        self.raw("POST", path, body.as_bytes(), self.key.as_deref())
    }

    fn get(&self, path: &str) -> (u16, String) {
        self.get_with(path, self.key.as_deref())
    }

    fn get_with(&self, path: &str, key: Option<&str>) -> (u16, String) {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        let auth = key.map(|k| format!("Authorization: Bearer {k}\r\n")).unwrap_or_default();
        write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\n{auth}Connection: close\r\n\r\n").unwrap();
        let mut resp = String::new();
        s.read_to_string(&mut resp).unwrap();
        let status = resp[9..12].parse().unwrap();
        let body = resp.split_once("\r\n\r\n").map(|x| x.1.to_string()).unwrap_or_default();
        (status, body)
    }

    fn raw(&self, method: &str, path: &str, body: &[u8], key: Option<&str>) -> (u16, Value) {
        let mut req = ureq::http::Request::builder().method(method).uri(self.url(path)).header("content-type", "application/json");
        if let Some(k) = key {
            req = req.header("authorization", format!("Bearer {k}"));
        }
        let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).timeout_global(Some(Duration::from_secs(600))).build().into();
        let mut resp = agent.run(req.body(body.to_vec()).unwrap()).unwrap();
        let status = resp.status().as_u16();
        let text = resp.body_mut().read_to_string().unwrap_or_default();
        (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
    }

    fn metric(&self, name: &str) -> f64 {
        let (_, text) = self.get("/metrics");
        text.lines()
            .find(|l| l.starts_with(&format!("smelt_{name}{{")))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("metric {name} missing:\n{text}"))
    }

    fn rss_kb(&self) -> u64 {
        let s = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap_or_default();
        s.lines().find(|l| l.starts_with("VmRSS:")).and_then(|l| l.split_whitespace().nth(1)).and_then(|v| v.parse().ok()).unwrap_or(0)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn chat(content: &str, max_tokens: usize) -> String {
    json!({"model": "smollm2", "temperature": 0, "max_tokens": max_tokens,
           "messages": [{"role": "user", "content": content}]})
    .to_string()
}

#[test]
fn official_openai_client() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let s = Server::start(&["--parallel", "4"], Some("test-key"));
    let py = test_data().join("venv-openai/bin/python");
    assert!(py.exists(), "{} missing: run scripts/fetch-test-data.sh", py.display());
    let out = Command::new(py)
        .arg(fixture("../openai_client/check_server.py"))
        .env("OPENAI_BASE_URL", s.url("/v1"))
        .env("OPENAI_API_KEY", "test-key")
        .env("SMELT_MODEL_ID", "smollm2")
        .output()
        .unwrap();
    let log = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    eprintln!("{log}");
    assert!(out.status.success(), "openai client checks failed:\n{log}");
    assert!(log.contains("all openai client checks passed"));
}

#[test]
fn concurrent_requests_equal_solo_runs() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let s = Server::start(&["--parallel", "8"], None);
    let prompts: Vec<String> = ["Name a fruit.", "What is 2+2?", "Say hello.", "Name a colour.", "What is the capital of Spain?", "Count to three.", "Name an animal.", "What day comes after Monday?"]
        .iter()
        .map(|p| chat(p, 12))
        .collect();
    let solo: Vec<Value> = prompts.iter().map(|p| s.post("/v1/chat/completions", p).1).collect();
    let together: Vec<Value> = std::thread::scope(|sc| {
        let hs: Vec<_> = prompts.iter().map(|p| sc.spawn(|| s.post("/v1/chat/completions", p).1)).collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (a, b) in solo.iter().zip(&together) {
        let ta = &a["choices"][0]["message"]["content"];
        assert!(ta.is_string(), "{a}");
        assert_eq!(ta, &b["choices"][0]["message"]["content"], "batched output differs from solo");
    }
    // They really ran together: some forward passes carried several sequences.
    assert!(s.metric("forward_tokens_total") > s.metric("forward_steps_total"));
}

#[test]
fn disconnect_frees_the_slot() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let s = Server::start(&["--parallel", "2"], None);
    let body = json!({"model": "smollm2", "stream": true, "max_tokens": 400, "temperature": 0.7,
                      "messages": [{"role": "user", "content": "Write a long story about a dragon."}]})
    .to_string();
    let mut c = TcpStream::connect(("127.0.0.1", s.port)).unwrap();
    write!(c, "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}", body.len()).unwrap();
    let mut buf = [0u8; 512];
    let n = c.read(&mut buf).unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).contains("200"), "{}", String::from_utf8_lossy(&buf[..n]));
    // Wait until it is generating, then hang up.
    let t0 = Instant::now();
    while s.metric("completion_tokens_total") < 3.0 {
        assert!(t0.elapsed() < Duration::from_secs(120), "never started generating");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(s.metric("active_sequences"), 1.0);
    drop(c);
    let t0 = Instant::now();
    while s.metric("active_sequences") != 0.0 {
        assert!(t0.elapsed() < Duration::from_secs(10), "slot not freed after disconnect");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(s.metric("requests_cancelled_total") >= 1.0);
    assert!(s.metric("completion_tokens_total") < 400.0, "kept generating after the client left");
}

#[test]
fn bad_requests_get_4xx_and_the_server_keeps_serving() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let s = Server::start(&["--max-body", "20000"], Some("k3y"));
    let err_type = |v: &Value| v["error"]["type"].as_str().unwrap_or("").to_string();
    let cases: Vec<(&str, Vec<u8>, Option<&str>, u16, &str)> = vec![
        ("malformed JSON", b"{\"messages\": [".to_vec(), Some("k3y"), 400, "invalid_request_error"),
        ("wrong type", br#"{"messages": "hi"}"#.to_vec(), Some("k3y"), 400, "invalid_request_error"),
        ("wrong number type", br#"{"messages": [{"role":"user","content":"x"}], "max_tokens": "many"}"#.to_vec(), Some("k3y"), 400, "invalid_request_error"),
        ("unknown model", chat("hi", 4).replace("smollm2", "gpt-9").into_bytes(), Some("k3y"), 404, "invalid_request_error"),
        ("absurd max_tokens", chat("hi", 1 << 40).into_bytes(), Some("k3y"), 400, "invalid_request_error"),
        ("oversize body", format!(r#"{{"messages":[{{"role":"user","content":"{}"}}]}}"#, "a".repeat(50_000)).into_bytes(), Some("k3y"), 413, "invalid_request_error"),
        ("missing api key", chat("hi", 4).into_bytes(), None, 401, "invalid_request_error"),
        ("wrong api key", chat("hi", 4).into_bytes(), Some("nope"), 401, "invalid_request_error"),
    ];
    for (what, body, key, status, kind) in cases {
        let (got, v) = s.raw("POST", "/v1/chat/completions", &body, key);
        assert_eq!(got, status, "{what}: {v}");
        assert_eq!(err_type(&v), kind, "{what}: {v}");
        assert!(v["error"]["message"].as_str().is_some_and(|m| !m.is_empty()), "{what}: {v}");
    }
    // A prompt longer than the context is refused with a message that says so.
    let long = chat(&"word ".repeat(3000), 4);
    let (got, v) = s.raw("POST", "/v1/chat/completions", long.as_bytes(), Some("k3y"));
    assert_eq!(got, 400, "{v}");
    assert!(v["error"]["message"].as_str().unwrap().contains("context"), "{v}");
    // /health needs no key; everything still works.
    assert_eq!(s.get_with("/health", None).0, 200);
    assert_eq!(s.get_with("/v1/models", None).0, 401);
    let (st, v) = s.post("/v1/chat/completions", &chat("What is the capital of France? Answer concisely.", 12));
    assert_eq!(st, 200, "{v}");
    let (st, v) = s.post("/tokenize", r#"{"content": "Hello world"}"#);
    assert_eq!(st, 200);
    let ids = v["tokens"].clone();
    let (_, v) = s.post("/detokenize", &json!({"tokens": ids}).to_string());
    assert_eq!(v["content"], "Hello world");
    let (st, _) = s.post("/detokenize", r#"{"tokens": [99999999]}"#);
    assert_eq!(st, 400);
}

#[test]
fn full_queue_is_429_not_unbounded_memory() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let s = Server::start(&["--parallel", "1", "--queue", "1"], None);
    let statuses: Vec<u16> = std::thread::scope(|sc| {
        let hs: Vec<_> = (0..6).map(|_| sc.spawn(|| s.post("/v1/chat/completions", &chat("Tell me a story.", 24)).0)).collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert!(statuses.contains(&429), "{statuses:?}");
    assert!(statuses.contains(&200), "{statuses:?}");
    assert!(statuses.iter().all(|s| *s == 200 || *s == 429), "{statuses:?}");
}

#[test]
fn soak_32_clients() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let secs: u64 = std::env::var("SMELT_SOAK_SECS").ok().and_then(|v| v.parse().ok()).unwrap_or(60);
    let s = Server::start(&["--parallel", "8", "--queue", "64"], None);
    // Warm up, then sample memory while 32 clients loop for `secs` seconds.
    s.post("/v1/chat/completions", &chat("hi", 4));
    let rss_start = s.rss_kb();
    let deadline = Instant::now() + Duration::from_secs(secs);
    let (done, failed, streamed): (usize, Vec<String>, usize) = std::thread::scope(|sc| {
        let hs: Vec<_> = (0..32)
            .map(|i| {
                let s = &s;
                sc.spawn(move || {
                    let (mut ok, mut bad) = (0, Vec::new());
                    let mut k = 0;
                    while Instant::now() < deadline {
                        k += 1;
                        let body = json!({"model": "smollm2", "temperature": 0.7, "seed": i * 1000 + k, "max_tokens": 8 + (k % 9),
                                          "messages": [{"role": "user", "content": format!("Client {i} request {k}: say something.")}]})
                        .to_string();
                        let (st, v) = s.post("/v1/chat/completions", &body);
                        if st == 200 && v["choices"][0]["message"]["content"].is_string() && v["usage"]["completion_tokens"].as_u64().unwrap_or(0) > 0 {
                            ok += 1;
                        } else {
                            bad.push(format!("{st} {v}"));
                        }
                    }
                    (ok, bad)
                })
            })
            .collect();
        let mut peak = 0;
        while Instant::now() < deadline {
            peak = peak.max(s.rss_kb());
            std::thread::sleep(Duration::from_millis(500));
        }
        let mut done = 0;
        let mut failed = Vec::new();
        for h in hs {
            let (ok, bad) = h.join().unwrap();
            done += ok;
            failed.extend(bad);
        }
        (done, failed, peak as usize)
    });
    let rss_end = s.rss_kb();
    eprintln!(
        "soak: {secs}s, 32 clients, {done} requests completed, {} failed; RSS {} MB at start, {} MB peak, {} MB at end; {} tokens generated",
        failed.len(),
        rss_start / 1024,
        streamed / 1024,
        rss_end / 1024,
        s.metric("completion_tokens_total")
    );
    assert!(failed.is_empty(), "lost requests: {:?}", &failed[..failed.len().min(3)]);
    assert!(done >= 32, "only {done} requests completed");
    assert_eq!(s.metric("active_sequences"), 0.0);
    assert_eq!(s.metric("queue_depth"), 0.0);
    // Memory flat: KV caches are per slot and reused, so RSS must not keep growing.
    assert!(rss_end < rss_start + 200 * 1024, "RSS grew from {rss_start} kB to {rss_end} kB");
}
