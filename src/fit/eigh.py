"""kvtc's external dense eigensolver (src/fit/eigen-python.ts runs it; test/fit/eigen-python.test.ts).

Reads one symmetric float64 matrix [m, m] (row-major, little-endian) on stdin and writes, on
stdout, one JSON line then every eigenpair: the m eigenvalues (float64, descending) and the
eigenvectors as rows [m, m] (float64, row j = eigenvector j), each with kvtc's sign rule (its
largest-magnitude entry positive; the first such entry on a tie), as src/fit/eigen.ts. LAPACK's
dsyevd through NumPy, or torch.linalg.eigh on the CPU or a CUDA GPU.

    python3 eigh.py --m M [--backend numpy|torch] [--device cpu|cuda]
    python3 eigh.py --bench M [--backend ...] [--device ...]   # time one solve of a random M x M

Exit 0 with the result; 2 for bad input (a short or non-finite matrix, bad options); 1 when the
backend is missing or fails. Errors are one line on stderr. SIGINT is ignored (kvtc stops at its
next checkpoint after the first Ctrl-C) and the solver dies with the thread that started it.
"""

import argparse
import json
import signal
import sys
import time


def _die_with_parent():
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        except OSError:
            pass


def _fail(code, message):
    sys.stderr.write(message.replace("\n", " ") + "\n")
    sys.exit(code)


def _read_matrix(np, m):
    a = np.empty((m, m), dtype="<f8")
    view = memoryview(a).cast("B")
    got = 0
    stdin = sys.stdin.buffer
    while got < len(view):
        n = stdin.readinto(view[got:])
        if not n:
            _fail(2, f"eigh.py: stdin ended after {got} of {len(view)} bytes of the {m} x {m} matrix")
        got += n
    return a


def solve(a, backend, device):
    """(values descending [m], vectors as rows [m, m] C-contiguous, sign rule applied, backend name)."""
    import numpy as np

    if backend == "torch":
        import torch

        t = torch.from_numpy(a).to(device)
        w, v = torch.linalg.eigh(t)
        del t
        values = w.flip(0).cpu().numpy()
        rows = v.flip(1).T.contiguous().cpu().numpy()
        del v
        name = f"torch {torch.__version__} ({device})"
    else:
        w, v = np.linalg.eigh(a)
        values = np.ascontiguousarray(w[::-1])
        rows = np.ascontiguousarray(v[:, ::-1].T)
        del v
        name = f"numpy {np.__version__} (LAPACK)"
    idx = np.argmax(np.abs(rows), axis=1)
    neg = rows[np.arange(rows.shape[0]), idx] < 0
    rows[neg] *= -1.0
    return values, rows, name


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--m", type=int)
    ap.add_argument("--bench", type=int)
    ap.add_argument("--backend", choices=["numpy", "torch"], default="numpy")
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--threads", type=int, default=0)
    args = ap.parse_args(argv)
    _die_with_parent()
    try:
        import numpy as np
    except ImportError as e:
        _fail(1, f"eigh.py: NumPy is not importable ({e})")
    if args.backend == "torch":
        try:
            import torch
        except ImportError as e:
            _fail(1, f"eigh.py: torch is not importable ({e})")
        if args.threads > 0:
            torch.set_num_threads(args.threads)
        if args.device == "cuda" and not torch.cuda.is_available():
            _fail(1, "eigh.py: torch sees no CUDA device")
    elif args.device == "cuda":
        _fail(2, "eigh.py: --device cuda needs --backend torch")
    if args.bench:
        m = args.bench
        rng = np.random.default_rng(1)
        e = rng.standard_normal((m, m))
        d = (np.arange(m) + 1.0) ** -0.4
        a = (d[:, None] * (np.eye(m) + 0.3 * (e + e.T) / (2 * np.sqrt(m)))) * d[None, :]
        del e
        t = time.time()
        values, rows, name = solve(a, args.backend, args.device)
        s = time.time() - t
        r = np.linalg.norm(a @ rows[0] - values[0] * rows[0]) / abs(values[0])
        print(json.dumps({"m": m, "backend": name, "seconds": round(s, 3), "residual_top": float(r)}))
        return
    m = args.m
    if m is None or m < 1 or m > 65536:
        _fail(2, f"eigh.py: --m must be a whole number in [1, 65536], got {m}")
    a = _read_matrix(np, m)
    if not np.isfinite(a).all():
        _fail(2, f"eigh.py: the {m} x {m} matrix holds NaN or infinite entries")
    t = time.time()
    try:
        values, rows, name = solve(a, args.backend, args.device)
    except Exception as e:  # noqa: BLE001 - any backend failure is reported as one line
        _fail(1, f"eigh.py: {args.backend} eigh failed: {type(e).__name__}: {e}")
    del a
    out = sys.stdout.buffer
    out.write((json.dumps({"ok": True, "backend": name, "seconds": round(time.time() - t, 3)}) + "\n").encode())
    out.write(memoryview(values.astype("<f8", copy=False)).cast("B"))
    out.write(memoryview(rows.astype("<f8", copy=False)).cast("B"))
    out.flush()


if __name__ == "__main__":
    main()
