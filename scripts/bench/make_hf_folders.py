#!/usr/bin/env python3
"""Random-weight Hugging Face model folders of every architecture smelt converts, for
checking `smelt quantize FOLDER` against llama.cpp (scripts/bench/compare-convert.sh).

    python3 scripts/bench/make_hf_folders.py TOKENIZER_DIR OUT_DIR
    python3 scripts/bench/make_hf_folders.py --tinyllama TOKENIZER_DIR OUT_DIR

The second form writes one TinyLlama-shaped f32 Llama folder (3.9 GB; hidden 2048, 22
layers, ffn 5632, 32/4 heads, untied) for timing and memory of a big conversion; its
weights repeat one block of 2^20 random values, which is all a memory figure needs.

Python's standard library only: weights are drawn with `random` (seeded per folder) and
written as f32 safetensors under transformers' names; configs are what transformers'
`save_pretrained` writes for each family (the keys smelt and convert_hf_to_gguf.py read).
The tokenizer folder (tokenizer.json + tokenizer_config.json) is copied into each.
"""

import json
import os
import random
import shutil
import struct
import sys
from array import array

HIDDEN, FFN, LAYERS, HEADS, KV_HEADS, HEAD_DIM, CTX = 256, 512, 4, 4, 2, 64, 512

ARCHS = {
    # Llama 3.x rope scaling: factors as a rope_freqs tensor in the GGUF.
    "llama": {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "tie_word_embeddings": False,
              "rope_theta": 500000.0,
              "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                               "original_max_position_embeddings": 64}},
    "mistral": {"model_type": "mistral", "architectures": ["MistralForCausalLM"], "tie_word_embeddings": False,
                "sliding_window": None, "rope_theta": 10000.0},
    "qwen2": {"model_type": "qwen2", "architectures": ["Qwen2ForCausalLM"], "tie_word_embeddings": True,
              "use_sliding_window": False, "rope_theta": 1000000.0},
    "qwen3": {"model_type": "qwen3", "architectures": ["Qwen3ForCausalLM"], "tie_word_embeddings": True,
              "head_dim": HEAD_DIM, "rope_theta": 1000000.0},
    "phi3": {"model_type": "phi3", "architectures": ["Phi3ForCausalLM"], "tie_word_embeddings": False,
             "rope_theta": 10000.0, "sliding_window": None},
    "gemma": {"model_type": "gemma", "architectures": ["GemmaForCausalLM"], "tie_word_embeddings": True,
              "head_dim": HEAD_DIM, "hidden_activation": "gelu_pytorch_tanh", "rope_theta": 10000.0},
    "gemma2": {"model_type": "gemma2", "architectures": ["Gemma2ForCausalLM"], "tie_word_embeddings": True,
               "head_dim": HEAD_DIM, "hidden_activation": "gelu_pytorch_tanh", "query_pre_attn_scalar": HEAD_DIM,
               "attn_logit_softcapping": 50.0, "final_logit_softcapping": 30.0, "sliding_window": 64,
               "rope_theta": 10000.0},
    "gemma3": {"model_type": "gemma3_text", "architectures": ["Gemma3ForCausalLM"], "tie_word_embeddings": True,
               "head_dim": HEAD_DIM, "hidden_activation": "gelu_pytorch_tanh", "query_pre_attn_scalar": HEAD_DIM,
               "sliding_window": 64, "rope_theta": 1000000.0, "rope_local_base_freq": 10000.0,
               "num_hidden_layers": 6},
}


def tensors(arch, cfg, vocab):
    """(name, shape, kind) in transformers' naming; kind: matrix, norm, bias."""
    layers = cfg.get("num_hidden_layers", LAYERS)
    q, kv = HEADS * HEAD_DIM, KV_HEADS * HEAD_DIM
    out = [("model.embed_tokens.weight", (vocab, HIDDEN), "matrix"), ("model.norm.weight", (HIDDEN,), "norm")]
    if not cfg["tie_word_embeddings"]:
        out.append(("lm_head.weight", (vocab, HIDDEN), "matrix"))
    for i in range(layers):
        p = f"model.layers.{i}."
        out += [(p + "input_layernorm.weight", (HIDDEN,), "norm"), (p + "post_attention_layernorm.weight", (HIDDEN,), "norm"),
                (p + "self_attn.o_proj.weight", (HIDDEN, q), "matrix"), (p + "mlp.down_proj.weight", (HIDDEN, FFN), "matrix")]
        if arch == "phi3":
            out += [(p + "self_attn.qkv_proj.weight", (q + 2 * kv, HIDDEN), "matrix"),
                    (p + "mlp.gate_up_proj.weight", (2 * FFN, HIDDEN), "matrix")]
        else:
            out += [(p + "self_attn.q_proj.weight", (q, HIDDEN), "matrix"), (p + "self_attn.k_proj.weight", (kv, HIDDEN), "matrix"),
                    (p + "self_attn.v_proj.weight", (kv, HIDDEN), "matrix"), (p + "mlp.gate_proj.weight", (FFN, HIDDEN), "matrix"),
                    (p + "mlp.up_proj.weight", (FFN, HIDDEN), "matrix")]
        if arch == "qwen2":
            out += [(p + f"self_attn.{n}_proj.bias", (d,), "bias") for n, d in (("q", q), ("k", kv), ("v", kv))]
        if arch in ("qwen3", "gemma3"):
            out += [(p + "self_attn.q_norm.weight", (HEAD_DIM,), "norm"), (p + "self_attn.k_norm.weight", (HEAD_DIM,), "norm")]
        if arch in ("gemma2", "gemma3"):
            out += [(p + "pre_feedforward_layernorm.weight", (HIDDEN,), "norm"),
                    (p + "post_feedforward_layernorm.weight", (HIDDEN,), "norm")]
    return out


def write_safetensors(path, items):
    header, blobs, offset = {}, [], 0
    for name, shape, data in items:
        raw = data.tobytes()
        header[name] = {"dtype": "F32", "shape": list(shape), "data_offsets": [offset, offset + len(raw)]}
        blobs.append(raw)
        offset += len(raw)
    h = json.dumps(header).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(path + ".tmp", "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for b in blobs:
            f.write(b)
    os.replace(path + ".tmp", path)


def vocab_size(tok_dir):
    tj = json.load(open(os.path.join(tok_dir, "tokenizer.json")))
    return len(tj["model"]["vocab"]) + len(tj.get("added_tokens", []))


def tinyllama(tok_dir, d):
    H, F, L, NH, KV = 2048, 5632, 22, 32, 4
    vocab = vocab_size(tok_dir)
    hd = H // NH
    rng = random.Random(0)
    block = array("f", [rng.gauss(0.0, 0.02) for _ in range(1 << 20)]).tobytes()
    names = [("model.embed_tokens.weight", (vocab, H)), ("model.norm.weight", (H,)), ("lm_head.weight", (vocab, H))]
    for i in range(L):
        p = f"model.layers.{i}."
        names += [(p + "input_layernorm.weight", (H,)), (p + "post_attention_layernorm.weight", (H,)),
                  (p + "self_attn.q_proj.weight", (H, H)), (p + "self_attn.k_proj.weight", (KV * hd, H)),
                  (p + "self_attn.v_proj.weight", (KV * hd, H)), (p + "self_attn.o_proj.weight", (H, H)),
                  (p + "mlp.gate_proj.weight", (F, H)), (p + "mlp.up_proj.weight", (F, H)), (p + "mlp.down_proj.weight", (H, F))]
    header, offset = {}, 0
    for name, shape in names:
        n = 1
        for x in shape:
            n *= x
        header[name] = {"dtype": "F32", "shape": list(shape), "data_offsets": [offset, offset + 4 * n]}
        offset += 4 * n
    h = json.dumps(header).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    os.makedirs(d, exist_ok=True)
    path = os.path.join(d, "model.safetensors")
    with open(path + ".tmp", "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for name, shape in names:
            lo, hi = header[name]["data_offsets"]
            if name.endswith("norm.weight"):
                f.write(array("f", [1.0] * ((hi - lo) // 4)).tobytes())
                continue
            left = hi - lo
            while left > 0:
                c = min(left, len(block))
                f.write(block[:c])
                left -= c
    os.replace(path + ".tmp", path)
    cfg = {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_size": H, "intermediate_size": F,
           "num_hidden_layers": L, "num_attention_heads": NH, "num_key_value_heads": KV, "vocab_size": vocab,
           "max_position_embeddings": 2048, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
           "tie_word_embeddings": False, "hidden_act": "silu"}
    json.dump(cfg, open(os.path.join(d, "config.json"), "w"), indent=2)
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(os.path.join(tok_dir, f), os.path.join(d, f))
    print(d)


def main():
    if sys.argv[1] == "--tinyllama":
        return tinyllama(sys.argv[2], sys.argv[3])
    tok_dir, out_dir = sys.argv[1], sys.argv[2]
    vocab = vocab_size(tok_dir)
    for seed, (arch, extra) in enumerate(ARCHS.items()):
        rng = random.Random(seed)
        cfg = {"hidden_size": HIDDEN, "intermediate_size": FFN, "num_hidden_layers": LAYERS, "num_attention_heads": HEADS,
               "num_key_value_heads": KV_HEADS, "max_position_embeddings": CTX, "rms_norm_eps": 1e-6, "vocab_size": vocab,
               "hidden_act": "silu", "torch_dtype": "float32", "bos_token_id": 0, "eos_token_id": 0}
        cfg.update(extra)
        # The folder name becomes general.name; llama.cpp treats a name containing "phi3"
        # as Phi-3's vocabulary and looks up its chat tokens, which this tokenizer lacks.
        d = os.path.join(out_dir, "random-" + arch.replace("phi3", "phi_3"))
        os.makedirs(d, exist_ok=True)
        items = []
        gemma = arch.startswith("gemma")
        for name, shape, kind in tensors(arch, cfg, vocab):
            n = 1
            for s in shape:
                n *= s
            if kind == "norm":
                # Gemma stores w for a (1 + w) scale.
                vals = [rng.uniform(-0.2, 0.2) + (0.0 if gemma else 1.0) for _ in range(n)]
            elif kind == "bias":
                vals = [rng.gauss(0.0, 0.1) for _ in range(n)]
            else:
                # Input embeddings of unit scale unless they are also the output matrix (or
                # Gemma scales them by sqrt(hidden)): logits of a few units either way.
                untied_input = name.endswith("embed_tokens.weight") and not gemma and not cfg["tie_word_embeddings"]
                std = 1.0 if untied_input else 0.06
                vals = [rng.gauss(0.0, std) for _ in range(n)]
            items.append((name, shape, array("f", vals)))
        write_safetensors(os.path.join(d, "model.safetensors"), items)
        json.dump(cfg, open(os.path.join(d, "config.json"), "w"), indent=2)
        for f in ("tokenizer.json", "tokenizer_config.json"):
            shutil.copy(os.path.join(tok_dir, f), os.path.join(d, f))
        print(d)


if __name__ == "__main__":
    main()
