"""End to end on transformers' own models (issue 20): tiny random-weight models of each family
(tiny_models.py: Llama, Qwen3, Qwen3-MoE, Gemma 3, Phi-3, SmolLM3, DeepSeek-V3 MLA, Qwen3-Next
hybrid), built from small configs, nothing downloaded.

- ONNX: the same random Llama / Qwen3 exported with torch.onnx; the KV `kvtc capture` (Node, ONNX
  Runtime) writes for a prompt equals the Python capture's (kvtc.capture, transformers) of it.
- Feed-back: a cache put back into the transformers model gives the next tokens' logits of the
  uncompressed run, and a wrong cache does not (so the closeness checked below has teeth).

These tests need torch, transformers (with its tokenizers) and, for the export, onnx; where any is
missing they fail with the command that installs them (never a skip). They run `node bin/kvtc.js`,
which needs `npm ci && npm run build` first.
"""

from __future__ import annotations

import pathlib
import shutil
import subprocess

import kvtc
import numpy as np
import pytest
from kvtc_testutil import PYTHON_DIR

REPO = PYTHON_DIR.parent
KVTC_JS = REPO / "bin" / "kvtc.js"
INSTALL = "python3 -m pip install torch transformers onnx"

#: `kvtc capture` (ORT, float32) against the Python capture (torch, float32) of the same ids: per layer
#: and kind, max |Δ| / max |x|. Measured ≤ 6e-7 (Llama, Qwen3; 300 tokens in 3 chunks); float32
#: reassociation between the two runtimes is the whole difference.
ONNX_REL_TOL = 1e-5
#: A cache put back unchanged reproduces the full run's logits: measured max |Δlogit| ≤ 3e-7.
SELF_LOGIT_ATOL = 1e-5
#: A wrong cache (another prompt's) must move the next tokens' distribution by at least this KL
#: (measured 0.10–0.77 over the families), else the feed-back checks could not tell a good decode
#: from a bad one.
WRONG_CACHE_MIN_KL = 0.03


@pytest.fixture(scope="session")
def tm():
    """tiny_models, imported only here: without torch/transformers every test fails with the fix."""
    try:
        import tiny_models
    except ImportError as e:
        pytest.fail(f"the end-to-end KV tests need torch and transformers ({e}); install them: {INSTALL}", pytrace=False)
    return tiny_models


