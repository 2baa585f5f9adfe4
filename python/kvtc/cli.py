"""python -m kvtc: decode / encode / header, with kvtc's output contract.

stdout carries results (with --json exactly one JSON document, also on failure:
{"error": {code, message, fix, context}}); stderr carries messages ("error [CODE]: message"
then "  fix: ..."). Exit codes: 0 ok, 1 bad input, 2 usage, 70 a bug, 130 interrupted.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
from typing import Any, Dict, List, Optional

from . import __version__, sglang
from . import capture as _capture_cmd
from ._errors import KvtcError
from .blob import read_blob_header
from .codec import decode, encode
from .kvfile import read_kv_safetensors, serialize_kv_safetensors, write_atomic
from .profile import read_profile


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # usage errors become KvtcError("USAGE"), exit 2
        raise KvtcError("USAGE", message, f"Run `{self.prog} --help` for the options.")


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="python -m kvtc", description="kvtc Python runtime: decode and encode .kvtc blobs with a kvtc profile.")
    p.add_argument("--version", action="version", version=f"kvtc (Python) {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    _capture_cmd.add_subcommand(sub)

    d = sub.add_parser("decode", help="blob → KV cache safetensors (the same tensors as `kvtc decode`)")
    d.add_argument("--profile", required=True, help="profile directory (or its kvtc-profile.json)")
    d.add_argument("--in", dest="input", required=True, metavar="BLOB", help="the .kvtc blob")
    d.add_argument("--out", required=True, metavar="OUT.safetensors", help="where to write the cache")
    d.add_argument(
        "--device", default="cpu", help='"cpu" (NumPy, default), "torch:cpu" (the PyTorch path on the CPU) or "cuda[:N]" (PyTorch on a GPU)'
    )
    d.add_argument("--force", action="store_true", help="replace an existing output file")
    d.add_argument("--json", action="store_true", help="print one JSON document")

    e = sub.add_parser("encode", help="KV cache safetensors → blob")
    e.add_argument("--profile", required=True, help="profile directory (or its kvtc-profile.json)")
    e.add_argument("--kv", required=True, metavar="IN.safetensors", help="the cache (present.{i}.key|value)")
    e.add_argument("--out", required=True, metavar="BLOB", help="where to write the blob")
    e.add_argument(
        "--entropy", choices=["deflate-rle", "deflate-huffman", "deflate-default", "stored"], help="override the profile's DEFLATE setting"
    )
    e.add_argument(
        "--device", default="cpu", help='"cpu" (NumPy, default), "torch:cpu" (the PyTorch path on the CPU) or "cuda[:N]" (PyTorch on a GPU)'
    )
    e.add_argument("--force", action="store_true", help="replace an existing output file")
    e.add_argument("--json", action="store_true", help="print one JSON document")

    h = sub.add_parser("header", help="print a blob's header")
    h.add_argument("--in", dest="input", required=True, metavar="BLOB")
    h.add_argument("--json", action="store_true", help="print one JSON document")

    sglang.add_subcommand(sub)
    return p


def _check_out(path: str, force: bool) -> None:
    if os.path.exists(path) and not force:
        raise KvtcError(
            "OUTPUT_EXISTS", f"output {path} already exists", "Pass --force to replace it, or choose another --out.", {"out": path}
        )
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise KvtcError(
            "OUTPUT_UNWRITABLE",
            f"cannot write {path}: directory {parent} does not exist",
            "Create the directory or choose another --out.",
            {"out": path},
        )


def _read(path: str, code: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise KvtcError(code, f"cannot read {path}: {e.strerror or e}", "Check the path.", {"file": path}) from None


def _decode(a) -> Dict[str, Any]:
    _check_out(a.out, a.force)
    t0 = time.perf_counter()
    profile = read_profile(a.profile)
    if not os.path.isfile(a.input):
        raise KvtcError("BLOB_INVALID", f"blob {a.input} does not exist", "Check the --in path.", {"in": a.input})
    blob = _read(a.input, "BLOB_INVALID")
    header = read_blob_header(blob, a.input)
    layers = decode(profile, blob, device=a.device, source=a.input)
    if a.device != "cpu":
        layers = [(k.cpu().numpy(), v.cpu().numpy()) for k, v in layers]
    meta = {"decoded_from": a.input, "profile_id": profile.profile_id, "model": profile.model_name}
    if profile.fingerprint.get("id"):
        meta["fingerprint"] = profile.fingerprint["id"]
    data = serialize_kv_safetensors(layers, header.start_position, dtype=header.dtype, metadata=meta)
    write_atomic(a.out, data, force=True)
    return {
        "out": a.out,
        "tokens": header.tokens,
        "start_position": header.start_position,
        "dtype": header.dtype,
        "blob_bytes": len(blob),
        "out_bytes": len(data),
        "seconds": {"total": time.perf_counter() - t0},
        "device": str(a.device),
    }


def _encode(a) -> Dict[str, Any]:
    _check_out(a.out, a.force)
    t0 = time.perf_counter()
    profile = read_profile(a.profile)
    # A format-3 profile's layers may be named by model layer (KV dumps) or in its own order.
    kv = read_kv_safetensors(a.kv, cache_layers=profile.cache_layers)
    fp = profile.fingerprint.get("id")
    got = kv.metadata.get("fingerprint")
    if got and fp and got != fp:
        raise KvtcError(
            "PROFILE_MISMATCH",
            f"{a.kv} was captured from model {kv.metadata.get('model', '?')} (fingerprint {got}), but the profile is for {profile.model_name} ({fp})",
            "Encode with the profile calibrated for the model that produced this cache.",
            {"kv": a.kv, "cache_fingerprint": got, "profile_fingerprint": fp},
        )
    blob = encode(profile, kv.layers, kv.start_position, entropy=a.entropy, device=a.device)
    write_atomic(a.out, blob, force=True)
    T = kv.tokens
    s, w, n = profile.split(T)
    per_token = profile.fp16_bytes_per_token  # keys and values at their own widths (format 3)
    return {
        "out": a.out,
        "tokens": T,
        "compressed_tokens": n,
        "start_position": kv.start_position,
        "dtype": kv.dtype,
        "blob_bytes": len(blob),
        "fp16_bytes": per_token * T,
        "ratio_blob": per_token * T / len(blob),
        "seconds": {"total": time.perf_counter() - t0},
        "device": str(a.device),
    }


def _header(a) -> Dict[str, Any]:
    blob = _read(a.input, "BLOB_INVALID")
    h = read_blob_header(blob, a.input)
    return {
        "version": h.version,
        "dtype": h.dtype,
        "profile_id": h.profile_id,
        "tokens": h.tokens,
        "start_position": h.start_position,
        "layers": h.layers,
        "kv_heads": h.kv_heads,
        "head_dim": h.head_dim,
        "sections": h.section_count,
        "sink": h.sink,
        "window": h.window,
        "compressed_tokens": h.compressed_tokens,
        "bytes": len(blob),
    }


def _human(command: str, r: Dict[str, Any]) -> str:
    if command == "capture":
        return _capture_cmd.human(r)
    if command == "decode":
        return f"decoded {r['tokens']} tokens ({r['blob_bytes']} B blob) → {r['out']} ({r['out_bytes']} B, {r['dtype']}) in {r['seconds']['total']:.3f} s on {r['device']}"
    if command == "encode":
        return (
            f"encoded {r['tokens']} tokens ({r['compressed_tokens']} compressed) → {r['out']} ({r['blob_bytes']} B, "
            f"ratio, whole blob: {r['ratio_blob']:.2f}x) in {r['seconds']['total']:.3f} s on {r['device']}"
        )
    if command == "convert-sglang":
        return sglang.human(r)
    return "\n".join(f"{k}: {v}" for k, v in r.items())


def main(argv: Optional[List[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    want_json = "--json" in argv
    out = sys.stdout

    def fail(e: KvtcError, code: int) -> int:
        if want_json:
            out.write(json.dumps({"error": e.to_dict()}) + "\n")
        sys.stderr.write(f"error [{e.code}]: {e.message}" + (f"\n  fix: {e.fix}" if e.fix else "") + "\n")
        return code

    try:
        args = _parser().parse_args(argv)
        result = {"decode": _decode, "encode": _encode, "header": _header, "capture": _capture_cmd.run, "convert-sglang": sglang.run}[
            args.command
        ](args)
        out.write((json.dumps(result) if args.json else _human(args.command, result)) + "\n")
        return 0
    except KvtcError as e:
        return fail(e, 2 if e.code == "USAGE" else 1)
    except SystemExit as e:  # --help, --version
        return int(e.code or 0)
    except KeyboardInterrupt:
        return fail(KvtcError("INTERRUPTED", "interrupted"), 130)
    except BrokenPipeError:
        return 0
    except Exception as e:  # noqa: BLE001 - the one place a bug becomes exit 70
        bug = KvtcError("INTERNAL", str(e) or type(e).__name__, "This is a kvtc bug: please report it with the command you ran.")
        if want_json:
            out.write(json.dumps({"error": bug.to_dict()}) + "\n")
        sys.stderr.write(
            f"error [INTERNAL]: {traceback.format_exc()}  fix: this is a kvtc bug; please report it with the command you ran.\n"
        )
        return 70


if __name__ == "__main__":
    sys.exit(main())
