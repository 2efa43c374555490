//! Pre-tokenizer settings of byte-level BPE vocabularies, keyed by GGUF
//! `tokenizer.ggml.pre`, with the split regexes llama.cpp uses for each
//! (`llm_tokenizer_bpe` in llama-vocab.cpp). The regexes run one after the other, each on the
//! pieces the previous one produced, and text between matches stays a piece of its own (the
//! "Isolated" split of Hugging Face tokenizers).

use anyhow::{bail, Result};

/// GPT-2's pattern; also the fallback of several other pre-tokenizers.
const GPT2: &str = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)";
const LLAMA3: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const QWEN2: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const QWEN35: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const GPT4O: &str = r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])?|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])?|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const DEEPSEEK3: &str = r##"[!"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~][A-Za-z]+|[^\r\n\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+| ?[\p{P}\p{S}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"##;
const NEWLINES: &str = r"[^\n]+|[\n]+";

/// How a BPE vocabulary pre-processes text.
#[derive(Debug, Clone)]
pub struct PreTokenizer {
    /// The name llama.cpp would log for it (the GGUF value, or "default").
    pub name: String,
    pub regexes: Vec<&'static str>,
    /// Vocabulary tokens are GPT-2 byte-level text (false: raw UTF-8 with `<0xXX>` byte
    /// tokens, as Gemma 4).
    pub byte_encode: bool,
    /// Spaces become "▁" before splitting (SentencePiece-style BPE).
    pub escape_whitespace: bool,
    /// A pre-token that is itself a vocabulary token is emitted without merging.
    pub ignore_merges: bool,
    /// Default of `add_bos` when the GGUF does not say.
    pub add_bos: bool,
    /// The vocabulary has no BOS even if token 11 exists (ChatGLM).
    pub no_bos: bool,
    /// Gemma 4: a run of newlines that is a token is emitted whole, and BOS is always added.
    pub gemma4: bool,
}

impl PreTokenizer {
    fn new(name: &str, regexes: Vec<&'static str>) -> Self {
        Self {
            name: name.to_string(),
            regexes,
            byte_encode: true,
            escape_whitespace: false,
            ignore_merges: false,
            add_bos: false,
            no_bos: false,
            gemma4: false,
        }
    }

