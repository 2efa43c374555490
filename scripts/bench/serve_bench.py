#!/usr/bin/env python3
"""Aggregate generation throughput of an OpenAI-compatible server at several concurrencies.

Works against `smelt serve` and llama.cpp's `llama-server` alike (standard library only):

    python3 scripts/bench/serve_bench.py --url http://127.0.0.1:8080 --streams 1 4 8

For each concurrency C, C client threads each send --requests completions one after another
(`/v1/completions`, a distinct short prompt per request, `max_tokens` = --max-tokens,
`ignore_eos` so every reply has the same length, temperature 0). Reported per C:

* aggregate tok/s = completion tokens of all requests / wall time of the whole round;
* per-stream tok/s = mean over requests of completion tokens / request latency;
* mean latency.

A warm-up request runs first and is not counted.
"""
import argparse
import json
import statistics
import threading
import time
import urllib.request

TOPICS = [
    "a lighthouse keeper", "the history of tea", "a robot learning to paint", "rivers in winter",
    "an old library", "the first snow", "a sailor's letter", "a mountain village", "city lights",
    "a lost umbrella", "the smell of rain", "a chess tournament", "the northern lights",
    "a baker at dawn", "a forgotten song", "the last train home",
]


MODEL = None  # the first id /v1/models lists


def model_id(url, api_key, timeout):
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    req = urllib.request.Request(url + "/v1/models", headers=headers)
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return json.loads(r.read())["data"][0]["id"]


def complete(url, prompt, max_tokens, api_key, timeout):
    body = json.dumps({
        "model": MODEL, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0,
        "ignore_eos": True, "stream": False,
    }).encode()
    headers = {"Content-Type": "application/json"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    req = urllib.request.Request(url + "/v1/completions", data=body, headers=headers)
    t0 = time.perf_counter()
    with urllib.request.urlopen(req, timeout=timeout) as r:
        reply = json.loads(r.read())
    dt = time.perf_counter() - t0
    return reply["usage"]["completion_tokens"], dt


def round_at(args, streams):
    results, errors = [], []
    lock = threading.Lock()

    def client(k):
        for j in range(args.requests):
            topic = TOPICS[(k * args.requests + j) % len(TOPICS)]
            prompt = f"Client {k}, request {j}. Write a long story about {topic}."
            try:
                n, dt = complete(args.url, prompt, args.max_tokens, args.api_key, args.timeout)
                with lock:
                    results.append((n, dt))
            except Exception as e:  # noqa: BLE001 - report every failure, keep going
                with lock:
                    errors.append(repr(e))

    threads = [threading.Thread(target=client, args=(k,)) for k in range(streams)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    tokens = sum(n for n, _ in results)
    return {
        "streams": streams,
        "requests": len(results),
        "errors": len(errors),
        "completion_tokens": tokens,
        "wall_s": round(wall, 2),
        "aggregate_tok_s": round(tokens / wall, 1),
        "per_stream_tok_s": round(statistics.mean(n / dt for n, dt in results), 1) if results else 0,
        "mean_latency_s": round(statistics.mean(dt for _, dt in results), 2) if results else 0,
    }


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", default="http://127.0.0.1:8080")
    p.add_argument("--streams", type=int, nargs="+", default=[1, 4, 8])
    p.add_argument("--requests", type=int, default=2, help="requests per client per round")
    p.add_argument("--max-tokens", type=int, default=128)
    p.add_argument("--api-key", default=None)
    p.add_argument("--timeout", type=float, default=600)
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    global MODEL
    MODEL = model_id(args.url, args.api_key, args.timeout)

    complete(args.url, "Warm-up.", 8, args.api_key, args.timeout)
    rows = [round_at(args, s) for s in args.streams]
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    print(f"{'streams':>7} {'requests':>8} {'errors':>6} {'tokens':>7} {'wall s':>7} {'aggregate tok/s':>15} {'per-stream tok/s':>16}")
    for r in rows:
        print(f"{r['streams']:>7} {r['requests']:>8} {r['errors']:>6} {r['completion_tokens']:>7} {r['wall_s']:>7} "
              f"{r['aggregate_tok_s']:>15} {r['per_stream_tok_s']:>16}")


if __name__ == "__main__":
    main()
