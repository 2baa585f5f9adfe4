"""pytest set-up for the kvtc Python package (run from the repository root: python3 -m pytest python/tests -q).

- NumPy is required: without it the run stops with the command that installs it (never a skip).
- The suite imports kvtc from this checkout (pyproject's pythonpath puts python/ first on sys.path);
  an installed copy shadowing it is refused, so a stale install cannot pass for the tree.
- Running it leaves nothing in the repository: no bytecode (sys.dont_write_bytecode, set before
  any kvtc or test module is imported; this file's own .pyc, written by pytest before this code
  runs, is removed below), no .pytest_cache (pyproject: -p no:cacheprovider), outputs go to tmp_path.
"""

import pathlib
import sys

sys.dont_write_bytecode = True
_HERE = pathlib.Path(__file__).resolve().parent
for _pyc in (_HERE / "__pycache__").glob("conftest.*.pyc"):
    _pyc.unlink()
try:
    (_HERE / "__pycache__").rmdir()
except OSError:
    pass

INSTALL = "python3 -m pip install -r python/requirements-test.txt"
try:
    import numpy  # noqa: F401
except ImportError as e:  # the policy: a missing test dependency fails the run and names the fix
    raise ImportError(f"the kvtc Python tests need NumPy ({e}); install the test dependencies: {INSTALL}") from None

import kvtc  # noqa: E402
import pytest  # noqa: E402

_PACKAGE = _HERE.parent / "kvtc"
if pathlib.Path(kvtc.__file__).resolve().parent != _PACKAGE:
    raise ImportError(
        f"kvtc was imported from {kvtc.__file__}, not from this checkout ({_PACKAGE}); "
        "run pytest with python/pyproject.toml's settings (python3 -m pytest python/tests) or uninstall that copy"
    )

from kvtc_testutil import FIXTURES, read_blob  # noqa: E402


@pytest.fixture(scope="session")
def profile_v2():
    """The bundled stories260k profile (format 2: one basis over all layers per kind)."""
    return kvtc.read_profile(FIXTURES / "profile-v2")


@pytest.fixture(scope="session")
def profile_v1():
    """A format 1 stories260k profile (one basis per layer and kind)."""
    return kvtc.read_profile(FIXTURES / "profile-v1")


@pytest.fixture(scope="session")
def cache_f32():
    """256 tokens of the bundled model, captured by `kvtc capture` (float32)."""
    return kvtc.read_kv_safetensors(FIXTURES / "cache-f32.safetensors")


@pytest.fixture(scope="session")
def cache_f16():
    """The same cache rounded to float16 by kvtc (Node)."""
    return kvtc.read_kv_safetensors(FIXTURES / "cache-f16.safetensors")


@pytest.fixture(scope="session")
def blob_v2():
    """`kvtc encode` of cache-f32 with profile-v2."""
    return read_blob("v2-f32")