    /// The settings for GGUF `tokenizer.ggml.pre` (None: the key is missing, which llama.cpp
    /// accepts with a warning and the "default" regexes).
    pub fn for_name(pre: Option<&str>) -> Result<Self> {
        let Some(pre) = pre.filter(|p| !p.is_empty()) else {
            tracing::warn!("GGUF has no tokenizer.ggml.pre: using the default BPE pre-tokenizer; tokenization may differ from the original model");
            return Self::for_name(Some("default"));
        };
        let mut p = match pre {
            "default" => Self::new(
                pre,
                vec![r"[\p{P}\$\+<=>\^~\|]+", GPT2, r"\p{N}+", r"[0-9][0-9][0-9]"],
            ),
            "llama3" | "llama-v3" | "llama-bpe" | "falcon3" | "falcon-h1" | "pixtral" | "midm-2.0" | "lfm2"
            | "jina-v5-nano" => {
                let mut p = Self::new(pre, vec![LLAMA3]);
                p.ignore_merges = true;
                p.add_bos = true;
                p
            }
            "dbrx" | "smaug-bpe" => Self::new(pre, vec![LLAMA3]),
            // llama.cpp runs the regexes without \p{..} through std::wregex on a copy of the
            // text where non-ASCII whitespace is replaced by \v, so those characters never
            // match the explicit ranges below: the "&&[^...]" subtractions reproduce that.
            "deepseek-llm" => Self::new(
                pre,
                vec![
                    r"[\r\n]",
                    r"\s?[A-Za-z\x{B5}\x{C0}-\x{D6}\x{D8}-\x{F6}\x{F8}-\x{1BA}\x{1BC}-\x{1BF}\x{1C4}-\x{293}\x{295}-\x{2AF}\x{370}-\x{373}\x{376}\x{377}\x{37B}-\x{37D}\x{37F}\x{386}\x{388}-\x{38A}\x{38C}\x{38E}-\x{3A1}\x{3A3}-\x{3F5}\x{3F7}-\x{481}\x{48A}-\x{52F}\x{531}-\x{556}\x{10A0}-\x{10C5}\x{13A0}-\x{13F5}\x{13F8}-\x{13FD}\x{1C90}-\x{1CBA}\x{1CBD}-\x{1CBF}\x{1D00}-\x{1D2B}\x{1D6B}-\x{1D77}\x{1D79}-\x{1D9A}\x{1E00}-\x{1F15}\x{1F18}-\x{1F1D}\x{1F20}-\x{1F45}\x{1F48}-\x{1F4D}\x{1F50}-\x{1F57}\x{1F59}\x{1F5B}\x{1F5D}\x{1F5F}-\x{1F7D}\x{1F80}-\x{1FB4}\x{1FB6}-\x{1FBC}\x{1FBE}\x{1FC2}-\x{1FC4}\x{1FC6}-\x{1FCC}\x{1FD0}-\x{1FD3}\x{1FD6}-\x{1FDB}\x{1FE0}-\x{1FEC}\x{1FF2}-\x{1FF4}\x{1FF6}-\x{1FFC}\x{2102}\x{2107}\x{210A}-\x{2113}\x{2115}\x{2119}-\x{211D}\x{2124}\x{2126}\x{2128}\x{212A}-\x{212D}\x{212F}-\x{2134}\x{2139}\x{213C}-\x{213F}\x{2145}-\x{2149}\x{214E}\x{2183}\x{2184}\x{2C00}-\x{2C7B}\x{2C7E}-\x{2CE4}\x{2CEB}-\x{2CEE}\x{2CF2}\x{2CF3}\x{A640}-\x{A66D}\x{A680}-\x{A69B}\x{A722}-\x{A76F}\x{A771}-\x{A787}\x{A78B}-\x{A78E}\x{AB70}-\x{ABBF}\x{FB00}-\x{FB06}\x{FB13}-\x{FB17}\x{FF21}-\x{FF3A}\x{FF41}-\x{FF5A}\x{10400}-\x{1044F}\x{104B0}-\x{104D3}\x{104D8}-\x{104FB}\x{10C80}-\x{10CB2}\x{10CC0}-\x{10CF2}\x{118A0}-\x{118DF}\x{1E900}-\x{1E943}]+",
                    r"\s?[!-/:-~\x{FF01}-\x{FF0F}\x{FF1A}-\x{FF5E}\x{2018}-\x{201F}\x{3000}-\x{3002}&&[^\x{85}\x{A0}\x{1680}\x{2000}-\x{200A}\x{2028}\x{2029}\x{202F}\x{205F}\x{3000}]]+",
                    r"\s+$",
                    r"[\x{4E00}-\x{9FA5}\x{800}-\x{4E00}\x{AC00}-\x{D7FF}&&[^\x{85}\x{A0}\x{1680}\x{2000}-\x{200A}\x{2028}\x{2029}\x{202F}\x{205F}\x{3000}]]+",
                    r"\p{N}+",
                ],
            ),
            "deepseek-v3" | "hunyuan-dense" | "joyai-llm" | "hy_v4" => {
                Self::new(pre, vec![r"\p{N}{1,3}", r"[\x{4E00}-\x{9FA5}\x{3040}-\x{309F}\x{30A0}-\x{30FF}]+", DEEPSEEK3])
            }
            "deepseek-coder" => Self::new(
                pre,
                vec![r"[\r\n]", r"\s?\p{L}+", r"\s?\p{P}+", r"[\x{4E00}-\x{9FA5}\x{800}-\x{4E00}\x{AC00}-\x{D7FF}&&[^\x{85}\x{A0}\x{1680}\x{2000}-\x{200A}\x{2028}\x{2029}\x{202F}\x{205F}\x{3000}]]+", r"\p{N}"],
            ),
            "falcon" => Self::new(
                pre,
                vec![r"[\p{P}\$\+<=>\^~\|`]+", GPT2, r"[0-9][0-9][0-9]"],
            ),
            "starcoder" | "refact" | "command-r" | "smollm" | "codeshell" | "exaone" | "minerva-7b" | "mellum2" => {
                Self::new(pre, vec![r"\p{N}", GPT2])
            }
            "gpt-2" | "phi-2" | "jina-es" | "jina-de" | "gigachat" | "jina-v2-es" | "jina-v2-de" | "a.x-4.0" | "mellum"
            | "modern-bert" | "jina-v1-en" | "jina-v2-code" | "roberta-bpe" | "mpt" | "olmo" | "jais" | "trillion"
            | "granite-docling" | "exaone4" => Self::new(pre, vec![GPT2]),
            "stablelm2" | "qwen2" | "deepseek-r1-qwen" | "kormo" | "f2llmv2" | "hunyuan" | "solar-open" | "megrez" => {
                Self::new(pre, vec![QWEN2])
            }
            "qwen35" => Self::new(pre, vec![QWEN35]),
            "poro-chat" | "bloom" | "gpt3-finnish" => Self::new(pre, vec![r" ?[^(\s|.,!?\x{2026}\x{3002}\x{FF0C}\x{3001}\x{964}\x{6D4}\x{60C})]+"]),
            "viking" => Self::new(pre, vec![r" ?[^(\s|.,!?\x{2026}\x{3002}\x{FF0C}\x{3001}\x{964}\x{6D4}\x{60C})]+", r"\p{N}"]),
            "chatglm-bpe" | "glm4" | "glm5" => {
                let mut p = Self::new(pre, vec![LLAMA3]);
                p.no_bos = true;
                p.ignore_merges = pre != "chatglm-bpe";
                p
            }
            "tekken" => {
                let mut p = Self::new(
                    pre,
                    vec![r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"],
                );
                p.ignore_merges = true;
                p.add_bos = true;
                p
            }
            "gpt-4o" | "llama4" | "kanana2" | "talkie" | "minimax-m2" => Self::new(pre, vec![GPT4O]),
            "seed-coder" => Self::new(
                pre,
                vec![r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1}| ?[^\s\p{L}\p{N}\r\n]+|\s*[\r\n]+|\s+(?!\S)|\s+"],
            ),
            "bailingmoe" | "bailingmoe2" | "llada-moe" => Self::new(
                pre,
                vec![r"'(?:[sSdDmMtT]|[lL][lL]|[vV][eE]|[rR][eE])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]|\s+(?!\S)|\s+"],
            ),
            "grok-2" => Self::new(pre, vec![QWEN2]),
            "ufakzeka" => Self::new(
                pre,
                vec![r"[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"],
            ),
            "laguna" => Self::new(pre, vec![NEWLINES, QWEN2]),
            "minicpm5" => {
                let mut p = Self::new(
                    pre,
                    vec![
                        r"\p{N}{1,3}",
                        r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}+| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
                    ],
                );
                p.ignore_merges = true;
                p
            }
            "gemma4" | "granite-embed-multi-311m" | "sarvam-moe" => {
                let mut p = Self::new(pre, vec![NEWLINES]);
                p.byte_encode = false;
                p.escape_whitespace = true;
                p.gemma4 = pre != "sarvam-moe";
                p
            }
            other => bail!(
                "unsupported BPE pre-tokenizer {other:?} (tokenizer.ggml.pre); llama.cpp refuses unknown ones too"
            ),
        };
        p.name = pre.to_string();
        Ok(p)
    }
}
