"""The one exception the runtime raises for bad input: KvtcError(code, message, fix, context)."""

from __future__ import annotations

from typing import Any, Dict, Optional


class KvtcError(Exception):
    """A problem with a profile, blob, cache, device or file, in kvtc's words.

    Attributes:
        code: a stable identifier, the same set as the Node CLI's (``PROFILE_INVALID``,
            ``PROFILE_VERSION``, ``BLOB_INVALID``, ``BLOB_MISMATCH``, ``PROFILE_MISMATCH``,
            ``KV_INVALID``, ``SAFETENSORS_INVALID``, ``DEVICE_UNAVAILABLE``, ``OUTPUT_EXISTS``,
            ``IO_ERROR``, ``USAGE``).
        message: what is wrong, naming the offending file or value.
        fix: what to do instead.
        context: the values involved (JSON-serializable).
    """

    def __init__(self, code: str, message: str, fix: Optional[str] = None, context: Optional[Dict[str, Any]] = None):
        super().__init__(message)
        self.code = code
        self.message = message
        self.fix = fix
        self.context = dict(context or {})

    def __str__(self) -> str:
        return f"{self.code}: {self.message}" + (f" (fix: {self.fix})" if self.fix else "")

    def to_dict(self) -> Dict[str, Any]:
        return {"code": self.code, "message": self.message, "fix": self.fix, "context": self.context}
