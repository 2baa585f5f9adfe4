"""Convert the KV dumps of SGLang's KVTC calibration fork into kvtc's dump layout (docs/kv-dumps.md).

``python -m kvtc convert-sglang DUMP_DIR --config MODEL --out OUT`` writes one kvtc dump per
worker (``OUT/tp_<t>_pp_<p>/kvtc-dump.json`` + ``seq-*.safetensors``, each with its ``shard``),
which ``kvtc calibrate --kv OUT`` fits one profile per rank from.

The fork's layout, as its own readers define it (jfckm/sglang-kvtc, read at these commits):

- ``scripts/kvtc_calibration_data.py`` (commit 36786ad97a0a6489c76ba40a02f9bc545e53ed5c):
  ``discover_dump_directories`` takes an input directory whose sub-directories (one per dataset,
  each a ``--dump-kv-path``) hold worker directories matching ``^tp_(\\d+)_pp_(\\d+)$``, and requires
  every dataset to have the same worker set. ``load_tensor`` groups a request's files
  ``<request>-K|V-chunk_<i>-layer_<j>.bin`` by chunk, requires chunk ids ``0..n-1``, the same layer
  set in every chunk, ``torch.load``s each file as a ``[tokens, heads, head_dim]`` tensor, stacks
  the layers and concatenates the chunks along tokens (logical ``[token, layer, head, head_dim]``)
  and keeps only ``torch.bfloat16`` dumps. ``Rope.invert`` un-rotates keys with the RoPE cache's
  rows ``[:tokens]``: token ``t`` of the concatenation sits at position ``t``; the dumps record no
  positions, so this converter writes ``start_position`` 0, as the fork assumes.
- ``scripts/benchmark_kvtc.py`` (commit 2ea22c992a5a504c5d6cc7e2112970e942b52d61): file names
  fullmatch ``(.+)-([KV])-chunk_(\\d+)-layer_(\\d+)\\.bin``; K and V must have the same
  (chunk, layer) set, and chunk **and layer** ids must be contiguous from zero in every worker,
  pipeline stages after the first included. Layer ids in a file name are therefore the stage's
  local layer index; the model layer is the stage's first layer plus it (a dump with model layer
  ids is accepted too: the two cannot be confused for a stage after the first, and coincide for
  the first).
- The writer itself (``python/sglang/srt/managers/scheduler_components/batch_result_processor.py``
  and ``--dump-kv-path``, per the fork's AGENTS.md) is not in the stored snapshot; the layout
  above is what the fork's readers accept, and this converter accepts exactly that.

Engine rules this converter applies (SGLang's, which the fork runs):

- Pipeline stage ``p`` of ``P`` holds model layers ``get_pp_indices(L, p, P)``
  (sgl-project/sglang ``python/sglang/srt/distributed/utils.py``, commit
  1107be112815907371027e0ab2203cb57d91c10e): ``L // P`` each, the **last** ``L % P`` stages one more;
  ``SGLANG_PP_LAYER_PARTITION`` overrides it, and so does ``--pp-layer-partition`` here.
- Tensor rank ``t`` of ``T`` holds KV heads ``[t·K/T, (t+1)·K/T)`` when ``K ≥ T``, else the one head
  ``t // (T/K)`` (QKVParallelLinear: ``num_kv_head_replicas = T/K``, shard ``tp_rank //
  num_kv_head_replicas``); ``K`` and ``T`` must divide one another, as the engine requires.

Files are loaded with ``torch.load(weights_only=True)`` (never arbitrary unpickling): a first pass
memory-maps each to check its shape and dtype without reading its data, a second reads it whole to
check finiteness and write it. One request is converted at a time and each output tensor is
written chunk by chunk, so memory stays at one chunk-layer file. A request whose sequence file
would pass ``max_file_bytes`` (2^31-1: ``kvtc calibrate --kv`` reads a file into one buffer) is
written as consecutive sequences at their own start positions, split alike in every worker. The
output appears atomically (a temporary directory next to ``--out``, then a rename); nothing that
was not written by this run is ever deleted.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import struct
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from . import __version__
from ._errors import KvtcError

WORKER_RE = re.compile(r"^tp_(\d+)_pp_(\d+)$")
FILE_RE = re.compile(r"^(.+)-([KV])-chunk_(\d+)-layer_(\d+)\.bin$")
DUMP_MANIFEST = "kvtc-dump.json"
#: dtypes the fork's pools hold, as kvtc's dump names them (§2) and safetensors spells them.
_DTYPES = {"bfloat16": "BF16", "float16": "F16", "float32": "F32"}
_INSTALL_TORCH = "python3 -m pip install torch"
_MAX_LISTED = 10
#: The largest sequence file: `kvtc calibrate --kv` reads a file into one buffer of at most 2 GiB.
MAX_FILE_BYTES = 2**31 - 1


def _err(code: str, message: str, fix: str, **context: Any) -> KvtcError:
    return KvtcError(code, message, fix, context)


def _torch():
    try:
        import torch
    except ImportError:
        raise _err(
            "DEVICE_UNAVAILABLE",  # the runtime's code for a missing optional PyTorch
            "convert-sglang reads the fork's torch.save files and needs PyTorch, which is not installed",
            f"Install it: {_INSTALL_TORCH}",
        ) from None
    return torch


# ---------------------------------------------------------------- engine rules


def pp_layer_range(layers: int, pp_rank: int, pp_size: int, partition: Optional[Sequence[int]] = None) -> Tuple[int, int]:
    """[start, end) of the model layers pipeline stage pp_rank holds, by SGLang's get_pp_indices."""
    if partition is not None:
        if len(partition) != pp_size or sum(partition) != layers or any(n < 1 for n in partition):
            raise _err(
                "USAGE",
                f"--pp-layer-partition {','.join(map(str, partition))} must list {pp_size} positive layer counts summing to {layers}",
                "Pass the SGLANG_PP_LAYER_PARTITION the server ran with, or leave it out for SGLang's default split.",
            )
        start = sum(partition[:pp_rank])
        return start, start + partition[pp_rank]
    base, rem = divmod(layers, pp_size)
    if pp_rank >= pp_size - rem:  # the last `rem` stages take one layer more
        start = pp_rank * (base + 1) - (pp_size - rem)
        return start, start + base + 1
    return pp_rank * base, (pp_rank + 1) * base


