#!/usr/bin/env python3
"""PyTorch eager baseline for `smelt bench-distill`: logit distillation of a random teacher
into a random student (Llama shapes as in train_torch.py), random tokens, f32, AdamW.

One step: teacher forward under no_grad (full logits), student forward, loss =
(1 - a) * CE + a * T^2 * KL(softmax(t/T) || softmax(s/T)) over the full vocabulary,
backward, clip 1.0, AdamW. Defaults: teacher dim 288 / 6 layers / 6 heads / ffn 768
(stories15M), student dim 64 / 4 layers / 4 heads / ffn 192 (2.3M), vocab 32000,
batch 8 x 256, a = 0.5, T = 2.

    python scripts/bench/distill_torch.py --threads 2 --steps 10 --warmup 2

Prints one JSON line. Needs only torch.
"""
import argparse
import json
import time
from types import SimpleNamespace

import torch
import torch.nn.functional as F

from train_torch import Llama


class Body(Llama):
    def logits(self, ids):
        x = self.embed(ids)
        for b in self.blocks:
            x = b(x, self.cos, self.sin)
        return self.head(self.norm(x))


def shape(v, a):
    dim, layers, heads, ffn = v
    return SimpleNamespace(dim=dim, layers=layers, heads=heads, kv_heads=heads, ffn=ffn, vocab=a.vocab, seq=a.seq)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--teacher", type=int, nargs=4, default=[288, 6, 6, 768], metavar=("DIM", "LAYERS", "HEADS", "FFN"))
    p.add_argument("--student", type=int, nargs=4, default=[64, 4, 4, 192], metavar=("DIM", "LAYERS", "HEADS", "FFN"))
    p.add_argument("--vocab", type=int, default=32000)
    p.add_argument("--seq", type=int, default=256)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--kd-ratio", type=float, default=0.5)
    p.add_argument("--temperature", type=float, default=2.0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()

    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    teacher = Body(shape(a.teacher, a)).eval()
    student = Body(shape(a.student, a))
    opt = torch.optim.AdamW(student.parameters(), lr=1e-3, betas=(0.9, 0.95), weight_decay=0.1, fused=False, foreach=True)
    T, r = a.temperature, a.kd_ratio
    times, tts, losses = [], [], []
    for step in range(a.warmup + a.steps):
        w = torch.randint(0, a.vocab, (a.batch, a.seq + 1))
        x, y = w[:, :-1], w[:, 1:]
        t0 = time.perf_counter()
        with torch.no_grad():
            tl = teacher.logits(x).view(-1, a.vocab)
        t1 = time.perf_counter()
        sl = student.logits(x).view(-1, a.vocab)
        ce = F.cross_entropy(sl, y.reshape(-1))
        kl = F.kl_div(F.log_softmax(sl / T, -1), F.log_softmax(tl / T, -1), log_target=True, reduction="batchmean")
        loss = (1 - r) * ce + r * T * T * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0)
        opt.step()
        dt = time.perf_counter() - t0
        losses.append(loss.item())
        if step >= a.warmup:
            times.append(dt)
            tts.append(t1 - t0)
    tok = a.batch * a.seq
    print(json.dumps({
        "impl": f"pytorch {torch.__version__} eager",
        "threads": a.threads,
        "teacher_params": sum(p.numel() for p in teacher.parameters()),
        "student_params": sum(p.numel() for p in student.parameters()),
        "tok_per_s": round(tok * len(times) / sum(times), 1),
        "step_ms": round(1000 * sum(times) / len(times), 1),
        "best_step_ms": round(1000 * min(times), 1),
        "teacher_ms": round(1000 * sum(tts) / len(tts), 1),
        "first_loss": round(losses[0], 4),
        "last_loss": round(losses[-1], 4),
    }))


if __name__ == "__main__":
    main()
