#!/usr/bin/env python3
"""Compare two GGUF files tensor by tensor: same names, same types, identical bytes.

Used to check `smelt quantize` against llama-quantize (see docs/BENCHMARKS.md):

    smelt quantize IN.gguf ours.gguf --type q4_k_m
    llama-quantize --allow-requantize IN.gguf theirs.gguf Q4_K_M
    /root/.cache/smelt-dev/pyenv/bin/python scripts/bench/compare-quantize.py ours.gguf theirs.gguf

Needs numpy and the `gguf` package. Exits 1 when anything differs.
"""

import sys

import numpy as np
from gguf import GGUFReader


def main() -> int:
    a, b = GGUFReader(sys.argv[1]), GGUFReader(sys.argv[2])
    ta = {t.name: t for t in a.tensors}
    tb = {t.name: t for t in b.tensors}
    bad = 0
    if ta.keys() != tb.keys():
        print("tensor names differ:", sorted(ta.keys() ^ tb.keys()))
        bad += 1
    for n in sorted(ta.keys() & tb.keys()):
        x, y = ta[n], tb[n]
        if x.tensor_type != y.tensor_type:
            print(f"{n}: type {x.tensor_type.name} vs {y.tensor_type.name}")
            bad += 1
        elif not np.array_equal(np.asarray(x.data).view(np.uint8), np.asarray(y.data).view(np.uint8)):
            print(f"{n}: {x.tensor_type.name} bytes differ")
            bad += 1
    ka = {f.name for f in a.fields.values()}
    kb = {f.name for f in b.fields.values()}
    if ka != kb:
        print("metadata keys only in one file:", sorted(ka ^ kb))
    print(f"{len(ta)} tensors compared, {bad} differences")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
