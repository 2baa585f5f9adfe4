"""End to end on transformers' own models (issue 20): tiny random-weight models of each family
(tiny_models.py: Llama, Qwen3, Qwen3-MoE, Gemma 3, Phi-3, SmolLM3, DeepSeek-V3 MLA, Qwen3-Next
hybrid), built from small configs, nothing downloaded.

- ONNX: the same random Llama / Qwen3 exported with torch.onnx; the KV `kvtc capture` (Node, ONNX
  Runtime) writes for a prompt equals the Python capture's (kvtc.capture, transformers) of it.
- Feed-back: a cache put back into the transformers model gives the next tokens' logits of the
  uncompressed run, and a wrong cache does not (so the closeness checked below has teeth).
- The chain, per family: Python capture (kvtc.capture) → `kvtc calibrate --kv` (Node) → encode →
  decode (the NumPy codec) → the decoded cache fed back: next-token logits close to the
  uncompressed run's at --ratio 4.
- Shards: the same dump calibrated with --shards tp=2,pp=2; each rank's profile codes its own
  slice, and the slices put back together are about as good as the whole-model profile's decode.

These tests need torch, transformers (with its tokenizers) and, for the export, onnx; where any is
missing they fail with the command that installs them (never a skip). They run `node bin/kvtc.js`,
which needs `npm ci && npm run build` first.
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import subprocess
import sys

import kvtc
import numpy as np
import pytest
from kvtc_testutil import PYTHON_DIR
from test_codec import DECODE_ATOL

REPO = PYTHON_DIR.parent
KVTC_JS = REPO / "bin" / "kvtc.js"
INSTALL = "python3 -m pip install torch transformers onnx"

#: `kvtc capture` (ORT, float32) against the Python capture (torch, float32) of the same ids: per layer
#: and kind, max |Δ| / max |x|. Measured ≤ 1.7e-6 (Llama, Qwen3; 300 tokens in 3 chunks); float32
#: reassociation between the two runtimes is the whole difference.
ONNX_REL_TOL = 1e-5
#: A cache put back unchanged reproduces the one-pass run's logits: measured max |Δlogit| ≤ 3e-7,
#: except Qwen3-Next (1.3e-5: its linear attention runs chunked in one pass of 164 tokens and
#: recurrent for the 4 tokens after a cache, summing in another order).
SELF_LOGIT_ATOL = 1e-4
#: A wrong cache (another prompt's) must move the next tokens' distribution by at least this KL
#: (measured 0.21–0.56 over the families), else the feed-back checks could not tell a good decode
#: from a bad one.
WRONG_CACHE_MIN_KL = 0.1


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
    # The Python capture (`python -m kvtc capture`, transformers) of the same directory and text.
    r = subprocess.run(
        [sys.executable, "-m", "kvtc", "capture", "--model", str(d), "--data", "prompt.txt", "--out", "dump", "--seq-len", "300", "--tokens", "300", "--device", "cpu", "--dtype", "float32", "--json"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(PYTHON_DIR), "PYTHONDONTWRITEBYTECODE": "1"},
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    manifest = json.loads((tmp_path / "dump" / "kvtc-dump.json").read_text("utf-8"))
    assert manifest["sequences"] == [{"file": "seq-000000.safetensors", "tokens": 300, "start_position": 0}]
    ref = read_dump_sequence(tmp_path / "dump" / "seq-000000.safetensors", range(model.config.num_hidden_layers))
    from kvtc import _safetensors

    buf = (tmp_path / "dump" / "seq-000000.safetensors").read_bytes()
    assert _safetensors.array(buf, _safetensors.parse(buf)[0]["input_ids"]).tolist() == ids  # both sides tokenized alike
    assert cap.start_position == 0 and len(cap.layers) == len(ref) == model.config.num_hidden_layers
    worst = 0.0
    for l, ((k, v), (rk, rv)) in enumerate(zip(cap.layers, ref)):
        for kind, a, b in (("key", k, rk), ("value", v, rv)):
            assert a.shape == b.shape == (2, 300, 16), (l, kind)
            rel = float(np.max(np.abs(a.astype(np.float64) - b)) / np.max(np.abs(b)))
            assert rel <= ONNX_REL_TOL, f"{family} layer {l} {kind}: max |Δ| / max |x| = {rel:.2e}"
            worst = max(worst, rel)
    print(f"\n{family}: kvtc capture vs python -m kvtc capture: max |Δ| / max |x| = {worst:.2e}")


# ------------------------------------------------------------------------------------------------
# The chain: Python capture → kvtc calibrate --kv → encode → decode → fed back into the model

FAMILIES = ["llama", "qwen3", "qwen3_moe", "gemma3_text", "phi3", "smollm3", "deepseek_v3", "qwen3_next"]
#: Calibration: 8 sequences of 128 tokens, split by calibrate --kv into fit (256 tokens), tuning (640)
#: and report (128); and one held-out prompt of 160 tokens that is encoded, decoded and fed back,
#: followed by 4 next tokens whose logits are compared. The tuning split is large on purpose: the
#: static clip ranges of the quantized components come from it, and with 128 tuning tokens the
#: prompt's coefficients fell outside them often enough to give Llama's last layer a relative
#: error of 0.4 at ratio 2 (0.1 at ratio 4 with 640).
CAL_SEQUENCES, CAL_LEN, PROMPT_LEN, NEXT = 8, 128, 160, 4
FIT, TUNING, REPORT = 256, 640, 128
#: --sink 4 --window 16: 140 of the prompt's 160 tokens go through the codec.
SINK, WINDOW = 4, 16
RATIO = "4"
#: The decoded prompt at --ratio 4 (about 2.9x for the whole blob, protected tokens included).
#: Measured over the families: relative error ≤ 0.19 per layer and kind, next-token max |Δlogit|
#: ≤ 0.59 and KL ≤ 0.02 (Qwen3-Next; the others ≤ 4.7e-3), against KL ≥ 0.21 for a wrong cache:
#: MAX_KL sits 3x above the worst decode and 3.5x below the mildest wrong cache.
MAX_REL_ERR = 0.3
MAX_DLOGIT = 1.5
MAX_KL = 0.06
#: Shards: each rank's basis sees fewer features than the whole model's, at the same ratio; its
#: decode's relative error came out at most 1.27x the whole-model decode's, layer by layer and kind.
SHARD_ERR_FACTOR = 1.6


def read_dump_sequence(path: pathlib.Path, cache_layers) -> list:
    """[(key, value)] [kv_heads, tokens, dim] float32 of one dump sequence file, per cache layer."""
    from kvtc import _safetensors

    buf = path.read_bytes()
    infos, _ = _safetensors.parse(buf)
    return [tuple(_safetensors.array(buf, infos[f"present.{l}.{k}"])[0].astype(np.float32) for k in ("key", "value")) for l in cache_layers]


def calibrate_kv(dump: pathlib.Path, out: pathlib.Path, *extra: str) -> subprocess.CompletedProcess:
    # --grouping layer: the grouping search (auto) would fit 3 candidates for nothing these tests check.
    return node_kvtc(
        "calibrate", "--kv", str(dump), "--out", str(out), "--ratio", RATIO,
        "--tokens", str(FIT), "--tuning-tokens", str(TUNING), "--report-tokens", str(REPORT),
        "--sink", str(SINK), "--window", str(WINDOW), "--grouping", "layer", "--json", "--quiet", *extra,
        cwd=out.parent,
    )  # fmt: skip


class Chain:
    """One family's model, its calibration dump, its held-out prompt captured the same way, the
    prompt's cache, and the whole-model profile (calibrated on first use)."""

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
        self._profile = None

    def gap(self, decoded) -> tuple:
        """(max |Δlogit|, KL) of the next tokens on `decoded` against the uncompressed cache."""
        return self.tm.logit_gap(self.tm.feed_back(self.model, self.cache, decoded, self.next), self.reference)

    @property
    def profile(self):
        if self._profile is None:
            calibrate_kv(self.dump, self.tmp / "profile")
            self._profile = kvtc.read_profile(self.tmp / "profile")
        return self._profile


