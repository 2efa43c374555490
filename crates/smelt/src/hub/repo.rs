//! The Hugging Face hub's HTTP interface, the two calls smelt needs:
//!
//! * `GET {endpoint}/api/models/{repo}/revision/{rev}?blobs=true` — the commit and its files
//!   (`siblings[].rfilename`, with `size` and `lfs.sha256` for large files);
//! * `GET {endpoint}/{repo}/resolve/{rev}/{file}` — one file (often a redirect to a CDN).

use anyhow::{bail, Result};
use serde_json::Value;

use super::alias::is_sha256;
use super::download::Http;
use super::url::{encode_path, encode_segment};

/// The files of a repo at one commit.
#[derive(Debug, Clone)]
pub(crate) struct Listing {
    /// The commit the revision pointed at, when the hub says.
    pub commit: Option<String>,
    pub files: Vec<Sibling>,
}

#[derive(Debug, Clone)]
pub(crate) struct Sibling {
    pub name: String,
    pub size: Option<u64>,
    pub sha256: Option<String>,
}

/// The files of a model folder smelt fetches: config, tokenizer, chat template and safetensors
/// weights (top level only; other weight formats are skipped).
pub(crate) fn wanted(name: &str) -> bool {
    const NAMED: [&str; 7] = [
        "config.json",
        "generation_config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
        "chat_template.jinja",
        "model.safetensors.index.json",
    ];
    !name.contains('/') && (NAMED.contains(&name) || name.ends_with(".safetensors"))
}

pub(crate) fn api_url(endpoint: &str, repo: &str, revision: &str) -> String {
    format!("{endpoint}/api/models/{repo}/revision/{}?blobs=true", encode_segment(revision))
}

pub(crate) fn file_url(endpoint: &str, repo: &str, revision: &str, file: &str) -> String {
    format!("{endpoint}/{repo}/resolve/{}/{}", encode_segment(revision), encode_path(file))
}

pub(crate) fn list(http: &Http, endpoint: &str, repo: &str, revision: &str) -> Result<Listing> {
    let what = format!("{repo}@{revision}");
    let json = http.get_json(&api_url(endpoint, repo, revision), &what)?;
    parse_listing(&json, &what)
}

fn parse_listing(json: &Value, what: &str) -> Result<Listing> {
    let Some(siblings) = json.get("siblings").and_then(Value::as_array) else {
        bail!("the hub's listing of {what} has no file list (siblings)");
    };
    let files = siblings
        .iter()
        .filter_map(|s| {
            let name = s.get("rfilename")?.as_str()?.to_string();
            let lfs = s.get("lfs");
            let size = s.get("size").or_else(|| lfs?.get("size")).and_then(Value::as_u64);
            let sha256 = lfs.and_then(|l| l.get("sha256")).and_then(Value::as_str).map(str::to_ascii_lowercase);
            Some(Sibling { name, size, sha256: sha256.filter(|s| is_sha256(s)) })
        })
        .collect();
    let commit = json.get("sha").and_then(Value::as_str).map(str::to_string);
    Ok(Listing { commit, files })
}

/// The files of `listing` to fetch for a model folder; errors when it is not one smelt can load.
pub(crate) fn model_files(listing: &Listing, repo: &str) -> Result<Vec<Sibling>> {
    let files: Vec<Sibling> = listing.files.iter().filter(|f| wanted(&f.name)).cloned().collect();
    let has = |pred: &dyn Fn(&str) -> bool| files.iter().any(|f| pred(&f.name));
    let ggufs: Vec<&str> = listing.files.iter().map(|f| f.name.as_str()).filter(|n| n.ends_with(".gguf")).collect();
    if !has(&|n| n == "config.json") {
        if !ggufs.is_empty() {
            bail!("{repo} is a GGUF repo, not a model folder: name one file, e.g. {repo}:{}", ggufs[0]);
        }
        bail!("{repo} has no config.json: not a transformers model folder");
    }
    if !has(&|n| n.ends_with(".safetensors")) {
        bail!("{repo} has no .safetensors weights (smelt does not load other weight formats)");
    }
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listing_and_selection() {
        let json: Value = serde_json::from_str(
            r#"{"sha":"abc","siblings":[
                {"rfilename":"config.json","size":10},
                {"rfilename":"model.safetensors","size":99,"lfs":{"sha256":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA","size":99}},
                {"rfilename":"pytorch_model.bin"},{"rfilename":"onnx/model.safetensors"},{"rfilename":"README.md"}]}"#,
        )
        .unwrap();
        let l = parse_listing(&json, "x").unwrap();
        assert_eq!(l.commit.as_deref(), Some("abc"));
        assert_eq!(l.files[1].sha256.as_deref(), Some("a".repeat(64).as_str()));
        let names: Vec<_> = model_files(&l, "o/r").unwrap().into_iter().map(|f| f.name).collect();
        assert_eq!(names, ["config.json", "model.safetensors"]);
        let gguf_only: Value = serde_json::from_str(r#"{"siblings":[{"rfilename":"m.Q4.gguf"}]}"#).unwrap();
        let err = model_files(&parse_listing(&gguf_only, "x").unwrap(), "o/r").unwrap_err().to_string();
        assert!(err.contains("o/r:m.Q4.gguf"), "{err}");
        assert!(parse_listing(&serde_json::json!({}), "o/r").is_err());
    }

    #[test]
    fn urls() {
        assert_eq!(
            api_url("http://h", "o/r", "refs/pr/1"),
            "http://h/api/models/o/r/revision/refs%2Fpr%2F1?blobs=true"
        );
        assert_eq!(file_url("http://h", "o/r", "main", "a b.gguf"), "http://h/o/r/resolve/main/a%20b.gguf");
    }
}
