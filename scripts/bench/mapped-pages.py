#!/usr/bin/env python3
"""Pages of a model file mapped into a running process, per 16 MiB of the file
(/proc/PID/pagemap's present bit; run as root to read another process's pagemap).

    scripts/bench/mapped-pages.py PID FILE_NAME_PART
e.g. while `smelt -t 2 bench F.gguf -p 512 -n 0 -r 1` runs: mapped-pages.py $(pgrep -f 'smelt -t 2 bench') F.gguf
"""
import struct, sys
from collections import Counter

pid, name = int(sys.argv[1]), sys.argv[2]
for line in open(f"/proc/{pid}/maps"):
    if name in line:
        a, b = (int(x, 16) for x in line.split()[0].split("-"))
        break
else:
    sys.exit(f"no mapping of {name} in process {pid}")
n = (b - a) // 4096
with open(f"/proc/{pid}/pagemap", "rb") as f:
    f.seek(a // 4096 * 8)
    data = f.read(n * 8)
present = [i for i in range(n) if struct.unpack_from("<Q", data, i * 8)[0] >> 63]
print(f"mapped: {len(present) * 4 / 1024:.1f} MiB of {n * 4 / 1024:.1f} MiB")
for k, c in sorted(Counter(p * 4096 // (16 << 20) for p in present).items()):
    print(f"  from {k * 16:5d} MiB: {c * 4 / 1024:.1f} MiB")
