//! `smelt synth` on a tiny GGUF model: valid chat JSONL, duplicates removed, filters
//! applied, malformed prompt lines reported with their line numbers.

mod common;

use std::path::Path;

use common::*;

fn write(dir: &Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p.to_string_lossy().into_owned()
}

const PROMPTS: &str = "{\"prompt\": \"hello world\"}\n\n{\"prompt\": \"the tea is hot\"}\n{\"messages\": [{\"role\": \"system\", \"content\": \"a\"}, {\"role\": \"user\", \"content\": \"is it\"}]}\n";

fn report(o: &std::process::Output) -> serde_json::Value {
    assert!(o.status.success(), "{}", stderr(o));
    serde_json::from_str(stdout(o).trim()).unwrap()
}

#[test]
fn synth_writes_valid_deduplicated_chat_jsonl() {
    let d = temp_dir("synth");
    let m = d.join("tiny.gguf");
    Tiny::default().write(&m);
    let (m, prompts) = (m.to_string_lossy().into_owned(), write(&d, "prompts.jsonl", PROMPTS));
    let out = d.join("out.jsonl");
    let o_ = out.to_string_lossy().into_owned();
    let base = ["-t", "2", "synth", "--teacher", &m, "--prompts", &prompts, "-o", &o_, "--max-tokens", "12", "--keep-truncated", "--report-json", "--quiet"];

    // Sampling: 4 replies per prompt, decoded 5 at a time.
    let r = report(&run(&[&base[..], &["--n", "4", "--batch", "5", "--temperature", "1.0", "--max-repeat", "1"]].concat()));
    assert_eq!((r["prompts"].as_u64(), r["generated"].as_u64()), (Some(3), Some(12)));
    let text = std::fs::read_to_string(&out).unwrap();
    let lines: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).expect("valid JSON line")).collect();
    assert_eq!(lines.len() as u64, r["kept"].as_u64().unwrap());
    assert!(lines.len() >= 6, "sampled replies should mostly differ: {r}");
    let mut seen = std::collections::HashSet::new();
    for l in &lines {
        let ms = l["messages"].as_array().unwrap();
        let last = ms.last().unwrap();
        assert_eq!(last["role"], "assistant");
        assert!(!last["content"].as_str().unwrap().is_empty());
        assert_eq!(ms[ms.len() - 2]["role"], "user");
        assert!(seen.insert(serde_json::to_string(l).unwrap()), "duplicate record {l}");
    }
    assert!(lines.iter().any(|l| l["messages"][0]["content"] == "a"), "the system message is kept");

    // Greedy: the 3 replies to a prompt are identical, so 2 of every 3 are duplicates.
    let r = report(&run(&[&base[..], &["--n", "3", "--batch", "4", "--temperature", "0", "--max-repeat", "1"]].concat()));
    assert_eq!((r["kept"].as_u64(), r["duplicates"].as_u64()), (Some(3), Some(6)), "{r}");
    assert_eq!(std::fs::read_to_string(&out).unwrap().lines().count(), 3);

    // Filters: a random model's text is not JSON; without --keep-truncated every reply
    // cut at --max-tokens goes.
    let r = report(&run(&[&base[..], &["--json", "--max-repeat", "1"]].concat()));
    assert_eq!((r["kept"].as_u64(), r["invalid_json"].as_u64()), (Some(0), Some(3)), "{r}");
    let o = run(&["-t", "2", "synth", "--teacher", &m, "--prompts", &prompts, "-o", &o_, "--max-tokens", "4", "--report-json", "--quiet", "--temperature", "0"]);
    let r = report(&o);
    assert_eq!(r["truncated"].as_u64().unwrap() + r["kept"].as_u64().unwrap() + r["too_short"].as_u64().unwrap(), 3, "{r}");
    // Nothing but the output file is left in the folder (atomic write).
    let names: Vec<String> = std::fs::read_dir(&d).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    assert_eq!(names.len(), 3, "{names:?}");
    let _ = std::fs::remove_dir_all(d);
}

#[test]
fn malformed_prompt_lines_are_reported_with_line_numbers() {
    let d = temp_dir("synth-bad");
    let m = d.join("tiny.gguf");
    Tiny::default().write(&m);
    let m = m.to_string_lossy().into_owned();
    let p = write(&d, "p.jsonl", "{\"prompt\": \"ok\"}\n{\"prompt\": \"ok\"\n\n{\"messages\": []}\n[1]\n");
    let out = d.join("out.jsonl");
    let o = run(&["synth", "--teacher", &m, "--prompts", &p, "-o", &out.to_string_lossy()]);
    assert_one_line_error(&o, "3 malformed prompt lines: line 2: not valid JSON");
    let err = stderr(&o);
    assert!(err.contains("line 4: \"messages\" is empty") && err.contains("line 5: expected a JSON object"), "{err}");
    assert!(!out.exists(), "no output on bad input");
    let o = run(&["synth", "--teacher", &m, "--prompts", &d.join("none.jsonl").to_string_lossy(), "-o", &out.to_string_lossy()]);
    assert_one_line_error(&o, "none.jsonl");
    let _ = std::fs::remove_dir_all(d);
}
