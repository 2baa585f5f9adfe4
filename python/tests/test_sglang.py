"""`python -m kvtc convert-sglang` (python/kvtc/sglang.py): SGLang KVTC fork dumps → kvtc KV dumps.

The fork dumps are built here exactly as the fork lays them out (tp_<t>_pp_<p>/<request>-K|V-
chunk_<i>-layer_<j>.bin, one torch.save'd bfloat16 [tokens, heads, head_dim] tensor per file,
stage-local layer ids, chunks concatenated along tokens from position 0), from the real caches
of a tiny random-weight transformers Llama run in bfloat16 as the fork's server runs. The
expected shard coordinates are written out by hand (SGLang's rules, not the converter's code).

torch, transformers and safetensors are required: without them the module fails with the install
command (never a skip).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

try:
    import safetensors.torch
    import torch
    import transformers
except ImportError as e:  # the policy: a missing test dependency fails the run and names the fix
    raise ImportError(
        f"test_sglang.py needs torch, transformers and safetensors ({e}); install them: python3 -m pip install torch transformers safetensors"
    ) from None

import kvtc
from kvtc import _safetensors, _strict_json, sglang
from kvtc.cli import main as cli_main

LAYERS, KV_HEADS, HEAD_DIM = 5, 4, 8
#: SGLang's split of 5 layers over 2 stages: the last 5 % 2 = 1 stage takes the extra layer.
STAGES = {0: [0, 1], 1: [2, 3, 4]}
#: Tensor parallel 2 over 4 KV heads: two each, in order.
TP_HEADS = {0: [0, 1], 1: [2, 3]}
#: Two requests as the fork names them (SGLang request ids are hex), with their chunked prefill sizes.
REQUESTS = {"3f2a9c0d41e7": [6, 5], "b81d00e5c2a4": [9]}

# docs/kv-dumps.md §2: the manifest's fields.
MODEL_FIELDS = {
    "name", "family", "architecture", "layers", "heads", "kv_heads", "head_dim", "value_head_dim", "dtype",
    "max_positions", "cache", "layer_kinds", "cache_layers", "rope",
}  # fmt: skip


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    cfg = transformers.LlamaConfig(
        vocab_size=64,
        hidden_size=64,
        intermediate_size=64,
        num_hidden_layers=LAYERS,
        num_attention_heads=8,
        num_key_value_heads=KV_HEADS,
        head_dim=HEAD_DIM,
        max_position_embeddings=256,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
    )
    d = tmp_path_factory.mktemp("model")
    cfg.save_pretrained(d)
    return d, cfg


@pytest.fixture(scope="module")
def caches(model_dir):
    """Per request: per layer (K, V) [1, kv_heads, tokens, head_dim] bfloat16, from a real forward pass."""
    _, cfg = model_dir
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(cfg).eval().to(torch.bfloat16)
    out = {}
    with torch.no_grad():
        for name, sizes in REQUESTS.items():
            ids = torch.randint(0, cfg.vocab_size, (1, sum(sizes)))
            cache = model(ids, use_cache=True)["cache"]
            out[name] = [(layer.keys.clone(), layer.values.clone()) for layer in cache.layers]
    return out


def write_fork_dump(root: Path, caches, *, tp=2, stages=STAGES, tp_heads=TP_HEADS, requests=REQUESTS, model_layer_ids=False):
    """The fork's layout: one torch.save'd [tokens, heads, head_dim] tensor per (request, K|V, chunk, stage-local layer)."""
    for p, layers in stages.items():
        for t in range(tp):
            d = root / f"tp_{t}_pp_{p}"
            d.mkdir(parents=True)
            heads = tp_heads[t]
            for req, sizes in requests.items():
                t0 = 0
                for c, n in enumerate(sizes):
                    for j, l in enumerate(layers):
                        for kind, a in zip("KV", caches[req][l]):
                            x = a[0, heads, t0 : t0 + n, :].transpose(0, 1).contiguous()
                            lid = l if model_layer_ids else j
                            torch.save(x, d / f"{req}-{kind}-chunk_{c}-layer_{lid}.bin")
                    t0 += n
    return root


def bits(x: torch.Tensor) -> torch.Tensor:
    return x.contiguous().view(torch.int16)


def convert_cli(*args) -> tuple:
    import io
    from contextlib import redirect_stderr, redirect_stdout

    o, e = io.StringIO(), io.StringIO()
    with redirect_stdout(o), redirect_stderr(e):
        rc = cli_main(["convert-sglang", *map(str, args)])
    return rc, o.getvalue(), e.getvalue()


def fail(dump: Path, model_dir, out: Path, *extra) -> dict:
    rc, stdout, _ = convert_cli(dump, "--config", model_dir[0], "--out", out, "--json", "--quiet", *extra)
    assert rc != 0 and rc != 70, stdout
    err = json.loads(stdout)["error"]
    assert not out.exists(), "a failed conversion leaves no output"
    assert [p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.tmp-")] == [], "nor its temporary directory"
    return err


# ---------------------------------------------------------------- the conversion


def test_converts_a_tp2_pp2_dump_bit_for_bit_with_shard_coordinates(tmp_path, model_dir, caches):
    dump = write_fork_dump(tmp_path / "dump", caches)
    out = tmp_path / "out"
    rc, stdout, stderr = convert_cli(dump, "--config", model_dir[0], "--out", out, "--json")
    assert rc == 0, stderr
    summary = json.loads(stdout)
    assert (summary["tp_size"], summary["pp_size"], summary["requests"], summary["sequences"], summary["dtype"]) == (2, 2, 2, 2, "bfloat16")
    assert summary["tokens"] == sum(map(sum, REQUESTS.values()))
    assert "tp_1_pp_1: 2/2" in stderr  # progress on stderr
    assert sorted(os.listdir(out)) == ["tp_0_pp_0", "tp_0_pp_1", "tp_1_pp_0", "tp_1_pp_1"]
    order = sorted(REQUESTS)
    for p, layers in STAGES.items():
        for t, heads in TP_HEADS.items():
            d = out / f"tp_{t}_pp_{p}"
            m = _strict_json.loads_strict((d / "kvtc-dump.json").read_bytes())
            assert set(m) == {"format", "format_version", "producer", "model", "shard", "sequences"}
            assert (m["format"], m["format_version"]) == ("kvtc-kv-dump", 1)
            assert m["producer"]["version"] == kvtc.__version__
            model = m["model"]
            assert set(model) <= MODEL_FIELDS
            assert (model["family"], model["architecture"], model["layers"], model["heads"]) == ("llama", "LlamaForCausalLM", 5, 8)
            assert (model["kv_heads"], model["head_dim"], model["dtype"], model["cache"]) == (2, HEAD_DIM, "bfloat16", "gqa")
            assert model["cache_layers"] == list(range(LAYERS)) and model["max_positions"] == 256
            assert len(model["rope"]) == LAYERS
            for r in model["rope"]:
                assert (r["theta"], r["rotary_dim"], r["layout"]) == (10000.0, HEAD_DIM, "half")
                want = [10000.0 ** (-2 * i / HEAD_DIM) for i in range(HEAD_DIM // 2)]
                assert r["inv_freq"] == pytest.approx(want, rel=1e-6)
            assert m["shard"] == {"tp_rank": t, "tp_size": 2, "pp_rank": p, "pp_size": 2, "layers": layers, "kv_heads": heads}
            assert m["sequences"] == [
                {"file": f"seq-{i:06d}.safetensors", "tokens": sum(REQUESTS[r]), "start_position": 0} for i, r in enumerate(order)
            ]
            for i, r in enumerate(order):
                path = d / f"seq-{i:06d}.safetensors"
                raw = path.read_bytes()
                # kvtc's own strict reading: names, shapes, dtypes, contiguous data, padded header.
                want_shapes = {}
                for l in layers:
                    want_shapes[f"present.{l}.key"] = (1, 2, sum(REQUESTS[r]), HEAD_DIM)
                    want_shapes[f"present.{l}.value"] = (1, 2, sum(REQUESTS[r]), HEAD_DIM)
                infos, meta = _safetensors.parse(
                    raw,
                    str(path),
                    strict=_safetensors.Strict(dtypes=("BF16",), max_header_bytes=_safetensors.MAX_HEADER_BYTES, tensors=want_shapes),
                )
                assert meta["tokens"] == str(sum(REQUESTS[r])) and meta["start_position"] == "0"
                # An independent reader (the safetensors package) sees the model's own cache, bit for bit.
                got = safetensors.torch.load_file(str(path))
                for l in layers:
                    k, v = caches[r][l]
                    assert torch.equal(bits(got[f"present.{l}.key"]), bits(k[:, heads])), (d.name, r, l)
                    assert torch.equal(bits(got[f"present.{l}.value"]), bits(v[:, heads])), (d.name, r, l)


def test_dataset_directories_and_model_layer_ids_and_views(tmp_path, model_dir, caches):
    """A directory of --dump-kv-path datasets (as the fork's calibration reads); files named by model layer;
    tensors saved as views into a larger storage (what torch.save of a slice of a pool writes)."""
    root = tmp_path / "dumps"
    write_fork_dump(root / "openmath", caches, requests={"3f2a9c0d41e7": [6, 5]}, model_layer_ids=True)
    write_fork_dump(root / "fineweb", caches, requests={"3f2a9c0d41e7": [11]}, model_layer_ids=True)
    f = root / "fineweb" / "tp_1_pp_1" / "3f2a9c0d41e7-V-chunk_0-layer_2.bin"
    x = torch.load(f, weights_only=True)
    pool = torch.zeros(40, 2, HEAD_DIM, dtype=torch.bfloat16)
    pool[17 : 17 + 11] = x
    torch.save(pool[17 : 17 + 11], f)  # a view: the file holds the whole pool, the tensor an offset into it
    out = tmp_path / "out"
    r = sglang.convert(str(root), str(model_dir[0]), str(out))
    assert r["requests"] == r["sequences"] == 2 and r["tokens"] == 22
    m = json.loads((out / "tp_1_pp_1" / "kvtc-dump.json").read_text())
    assert m["shard"]["layers"] == [2, 3, 4]
    for i in range(2):  # fineweb sorts first
        got = safetensors.torch.load_file(str(out / "tp_1_pp_1" / f"seq-00000{i}.safetensors"))
        for l in (2, 3, 4):
            assert torch.equal(bits(got[f"present.{l}.value"]), bits(caches["3f2a9c0d41e7"][l][1][:, [2, 3]]))
    meta = _safetensors.parse((out / "tp_1_pp_1" / "seq-000000.safetensors").read_bytes())[1]
    assert meta["source"] == "sglang-kvtc tp_1_pp_1/fineweb/3f2a9c0d41e7"


def test_engine_rules():
    # SGLang get_pp_indices: L // P each, the last L % P stages one more.
    assert [sglang.pp_layer_range(5, p, 2) for p in range(2)] == [(0, 2), (2, 5)]
    assert [sglang.pp_layer_range(10, p, 4) for p in range(4)] == [(0, 2), (2, 4), (4, 7), (7, 10)]
    assert [sglang.pp_layer_range(80, p, 4) for p in range(4)] == [(0, 20), (20, 40), (40, 60), (60, 80)]
    assert [sglang.pp_layer_range(10, p, 3, [4, 4, 2]) for p in range(3)] == [(0, 4), (4, 8), (8, 10)]
    # QKVParallelLinear: K ≥ T splits heads in order; T > K replicates, rank t holding head t // (T/K).
    assert [sglang.tp_kv_heads(8, t, 4) for t in range(4)] == [[0, 1], [2, 3], [4, 5], [6, 7]]
    assert [sglang.tp_kv_heads(2, t, 8) for t in range(8)] == [[0], [0], [0], [0], [1], [1], [1], [1]]
    with pytest.raises(kvtc.KvtcError, match="do not divide"):
        sglang.tp_kv_heads(4, 0, 3)
    with pytest.raises(kvtc.KvtcError, match="not a multiple"):
        sglang.tp_kv_heads(4, 0, 6)


def test_pp_layer_partition_option(tmp_path, model_dir, caches):
    dump = write_fork_dump(tmp_path / "dump", caches, stages={0: [0, 1, 2], 1: [3, 4]}, requests={"3f2a9c0d41e7": [11]})
    err = fail(dump, model_dir, tmp_path / "out")
    assert "tp_0_pp_0 holds layers [0, 1, 2], but pipeline stage 0 of 2 holds model layers 0..1" in err["message"]
    assert "--pp-layer-partition" in err["fix"]
    rc, _, stderr = convert_cli(dump, "--config", model_dir[0], "--out", tmp_path / "out", "--pp-layer-partition", "3,2", "--quiet")
    assert rc == 0, stderr
    assert json.loads((tmp_path / "out" / "tp_0_pp_1" / "kvtc-dump.json").read_text())["shard"]["layers"] == [3, 4]


# ---------------------------------------------------------------- malformed input


@pytest.fixture
def dump(tmp_path, caches):
    return write_fork_dump(tmp_path / "dump", caches)


def test_missing_v_partner(tmp_path, dump, model_dir):
    (dump / "tp_1_pp_0" / "b81d00e5c2a4-V-chunk_0-layer_1.bin").unlink()
    err = fail(dump, model_dir, tmp_path / "out")
    assert err["code"] == "KV_INVALID"
    assert f"{dump / 'tp_1_pp_0' / 'b81d00e5c2a4-K-chunk_0-layer_1.bin'} has no V partner" in err["message"]


def test_missing_chunk_and_missing_request(tmp_path, dump, model_dir):
    for kind in "KV":
        for j in (0, 1):
            (dump / "tp_0_pp_0" / f"3f2a9c0d41e7-{kind}-chunk_0-layer_{j}.bin").unlink()
    err = fail(dump, model_dir, tmp_path / "out")
    assert "request 3f2a9c0d41e7 has chunks [1]; chunk 0 is missing" in err["message"]
    for f in (dump / "tp_0_pp_0").glob("3f2a9c0d41e7-*"):
        f.unlink()
    err = fail(dump, model_dir, tmp_path / "out")
    assert "request 3f2a9c0d41e7 is missing from tp_0_pp_0" in err["message"]


def test_inconsistent_shapes(tmp_path, dump, model_dir):
    f = dump / "tp_0_pp_1" / "3f2a9c0d41e7-K-chunk_1-layer_2.bin"
    torch.save(torch.load(f, weights_only=True)[:3].clone(), f)  # 3 tokens where the chunk's other files have 5
    err = fail(dump, model_dir, tmp_path / "out")
    assert f"{f} has 3 tokens, but chunk 1 of request 3f2a9c0d41e7 has 5" in err["message"]


def test_heads_that_do_not_match_the_config_and_tp_size(tmp_path, caches, model_dir):
    # All 4 KV heads in each of 2 tp ranks' files (a server at tp 1 copied twice, or another model).
    dump = write_fork_dump(tmp_path / "dump", caches, tp_heads={0: [0, 1, 2, 3], 1: [0, 1, 2, 3]})
    err = fail(dump, model_dir, tmp_path / "out")
    assert "has shape [6, 4, 8]; tp_0_pp_0 must hold [tokens, 2, 8]" in err["message"] and err["context"]["file"].endswith(".bin")
    # Three tp ranks cannot share the model's 4 KV heads.
    dump3 = write_fork_dump(tmp_path / "dump3", caches, tp=3, tp_heads={0: [0], 1: [1], 2: [2]})
    err = fail(dump3, model_dir, tmp_path / "out3")
    assert "the model's 4 KV heads do not divide over tensor parallel size 3" in err["message"]
    # head_dim off (another model's config).
    shutil.rmtree(dump)
    dump = write_fork_dump(tmp_path / "dump", caches)
    f = dump / "tp_1_pp_1" / "b81d00e5c2a4-V-chunk_0-layer_0.bin"
    torch.save(torch.zeros(9, 2, 16, dtype=torch.bfloat16), f)
    assert "must hold [tokens, 2, 8]" in fail(dump, model_dir, tmp_path / "out")["message"]


def test_non_tensor_payloads_are_refused_without_unpickling(tmp_path, dump, model_dir):
    f = dump / "tp_0_pp_0" / "b81d00e5c2a4-K-chunk_0-layer_0.bin"
    torch.save({"k": torch.load(f, weights_only=True)}, f)
    err = fail(dump, model_dir, tmp_path / "out")
    assert f"{f} holds a dict, not a tensor" in err["message"]
    torch.save(Path("/"), f)  # an arbitrary object: weights_only refuses to unpickle it
    err = fail(dump, model_dir, tmp_path / "out")
    assert f"{f} is not a torch.save file of a tensor that torch.load(weights_only=True) accepts" in err["message"]
    f.write_bytes(b"not a torch file")
    assert "is not a torch.save file" in fail(dump, model_dir, tmp_path / "out")["message"]


def test_nan_is_refused_naming_the_file(tmp_path, dump, model_dir):
    f = dump / "tp_1_pp_1" / "3f2a9c0d41e7-V-chunk_1-layer_1.bin"
    x = torch.load(f, weights_only=True)
    x[2, 1, 3] = float("nan")
    torch.save(x, f)
    err = fail(dump, model_dir, tmp_path / "out")
    assert f"{f} holds a non-finite value (NaN or infinity) at token 2 of the chunk" in err["message"]


def test_unknown_file_names_are_listed(tmp_path, dump, model_dir):
    (dump / "tp_0_pp_1" / "notes.txt").write_text("x")
    (dump / "tp_0_pp_1" / "3f2a9c0d41e7-Q-chunk_0-layer_0.bin").write_bytes(b"")
    err = fail(dump, model_dir, tmp_path / "out")
    assert "tp_0_pp_1: 2 entries are not <request>-K|V-chunk_<i>-layer_<j>.bin files" in err["message"]
    assert "notes.txt" in err["message"] and "3f2a9c0d41e7-Q-chunk_0-layer_0.bin" in err["message"]
    (dump / "README").write_text("x")
    assert "also README" in fail(dump, model_dir, tmp_path / "out")["message"]


def test_missing_worker_and_layer_gaps(tmp_path, dump, model_dir):
    for f in (dump / "tp_1_pp_1").glob("*-layer_2.bin"):
        f.unlink()
    err = fail(dump, model_dir, tmp_path / "out")
    assert "tp_1_pp_1 holds layers [0, 1], but pipeline stage 1 of 2 holds model layers 2..4" in err["message"]
    shutil.rmtree(dump / "tp_1_pp_1")
    assert "worker directories tp_1_pp_1 are missing" in fail(dump, model_dir, tmp_path / "out")["message"]


def test_output_is_never_overwritten_and_appears_atomically(tmp_path, dump, model_dir):
    out = tmp_path / "out"
    out.mkdir()
    (out / "mine.txt").write_text("keep")
    rc, stdout, _ = convert_cli(dump, "--config", model_dir[0], "--out", out, "--json")
    assert rc == 1 and json.loads(stdout)["error"]["code"] == "OUTPUT_EXISTS"
    assert os.listdir(out) == ["mine.txt"]
    # A failure late in the run (the last worker's last file) leaves nothing behind.
    f = dump / "tp_1_pp_1" / "b81d00e5c2a4-V-chunk_0-layer_2.bin"
    x = torch.load(f, weights_only=True)
    x[-1, -1, -1] = float("inf")
    torch.save(x, f)
    fail(dump, model_dir, tmp_path / "out2")


def test_without_torch_names_the_install(tmp_path, dump, model_dir, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)
    with pytest.raises(kvtc.KvtcError) as e:
        sglang.convert(str(dump), str(model_dir[0]), str(tmp_path / "out"))
    assert e.value.code == "DEVICE_UNAVAILABLE" and "pip install torch" in e.value.fix


def test_human_output(tmp_path, dump, model_dir):
    rc, stdout, stderr = convert_cli(dump, "--config", model_dir[0], "--out", tmp_path / "o", "--quiet")
    assert rc == 0 and stderr == ""
    assert stdout.startswith("converted 2 requests (20 tokens, bfloat16) from 2 × 2 workers (tp × pp) → ")


def test_nonfinite_check_agrees_with_torch_isfinite():
    """The exponent-bit test the converter uses instead of torch.isfinite: every 16-bit pattern, and float32 samples."""
    every = torch.arange(-(2**15), 2**15, dtype=torch.int32).to(torch.int16)
    for dt in (torch.bfloat16, torch.float16):
        x = every.view(dt)
        assert torch.equal(sglang._nonfinite(torch, x), ~torch.isfinite(x)), dt
    g = torch.Generator().manual_seed(1)
    bits32 = torch.randint(-(2**31), 2**31, (200_000,), generator=g, dtype=torch.int64).to(torch.int32)
    specials = torch.tensor([0x7F800000, -0x800000, 0x7FC00000, 0x7F7FFFFF, 0x00000001], dtype=torch.int32)
    x = torch.cat([bits32, specials]).view(torch.float32)
    assert torch.equal(sglang._nonfinite(torch, x), ~torch.isfinite(x))


def test_kvtc_calibrate_kv_fits_one_profile_per_converted_worker(tmp_path, model_dir):
    """The converter's output is what `kvtc calibrate --kv` (Node, dist/ from `npm run build`) reads: one profile per
    worker, each recording the worker's layers and KV heads."""
    repo = Path(__file__).resolve().parents[2]
    _, cfg = model_dir
    torch.manual_seed(1)
    model = transformers.LlamaForCausalLM(cfg).eval().to(torch.bfloat16)
    requests = {f"{i:012x}": [64, 64, 32] for i in range(8)}  # 1280 tokens: fit 512, tuning 256, report 256
    caches = {}
    with torch.no_grad():
        for name, sizes in requests.items():
            cache = model(torch.randint(0, cfg.vocab_size, (1, sum(sizes))), use_cache=True)["cache"]
            caches[name] = [(layer.keys, layer.values) for layer in cache.layers]
    dump = write_fork_dump(tmp_path / "dump", caches, requests=requests)
    sglang.convert(str(dump), str(model_dir[0]), str(tmp_path / "kv"))
    node = shutil.which("node")
    assert node, "node is needed to run kvtc calibrate (Node 20)"
    cal = [node, str(repo / "bin" / "kvtc.js"), "calibrate", "--kv", str(tmp_path / "kv"), "--out", str(tmp_path / "prof")]
    cal += ["--ratio", "8", "--tokens", "512", "--tuning-tokens", "256", "--report-tokens", "256", "--sink", "4", "--window", "16"]
    p = subprocess.run([*cal, "--grouping", "layer", "--quiet"], cwd=repo, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, f"kvtc calibrate --kv failed (is dist/ current? `npm run build`): {p.stderr}"
    index = json.loads((tmp_path / "prof" / "kvtc-shards.json").read_text())
    assert (index["tp_size"], index["pp_size"]) == (2, 2)
    got = {(r["tp_rank"], r["pp_rank"]): (r["profile"], r["layers"], r["kv_heads"]) for r in index["ranks"]}
    assert got == {(t, p_): (f"tp_{t}_pp_{p_}", layers, heads) for p_, layers in STAGES.items() for t, heads in TP_HEADS.items()}
    for p_, layers in STAGES.items():
        for t, heads in TP_HEADS.items():
            m = json.loads((tmp_path / "prof" / f"tp_{t}_pp_{p_}" / "kvtc-profile.json").read_text())
            assert m["format_version"] == 3
            assert m["shard"]["kv_heads"] == heads and (m["shard"]["tp_rank"], m["shard"]["pp_rank"]) == (t, p_)
            assert m["model"]["cache_layers"] == layers and m["model"]["kv_heads"] == 2


def test_long_requests_are_split_into_consecutive_sequences(tmp_path, dump, model_dir, caches):
    """A request too long for one file becomes consecutive sequences at their own start positions, in every worker alike."""
    # The widest worker (pp 1: 3 layers × 2 heads × (8 + 8) × 2 bytes = 192 B a token) sets the piece length for all.
    header = 1024 + 256 * 2 * 3
    rc, _, stderr = convert_cli(dump, "--config", model_dir[0], "--out", tmp_path / "o", "--max-file-bytes", header + 4 * 192, "--quiet")
    assert rc == 0, stderr
    for p, layers in STAGES.items():
        for t, heads in TP_HEADS.items():
            d = tmp_path / "o" / f"tp_{t}_pp_{p}"
            m = json.loads((d / "kvtc-dump.json").read_text())
            # 3f2a9c0d41e7 (11 tokens: 4 + 4 + 3), then b81d00e5c2a4 (9 tokens: 4 + 4 + 1).
            want = [(4, 0), (4, 4), (3, 8), (4, 0), (4, 4), (1, 8)]
            assert [(s["tokens"], s["start_position"]) for s in m["sequences"]] == want
            assert [s["file"] for s in m["sequences"]] == [f"seq-{i:06d}.safetensors" for i in range(6)]
            for first, req in ((0, "3f2a9c0d41e7"), (3, "b81d00e5c2a4")):
                parts = [safetensors.torch.load_file(str(d / f"seq-{first + i:06d}.safetensors")) for i in range(3)]
                for l in layers:
                    for kind, i in (("key", 0), ("value", 1)):
                        joined = torch.cat([q[f"present.{l}.{kind}"] for q in parts], dim=2)
                        assert torch.equal(bits(joined), bits(caches[req][l][i][:, heads]))
            meta = _safetensors.parse((d / "seq-000001.safetensors").read_bytes())[1]
            assert (meta["start_position"], meta["tokens"]) == ("4", "4") and meta["source"].endswith("3f2a9c0d41e7 tokens 4..7")


def test_requests_past_the_models_context_are_refused(tmp_path, dump, model_dir):
    cfg = model_dir[1].__class__.from_dict({**model_dir[1].to_dict(), "max_position_embeddings": 10})
    cfg.save_pretrained(tmp_path / "short")
    err = fail(dump, (tmp_path / "short", cfg), tmp_path / "out")
    assert "request 3f2a9c0d41e7 has 11 tokens, more than the model's max_position_embeddings 10" in err["message"]


def test_configs_the_fork_cannot_have_dumped(tmp_path, dump, model_dir):
    err = fail(dump, (tmp_path / "nowhere", None), tmp_path / "out")
    assert err["code"] == "MODEL_NOT_FOUND"
    # An MLA model: SGLang keeps its latent in an MLA pool, which the fork does not dump.
    mla = transformers.DeepseekV3Config(
        vocab_size=64, hidden_size=64, intermediate_size=64, moe_intermediate_size=32, num_hidden_layers=4, num_attention_heads=4,
        num_key_value_heads=4, kv_lora_rank=16, q_lora_rank=None, qk_rope_head_dim=8, qk_nope_head_dim=8, v_head_dim=8,
        n_routed_experts=4, num_experts_per_tok=2, first_k_dense_replace=1, max_position_embeddings=256,
    )  # fmt: skip
    mla.save_pretrained(tmp_path / "mla")
    err = fail(dump, (tmp_path / "mla", mla), tmp_path / "out")
    assert err["code"] == "UNSUPPORTED_ARCHITECTURE" and "cache is mla-latent" in err["message"]
