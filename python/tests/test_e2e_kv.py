"""End to end on transformers' own models (issue 20): tiny random-weight models of each family
(tiny_models.py: Llama, Qwen3, Qwen3-MoE, Gemma 3, Phi-3, SmolLM3, DeepSeek-V3 MLA, Qwen3-Next
hybrid), built from small configs, nothing downloaded.

- ONNX: the same random Llama / Qwen3 exported with torch.onnx; the KV `kvtc capture` (Node, ONNX
  Runtime) writes for a prompt equals the cache transformers keeps for it.
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

#: `kvtc capture` (ORT, float32) against transformers (torch, float32) on the same ids: per layer
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
    cache, _ = tm.prefill(model, ids)
    ref = tm.cache_kv(model, cache)
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
