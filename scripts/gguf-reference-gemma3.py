#!/usr/bin/env python3
"""Independent reference for `kvtc convert-gguf` on Gemma 3 text GGUFs: transformers loads the same
GGUF (its own dequantizers, its own `norm.weight - 1`, Gemma3ForCausalLM with Gemma3TextConfig's
defaults for what the file omits, its own tokenizer builder) and this script records token ids and
logits that test/gguf/gemma3.test.ts compares the converted ONNX model with, so CI checks against
them without torch. Gemma is provided under the Gemma Terms of Use (https://ai.google.dev/gemma/terms).

transformers, torch and gguf are a check, not a kvtc dependency; run it where they are installed:

    python scripts/gguf-reference-gemma3.py --gguf ~/.cache/kvtc/models/gemma3-270m/source/gemma-3-270m-q4_k_m.gguf \
        --out test/fixtures/gguf-reference/gemma3-270m.json

Recorded (float32 weights and compute, eager attention, batch 1, no padding):
  - ids of a long mixed text (English, code, digits, unicode, emoji, whitespace runs, tabs,
    Gemma's control and user-defined tokens written as text);
  - per prompt, the top-k logits (ids and values) and the log-sum-exp of all logits at every
    position; the last prompt is longer than the 512-token sliding window, so the local layers'
    masking decides its later positions (`window_effect` says by how much: the largest logit change
    when the window is lifted, measured here);
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

HERE = os.path.dirname(os.path.abspath(__file__))

PROMPTS = [
    "The capital of France is",
    "<start_of_turn>user\nWrite a haiku about the sea.<end_of_turn>\n<start_of_turn>model\n",
    "def fibonacci(n):\n    if n < 2:\n        return n\n    return",
]
# Public-domain text (calibration-data/, see its SOURCES); cut to LONG_CHARS characters: about 640 tokens.
LONG_FILE = os.path.join(HERE, "..", "calibration-data", "inaugural-1913-Wilson.txt")
LONG_CHARS = 3000
WINDOW = 512

MIXED = (
    "The quick brown fox jumps over the lazy dog. It's 3:45pm on 2024-03-15; price: $1,234.56 (≈€1.130,00)!\n"
    "  Leading spaces,\ttabs\t\tand   runs of    spaces.\n\n\nThree newlines above; trailing spaces   \n"
    "def fib(n):\n    if n < 2:\n        return n\n    return fib(n - 1) + fib(n - 2)  # recursion\n\n"
    "<start_of_turn>user\nWhat is the capital of France?<end_of_turn>\n<start_of_turn>model\nParis.<end_of_turn>\n"
    "Unicode: café, naïve, Straße, Ελληνικά, русский текст, עברית, العربية, हिन्दी, 日本語のテキスト, 中文字符, 한국어.\n"
    "Emoji: 😀🎉👍🏽 and 🇫🇷; math: ∑ᵢ xᵢ² ≤ ∞, √2 ≈ 1.41421356; symbols: © ® ™ § ¶ † ‡ • … ‰ ′ ″.\n"
    'URLs https://example.com/path?q=1&r=2#frag and emails someone@example.org; JSON {"a": [1, 2.5e-3, null]}.\n'
    "Repeated: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa bbbbbbbbbbbb !!!!!!!!!! ........ ---------- ==========\n"
    "Mixed\r\nline endings\rand a form\x0cfeed, a control \x07 bell, zero-width\u200bjoiner, NBSP\u00a0here.\n"
    '<bos> inside text, <eos>, <pad>, <unk>, <mask>, [multimodal], <unused0> and <b>html</b> <div class="x">.\n'
    "Numbers 0 1 12 123 1234 12345 123456 3.14159 -42 +7 1e10 0x1F 0b1010 ½ ¾ ① Ⅻ.\n"
    "   \t \n\t\t\tindented with tabs\n" + "End of the mixed text, with a final space "
)

TOP_K = 20
TOP_K_LONG = 10
GREEDY_TOKENS = 12


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def record(text, ids, logits, k):
    top = torch.topk(logits, k, dim=-1)
    return {
        "text": text,
        "ids": ids,
        "top_ids": top.indices.tolist(),
        "top_logits": [[round(v, 5) for v in row] for row in top.values.tolist()],
        "logsumexp": [round(v, 5) for v in torch.logsumexp(logits.double(), dim=-1).tolist()],
    }


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
    cfg = model.config
    if cfg.sliding_window != WINDOW:
        raise SystemExit(f"expected a {WINDOW}-token sliding window, the GGUF says {cfg.sliding_window}")

    def ids_of(text):
        return tok(text, add_special_tokens=True)["input_ids"]

    with open(LONG_FILE, encoding="utf-8") as f:
        long_text = f.read()[:LONG_CHARS]
    prompts = []
    greedy = None
    window_effect = None
    with torch.no_grad():
        for i, text in enumerate(PROMPTS + [long_text]):
            ids = ids_of(text)
            is_long = i == len(PROMPTS)
            logits = model(torch.tensor([ids])).logits[0].float()  # [seq, vocab]
            prompts.append(record(text, ids, logits, TOP_K_LONG if is_long else TOP_K))
            if is_long:
                if len(ids) <= WINDOW + 64:
                    raise SystemExit(f"the long prompt is {len(ids)} tokens; it must pass the {WINDOW}-token window")
                # How much the local layers' window matters: lift it and measure the change past it.
                cfg.sliding_window = 1 << 20
                unwindowed = model(torch.tensor([ids])).logits[0].float()
                cfg.sliding_window = WINDOW
                again = model(torch.tensor([ids])).logits[0].float()
                if not torch.equal(again, logits):
                    raise SystemExit("restoring sliding_window did not restore the logits")
                window_effect = {
                    "prompt": i,
                    "first_position": WINDOW,
                    "max_abs_logit_change_without_window": round(float((unwindowed[WINDOW:] - logits[WINDOW:]).abs().max()), 4),
                    "max_abs_logit_change_before_window": round(float((unwindowed[:WINDOW] - logits[:WINDOW]).abs().max()), 6),
                }
            if i == 0:
                seq = list(ids)
                steps = []
                for _ in range(GREEDY_TOKENS):
                    last = model(torch.tensor([seq])).logits[0, -1].float()
                    t2 = torch.topk(last, 2)
                    steps.append({"id": int(t2.indices[0]), "margin": round(float(t2.values[0] - t2.values[1]), 5)})
                    seq.append(int(t2.indices[0]))
                greedy = {"prompt": 0, "steps": steps, "text": tok.decode([s["id"] for s in steps])}

    out = {
        "about": "transformers' reading of the Gemma 3 GGUF (scripts/gguf-reference-gemma3.py): token ids and float32 logits the converted ONNX model is checked against. Gemma is provided under the Gemma Terms of Use (https://ai.google.dev/gemma/terms).",
        "gguf": {"file": name, "sha256": sha256(args.gguf)},
        "versions": {
            "python": platform.python_version(),
            "transformers": transformers.__version__,
            "torch": torch.__version__,
            "gguf": _dist_version("gguf"),
        },
        "settings": {
            "dtype": "float32",
            "attn_implementation": "eager",
            "top_k": TOP_K,
            "top_k_long": TOP_K_LONG,
            "add_special_tokens": True,
        },
        "config": {
            k: getattr(cfg, k, None)
            for k in (
                "sliding_window",
                "layer_types",
                "query_pre_attn_scalar",
                "rope_parameters",
                "hidden_activation",
                "final_logit_softcapping",
                "attn_logit_softcapping",
            )
        },
        "long_text": {"text": MIXED, "ids": ids_of(MIXED)},
        "prompts": prompts,
        "window_effect": window_effect,
        "greedy": greedy,
    }
    tmp = args.out + ".tmp"
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(out, f, ensure_ascii=False, separators=(",", ":"), default=str)
        f.write("\n")
    os.replace(tmp, args.out)
    print(
        f"wrote {args.out} ({os.path.getsize(args.out)} bytes); long prompt {len(prompts[-1]['ids'])} tokens; "
        f"window effect {window_effect}; greedy: {greedy['text']!r}",
        file=sys.stderr,
    )


def _dist_version(name):
    from importlib.metadata import version

    return version(name)


if __name__ == "__main__":
    main()
