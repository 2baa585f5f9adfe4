"""A manifest, strictly (docs/profile-format.md §2.3): UTF-8 without malformed bytes, JSON without
NaN/Infinity literals, and no key twice in one object (readers disagree on which one counts: Python's
json and JavaScript's JSON.parse keep the last, others the first). Mirrors src/profile/strict-json.ts;
the scan is linear in the text and keeps one frame per open bracket.
"""

from __future__ import annotations

import json
import re
from typing import Any, List, Optional, Tuple

_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class StrictJsonError(ValueError):
    """Why a manifest is not strict JSON; `offset` is a byte offset into the file."""

    def __init__(self, message: str, offset: int):
        super().__init__(message)
        self.offset = offset


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON (a number must be finite)")


def _path(frames: List[list], key: str) -> str:
    out = ""
    for at in [f[1] for f in frames[:-1]] + [key]:
        if isinstance(at, int):
            out += f"[{at}]"
        elif _IDENT.fullmatch(at):
            out += ("." if out else "") + at
        else:
            out += f"[{json.dumps(at, ensure_ascii=False)}]"
    return out


def find_duplicate_key(text: str) -> Optional[Tuple[str, int]]:
    """(path, byte offset of the repeated key's opening quote) of the first key that appears twice
    in one object, or None. `text` must be JSON that json.loads accepted. Keys are compared decoded."""
    frames: List[list] = []  # [keys set or None for an array, current key or index, expecting a key]
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        if ch == '"':
            start = i
            i += 1
            escaped = False
            while i < n:
                c = text[i]
                if c == "\\":
                    escaped = True
                    i += 2
                    continue
                if c == '"':
                    break
                i += 1
            i += 1
            top = frames[-1] if frames else None
            if top is not None and top[0] is not None and top[2]:
                raw = text[start:i]
                key = json.loads(raw) if escaped else raw[1:-1]
                if key in top[0]:
                    return _path(frames, key), len(text[:start].encode("utf-8"))
                top[0].add(key)
                top[1] = key
                top[2] = False
            continue
        if ch == "{":
            frames.append([set(), "", True])
        elif ch == "[":
            frames.append([None, 0, False])
        elif ch in "}]":
            frames.pop()
        elif ch == "," and frames:
            top = frames[-1]
            if top[0] is not None:
                top[2] = True
            else:
                top[1] += 1
        i += 1
    return None


def loads_strict(raw: bytes) -> Any:
    """Parses manifest bytes; raises StrictJsonError naming the problem and its byte offset."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise StrictJsonError(f"is not valid UTF-8 (byte 0x{raw[e.start]:02x} at offset {e.start})", e.start) from None
    try:
        value = json.loads(text, parse_constant=_refuse_constant)
    except (ValueError, RecursionError) as e:
        raise StrictJsonError(f"is not valid JSON ({e})", 0) from None
    dup = find_duplicate_key(text)
    if dup is not None:
        raise StrictJsonError(
            f"has the key {dup[0]} twice (the second at byte offset {dup[1]}); JSON readers disagree on which one counts", dup[1]
        )
    return value