def tp_kv_heads(kv_heads: int, tp_rank: int, tp_size: int) -> List[int]:
    """The model's KV head index of each head tensor rank tp_rank holds (QKVParallelLinear's split)."""
    if tp_size >= kv_heads:
        if tp_size % kv_heads:
            raise _err(
                "KV_INVALID",
                f"tensor parallel size {tp_size} is not a multiple of the model's {kv_heads} KV heads; SGLang cannot shard it so",
                "Check --config: it must be the model the server ran.",
            )
        return [tp_rank // (tp_size // kv_heads)]
    if kv_heads % tp_size:
        raise _err(
            "KV_INVALID",
            f"the model's {kv_heads} KV heads do not divide over tensor parallel size {tp_size}; SGLang cannot shard it so",
            "Check --config: it must be the model the server ran.",
        )
    n = kv_heads // tp_size
    return list(range(tp_rank * n, (tp_rank + 1) * n))


# ---------------------------------------------------------------- discovery


@dataclass
class _Request:
    dataset: str
    name: str
    files: Dict[str, Dict[Tuple[int, int], str]] = field(default_factory=lambda: {"K": {}, "V": {}})

    @property
    def label(self) -> str:
        return f"{self.dataset}/{self.name}" if self.dataset else self.name


@dataclass
class _Worker:
    tp: int
    pp: int
    dirs: List[Tuple[str, str]]  # (dataset, path)
    requests: Dict[Tuple[str, str], _Request] = field(default_factory=dict)
    file_layers: List[int] = field(default_factory=list)  # layer ids as the file names spell them
    model_layers: List[int] = field(default_factory=list)  # the model layers they are
    kv_heads: List[int] = field(default_factory=list)

    @property
    def name(self) -> str:
        return f"tp_{self.tp}_pp_{self.pp}"


def _workers_in(path: str) -> Dict[Tuple[int, int], str]:
    out = {}
    for entry in sorted(os.listdir(path)):
        m = WORKER_RE.match(entry)
        if m and os.path.isdir(os.path.join(path, entry)):
            out[(int(m.group(1)), int(m.group(2)))] = os.path.join(path, entry)
    return out


def discover(dump_dir: str) -> List[_Worker]:
    """The workers of a fork dump: DUMP_DIR/tp_*_pp_* (one --dump-kv-path), or DUMP_DIR/<dataset>/tp_*_pp_*."""
    if not os.path.isdir(dump_dir):
        raise _err("KV_INVALID", f"dump directory {dump_dir} does not exist", "Pass the fork's --dump-kv-path directory.", dir=dump_dir)
    direct = _workers_in(dump_dir)
    datasets: List[Tuple[str, Dict[Tuple[int, int], str]]] = []
    if direct:
        others = [e for e in sorted(os.listdir(dump_dir)) if not WORKER_RE.match(e)]
        if others:
            raise _err(
                "KV_INVALID",
                f"{dump_dir} holds worker directories and also {_listing(others)}, which the fork never writes there",
                "Move the other entries out of the dump directory.",
                dir=dump_dir,
                unknown=others[:_MAX_LISTED],
            )
        datasets.append(("", direct))
    else:
        for entry in sorted(os.listdir(dump_dir)):
            p = os.path.join(dump_dir, entry)
            ws = _workers_in(p) if os.path.isdir(p) else {}
            if not ws:
                raise _err(
                    "KV_INVALID",
                    f"{p} is neither a worker directory (tp_<t>_pp_<p>) nor a dataset directory holding them",
                    "Pass the fork's --dump-kv-path directory, or a directory of them (one per dataset) and nothing else.",
                    entry=p,
                )
            datasets.append((entry, ws))
    if not datasets:
        raise _err("KV_INVALID", f"{dump_dir} holds no tp_<t>_pp_<p> worker directories", "Pass the fork's --dump-kv-path directory.")
    keys = sorted(datasets[0][1])
    for ds, ws in datasets[1:]:
        if sorted(ws) != keys:
            raise _err(
                "KV_INVALID",
                f"dataset {ds} has workers {_names(sorted(ws))} but {datasets[0][0]} has {_names(keys)}",
                "Every dataset must come from the same tensor/pipeline parallel configuration: convert them separately.",
            )
    tp_size = 1 + max(t for t, _ in keys)
    pp_size = 1 + max(p for _, p in keys)
    grid = [(t, p) for p in range(pp_size) for t in range(tp_size)]
    missing = [k for k in grid if k not in keys]
    if missing:
        raise _err(
            "KV_INVALID",
            f"worker directories {_names(missing)} are missing: tp {tp_size} × pp {pp_size} needs every tp_<t>_pp_<p>",
            "Copy the whole dump, every worker's directory.",
        )
    return [_Worker(t, p, [(ds, ws[(t, p)]) for ds, ws in datasets]) for t, p in sorted(grid, key=lambda k: (k[1], k[0]))]


def _names(keys) -> str:
    return ", ".join(f"tp_{t}_pp_{p}" for t, p in keys)


def _listing(names: Sequence[str]) -> str:
    shown = ", ".join(names[:_MAX_LISTED])
    return shown + (f" and {len(names) - _MAX_LISTED} more" if len(names) > _MAX_LISTED else "")


def scan(worker: _Worker) -> None:
    """Groups a worker's files by request; refuses unknown names, lone K or V files, gaps."""
    unknown: List[str] = []
    for ds, path in worker.dirs:
        for entry in sorted(os.listdir(path)):
            full = os.path.join(path, entry)
            m = FILE_RE.match(entry)
            if not m or not os.path.isfile(full):
                unknown.append(full)
                continue
            name, kind, chunk, layer = m.group(1), m.group(2), int(m.group(3)), int(m.group(4))
            req = worker.requests.setdefault((ds, name), _Request(ds, name))
            req.files[kind][(chunk, layer)] = full
    if unknown:
        raise _err(
            "KV_INVALID",
            f"{worker.name}: {len(unknown)} entr{'y is' if len(unknown) == 1 else 'ies are'} not "
            f"<request>-K|V-chunk_<i>-layer_<j>.bin files: {_listing(unknown)}",
            "Remove them from the dump (the fork writes nothing else there), then convert again.",
            worker=worker.name,
            unknown=unknown[:_MAX_LISTED],
        )
    if not worker.requests:
        raise _err("KV_INVALID", f"{worker.name} holds no dump files", "Copy the whole dump, every worker's files.", worker=worker.name)
    layers: Optional[List[int]] = None
    for req in worker.requests.values():
        k, v = req.files["K"], req.files["V"]
        for have, other, kind in ((k, v, "V"), (v, k, "K")):
            for key in sorted(set(have) - set(other)):
                raise _err(
                    "KV_INVALID",
                    f"{have[key]} has no {kind} partner ({req.name}-{kind}-chunk_{key[0]}-layer_{key[1]}.bin is missing)",
                    "Every K file needs its V file and vice versa: copy the missing file or remove this request's files.",
                    file=have[key],
                )
        chunks = sorted({c for c, _ in k})
        if chunks != list(range(len(chunks))):
            gap = next(i for i in range(len(chunks) + 1) if i not in chunks)
            raise _err(
                "KV_INVALID",
                f"{worker.name}: request {req.label} has chunks {chunks}; chunk {gap} is missing",
                "Chunks must be numbered 0..n-1: copy the missing chunk's files or remove this request's files.",
                worker=worker.name,
                request=req.label,
            )
        per_chunk = [sorted(l for c2, l in k if c2 == c) for c in chunks]
        for c, ls in zip(chunks, per_chunk):
            if ls != per_chunk[0]:
                raise _err(
                    "KV_INVALID",
                    f"{worker.name}: request {req.label} chunk {c} has layers {ls}, chunk 0 has {per_chunk[0]}",
                    "Every chunk must hold every layer of the stage: copy the missing files or remove this request's files.",
                    worker=worker.name,
                    request=req.label,
                )
        if layers is None:
            layers = per_chunk[0]
        elif per_chunk[0] != layers:
            raise _err(
                "KV_INVALID",
                f"{worker.name}: request {req.label} has layers {per_chunk[0]}, other requests have {layers}",
                "Every request of a worker must hold the same layers: remove the incomplete request's files.",
                worker=worker.name,
                request=req.label,
            )
    worker.file_layers = layers or []


def map_layers(worker: _Worker, model_layers: int, pp_size: int, partition: Optional[Sequence[int]]) -> None:
    """The model layers a worker's file layer ids stand for (stage-local ids, or model ids)."""
    start, end = pp_layer_range(model_layers, worker.pp, pp_size, partition)
    ids = worker.file_layers
    if ids == list(range(end - start)):
        worker.model_layers = [start + i for i in ids]
    elif ids == list(range(start, end)):
        worker.model_layers = list(ids)
    else:
        raise _err(
            "KV_INVALID",
            f"{worker.name} holds layers {ids}, but pipeline stage {worker.pp} of {pp_size} holds model layers "
            f"{start}..{end - 1} ({end - start} layers, as SGLang's get_pp_indices splits {model_layers})",
            "Check that --config is the model the server ran; if the server set SGLANG_PP_LAYER_PARTITION, pass it as --pp-layer-partition.",
            worker=worker.name,
            layers=ids,
        )


# ---------------------------------------------------------------- loading


def _load(torch, path: str, mmap: bool = False):
    """One fork file: a tensor (memory-mapped if asked and the file format allows it). No arbitrary unpickling.

    The first pass maps the files to read their shapes without their data; the second reads each
    file whole, which is faster than faulting the mapping in page by page.
    """
    try:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
        except RuntimeError as e:
            if not mmap or ("mmap" not in str(e) and "zip" not in str(e)):
                raise
            obj = torch.load(path, map_location="cpu", weights_only=True)  # legacy (pre-zip) torch.save format
    except Exception as e:  # noqa: BLE001 - torch raises many types for a bad file; each becomes a KvtcError naming it
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise _err(
            "KV_INVALID",
            f"{path} is not a torch.save file of a tensor that torch.load(weights_only=True) accepts: {first}",
            "Re-create the dump with the fork; kvtc loads only plain tensors (never arbitrary pickled objects).",
            file=path,
        ) from None
    if not isinstance(obj, torch.Tensor):
        raise _err(
            "KV_INVALID",
            f"{path} holds a {type(obj).__name__}, not a tensor",
            "The fork writes one [tokens, heads, head_dim] tensor per file: re-create the dump with it.",
            file=path,
        )
    return obj


def _nonfinite(torch, t):
    """Where t is NaN or ±inf, from the exponent bits: all ones. (torch.isfinite on bfloat16 is ~50x slower.)"""
    if t.dtype == torch.float32:
        return (t.view(torch.int32) & 0x7F800000) == 0x7F800000
    mask = 0x7F80 if t.dtype == torch.bfloat16 else 0x7C00  # float16
    return (t.view(torch.int16) & mask) == mask


def _dtype_name(torch, t) -> Optional[str]:
    return {torch.bfloat16: "bfloat16", torch.float16: "float16", torch.float32: "float32"}.get(t.dtype)


# ---------------------------------------------------------------- writing


def _st_header(entries: List[Tuple[str, str, List[int], int]], metadata: Dict[str, str]) -> Tuple[bytes, Dict[str, int]]:
    """The safetensors header for tensors (name, dtype, shape, nbytes) sorted by name, and each one's data offset."""
    header: Dict[str, Any] = {"__metadata__": {"format": "pt", **metadata}}
    offsets: Dict[str, int] = {}
    off = 0
    for name, dt, shape, nbytes in sorted(entries):
        header[name] = {"dtype": dt, "shape": shape, "data_offsets": [off, off + nbytes]}
        offsets[name] = off
        off += nbytes
    hb = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    hb += b" " * ((8 - len(hb) % 8) % 8)
    return struct.pack("<Q", len(hb)) + hb, offsets


@dataclass
class _Geometry:
    dtype: Optional[str] = None
    head_dim: int = 0
    value_head_dim: int = 0
    max_positions: int = 0
    piece_tokens: int = 0  # the most tokens one sequence file holds (a longer request is split; 0 = not set yet)


def _piece_tokens(torch, workers: List[_Worker], geo: _Geometry, max_file_bytes: int) -> int:
    """The most tokens a sequence file may hold in every worker, under max_file_bytes (calibrate reads a file into one buffer)."""
    esize = torch.empty((), dtype=getattr(torch, geo.dtype)).element_size()
    per_token = max(len(w.model_layers) * len(w.kv_heads) * (geo.head_dim + geo.value_head_dim) * esize for w in workers)
    # The header: a bound on its JSON (names, shapes, offsets, metadata) for the largest worker.
    header = 1024 + 256 * 2 * max(len(w.model_layers) for w in workers)
    n = (max_file_bytes - header) // per_token
    if n < 1:
        raise _err("USAGE", f"--max-file-bytes {max_file_bytes} cannot hold one token ({per_token} bytes a token)", "Raise it.")
    return n


def _check_loaded(torch, t, path: str, shape: Tuple[int, int, int], dtype: str) -> None:
    if tuple(t.shape) != shape or _dtype_name(torch, t) != dtype:
        raise _err(
            "KV_INVALID",
            f"{path} changed while it was converted (now {list(t.shape)} {t.dtype}, was {list(shape)} {dtype})",
            "Convert a dump no process is writing.",
            file=path,
        )


def _convert_request(
    torch, worker: _Worker, req: _Request, out_dir: str, first_index: int, geo: _Geometry, tokens_seen: Dict[Tuple[str, str], int]
) -> List[Dict[str, Any]]:
    """Writes one request's sequence file(s) as seq-<first_index + i>; returns their manifest entries (with `bytes`).

    Streams one chunk-layer file at a time. A request longer than geo.piece_tokens is split into
    consecutive pieces, each a sequence at its own start_position.
    """
    heads = len(worker.kv_heads)
    chunks = sorted({c for c, _ in req.files["K"]})
    # Pass 1: every file's tensor header (memory-mapped: no data read), all checks that need no values.
    chunk_tokens: List[int] = []
    for c in chunks:
        n = None
        for j in worker.file_layers:
            for kind in ("K", "V"):
                path = req.files[kind][(c, j)]
                t = _load(torch, path, mmap=True)
                want_dim = geo.head_dim if kind == "K" else geo.value_head_dim
                dt = _dtype_name(torch, t)
                if dt is None:
                    raise _err(
                        "KV_INVALID",
                        f"{path} is {t.dtype}; the fork's caches are bfloat16, float16 or float32",
                        "Re-create the dump from a server whose KV cache is one of these dtypes.",
                        file=path,
                    )
                if t.ndim != 3 or t.shape[1] != heads or t.shape[2] != want_dim:
                    raise _err(
                        "KV_INVALID",
                        f"{path} has shape {list(t.shape)}; {worker.name} must hold [tokens, {heads}, {want_dim}] "
                        f"({heads} of the model's KV heads at tensor parallel size, {'head_dim' if kind == 'K' else 'value head_dim'} {want_dim})",
                        "Check that --config is the model the server ran, with the same tensor parallel size (the tp_* directories).",
                        file=path,
                        shape=list(t.shape),
                    )
                if n is None:
                    n = int(t.shape[0])
                elif t.shape[0] != n:
                    raise _err(
                        "KV_INVALID",
                        f"{path} has {t.shape[0]} tokens, but chunk {c} of request {req.label} has {n} in its other files",
                        "The dump is inconsistent: remove this request's files from every worker.",
                        file=path,
                    )
                if geo.dtype is None:
                    geo.dtype = dt
                elif dt != geo.dtype:
                    raise _err(
                        "KV_INVALID",
                        f"{path} is {dt}, but the dump's other files are {geo.dtype}",
                        "A dump holds one dtype: convert dumps from different servers separately.",
                        file=path,
                    )
                del t
        if not n:
            raise _err(
                "KV_INVALID",
                f"chunk {c} of request {req.label} in {worker.name} holds no tokens",
                "Remove this request's files from every worker.",
                file=req.files["K"][(c, worker.file_layers[0])],
            )
        chunk_tokens.append(n)
    T = sum(chunk_tokens)
    key = (req.dataset, req.name)
    if key in tokens_seen and tokens_seen[key] != T:
        raise _err(
            "KV_INVALID",
            f"request {req.label} has {T} tokens in {worker.name} but {tokens_seen[key]} in an earlier worker",
            "Every worker holds the same tokens of a request: the dump is incomplete; remove this request's files from every worker.",
            worker=worker.name,
            request=req.label,
        )
    if T > geo.max_positions:
        raise _err(
            "KV_INVALID",
            f"request {req.label} has {T} tokens, more than the model's max_position_embeddings {geo.max_positions}",
            "Check that --config is the model the server ran (with its context length), or remove this request's files.",
            worker=worker.name,
            request=req.label,
        )
    tokens_seen[key] = T
    if not geo.piece_tokens:
        raise AssertionError("piece_tokens is set before the first request is written")
    st_dtype = _DTYPES[geo.dtype]
    esize = torch.empty((), dtype=getattr(torch, geo.dtype)).element_size()
    starts = list(range(0, T, geo.piece_tokens))
    pieces = []  # (start, tokens, file name, header bytes, data offsets, total bytes)
    for i, a in enumerate(starts):
        tp = min(geo.piece_tokens, T - a)
        entries = []
        for l in worker.model_layers:
            entries.append((f"present.{l}.key", st_dtype, [1, heads, tp, geo.head_dim], heads * tp * geo.head_dim * esize))
            entries.append((f"present.{l}.value", st_dtype, [1, heads, tp, geo.value_head_dim], heads * tp * geo.value_head_dim * esize))
        source = f"sglang-kvtc {worker.name}/{req.label}" + (f" tokens {a}..{a + tp - 1}" if len(starts) > 1 else "")
        head, offsets = _st_header(entries, {"tokens": str(tp), "start_position": str(a), "source": source})
        pieces.append((a, tp, f"seq-{first_index + i:06d}.safetensors", head, offsets, len(head) + sum(e[3] for e in entries)))
    # Pass 2: each file's values, transposed to [heads, tokens, dim] and written at their place in every head's rows.
    files = [open(os.path.join(out_dir, name), "wb") for _, _, name, _, _, _ in pieces]
    try:
        for f, (_, _, _, head, _, total) in zip(files, pieces):
            f.write(head)
            f.truncate(total)
        for j, l in zip(worker.file_layers, worker.model_layers):
            for kind, suffix, dim in (("K", "key", geo.head_dim), ("V", "value", geo.value_head_dim)):
                t0 = 0
                for c, n in zip(chunks, chunk_tokens):
                    path = req.files[kind][(c, j)]
                    t = _load(torch, path)
                    _check_loaded(torch, t, path, (n, heads, dim), geo.dtype)
                    nonfinite = _nonfinite(torch, t)
                    if bool(nonfinite.any()):
                        bad = int(nonfinite.nonzero()[0][0])
                        raise _err(
                            "KV_INVALID",
                            f"{path} holds a non-finite value (NaN or infinity) at token {bad} of the chunk",
                            "A cache must be finite: remove this request's files from every worker (the server produced NaN/inf).",
                            file=path,
                        )
                    rows = t.transpose(0, 1).contiguous().view(torch.uint8).numpy()  # [heads, n, dim] as bytes
                    for f, (a, tp, _, head, offsets, _) in zip(files, pieces):
                        lo, hi = max(a, t0), min(a + tp, t0 + n)  # this chunk's tokens in this piece
                        if lo >= hi:
                            continue
                        base = len(head) + offsets[f"present.{l}.{suffix}"]
                        for h in range(heads):
                            f.seek(base + (h * tp + lo - a) * dim * esize)
                            f.write(rows[h, lo - t0 : hi - t0])  # a C-contiguous block: no copy
                    t0 += n
                    del t, rows
    finally:
        for f in files:
            f.close()
    return [{"file": name, "tokens": tp, "start_position": a, "bytes": total} for a, tp, name, _, _, total in pieces]


def _manifest(model: Dict[str, Any], worker: _Worker, tp_size: int, pp_size: int, sequences: List[Dict[str, Any]]) -> Dict[str, Any]:
    return {
        "format": "kvtc-kv-dump",
        "format_version": 1,
        "producer": {"name": "kvtc convert-sglang", "version": __version__},
        "model": model,
        "shard": {
            "tp_rank": worker.tp,
            "tp_size": tp_size,
            "pp_rank": worker.pp,
            "pp_size": pp_size,
            "layers": worker.model_layers,
            "kv_heads": worker.kv_heads,
        },
        "sequences": sequences,
    }


# ---------------------------------------------------------------- the model


def load_model_section(config: str) -> Dict[str, Any]:
    """The dump manifest's `model` object for the served model's config (its directory or config.json).

    The facts are capture.model_facts's (the ones `kvtc capture` records), from the config alone: the
    fork's dumps hold the tensors of the model's own rotary embedding, which transformers builds
    from the same config.
    """
    from .capture import _require, model_facts

    _require()
    from transformers import AutoConfig

    if not os.path.exists(config):
        raise _err(
            "MODEL_NOT_FOUND", f"--config {config} does not exist", "Pass the served model's directory or its config.json.", config=config
        )
    try:
        cfg = AutoConfig.from_pretrained(config, trust_remote_code=False, local_files_only=True)
    except Exception as e:  # noqa: BLE001 - transformers raises many types for a bad config
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise _err(
            "MODEL_INVALID",
            f"--config {config}: transformers cannot read it as a model config: {first}",
            "Pass the served model's directory (with config.json) or the config.json itself.",
            config=config,
        ) from None
    model = model_facts(cfg, name=config)
    # SGLang rotates the pairs its rotary kernel is told to (get_rope(is_neox_style=...), which its
    # Llama-style models read from config.rope_is_neox_style, default True), and the fork's
    # calibration un-rotates the same way: neox = transformers' rotate_half pairs, else interleaved.
    layout = "half" if getattr(cfg, "rope_is_neox_style", True) else "interleaved"
    model["rope"] = [None if r is None else {**r, "layout": layout} for r in model["rope"]]
    return model


# ---------------------------------------------------------------- the command


def _prepare_out(out: str) -> Tuple[str, str]:
    out = os.path.abspath(out)
    if os.path.lexists(out) and not (os.path.isdir(out) and not os.path.islink(out) and not os.listdir(out)):
        raise _err(
            "OUTPUT_EXISTS",
            f"output {out} already exists",
            "Choose a new --out (convert-sglang never deletes or overwrites what it did not write).",
            out=out,
        )
    parent = os.path.dirname(out)
    if not os.path.isdir(parent):
        raise _err(
            "OUTPUT_UNWRITABLE", f"cannot write {out}: directory {parent} does not exist", "Create it or choose another --out.", out=out
        )
    return out, parent


def convert(
    dump_dir: str,
    config: str,
    out: str,
    *,
    pp_layer_partition: Optional[Sequence[int]] = None,
    progress: Optional[Callable[[str], None]] = None,
    model_section: Optional[Dict[str, Any]] = None,
    max_file_bytes: int = MAX_FILE_BYTES,
) -> Dict[str, Any]:
    """Converts a fork dump to kvtc's layout under ``out`` (one shard dump per worker); returns a summary.

    model_section: the manifest's ``model`` object (default: from ``config`` via capture.model_facts).
    max_file_bytes: the largest sequence file written; a longer request becomes several sequences.
    """
    torch = _torch()
    if sys.byteorder != "little":  # the tensors' bytes are written as they sit in memory; safetensors is little-endian
        raise _err(
            "DEVICE_UNAVAILABLE",
            "convert-sglang writes safetensors from memory and needs a little-endian machine",
            "Run it on x86-64 or Arm.",
        )
    t_start = time.perf_counter()
    say = progress or (lambda s: None)
    out, parent = _prepare_out(out)
    model = dict(model_section) if model_section is not None else load_model_section(config)
    layers = int(model["layers"])
    kv_heads_total = int(model["kv_heads"])
    cache_layers = list(model.get("cache_layers", range(layers)))
    if model.get("cache", "gqa") != "gqa" or cache_layers != list(range(layers)):
        raise _err(
            "UNSUPPORTED_ARCHITECTURE",
            f"{config} is a {model.get('family')} model whose cache is {model.get('cache', 'gqa')} over layers {cache_layers}; "
            "the fork dumps MHA/GQA pools that hold every layer",
            "Capture this model with `python -m kvtc capture` instead.",
            config=config,
        )
    geo = _Geometry(
        head_dim=int(model["head_dim"]),
        value_head_dim=int(model.get("value_head_dim", model["head_dim"])),
        max_positions=int(model["max_positions"]),
    )
    try:
        workers = discover(dump_dir)
        for w in workers:
            scan(w)
    except OSError as e:  # an unreadable directory: the system's words, not a kvtc bug
        raise _err(
            "IO_ERROR", f"{e.filename or dump_dir}: {e.strerror or e}", "Check the dump's permissions.", file=str(e.filename)
        ) from None
    tp_size = 1 + max(w.tp for w in workers)
    pp_size = 1 + max(w.pp for w in workers)
    if pp_size > layers:
        raise _err("KV_INVALID", f"{pp_size} pipeline stages but the model has {layers} layers", "Check --config.", config=config)
    for w in workers:
        map_layers(w, layers, pp_size, pp_layer_partition)
        w.kv_heads = tp_kv_heads(kv_heads_total, w.tp, tp_size)
    ref = workers[0]
    for w in workers[1:]:
        missing = sorted(set(ref.requests) ^ set(w.requests))
        if missing:
            ds, name = missing[0]
            where = w.name if (ds, name) in ref.requests else ref.name
            raise _err(
                "KV_INVALID",
                f"request {(ds + '/') if ds else ''}{name} is missing from {where} ({len(missing)} request(s) are not in every worker)",
                "Every worker holds every request: the dump is incomplete; copy the missing files or remove the request from every worker.",
                worker=where,
                request=f"{ds}/{name}" if ds else name,
            )
    order = sorted(ref.requests)
    first = ref.requests[order[0]]
    c0 = min(first.files["K"])
    geo.dtype = _dtype_name(torch, _load(torch, first.files["K"][c0], mmap=True))  # checked with every file below
    if geo.dtype is None:
        geo.dtype = "float32"  # any: the file is refused with its dtype in the first pass
    geo.piece_tokens = _piece_tokens(torch, workers, geo, max_file_bytes)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(out)}.tmp-", dir=parent)
    tokens_seen: Dict[Tuple[str, str], int] = {}
    ranks = []
    written = 0
    try:
        for w in workers:
            wdir = os.path.join(tmp, w.name)
            os.mkdir(wdir)
            sequences: List[Dict[str, Any]] = []
            for i, key in enumerate(order):
                req = w.requests[key]
                written_seqs = _convert_request(torch, w, req, wdir, len(sequences), geo, tokens_seen)
                for q in written_seqs:
                    written += q.pop("bytes")
                sequences += written_seqs
                say(f"{w.name}: {i + 1}/{len(order)} {req.label} ({tokens_seen[key]} tokens)")
            m = dict(model)
            m["kv_heads"] = len(w.kv_heads)
            m["dtype"] = geo.dtype
            if "name" not in m:
                m["name"] = config
            manifest = _manifest(m, w, tp_size, pp_size, sequences)
            with open(os.path.join(wdir, DUMP_MANIFEST), "w", encoding="utf-8") as f:
                f.write(json.dumps(manifest, indent=2) + "\n")
            ranks.append(
                {
                    "dir": w.name,
                    "tp_rank": w.tp,
                    "pp_rank": w.pp,
                    "layers": w.model_layers,
                    "kv_heads": w.kv_heads,
                    "sequences": len(sequences),
                    "tokens": sum(s["tokens"] for s in sequences),
                }
            )
        if os.path.isdir(out):
            os.rmdir(out)  # empty (checked above): the rename needs the name free
        os.rename(tmp, out)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)  # only what this run wrote
        if isinstance(e, OSError):  # disk full, permissions, a file vanishing: the system's words, not a kvtc bug
            raise _err(
                "IO_ERROR",
                f"{e.filename or out}: {e.strerror or e}",
                "Check the disk space and permissions of the dump and of --out, then convert again.",
                file=str(e.filename or out),
            ) from None
        raise
    return {
        "out": out,
        "tp_size": tp_size,
        "pp_size": pp_size,
        "dtype": geo.dtype,
        "requests": len(order),
        "sequences": ranks[0]["sequences"],  # the same in every worker: requests are split alike
        "tokens": sum(tokens_seen.values()),
        "bytes": written,
        "ranks": ranks,
        "seconds": {"total": time.perf_counter() - t_start},
    }


