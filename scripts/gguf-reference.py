#!/usr/bin/env python3
"""Independent reference for `kvtc convert-gguf`: transformers loads the same GGUF (its own
dequantizers, its own un-permutation of the q/k rows, its own tokenizer builder) and this script
records token ids and logits that test/gguf/smollm2.test.ts compares the converted ONNX model
with, so CI checks against them without torch.

transformers, torch and gguf are a check, not a kvtc dependency; run it where they are installed:

    python scripts/gguf-reference.py --gguf ~/.cache/kvtc/models/smollm2-135m-instruct/source/SmolLM2-135M-Instruct.Q4_1.gguf \
        --out test/fixtures/gguf-reference/smollm2-135m.json

Recorded (float32 weights and compute, eager attention, batch 1, no padding):
  - ids of each prompt and of a long mixed text (English, code, digits, unicode, emoji, whitespace runs),
    and of that text with the same vocabulary under Llama 3's pre-tokenizer (tokenizer.ggml.pre = llama-bpe);
  - per prompt, the top-20 logits (ids and values) at every position;
  - the full-vocabulary logits at the last position of the first prompt (4 decimals);
  - a greedy continuation of the first prompt with each step's top-1 margin over the runner-up.
"""

import argparse
import hashlib
import json
import os
import platform
import sys

import torch
import transformers
from transformers import AutoModelForCausalLM, AutoTokenizer

PROMPTS = [
    "The capital of France is",
    "def fibonacci(n):\n    if n < 2:\n        return n\n    return",
    "<|im_start|>user\nWhat is 12 + 30?<|im_end|>\n<|im_start|>assistant\n",
]

LONG_TEXT = (
    "The quick brown fox jumps over the lazy dog. It's 3:45 p.m. on 2024-02-29, and the total is $1,234,567.89 (≈ €1.1M).\n"
    "    def add(a, b):\n        return a + b  # tabs\tand   spaces\n\n\n"
    "Unicode: naïve café, Straße, Ωμέγα, русский текст, 日本語のテキスト, 한국어, עברית, العربية.\n"
    "Emoji: 😀👍🏽🇫🇷 👨‍👩‍👧‍👦 — dashes – and “quotes” ‘single’ …\n"
    "Numbers: 0 7 42 123 4567 89012 3.14159 1e-5 0x1F 1_000_000\n"
    "Code: for (let i = 0; i < n; i++) { sum += arr[i] * 2; } // C-style\n"
    "<|im_start|>user\nHi!<|im_end|>\n"
    "   leading spaces,trailing spaces   \r\nCRLF line\n\tTabbed\n"
    "URL: https://example.com/path?q=a&b=c#frag and e-mail someone@example.org.\n"
    "I'm, you're, he'll, we've, they'd: contractions. ALL CAPS AND MiXeD cAsE words.\n"
)

TOP_K = 20
GREEDY_TOKENS = 12


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gguf", required=True, help="the .gguf file")
    ap.add_argument("--out", required=True, help="JSON file to write")
    args = ap.parse_args()

    torch.manual_seed(0)
    torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))
    directory, name = os.path.split(os.path.abspath(args.gguf))
    tok = AutoTokenizer.from_pretrained(directory, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(directory, gguf_file=name, dtype=torch.float32, attn_implementation="eager")
    model.eval()

    def ids_of(text):
        return tok(text, add_special_tokens=True)["input_ids"]

    prompts = []
    full_last = None
    greedy = None
    with torch.no_grad():
        for i, text in enumerate(PROMPTS):
            ids = ids_of(text)
            logits = model(torch.tensor([ids])).logits[0].float()  # [seq, vocab]
            top = torch.topk(logits, TOP_K, dim=-1)
            prompts.append(
                {
                    "text": text,
                    "ids": ids,
                    "top_ids": top.indices.tolist(),
                    "top_logits": [[round(v, 5) for v in row] for row in top.values.tolist()],
                }
            )
            if i == 0:
                full_last = [round(v, 4) for v in logits[-1].tolist()]
                seq = list(ids)
                steps = []
                for _ in range(GREEDY_TOKENS):
                    last = model(torch.tensor([seq])).logits[0, -1].float()
                    t2 = torch.topk(last, 2)
                    steps.append({"id": int(t2.indices[0]), "margin": round(float(t2.values[0] - t2.values[1]), 5)})
                    seq.append(int(t2.indices[0]))
                greedy = {"prompt": 0, "steps": steps, "text": tok.decode([s["id"] for s in steps])}

    # The same vocabulary under Llama 3's split (tokenizer.ggml.pre = llama-bpe), through transformers'
    # own GGUF tokenizer builder: checks kvtc's reading of that pre-tokenizer on real merges.
    from transformers.integrations.gguf.gguf_tokenizer_mapping import convert_gguf_tokenizer, get_gguf_tokenizer

    arch, tokenizer_dict, _ = get_gguf_tokenizer(args.gguf)
    llama_bpe, _ = convert_gguf_tokenizer(arch, dict(tokenizer_dict, pre_tokenizer_type="llama-bpe"))
    llama_bpe_ids = llama_bpe.encode(LONG_TEXT, add_special_tokens=False).ids

    out = {
        "about": "transformers' reading of the GGUF (scripts/gguf-reference.py): token ids and float32 logits the converted ONNX model is checked against",
        "gguf": {"file": name, "sha256": sha256(args.gguf)},
        "versions": {
            "python": platform.python_version(),
            "transformers": transformers.__version__,
            "torch": torch.__version__,
            "gguf": __import__("gguf").__version__ if hasattr(__import__("gguf"), "__version__") else _dist_version("gguf"),
        },
        "settings": {"dtype": "float32", "attn_implementation": "eager", "top_k": TOP_K, "add_special_tokens": True},
        "long_text": {"text": LONG_TEXT, "ids": ids_of(LONG_TEXT), "ids_pre_llama_bpe": llama_bpe_ids},
        "prompts": prompts,
        "last_logits": {"prompt": 0, "position": len(prompts[0]["ids"]) - 1, "values": full_last},
        "greedy": greedy,
    }
    tmp = args.out + ".tmp"
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(out, f, ensure_ascii=False, separators=(",", ":"))
        f.write("\n")
    os.replace(tmp, args.out)
    print(f"wrote {args.out} ({os.path.getsize(args.out)} bytes); greedy: {greedy['text']!r}", file=sys.stderr)


def _dist_version(name):
    from importlib.metadata import version

    return version(name)


if __name__ == "__main__":
    main()
