#!/usr/bin/env python3
"""Resident memory of a command over time, by kind of mapping (/proc/PID/smaps every few
ms): anonymous maps (smelt's packed weights, big buffers), the C heap, the model file,
the binary, shared libraries. Prints a line whenever a figure changes by 1 MiB.

    scripts/bench/rss-timeline.py target/release/smelt -t 2 bench MODEL.gguf -p 512 -n 16 -r 1
"""
import collections, re, subprocess, sys, time

p = subprocess.Popen(sys.argv[1:], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
rows, t0 = [], time.time()
while p.poll() is None:
    try:
        txt = open(f"/proc/{p.pid}/smaps").read()
    except OSError:
        break
    kb, kind = collections.Counter(), None
    for line in txt.splitlines():
        if re.match(r"^[0-9a-f]+-[0-9a-f]+ ", line):
            parts = line.split()
            path = parts[5] if len(parts) > 5 else ""
            kind = ("model" if path.endswith((".gguf", ".safetensors")) else "heap" if path == "[heap]"
                    else "anon" if not path else "binary" if path == sys.argv[1] or path.endswith("/" + sys.argv[1].split("/")[-1]) else "libs")
        elif line.startswith("Rss:"):
            kb[kind] += int(line.split()[1])
    rows.append((time.time() - t0, kb))
    time.sleep(0.002)
print(p.stdout.read().decode(errors="replace")[-400:])
last = None
for t, kb in rows:
    key = tuple(round(kb[k] / 1024) for k in ("anon", "heap", "model", "binary", "libs"))
    if key != last:
        print(f"{t:7.3f} s  anon {key[0]:5} heap {key[1]:4} model {key[2]:5} binary {key[3]:3} libs {key[4]:3}  total {sum(key)} MiB")
    last = key