def _stderr(line: str) -> None:
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


def _partition(text: str) -> List[int]:
    try:
        return [int(x) for x in text.split(",")]
    except ValueError:
        raise _err("USAGE", f"--pp-layer-partition {text!r} is not a comma-separated list of layer counts", "Example: 11,11,10.") from None


def add_subcommand(sub) -> None:
    """Registers `convert-sglang` on the CLI's sub-parsers."""
    c = sub.add_parser(
        "convert-sglang",
        help="SGLang KVTC fork KV dump (tp_*_pp_*/<request>-K|V-chunk_*-layer_*.bin) → kvtc KV dumps, one per worker",
    )
    c.add_argument("dump_dir", metavar="DUMP_DIR", help="the fork's --dump-kv-path directory, or a directory of them (one per dataset)")
    c.add_argument("--config", required=True, metavar="MODEL", help="the served model's directory or its config.json")
    c.add_argument("--out", required=True, metavar="DIR", help="new directory: OUT/tp_<t>_pp_<p>/kvtc-dump.json + seq-*.safetensors")
    c.add_argument(
        "--pp-layer-partition",
        type=_partition,
        metavar="N,N,…",
        help="layers per pipeline stage, if the server ran with SGLANG_PP_LAYER_PARTITION (default: SGLang's even split)",
    )
    c.add_argument(
        "--max-file-bytes",
        type=int,
        default=MAX_FILE_BYTES,
        metavar="N",
        help="largest sequence file; a longer request becomes consecutive sequences (default 2^31-1, what calibrate --kv reads)",
    )
    c.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    c.add_argument("--json", action="store_true", help="print one JSON document")


def run(args) -> Dict[str, Any]:
    return convert(
        args.dump_dir,
        args.config,
        args.out,
        pp_layer_partition=args.pp_layer_partition,
        progress=None if args.quiet else _stderr,
        max_file_bytes=args.max_file_bytes,
    )


def human(r: Dict[str, Any]) -> str:
    return (
        f"converted {r['requests']} requests ({r['tokens']} tokens, {r['dtype']}) from {r['tp_size']} × {r['pp_size']} workers "
        f"(tp × pp) → {r['out']} ({len(r['ranks'])} shard dumps of {r['sequences']} sequences, {r['bytes']} B) in {r['seconds']['total']:.1f} s"
    )
