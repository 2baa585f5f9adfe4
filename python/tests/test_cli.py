"""`python -m kvtc` (python/kvtc/cli.py): run as a subprocess (the real entry point, exit codes and
streams) and in-process through cli.main (each refusal's code, message and exit code).

Exit codes as kvtc's: 0 ok, 1 bad input, 2 usage, 70 a bug, 130 interrupted. Every output goes to
tmp_path; the subprocess runs with cwd=tmp_path and without writing bytecode.
"""

import json
import os
import subprocess
import sys

import kvtc
import numpy as np
import pytest
from kvtc import cli
from kvtc_testutil import FIXTURES, PYTHON_DIR, max_abs_diff

P2 = str(FIXTURES / "profile-v2")
P1 = str(FIXTURES / "profile-v1")
BLOB = str(FIXTURES / "v2-f32.kvtc")
CACHE = str(FIXTURES / "cache-f32.safetensors")


def run(*args, cwd):
    env = {**os.environ, "PYTHONPATH": str(PYTHON_DIR), "PYTHONDONTWRITEBYTECODE": "1"}
    return subprocess.run([sys.executable, "-m", "kvtc", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


def call(capsys, *args):
    code = cli.main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


# ------------------------------------------------------------------------------------------------
# As a subprocess


def test_help_lists_the_commands(tmp_path):
    r = run("--help", cwd=tmp_path)
    assert r.returncode == 0 and r.stderr == ""
    assert "usage: python -m kvtc" in r.stdout
    for cmd in ("decode", "encode", "header"):
        assert cmd in r.stdout
    r = run("decode", "--help", cwd=tmp_path)
    assert r.returncode == 0 and "--profile" in r.stdout and "--device" in r.stdout and "--force" in r.stdout


def test_version(tmp_path):
    r = run("--version", cwd=tmp_path)
    assert r.returncode == 0 and r.stdout.strip() == f"kvtc (Python) {kvtc.__version__}"


def test_decode_writes_the_tensors_kvtc_decode_writes(tmp_path):
    r = run("decode", "--profile", P2, "--in", BLOB, "--out", "out.safetensors", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("decoded 256 tokens") and "→ out.safetensors" in r.stdout
    mine = kvtc.read_kv_safetensors(tmp_path / "out.safetensors")
    node = kvtc.read_kv_safetensors(FIXTURES / "v2-f32.decoded.safetensors")
    assert mine.dtype == node.dtype and mine.start_position == node.start_position
    assert max_abs_diff(mine.layers, node.layers) <= 3e-5  # test_codec.DECODE_ATOL
    assert set(node.metadata) - {"producer"} <= set(mine.metadata)
    assert mine.metadata["profile_id"] == node.metadata["profile_id"] and mine.metadata["fingerprint"] == node.metadata["fingerprint"]
    assert sorted(os.listdir(tmp_path)) == ["out.safetensors"]  # no temporary file left


def test_encode_then_header_then_decode(tmp_path):
    r = run("encode", "--profile", P2, "--kv", CACHE, "--out", "kv.kvtc", "--json", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    size = os.path.getsize(tmp_path / "kv.kvtc")
    assert (doc["tokens"], doc["compressed_tokens"], doc["blob_bytes"], doc["dtype"], doc["device"]) == (256, 124, size, "float32", "cpu")
    assert doc["ratio_blob"] == pytest.approx(doc["fp16_bytes"] / size) and doc["fp16_bytes"] == 5 * 2 * 4 * 8 * 2 * 256
    h = run("header", "--in", "kv.kvtc", "--json", cwd=tmp_path)
    hd = json.loads(h.stdout)
    assert h.returncode == 0 and (hd["tokens"], hd["sink"], hd["window"], hd["bytes"], hd["sections"]) == (256, 4, 128, size, 3)
    assert hd["profile_id"] == kvtc.read_profile(P2).blob_id.hex()
    human = run("header", "--in", "kv.kvtc", cwd=tmp_path)
    assert "tokens: 256" in human.stdout.splitlines() and "dtype: float32" in human.stdout.splitlines()
    d = run("decode", "--profile", P2, "--in", "kv.kvtc", "--out", "back.safetensors", "--json", cwd=tmp_path)
    assert d.returncode == 0 and json.loads(d.stdout)["out_bytes"] == os.path.getsize(tmp_path / "back.safetensors")


def test_refusal_exit_code_and_streams(tmp_path):
    r = run("decode", "--profile", P1, "--in", BLOB, "--out", "x", cwd=tmp_path)
    assert r.returncode == 1 and r.stdout == ""
    assert r.stderr.startswith("error [BLOB_MISMATCH]: ") and "\n  fix: Decode with the profile the blob was encoded with" in r.stderr
    r = run("decode", "--profile", P1, "--in", BLOB, "--out", "x", "--json", cwd=tmp_path)
    doc = json.loads(r.stdout)  # exactly one JSON document, also on failure
    assert r.returncode == 1 and doc["error"]["code"] == "BLOB_MISMATCH" and doc["error"]["fix"] and doc["error"]["context"]
    assert not os.listdir(tmp_path)


def test_usage_error_exits_2(tmp_path):
    for args in ([], ["decode"], ["decode", "--profile", P2, "--in", BLOB, "--out", "x", "--nope"], ["transcode"]):
        r = run(*args, cwd=tmp_path)
        assert r.returncode == 2 and r.stderr.startswith("error [USAGE]: ") and "--help` for the options" in r.stderr, args


# ------------------------------------------------------------------------------------------------
# In-process: each refusal


def test_output_exists_unless_forced(capsys, tmp_path):
    out = tmp_path / "o.safetensors"
    out.write_bytes(b"old")
    code, _, err = call(capsys, "decode", "--profile", P2, "--in", BLOB, "--out", str(out))
    assert code == 1 and "error [OUTPUT_EXISTS]: output" in err and "Pass --force" in err and out.read_bytes() == b"old"
    code, out_text, _ = call(capsys, "decode", "--profile", P2, "--in", BLOB, "--out", str(out), "--force")
    assert code == 0 and out.stat().st_size > 300_000


def _tampered_cache(tmp_path):
    c = kvtc.read_kv_safetensors(CACHE)
    p = tmp_path / "other.safetensors"
    kvtc.write_kv_safetensors(p, c.layers, metadata={"model": "other-model", "fingerprint": "0123456789abcdef"})
    return str(p)


@pytest.mark.parametrize(
    "args,code,words",
    [
        (["decode", "--profile", "{tmp}/none", "--in", BLOB, "--out", "{tmp}/o"], "PROFILE_INVALID", "does not exist"),
        (["decode", "--profile", P2, "--in", "{tmp}/none.kvtc", "--out", "{tmp}/o"], "BLOB_INVALID", "blob {tmp}/none.kvtc does not exist"),
        (["decode", "--profile", P2, "--in", CACHE, "--out", "{tmp}/o"], "BLOB_INVALID", 'does not start with the "KVTC" magic'),
        (["decode", "--profile", P2, "--in", BLOB, "--out", "{tmp}/no/o"], "OUTPUT_UNWRITABLE", "directory {tmp}/no does not exist"),
        (
            ["encode", "--profile", P2, "--kv", "{tmp}/none.safetensors", "--out", "{tmp}/o"],
            "SAFETENSORS_INVALID",
            "cannot read {tmp}/none.safetensors",
        ),
        (["encode", "--profile", P2, "--kv", BLOB, "--out", "{tmp}/o"], "SAFETENSORS_INVALID", "does not fit in a file"),
        (
            ["encode", "--profile", P2, "--kv", "{other}", "--out", "{tmp}/o"],
            "PROFILE_MISMATCH",
            "was captured from model other-model (fingerprint 0123456789abcdef)",
        ),
        (["header", "--in", "{tmp}/none.kvtc"], "BLOB_INVALID", "cannot read {tmp}/none.kvtc"),
        (["header", "--in", CACHE], "BLOB_INVALID", 'does not start with the "KVTC" magic'),
        (["encode", "--profile", P2, "--kv", CACHE, "--out", "{tmp}/o", "--entropy", "zstd"], "USAGE", "invalid choice: 'zstd'"),
        (["decode", "--profile", P2, "--in", BLOB, "--out", "{tmp}/o", "--device", "tpu"], "USAGE", "device 'tpu' is not supported"),
    ],
    ids=[
        "profile-missing",
        "blob-missing",
        "not-a-blob",
        "out-dir-missing",
        "kv-missing",
        "kv-not-safetensors",
        "kv-of-another-model",
        "header-missing",
        "header-not-a-blob",
        "bad-entropy",
        "bad-device",
    ],
)
def test_refusal(capsys, tmp_path, args, code, words):
    sub = {"{tmp}": str(tmp_path), "{other}": _tampered_cache(tmp_path) if "{other}" in args else ""}
    args = [a.replace("{tmp}", sub["{tmp}"]).replace("{other}", sub["{other}"]) for a in args]
    before = set(os.listdir(tmp_path))
    status, out, err = call(capsys, *args, "--json")
    doc = json.loads(out)
    assert status == (2 if code == "USAGE" else 1)
    assert doc["error"]["code"] == code and words.replace("{tmp}", str(tmp_path)) in doc["error"]["message"], doc
    assert err.startswith(f"error [{code}]: ")
    assert set(os.listdir(tmp_path)) == before  # nothing written on failure


def test_cuda_device_without_a_usable_gpu(capsys, tmp_path):
    try:
        import torch

        usable = torch.cuda.is_available()
    except ImportError:
        usable = False
    code, out, err = call(capsys, "decode", "--profile", P2, "--in", BLOB, "--out", str(tmp_path / "o"), "--device", "cuda", "--json")
    if usable:
        assert code == 0 and json.loads(out)["device"] == "cuda"
    else:
        assert code == 1 and json.loads(out)["error"]["code"] == "DEVICE_UNAVAILABLE"


def test_a_bug_exits_70(capsys, tmp_path, monkeypatch):
    def boom(*a, **k):
        raise RuntimeError("boom")

    monkeypatch.setattr(cli, "read_profile", boom)
    code, out, err = call(capsys, "decode", "--profile", P2, "--in", BLOB, "--out", str(tmp_path / "o"), "--json")
    assert code == 70 and json.loads(out)["error"]["code"] == "INTERNAL" and "error [INTERNAL]" in err and "RuntimeError: boom" in err


def test_interrupt_exits_130(capsys, tmp_path, monkeypatch):
    def stop(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "read_profile", stop)
    code, _, err = call(capsys, "decode", "--profile", P2, "--in", BLOB, "--out", str(tmp_path / "o"))
    assert code == 130 and "error [INTERRUPTED]" in err


def test_encode_entropy_override_and_float16(capsys, tmp_path):
    out = tmp_path / "f16.kvtc"
    code, text, _ = call(
        capsys, "encode", "--profile", P2, "--kv", str(FIXTURES / "cache-f16.safetensors"), "--out", str(out), "--entropy", "stored"
    )
    assert code == 0 and "encoded 256 tokens (124 compressed)" in text
    assert kvtc.read_blob_header(out.read_bytes()).dtype == "float16"
    stored = out.stat().st_size
    call(capsys, "encode", "--profile", P2, "--kv", str(FIXTURES / "cache-f16.safetensors"), "--out", str(out), "--force")
    assert out.stat().st_size < stored  # the profile's deflate-rle
    back = tmp_path / "f16.safetensors"
    assert call(capsys, "decode", "--profile", P2, "--in", str(out), "--out", str(back))[0] == 0
    assert kvtc.read_kv_safetensors(back).layers[0][0].dtype == np.float16