def node_kvtc(*args: str, cwd: pathlib.Path) -> subprocess.CompletedProcess:
    node = shutil.which("node")
    if node is None:
        pytest.fail("the end-to-end KV tests run `node bin/kvtc.js`; install Node.js 20.15+", pytrace=False)
    if not (REPO / "dist" / "cli" / "main.js").exists():
        pytest.fail(f"{REPO / 'dist'} is not built; run `npm ci && npm run build` in {REPO}", pytrace=False)
    r = subprocess.run([node, str(KVTC_JS), *args], cwd=cwd, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, f"kvtc {' '.join(args)} exited {r.returncode}:\n{r.stdout}\n{r.stderr}"
    return r


def prompt(n: int, seed: int) -> list:
    """n token ids, with repeats (kvtc's RoPE data check compares keys of a token at two positions)."""
    return [int(i) for i in np.random.default_rng(seed).integers(0, 96, n)]


# ------------------------------------------------------------------------------------------------
# ONNX export: kvtc capture equals transformers


@pytest.mark.parametrize("family", ["llama", "qwen3"])
def test_kvtc_capture_of_the_onnx_export_equals_transformers(tm, tmp_path, family):
    try:
        import onnx  # noqa: F401  (torch.onnx's TorchScript exporter imports it to write the file)
    except ImportError as e:
        pytest.fail(f"exporting the model to ONNX needs the onnx package ({e}); install it: {INSTALL}", pytrace=False)
    model = tm.build(family)
    d = tm.export_onnx(model, tmp_path / family)
    ids = prompt(300, seed=3)
    (tmp_path / "prompt.txt").write_text(tm.words(ids), "utf-8")
    # --chunk 128: three forward passes, with past lengths 0, 128 and 256, so the export's dynamic
    # past axis (and its empty past) is exercised, not only the shapes it was traced with.
    out = tmp_path / "kv.safetensors"
    node_kvtc("capture", "--model", str(d), "--text", "prompt.txt", "--out", str(out), "--chunk", "128", "--json", cwd=tmp_path)
    cap = kvtc.read_kv_safetensors(out)
    # The Python capture (python/kvtc/capture.py) of the same model on the same ids.
    from kvtc import capture

    capture.capture(model, [ids], str(tmp_path / "dump"), name=family)
    ref = read_dump_sequence(tmp_path / "dump" / "seq-000000.safetensors", range(model.config.num_hidden_layers))
    assert cap.start_position == 0 and len(cap.layers) == len(ref) == model.config.num_hidden_layers
    for l, ((k, v), (rk, rv)) in enumerate(zip(cap.layers, ref)):
        for kind, a, b in (("key", k, rk), ("value", v, rv)):
            assert a.shape == b.shape == (2, 300, 16), (l, kind)
            rel = float(np.max(np.abs(a.astype(np.float64) - b)) / np.max(np.abs(b)))
            assert rel <= ONNX_REL_TOL, f"{family} layer {l} {kind}: max |Δ| / max |x| = {rel:.2e}"


# ------------------------------------------------------------------------------------------------
# Feed-back: the helper the compressed-cache checks rely on


@pytest.mark.parametrize("family", ["llama", "qwen3", "qwen3_moe", "gemma3_text", "phi3", "smollm3", "deepseek_v3", "qwen3_next"])
def test_a_cache_fed_back_reproduces_the_run_and_a_wrong_one_does_not(tm, family):
    import torch

    model = tm.build(family)
    ids, other, nxt = prompt(160, seed=1), prompt(160, seed=2), prompt(4, seed=4)
    cache, _ = tm.prefill(model, ids)
    kv = tm.cache_kv(model, cache)
    if tm.is_mla(model):  # the dump's MLA layout: key k_rot [1, T, qk_rope_head_dim], value c_kv [1, T, kv_lora_rank]
        assert [(k.shape, v.shape) for k, v in kv] == [((1, 160, 8), (1, 160, 32))] * 4
    assert len(kv) == len(tm.cache_layers(model))
    with torch.no_grad():
        full = model(input_ids=torch.tensor([ids + nxt])).logits[0, -4:].double().numpy()
    same = tm.feed_back(model, cache, kv, nxt)
    assert np.max(np.abs(same - full)) <= SELF_LOGIT_ATOL
    wrong = tm.feed_back(model, cache, tm.cache_kv(model, tm.prefill(model, other)[0]), nxt)
    assert tm.logit_gap(wrong, full)[1] >= WRONG_CACHE_MIN_KL


# ------------------------------------------------------------------------------------------------
# The chain: Python capture → kvtc calibrate --kv → encode → decode → fed back into the model

#: Calibration: 5 sequences of 128 tokens (the fit, tuning and report sets need 256 + 128 + 128),
#: and one held-out prompt of 160 tokens that is encoded, decoded and fed back.
CAL_SEQUENCES, CAL_LEN, PROMPT_LEN, NEXT = 5, 128, 160, 4
#: --sink 4 --window 16: 140 of the prompt's 160 tokens go through the codec.
SINK, WINDOW = 4, 16
RATIO = "4"


def read_dump_sequence(path: pathlib.Path, cache_layers) -> list:
    """[(key, value)] [kv_heads, tokens, dim] float32 of one dump sequence file, per cache layer."""
    from kvtc import _safetensors

    buf = path.read_bytes()
    infos, _ = _safetensors.parse(buf)
    return [tuple(_safetensors.array(buf, infos[f"present.{l}.{k}"])[0].astype(np.float32) for k in ("key", "value")) for l in cache_layers]


def calibrate_kv(dump: pathlib.Path, out: pathlib.Path, *extra: str) -> subprocess.CompletedProcess:
    return node_kvtc(
        "calibrate", "--kv", str(dump), "--out", str(out), "--ratio", RATIO,
        "--tokens", "256", "--tuning-tokens", "128", "--report-tokens", "128",
        "--sink", str(SINK), "--window", str(WINDOW), "--json", "--quiet", *extra,
        cwd=out.parent,
    )  # fmt: skip


class Chain:
    """One family's model, its calibration dump, and its held-out prompt captured the same way."""

    def __init__(self, tm, family: str, tmp: pathlib.Path):
        from kvtc import capture

        self.tm, self.family, self.tmp = tm, family, tmp
        self.model = tm.build(family)
        self.layers = tm.cache_layers(self.model)
        self.dump = tmp / "dump"
        capture.capture(self.model, [prompt(CAL_LEN, seed=10 + s) for s in range(CAL_SEQUENCES)], str(self.dump), name=family)
        self.ids, self.next = prompt(PROMPT_LEN, seed=1), prompt(NEXT, seed=4)
        capture.capture(self.model, [self.ids], str(tmp / "prompt"), name=family)
        self.kv = read_dump_sequence(tmp / "prompt" / "seq-000000.safetensors", self.layers)
        self.cache, _ = tm.prefill(self.model, self.ids)
        self.reference = tm.feed_back(self.model, self.cache, self.kv, self.next)

    def gap(self, decoded) -> tuple:
        return self.tm.logit_gap(self.tm.feed_back(self.model, self.cache, decoded, self.next), self.reference)


def rel_err(decoded, original) -> np.ndarray:
    """‖x̂ − x‖ / ‖x‖ over the compressed tokens, per layer and kind: [layers, 2]."""
    s, e = SINK, PROMPT_LEN - WINDOW
    return np.array(
        [
            [float(np.linalg.norm((np.float64(d) - o)[:, s:e]) / np.linalg.norm(np.float64(o)[:, s:e])) for d, o in zip(dl, ol)]
            for dl, ol in zip(decoded, original)
        ]
    )
