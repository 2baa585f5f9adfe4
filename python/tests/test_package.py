"""The package as pip installs it: the in-tree PEP 517 backend (python/_build/kvtc_build.py) builds a
wheel holding every module, and `python -m kvtc` runs from that wheel alone (the suite itself
imports the checkout; this is what an installed copy gets). Built into tmp_path: nothing lands in
the repository."""

import os
import subprocess
import sys
import zipfile

from kvtc_testutil import FIXTURES, PYTHON_DIR


def _backend():
    sys.path.insert(0, str(PYTHON_DIR / "_build"))
    try:
        import kvtc_build
    finally:
        sys.path.remove(str(PYTHON_DIR / "_build"))
    return kvtc_build


def test_wheel_holds_every_module_and_runs(tmp_path):
    name = _backend().build_wheel(str(tmp_path))
    wheel = tmp_path / name
    assert name.startswith("kvtc-0.1.0-") and name.endswith("-py3-none-any.whl")
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        meta = z.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    modules = {f"kvtc/{f}" for f in os.listdir(PYTHON_DIR / "kvtc") if f.endswith(".py") or f == "py.typed"}
    assert modules <= names
    assert not any("__pycache__" in n or n.startswith("tests/") for n in names)
    assert "Requires-Dist: numpy>=1.21" in meta and "Requires-Python: >=3.9" in meta
    env = {**os.environ, "PYTHONPATH": str(wheel), "PYTHONDONTWRITEBYTECODE": "1", "PYTHONNOUSERSITE": "1"}
    r = subprocess.run(
        [sys.executable, "-c", "import kvtc, sys; print(kvtc.__file__)"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60
    )
    assert r.returncode == 0 and r.stdout.startswith(str(wheel)), r.stderr
    r = subprocess.run(
        [sys.executable, "-m", "kvtc", "header", "--in", str(FIXTURES / "v2-f32.kvtc"), "--json"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0 and '"tokens": 256' in r.stdout, r.stderr
