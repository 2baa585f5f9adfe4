"""src/fit/eigh.py, the external eigensolver calibrate runs (src/fit/eigen-python.ts): its wire
protocol, its sign rule and its answers against NumPy's eigh called here, and its refusals."""

import importlib.util
import json
import pathlib
import subprocess
import sys

import numpy as np
import pytest

SCRIPT = pathlib.Path(__file__).resolve().parents[2] / "src" / "fit" / "eigh.py"


def _module():
    spec = importlib.util.spec_from_file_location("kvtc_eigh_helper", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _matrix(m, seed=3):
    rng = np.random.default_rng(seed)
    e = rng.standard_normal((m, m))
    return np.diag(np.arange(m, 0, -1.0)) + 0.01 * (e + e.T)


def _run(a, *args):
    m = a.shape[0]
    p = subprocess.run(
        [sys.executable, str(SCRIPT), "--m", str(m), *args],
        input=np.ascontiguousarray(a, dtype="<f8").tobytes(),
        capture_output=True,
        check=False,
    )
    return p


def test_solve_is_numpy_eigh_descending_with_the_sign_rule():
    a = _matrix(40)
    values, rows, name = _module().solve(a.copy(), "numpy", "cpu")
    assert name.startswith("numpy ")
    w, v = np.linalg.eigh(a)
    np.testing.assert_allclose(values, w[::-1], rtol=0, atol=1e-12)
    assert rows.flags.c_contiguous and rows.shape == (40, 40)
    for j in range(40):
        # An eigenvector of values[j], unit length, its largest-magnitude entry positive.
        np.testing.assert_allclose(a @ rows[j], values[j] * rows[j], atol=1e-11)
        assert abs(np.linalg.norm(rows[j]) - 1) < 1e-12
        assert rows[j][np.argmax(np.abs(rows[j]))] > 0
        # The same vector as eigh's (gaps of ~1), up to the sign the rule fixes.
        ref = v[:, 39 - j]
        assert min(np.abs(rows[j] - ref).max(), np.abs(rows[j] + ref).max()) < 1e-10


def test_the_wire_protocol_one_json_line_then_values_and_rows():
    a = _matrix(24)
    p = _run(a)
    assert p.returncode == 0, p.stderr
    nl = p.stdout.index(b"\n")
    head = json.loads(p.stdout[:nl])
    assert head["ok"] is True and head["backend"].startswith("numpy ")
    body = p.stdout[nl + 1 :]
    assert len(body) == 8 * (24 + 24 * 24)
    values = np.frombuffer(body[: 8 * 24], dtype="<f8")
    rows = np.frombuffer(body[8 * 24 :], dtype="<f8").reshape(24, 24)
    np.testing.assert_allclose(values, np.linalg.eigvalsh(a)[::-1], atol=1e-12)
    np.testing.assert_allclose(a @ rows.T, rows.T * values, atol=1e-11)


@pytest.mark.parametrize(
    "edit, args, message",
    [
        (lambda a: a[:-1], ("--m", "12"), "stdin ended after"),
        (lambda a: np.where(np.eye(a.shape[0]) > 0, np.nan, a), (), "NaN or infinite"),
        (lambda a: a, ("--device", "cuda"), "--device cuda needs --backend torch"),
    ],
)
def test_bad_input_is_one_line_on_stderr_and_exit_2(edit, args, message):
    a = edit(_matrix(12))
    cmd = [sys.executable, str(SCRIPT)] + (list(args) if args and args[0] == "--m" else ["--m", "12", *args])
    p = subprocess.run(cmd, input=np.ascontiguousarray(a, dtype="<f8").tobytes(), capture_output=True, check=False)
    assert p.returncode == 2
    assert p.stdout == b""
    assert message in p.stderr.decode()
    assert p.stderr.decode().count("\n") == 1


def test_bench_times_one_solve():
    p = subprocess.run([sys.executable, str(SCRIPT), "--bench", "64"], capture_output=True, check=True)
    out = json.loads(p.stdout)
    assert out["m"] == 64 and out["seconds"] >= 0 and out["residual_top"] < 1e-12
