//! The little URL handling the hub client needs (no URL crate): origins, `Location` joins,
//! percent-encoded path segments.

/// `https://host:port` of a URL.
pub(crate) fn origin(url: &str) -> &str {
    let after_scheme = url.find("://").map_or(0, |i| i + 3);
    let end = url[after_scheme..].find('/').map_or(url.len(), |i| after_scheme + i);
    &url[..end]
}

/// Resolve a `Location` header against the URL that sent it.
pub(crate) fn join_url(base: &str, location: &str) -> String {
    if location.contains("://") {
        location.to_string()
    } else if location.starts_with('/') {
        format!("{}{location}", origin(base))
    } else {
        let path_end = base.find('?').unwrap_or(base.len());
        let dir_end = base[..path_end].rfind('/').map_or(path_end, |i| i + 1);
        format!("{}{location}", &base[..dir_end])
    }
}

/// Percent-encode one URL path segment (a revision such as `refs/pr/1` becomes one segment).
pub(crate) fn encode_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Encode a file path, keeping its `/` separators.
pub(crate) fn encode_path(s: &str) -> String {
    s.split('/').map(encode_segment).collect::<Vec<_>>().join("/")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_helpers() {
        assert_eq!(origin("https://huggingface.co/a/b"), "https://huggingface.co");
        assert_eq!(origin("http://127.0.0.1:8080"), "http://127.0.0.1:8080");
        assert_eq!(join_url("http://h:1/a/resolve/main/f", "/cdn/x"), "http://h:1/cdn/x");
        assert_eq!(join_url("http://h:1/a/b?q=1", "c"), "http://h:1/a/c");
        assert_eq!(join_url("http://h/a", "https://cdn/x"), "https://cdn/x");
        assert_eq!(encode_segment("refs/pr/1"), "refs%2Fpr%2F1");
        assert_eq!(encode_path("sub dir/f.gguf"), "sub%20dir/f.gguf");
    }
}
