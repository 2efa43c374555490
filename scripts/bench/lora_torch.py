#!/usr/bin/env python3
"""Hugging Face PEFT + PyTorch baseline for `smelt finetune` throughput (docs/BENCHMARKS.md).

Same model (SmolLM2-135M-Instruct, loaded by transformers from the same GGUF file and dequantized
to f32 — PEFT cannot train on GGUF blocks), same data (prompt/completion JSONL, chat template,
loss on completion tokens), same LoRA (rank, alpha, dropout, all linear layers), AdamW, the same
token budget per micro-batch (examples packed first-fit up to --batch-tokens, padded to the longest
in the batch), same thread count. Reports real (non-padding) input tokens per second, like smelt.

    python scripts/bench/lora_torch.py --model ~/.cache/smelt-test/models/SmolLM2-135M-Instruct.Q4_1.gguf \
        --data examples/intents/train.jsonl --threads 2 --steps 6 --warmup 1

Prints one JSON line. Needs torch, transformers, gguf and peft (scripts/fixtures/setup-venv.sh).
"""
import argparse
import json
import time
from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer


def encode(tok, rec, max_len):
    msgs = ([{"role": "system", "content": rec["system"]}] if rec.get("system") else []) + [{"role": "user", "content": rec["prompt"]}]
    prompt = tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
    full = tok.apply_chat_template(msgs + [{"role": "assistant", "content": rec["completion"]}], tokenize=False)
    p = tok(prompt, add_special_tokens=False)["input_ids"]
    f = tok(full, add_special_tokens=False)["input_ids"][:max_len]
    labels = [-100] * min(len(p), len(f)) + f[len(p):]
    return f, labels


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True, help="GGUF file (dequantized by transformers)")
    ap.add_argument("--data", required=True)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--batch-tokens", type=int, default=1024)
    ap.add_argument("--max-len", type=int, default=1024)
    ap.add_argument("--rank", type=int, default=8)
    ap.add_argument("--alpha", type=float, default=16)
    ap.add_argument("--dropout", type=float, default=0.05)
    ap.add_argument("--lr", type=float, default=2e-4)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    path = Path(a.model).expanduser()
    tok = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, torch_dtype=torch.float32)
    cfg = LoraConfig(r=a.rank, lora_alpha=a.alpha, lora_dropout=a.dropout, task_type="CAUSAL_LM",
                     target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    model = get_peft_model(model, cfg)
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=a.lr, weight_decay=0.0)
    recs = [json.loads(l) for l in open(a.data) if l.strip()]
    ex = [encode(tok, r, a.max_len) for r in recs]
    # First-fit packing by input tokens, as smelt does (in file order).
    bins = []
    for i, (ids, _) in enumerate(ex):
        n = len(ids) - 1
        for b in bins:
            if b[0] + n <= a.batch_tokens:
                b[0] += n
                b[1].append(i)
                break
        else:
            bins.append([n, [i]])
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0

    def step(k):
        idx = bins[k % len(bins)][1]
        L = max(len(ex[i][0]) for i in idx)
        ids = torch.full((len(idx), L), pad, dtype=torch.long)
        lab = torch.full((len(idx), L), -100, dtype=torch.long)
        att = torch.zeros((len(idx), L), dtype=torch.long)
        for j, i in enumerate(idx):
            t, l = ex[i]
            ids[j, : len(t)] = torch.tensor(t)
            lab[j, : len(l)] = torch.tensor(l)
            att[j, : len(t)] = 1
        out = model(input_ids=ids, attention_mask=att, labels=lab)
        out.loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return out.loss.item(), sum(len(ex[i][0]) - 1 for i in idx)

    for k in range(a.warmup):
        step(k)
    t0 = time.perf_counter()
    tokens, losses = 0, []
    for k in range(a.warmup, a.warmup + a.steps):
        loss, n = step(k)
        tokens += n
        losses.append(loss)
    dt = time.perf_counter() - t0
    print(json.dumps({"impl": "peft+torch", "torch": torch.__version__, "threads": a.threads, "steps": a.steps,
                      "tokens": tokens, "tok_per_s": tokens / dt, "step_ms": 1000 * dt / a.steps,
                      "first_loss": losses[0], "last_loss": losses[-1]}))


if __name__ == "__main__":
    main()