_CHAINS: dict = {}


@pytest.fixture
def chain(tm, tmp_path_factory, family):
    """The family's Chain, built once per session: the tests of a family share model, dump and profile."""
    if family not in _CHAINS:
        _CHAINS[family] = Chain(tm, family, tmp_path_factory.mktemp(family))
    return _CHAINS[family]


def rel_err(decoded, original) -> np.ndarray:
    """‖x̂ − x‖ / ‖x‖ over the compressed tokens, per layer and kind: [layers, 2]."""
    s, e = SINK, PROMPT_LEN - WINDOW
    return np.array(
        [
            [float(np.linalg.norm((np.float64(d) - o)[:, s:e]) / np.linalg.norm(np.float64(o)[:, s:e])) for d, o in zip(dl, ol)]
            for dl, ol in zip(decoded, original)
        ]
    )


def model_layer_profile(profile) -> list:
    """The model layer of each profile layer."""
    return list(profile.cache_layers) if profile.cache_layers is not None else list(range(profile.layers))


@pytest.mark.parametrize("family", FAMILIES)
def test_a_cache_fed_back_reproduces_the_run_and_a_wrong_one_does_not(tm, chain, family):
    """The feed-back helper itself: the captured cache put back gives the logits of one pass over
    prompt + next tokens; another prompt's cache does not."""
    import torch

    model, kv = chain.model, chain.kv
    # The Python capture's file holds exactly the cache transformers kept (the dump layout; MLA swapped).
    kept = tm.cache_kv(model, chain.cache)
    assert len(kv) == len(kept) == len(chain.layers)
    assert all(np.array_equal(a, b) for pair, pair_kept in zip(kv, kept) for a, b in zip(pair, pair_kept))
    if tm.is_mla(model):  # the dump's MLA layout: key k_rot [1, T, qk_rope_head_dim], value c_kv [1, T, kv_lora_rank]
        assert [(k.shape, v.shape) for k, v in kv] == [((1, PROMPT_LEN, 8), (1, PROMPT_LEN, 32))] * 4
    with torch.no_grad():
        full = model(input_ids=torch.tensor([chain.ids + chain.next])).logits[0, -NEXT:].double().numpy()
    assert np.max(np.abs(chain.reference - full)) <= SELF_LOGIT_ATOL
    other = tm.cache_kv(model, tm.prefill(model, prompt(PROMPT_LEN, seed=2))[0])
    dlogit, kl = chain.gap(other)
    print(f"\n{family}: a wrong cache: max|Δlogit| {dlogit:.3f}, KL {kl:.3f}")
    assert kl >= WRONG_CACHE_MIN_KL


