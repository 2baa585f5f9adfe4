"""kvtc: the Python runtime of KV Cache Transform Coding.

Reads kvtc profiles (kvtc-profile.json + kvtc-profile.safetensors, format versions 1–3) and
decodes / encodes ``.kvtc`` blobs (version 1) as docs/profile-format.md specifies, with NumPy
(and optionally PyTorch on CUDA)::

    import kvtc
    profile = kvtc.read_profile("kvtc-profiles/stories260k")
    layers = kvtc.decode(profile, open("kv.kvtc", "rb").read())   # [(K, V)] per layer
    blob = kvtc.encode(profile, layers, start_position=0)

Errors are KvtcError (code, message, fix, context).
"""

from ._errors import KvtcError
from .blob import BlobHeader, read_blob_header
from .codec import DEFAULT_MAX_OUTPUT_BYTES, decode, encode
from .kvfile import KvFile, parse_kv_safetensors, read_kv_safetensors, serialize_kv_safetensors, write_kv_safetensors
from .profile import FORMAT_VERSION, Group, Plan, Profile, Rope, Shard, read_profile

__version__ = "0.1.0"
#: The blob container version this package reads and writes.
BLOB_VERSION = 1

__all__ = [
    "BLOB_VERSION",
    "BlobHeader",
    "DEFAULT_MAX_OUTPUT_BYTES",
    "FORMAT_VERSION",
    "Group",
    "KvFile",
    "KvtcError",
    "Plan",
    "Profile",
    "Rope",
    "Shard",
    "__version__",
    "decode",
    "encode",
    "parse_kv_safetensors",
    "read_blob_header",
    "read_kv_safetensors",
    "read_profile",
    "serialize_kv_safetensors",
    "write_kv_safetensors",
]
