//! Special token ids and llama.cpp's text-based detection of end-of-generation (EOG), EOT and
//! fill-in-the-middle tokens (`llama_vocab::impl::load`): converters do not always record
//! them, so llama.cpp recognises them by their text and marks them as control tokens.

use std::collections::BTreeSet;

use super::vocab::{attr, Vocab};

#[derive(Debug, Clone, Copy, Default)]
pub struct SpecialIds {
    pub bos: Option<u32>,
    pub eos: Option<u32>,
    pub eot: Option<u32>,
    pub eom: Option<u32>,
    pub unk: Option<u32>,
    pub sep: Option<u32>,
    pub pad: Option<u32>,
    pub mask: Option<u32>,
    pub fim_pre: Option<u32>,
    pub fim_suf: Option<u32>,
    pub fim_mid: Option<u32>,
    pub fim_pad: Option<u32>,
    pub fim_rep: Option<u32>,
    pub fim_sep: Option<u32>,
}

const EOT_TEXTS: &[&str] = &[
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "<|end_of_text|>",
    "<EOT>",
    "_<EOT>",
    "[EOT]",
    "<｜end▁of▁sentence｜>",
    "<end_of_utterance>",
];
const EOM_TEXTS: &[&str] = &["<|eom_id|>"];
const FIM_PRE_TEXTS: &[&str] =
    &["<|fim_prefix|>", "<fim-prefix>", "<fim_prefix>", "<｜fim▁begin｜>", "<PRE>", "▁<PRE>", "<|code_prefix|>", "<|prefix|>"];
const FIM_SUF_TEXTS: &[&str] =
    &["<|fim_suffix|>", "<fim-suffix>", "<fim_suffix>", "<｜fim▁hole｜>", "<SUF>", "▁<SUF>", "<|code_suffix|>", "<|suffix|>"];
const FIM_MID_TEXTS: &[&str] =
    &["<|fim_middle|>", "<fim-middle>", "<fim_middle>", "<｜fim▁end｜>", "<MID>", "▁<MID>", "<|code_middle|>", "<|middle|>"];
const FIM_PAD_TEXTS: &[&str] = &["<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>", "[PAD]"];
const FIM_REP_TEXTS: &[&str] = &["<|fim_repo|>", "<|repo_name|>", "<fim-repo>", "<REPO>", "<reponame>"];
const FIM_SEP_TEXTS: &[&str] = &["<|file_sep|>"];
const EOG_TEXTS: &[&str] = &[
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<|return|>",
    "<|call|>",
    "<|flush|>",
    "<|calls|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "</s>",
    "<|eom_id|>",
    "<EOT>",
    "_<EOT>",
    "[EOT]",
    "[EOS]",
    "<|end_of_text|>",
    "<end_of_utterance>",
    "<eos>",
    "<turn|>",
    "<|tool_response>",
    "<｜end▁of▁sentence｜>",
    "[e~[",
];

impl SpecialIds {
    /// Fill in EOT/EOM/FIM ids that the metadata did not give, mark the tokens found by text
    /// as control tokens, and return the sorted end-of-generation set.
    pub fn detect(&mut self, vocab: &mut Vocab) -> Vec<u32> {
        let find = |vocab: &mut Vocab, slot: &mut Option<u32>, texts: &[&str]| {
            if slot.is_some() {
                return;
            }
            // llama.cpp takes whichever its hash map yields first; we take the lowest id.
            if let Some(id) = texts.iter().filter_map(|t| vocab.id(t)).min() {
                *slot = Some(id);
                vocab.set_attr(id, attr::CONTROL, true);
            }
        };
        find(vocab, &mut self.eot, EOT_TEXTS);
        find(vocab, &mut self.eom, EOM_TEXTS);
        find(vocab, &mut self.fim_pre, FIM_PRE_TEXTS);
        find(vocab, &mut self.fim_suf, FIM_SUF_TEXTS);
        find(vocab, &mut self.fim_mid, FIM_MID_TEXTS);
        find(vocab, &mut self.fim_pad, FIM_PAD_TEXTS);
        find(vocab, &mut self.fim_rep, FIM_REP_TEXTS);
        find(vocab, &mut self.fim_sep, FIM_SEP_TEXTS);

        // Control tokens named "unused" are unused.
        let unused: Vec<u32> = vocab
            .iter()
            .filter(|&(id, t)| vocab.has_attr(id, attr::CONTROL) && t.contains("unused"))
            .map(|(id, _)| id)
            .collect();
        for id in unused {
            vocab.set_attr(id, attr::UNUSED, true);
        }

        let mut eog: BTreeSet<u32> = [self.fim_pad, self.fim_rep, self.fim_sep].into_iter().flatten().collect();
        for t in EOG_TEXTS {
            if let Some(id) = vocab.id(t) {
                eog.insert(id);
                vocab.set_attr(id, attr::CONTROL, true);
            }
        }
        // gpt-oss: these are always rendered.
        for t in ["<|channel|>", "<|message|>", "<|start|>", "<|constrain|>"] {
            if let Some(id) = vocab.id(t) {
                vocab.replace_attr(id, attr::USER_DEFINED);
            }
        }
        eog.extend([self.eos, self.eot, self.eom].into_iter().flatten());

        fn has(vocab: &Vocab, eog: &BTreeSet<u32>, t: &str) -> bool {
            vocab.id(t).is_some_and(|id| eog.contains(&id))
        }
        // o200k_harmony / solar-open: "<|end|>" ends a message, not the generation.
        let has_call = has(vocab, &eog, "<|call|>") || has(vocab, &eog, "<|calls|>");
        if has_call
            && (has(vocab, &eog, "<|return|>") || has(vocab, &eog, "<|flush|>"))
            && has(vocab, &eog, "<|end|>")
        {
            let id = vocab.id("<|end|>").expect("checked");
            eog.remove(&id);
            vocab.replace_attr(id, attr::USER_DEFINED);
        }
        // Gemma 4 / PLaMo: "</s>" is a normal token there.
        if (has(vocab, &eog, "<|tool_response>") || has(vocab, &eog, "<|plamo:eos|>")) && has(vocab, &eog, "</s>") {
            let id = vocab.id("</s>").expect("checked");
            eog.remove(&id);
            vocab.replace_attr(id, attr::NORMAL);
        }
        eog.into_iter().collect()
    }
}