@pytest.mark.parametrize("family", FAMILIES)
def test_capture_calibrate_encode_decode_feed_back(tm, chain, family):
    profile = chain.profile
    # A profile fitted from a dump has no ONNX graph to fingerprint: format 3 (fingerprint.source kv-dump).
    assert profile.format_version == 3 and model_layer_profile(profile) == chain.layers
    if tm.is_mla(chain.model):
        assert (profile.cache, profile.kv_heads, profile.head_dim, profile.value_head_dim) == ("mla-latent", 1, 8, 32)
    blob = kvtc.encode(profile, chain.kv, 0)
    decoded = kvtc.decode(profile, blob)
    assert [(k.shape, v.shape) for k, v in decoded] == [(k.shape, v.shape) for k, v in chain.kv]
    # Sink and window tokens travel raw, as float16 (the blob's raw section): the originals rounded.
    protected = np.r_[0:SINK, PROMPT_LEN - WINDOW : PROMPT_LEN]
    for (k, v), (ok, ov) in zip(decoded, chain.kv):
        for a, b in ((k, ok), (v, ov)):
            assert np.array_equal(a[:, protected], b[:, protected].astype(np.float16).astype(np.float32))
    # The same blob decoded by Node (`kvtc decode`): the TypeScript codec reads the format-3 profile
    # (MLA latent widths, a hybrid's cache layers) as the Python one does. Node writes the profile's
    # layers as present.0.. (measured ≤ 3e-6 apart).
    (chain.tmp / "prompt.kvtc").write_bytes(blob)
    node_out = chain.tmp / "node-decoded.safetensors"
    node_kvtc("decode", "--profile", str(chain.tmp / "profile"), "--in", "prompt.kvtc", "--out", str(node_out), "--force", cwd=chain.tmp)
    by_node = kvtc.read_kv_safetensors(node_out).layers
    assert len(by_node) == len(decoded)
    assert max(float(np.max(np.abs(a - b))) for x, y in zip(by_node, decoded) for a, b in zip(x, y)) <= DECODE_ATOL
    # The capture's own file (layers named by model layer, docs/kv-dumps.md §3) encodes with both
    # CLIs as it is; so does Node's decoded file (the profile's layer order): either naming reads.
    seq = str(chain.tmp / "prompt" / "seq-000000.safetensors")
    node_kvtc("encode", "--profile", str(chain.tmp / "profile"), "--kv", seq, "--out", "node.kvtc", "--force", cwd=chain.tmp)
    node_kvtc("encode", "--profile", str(chain.tmp / "profile"), "--kv", str(node_out), "--out", "node2.kvtc", "--force", cwd=chain.tmp)
    for name in ("node.kvtc", "node2.kvtc"):
        again = kvtc.decode(profile, (chain.tmp / name).read_bytes())
        assert rel_err(again, chain.kv).max() <= MAX_REL_ERR
    py = subprocess.run(
        [sys.executable, "-m", "kvtc", "encode", "--profile", "profile", "--kv", seq, "--out", "py.kvtc", "--force"],
        cwd=chain.tmp,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO / "python")},
    )
    assert py.returncode == 0, py.stderr
    assert (chain.tmp / "py.kvtc").read_bytes() == blob
    err = rel_err(decoded, chain.kv)
    raw = sum(k.size + v.size for k, v in chain.kv) * 2
    dlogit, kl = chain.gap(decoded)
    print(
        f"\n{family}: ratio {raw / len(blob):.2f} (whole blob), rel err K {err[:, 0].max():.4f} V {err[:, 1].max():.4f}, max|Δlogit| {dlogit:.4f}, KL {kl:.2e}"
    )
    assert err.max() <= MAX_REL_ERR
    assert dlogit <= MAX_DLOGIT and kl <= MAX_KL


@pytest.mark.parametrize("family", ["llama", "deepseek_v3", "qwen3_next"])
def test_shard_profiles_reassemble_to_the_whole_model_decode(tm, chain, family):
    """--shards tp=2,pp=2: each rank's profile encodes and decodes its own slice (its stage's layers,
    its KV heads); the slices put back together are a cache as good as the whole-model profile's
    decode, within that decode's error (Llama: 2 KV heads over 2 ranks; DeepSeek-V3: the one latent
    replicated on both tensor ranks; Qwen3-Next: one attention layer per pipeline stage)."""
    whole_dec = kvtc.decode(chain.profile, kvtc.encode(chain.profile, chain.kv, 0))
    out = chain.tmp / "shards"
    calibrate_kv(chain.dump, out, "--shards", "tp=2,pp=2")
    index = json.loads((out / "kvtc-shards.json").read_text("utf-8"))
    ranks = sorted(p.name for p in out.iterdir() if p.is_dir())
    assert ranks == ["tp_0_pp_0", "tp_0_pp_1", "tp_1_pp_0", "tp_1_pp_1"] and sorted(r["profile"] for r in index["ranks"]) == ranks
    assembled = [(np.full(k.shape, np.nan, np.float32), np.full(v.shape, np.nan, np.float32)) for k, v in chain.kv]
    for entry in index["ranks"]:
        prof = kvtc.read_profile(out / entry["profile"])
        assert prof.profile_id == entry["profile_id"] and (prof.shard.tp_rank, prof.shard.pp_rank) == (entry["tp_rank"], entry["pp_rank"])
        layers, heads = model_layer_profile(prof), list(prof.shard.kv_heads)
        assert layers == entry["layers"] and heads == entry["kv_heads"]
        mine = [tuple(a[heads] for a in chain.kv[chain.layers.index(l)]) for l in layers]
        for l, (k, v) in zip(layers, kvtc.decode(prof, kvtc.encode(prof, mine, 0))):
            i = chain.layers.index(l)
            # MLA's one latent "head" is replicated on both tensor ranks: each writes the same slot.
            assembled[i][0][heads], assembled[i][1][heads] = k, v
    assert not any(np.isnan(a).any() for kv in assembled for a in kv), "some layer or head is in no rank's profile"
    e_whole, e_shard = rel_err(whole_dec, chain.kv), rel_err(assembled, chain.kv)
    g_whole, g_shard = chain.gap(whole_dec), chain.gap(assembled)
    print(f"\n{family}: rel err K/V whole {e_whole.max(0)}, shards {e_shard.max(0)}; max|Δlogit|, KL whole {g_whole}, shards {g_shard}")
    assert np.all(e_shard <= SHARD_ERR_FACTOR * e_whole)
    assert g_shard[0] <= MAX_DLOGIT and g_shard[1] <= MAX_KL
