"""KV dumps from a transformers causal LM: ``python -m kvtc capture`` (docs/kv-dumps.md).

Runs the model on calibration text, one sequence per forward pass (a prefill from position 0),
and writes the dump layout `kvtc calibrate --kv DIR` reads: ``kvtc-dump.json`` and one
``seq-NNNNNN.safetensors`` per sequence with ``present.{l}.key|value``, ``positions`` and
``input_ids``.

How the tensors are taken: the capture hands the model a ``DynamicCache`` built from its config
(the cache the model would build itself) whose ``update`` is wrapped. Every attention layer
passes the keys and values it just computed for all tokens of the pass to ``cache.update``,
after RoPE, before any cache layer keeps or drops anything, so

- sliding-window layers are captured whole: their cache layer keeps only the last
  ``sliding_window - 1`` tokens, but the arguments of ``update`` hold every token;
- MLA models (DeepSeek-V2/V3 in transformers 5) cache the latent: ``update(c_kv, k_rot)`` with
  ``c_kv`` after ``kv_a_layernorm`` and ``k_rot`` after RoPE, as attention uses it. The dump's key
  is ``k_rot`` and its value ``c_kv`` (docs/kv-dumps.md §2.1);
- hybrid models' linear-attention / state-space layers never call ``update`` (they keep conv and
  recurrent states): they have no KV cache and are left out of the files.

The layers that call ``update`` must be exactly the cache layers the config names
(``model_facts``), or the capture stops: a family whose attention caches something else is
refused rather than dumped wrong.

RoPE facts come from the model's own rotary module(s) (``inv_freq`` buffers, ``attention_scaling``,
``rope_type``; Gemma 3's per-layer-type ``{type}_inv_freq``), turned into the description of
docs/profile-format.md §4.1 and checked against the buffer with the runtime's own §4.1 code before
anything is written. The first pass also watches the modeling module's RoPE function per layer
(_RopeWatch): a layer that rotates nothing is recorded without RoPE, and every rotation must equal
its description applied to the keys the function got. ``model_facts(config)`` builds the facts from
a config alone (no weights), for writers of dumps from elsewhere (kvtc.sglang).

torch and transformers are an optional extra: ``pip install 'kvtc[capture]'``.
"""

from __future__ import annotations

import inspect
import json
import os
import re
import secrets
import struct
import sys
import time
from types import SimpleNamespace
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from . import _rope
from ._errors import KvtcError

INSTALL = "pip install 'kvtc[capture]' (torch and transformers)"
PRODUCER_NAME = "kvtc-python-capture"
MANIFEST = "kvtc-dump.json"

#: Cache layer types (transformers' get_layer_types_and_kwargs) that hold per-token keys and values.
_KV_TYPES = ("full_attention", "sliding_attention", "chunked_attention", "hybrid", "hybrid_sliding")
#: Cache layer types without per-token KV (conv / recurrent state, or another layer's cache).
_STATE_TYPES = ("linear_attention", "conv", "mamba", "dummy", "moe", "mlp")
#: MLA families whose attention caches (c_kv, k_rot) and the layout of the k_rot it caches:
#: DeepSeek-V2 rotates complex pairs (2i, 2i+1) in place (interleaved); DeepSeek-V3's
#: apply_rotary_pos_emb_interleave (rope_interleave) reads pairs (2i, 2i+1) but writes the rotated
#: evens then odds, i.e. pairs (i, i + R/2) in the cached tensor; without rope_interleave it is
#: rotate_half. Either way V3's cached k_rot is "half".
_MLA_LAYOUT = {"deepseek_v2": "interleaved", "deepseek_v3": "half"}
_FAMILY_RE = re.compile(r"^[a-z0-9_]{1,64}$")
#: Families whose attention decides at run time whether a layer applies RoPE (`if self.sliding_window
#: ...`, `if self.is_local_attention`): with a model, capture observes it (_check_rope_calls); from a
#: config alone model_facts cannot say, and refuses them.
_CONDITIONAL_ROPE = ("afmoe", "cohere2", "cohere2_moe", "exaone4", "exaone4_5", "exaone_moe", "flint", "kolibri1", "kolibri1_1")
_MROPE_FAMILY = re.compile(r"(_vl|_omni|4v)(_|$)")
#: kvtc refuses a dump whose inv_freq differs from its description by more than this (docs/kv-dumps.md §2).
INV_FREQ_RTOL = 1e-6


def _unsupported(message: str, fix: str, **context) -> KvtcError:
    return KvtcError("UNSUPPORTED_ARCHITECTURE", message, fix, context)


def _require():
    """torch and transformers, or a KvtcError naming the install command."""
    try:
        import torch  # noqa: PLC0415 - optional extra, imported lazily
        import transformers  # noqa: PLC0415
    except ImportError as e:
        raise KvtcError(
            "DEVICE_UNAVAILABLE",
            f"kvtc capture runs a transformers model, but {e.name or 'torch/transformers'} is not installed",
            f"Install the capture extra: {INSTALL}.",
            {"missing": e.name},
        ) from None
    return torch, transformers


# ---------------------------------------------------------------------------------------------
# Model facts (the manifest's `model` section), from a config or a loaded model, without weights


def _text_config(cfg):
    get = getattr(cfg, "get_text_config", None)
    return get(decoder=True) if callable(get) else cfg


def _layer_count(cfg) -> int:
    n = getattr(cfg, "num_hidden_layers", None)
    if not isinstance(n, int) or n <= 0:
        raise _unsupported(
            f"the config of model type {getattr(cfg, 'model_type', '?')} has no num_hidden_layers",
            "kvtc capture needs a decoder-only causal LM config.",
        )
    return n


def _layer_kinds(cfg, n: int) -> List[str]:
    """Each layer's kind as the config names it: layer_types, else layers_block_type, else full/sliding."""
    for key in ("layer_types", "layers_block_type"):
        v = getattr(cfg, key, None)
        if isinstance(v, (list, tuple)) and len(v) == n and all(isinstance(x, str) for x in v):
            return list(v)
    sliding = getattr(cfg, "sliding_window", None) is not None and getattr(cfg, "use_sliding_window", True) is not False
    return ["sliding_attention" if sliding else "full_attention"] * n


def _cache_types(cfg, kinds: List[str]) -> List[str]:
    """transformers' own per-layer cache types (what DynamicCache(config=...) builds)."""
    try:
        from transformers.cache_utils import get_layer_types_and_kwargs  # noqa: PLC0415

        types, _ = get_layer_types_and_kwargs(cfg)
        return list(types)
    except ImportError:  # older transformers: the config's kinds
        return list(kinds)


def _base_class(cfg):
    """The causal LM class transformers maps this config to (for its modeling module)."""
    from transformers import AutoModelForCausalLM  # noqa: PLC0415

    try:
        return AutoModelForCausalLM._model_mapping[type(cfg)]
    except (KeyError, AttributeError):
        raise _unsupported(
            f"transformers has no causal LM for model type {getattr(cfg, 'model_type', '?')} (config class {type(cfg).__name__})",
            "kvtc capture runs AutoModelForCausalLM models; use a decoder-only LM.",
            model_type=getattr(cfg, "model_type", None),
        ) from None


def _rotary_class(module):
    """The text RotaryEmbedding class a modeling module defines (vision/audio ones left out)."""
    import torch  # noqa: PLC0415

    found = [
        v
        for k, v in vars(module).items()
        if isinstance(v, type)
        and issubclass(v, torch.nn.Module)
        and k.endswith("RotaryEmbedding")
        and v.__module__ == module.__name__
        and not any(w in k for w in ("Vision", "Audio", "DiT", "Talker", "Encoder"))
    ]
    if len(found) > 1:
        text = [v for v in found if "Text" in v.__name__]
        found = text if len(text) == 1 else found
    return found[0] if len(found) == 1 else None


def _layout(family: str, module) -> str:
    """Which pairs the model's apply_rotary_pos_emb rotates in the tensor it caches."""
    if family in _MLA_LAYOUT:
        return _MLA_LAYOUT[family]
    # Read the module's source text: apply_rotary_pos_emb may be wrapped (use_kernel_forward_from_hub)
    try:
        src = inspect.getsource(module)
    except (OSError, TypeError):
        src = ""

    def function(name: str) -> str:
        m = re.search(rf"^def {name}\(.*?(?=^(?:def |class |@)|\Z)", src, re.S | re.M)
        body = m.group(0) if m else ""
        body = re.sub(r'""".*?"""', "", body, flags=re.S)  # docstrings mention other layouts
        return re.sub(r"\s+", "", re.sub(r"#[^\n]*", "", body))

    # Hugging Face rotate_half: cat((-x2, x1)) with x1, x2 the two halves: pairs (i, i + R/2)
    half = "x1=x[...,:x.shape[-1]//2]x2=x[...,x.shape[-1]//2:]returntorch.cat((-x2,x1),dim=-1)" in function("rotate_half")
    code = function("apply_rotary_pos_emb")
    uses = "rotate_half(k" in code and not any(w in code for w in ("interleave", "0::2", "view_as_complex", "rotate_every_two"))
    if half and uses:
        return "half"
    raise _unsupported(
        f"model type {family}: kvtc capture does not recognise how {module.__name__} applies RoPE "
        "(it knows Hugging Face's rotate_half and DeepSeek's MLA rotations), so it cannot say which dimensions are paired",
        "Use a family whose attention uses transformers' rotate_half (Llama, Qwen, Gemma, Phi-3, SmolLM3, …) or DeepSeek-V2/V3.",
        model_type=family,
    )


def _refuse_rope_type(family: str, where: str, rope_type: str, params: Dict[str, Any]):
    if rope_type in ("mrope", "3d", "mrope_interleaved") or "mrope_section" in params or params.get("mrope_interleaved"):
        raise _unsupported(
            f"model type {family}, {where}: multimodal RoPE (mRoPE: rotations by several position axes) is not supported; "
            "kvtc undoes RoPE by one position per token",
            "Capture a text-only model (kvtc records and undoes 1-D RoPE only).",
            model_type=family,
            rope_type=rope_type,
        )
    if rope_type == "dynamic":
        raise _unsupported(
            f'model type {family}, {where}: rope type "dynamic" (dynamic NTK) rescales theta by the length of each forward '
            "pass, so a cached key's rotation depends on a length the cache does not record; kvtc must undo RoPE exactly",
            "Use the model without dynamic rope scaling (linear, llama3, yarn or longrope are exact), or a checkpoint trained for its context.",
            model_type=family,
            rope_type=rope_type,
        )
    if rope_type not in ("default", "linear", "llama3", "yarn", "longrope"):
        raise _unsupported(
            f"model type {family}, {where}: rope type {rope_type!r} is not supported; kvtc recomputes default, linear, llama3, "
            "yarn and longrope exactly",
            "Use a model whose RoPE is one of those.",
            model_type=family,
            rope_type=rope_type,
        )


def _num(v) -> float:
    return float(v.item() if hasattr(v, "item") else v)


def _scaling(rope_type: str, p: Dict[str, Any], cfg, rotary_dim: int) -> Optional[Dict[str, Any]]:
    """The §4.1 scaling dict from the layer's rope parameters, with transformers' defaults."""
    maxpos = getattr(cfg, "max_position_embeddings", None)
    if rope_type == "default":
        return None
    if rope_type == "linear":
        return {"type": "linear", "factor": _num(p["factor"])}
    if rope_type == "llama3":
        return {
            "type": "llama3",
            "factor": _num(p["factor"]),
            "low_freq_factor": _num(p.get("low_freq_factor", 1.0)),
            "high_freq_factor": _num(p.get("high_freq_factor", 4.0)),
            "original_max_position_embeddings": _num(p.get("original_max_position_embeddings", 8192)),
        }
    if rope_type == "yarn":
        orig = p.get("original_max_position_embeddings") or getattr(cfg, "original_max_position_embeddings", None) or maxpos
        factor = p.get("factor") or (maxpos / orig)
        return {
            "type": "yarn",
            "factor": _num(factor),
            "original_max_position_embeddings": _num(orig),
            "beta_fast": _num(p.get("beta_fast") or 32),
            "beta_slow": _num(p.get("beta_slow") or 1),
            "truncate": bool(p.get("truncate", True)),
        }
    # longrope
    orig = p.get("original_max_position_embeddings") or getattr(cfg, "original_max_position_embeddings", None) or maxpos
    return {
        "type": "longrope",
        "short_factor": [_num(x) for x in p["short_factor"]],
        "long_factor": [_num(x) for x in p["long_factor"]],
        "original_max_position_embeddings": _num(orig),
    }


def _rope_params(cfg, layer_type: Optional[str]) -> Dict[str, Any]:
    rp = getattr(cfg, "rope_parameters", None)
    if rp is None:
        rp = {}
    if layer_type is not None and isinstance(rp.get(layer_type), dict):
        return dict(rp[layer_type])
    return dict(rp)


def _check_description(desc: Dict[str, Any], inv: np.ndarray, where: str, family: str) -> None:
    """The description must reproduce the module's buffer (as kvtc checks a dump), or we write nothing."""
    r = SimpleNamespace(theta=desc["theta"], rotary_dim=desc["rotary_dim"], scaling=desc.get("scaling"))
    sc = desc.get("scaling")
    seq = int(sc["original_max_position_embeddings"]) if sc and sc["type"] == "longrope" else None
    want = _rope.inv_freq(r, seq)
    rel = float(np.max(np.abs(want - inv) / np.abs(want))) if len(want) else 0.0
    if not rel <= INV_FREQ_RTOL:
        raise _unsupported(
            f"model type {family}, {where}: the rotary module's inv_freq differs from kvtc's description "
            f"{json.dumps({k: v for k, v in desc.items() if k != 'inv_freq'})} by {rel:.3g} relative (kvtc allows {INV_FREQ_RTOL})",
            "The model computes its RoPE frequencies in a way kvtc does not describe; please report the model.",
            model_type=family,
            max_rel_diff=rel,
        )


def _rope_entry(cfg, rot, layer_type: Optional[str], layout: str, head_dim: int, family: str, where: str) -> Optional[Dict[str, Any]]:
    """One layer's RoPE (docs/kv-dumps.md §2): description + the module's own inv_freq."""
    typed = layer_type is not None and hasattr(rot, f"{layer_type}_inv_freq")
    if typed:
        # the frequencies the module was built with (longrope swaps in its long set after a long pass)
        inv_t = getattr(rot, f"{layer_type}_original_inv_freq", None)
        inv_t = getattr(rot, f"{layer_type}_inv_freq") if inv_t is None else inv_t
        factor = getattr(rot, f"{layer_type}_attention_scaling", 1.0)
        rope_types = getattr(rot, "rope_type", {})
        rope_type = rope_types.get(layer_type, "default") if isinstance(rope_types, dict) else str(rope_types)
        params = _rope_params(cfg, layer_type)
    else:
        if isinstance(getattr(rot, "rope_type", None), dict):  # typed module without this layer type: no RoPE there
            return None
        inv_t = getattr(rot, "original_inv_freq", None)
        inv_t = getattr(rot, "inv_freq") if inv_t is None else inv_t
        factor = getattr(rot, "attention_scaling", 1.0)
        rope_type = str(getattr(rot, "rope_type", "default"))
        params = _rope_params(cfg, layer_type)
    _refuse_rope_type(family, where, rope_type, params)
    if str(inv_t.dtype) not in ("torch.float32", "torch.float64"):
        # model.to(torch.bfloat16) casts buffers too: the model then rotates by rounded frequencies
        raise _unsupported(
            f"model type {family}, {where}: the rotary module's inv_freq is {str(inv_t.dtype).replace('torch.', '')}, so the model "
            "rotates keys by rounded frequencies that no RoPE description reproduces (a model cast with .to(dtype) casts its buffers)",
            "Load the model in its dtype instead: from_pretrained(..., dtype=torch.bfloat16) keeps the frequencies in float32.",
            model_type=family,
            inv_freq_dtype=str(inv_t.dtype),
        )
    inv = inv_t.detach().to("cpu").double().numpy().reshape(-1)
    if inv.size == 0 or not np.all(np.isfinite(inv)) or not np.all(inv > 0):
        raise _unsupported(
            f"model type {family}, {where}: the rotary module's inv_freq is empty or not positive", "Please report the model."
        )
    rotary_dim = 2 * inv.size
    if rotary_dim > head_dim:
        raise _unsupported(
            f"model type {family}, {where}: the rotary module rotates {rotary_dim} dims but heads are {head_dim} wide",
            "Please report the model.",
        )
    theta = params.get("rope_theta", getattr(cfg, "rope_theta", None))
    if theta is None:
        raise _unsupported(f"model type {family}, {where}: the config names no rope_theta", "Please report the model.")
    desc: Dict[str, Any] = {"theta": _num(theta), "rotary_dim": rotary_dim, "layout": layout}
    f = _num(factor)
    if f != 1.0:
        desc["attention_factor"] = f
    sc = _scaling(rope_type, params, cfg, rotary_dim)
    if sc is not None:
        desc["scaling"] = sc
    _check_description(desc, inv, where, family)
    desc["inv_freq"] = [float(x) for x in inv]
    return desc


def _config_has_rope(cfg) -> bool:
    if getattr(cfg, "rope_theta", None) is not None:
        return True
    rp = getattr(cfg, "rope_parameters", None)
    if not isinstance(rp, dict):
        return False
    return "rope_theta" in rp or any(isinstance(v, dict) and "rope_theta" in v for v in rp.values())


def _layers(decoder) -> List[Any]:
    """The decoder's layer list (``layers`` in most families, ``h`` in GPT-2-style ones)."""
    for name in ("layers", "h"):
        v = getattr(decoder, name, None)
        if v is not None:
            return list(v)
    return []


def _attention(layer):
    """A decoder layer's attention module (transformers names it self_attn in most families)."""
    for name in ("self_attn", "self_attention", "attention", "attn"):
        m = getattr(layer, name, None)
        if m is not None:
            return m
    return None


def _decoder(model):
    dec = model
    get = getattr(model, "get_decoder", None)
    if callable(get):
        try:
            dec = get()
        except (AttributeError, ValueError, NotImplementedError):
            dec = getattr(model, "model", model)
    elif hasattr(model, "model"):
        dec = model.model
    return dec


def _rotary_per_layer(cfg, n: int, model=None) -> Tuple[List[Any], Any]:
    """The rotary module each layer uses, and the modeling module (for the layout)."""
    if model is not None:
        module = sys.modules[type(model).__module__]
        dec = _decoder(model)
        shared = getattr(dec, "rotary_emb", None)
        layers = _layers(dec)
        out = []
        for i in range(n):
            attn = _attention(layers[i]) if layers is not None and i < len(layers) else None
            own = getattr(attn, "rotary_emb", None) if attn is not None else None
            out.append(own if own is not None else shared)
        dmod = sys.modules.get(type(dec).__module__)
        return out, (dmod if dmod is not None and hasattr(dmod, "apply_rotary_pos_emb") else module)
    cls = _base_class(cfg)
    module = sys.modules[cls.__module__]
    rcls = _rotary_class(module)
    if rcls is None:
        return [None] * n, module
    try:
        rot = rcls(cfg)
    except TypeError:
        rot = rcls(config=cfg)
    return [rot] * n, module


def model_facts(config_or_model, *, name: Optional[str] = None, dtype: str = "float32", layout: Optional[str] = None) -> Dict[str, Any]:
    """The ``model`` section of a dump manifest (docs/kv-dumps.md §2) for a transformers config or model.

    From a config alone (``transformers.AutoConfig`` object, no weights): the family's rotary module
    is built from the config on the CPU. From a loaded model: its own rotary module(s). Either way
    each layer's RoPE is recorded as its §4.1 description plus the module's ``inv_freq``, checked to
    agree within ``INV_FREQ_RTOL``. ``dtype`` is the dtype of the tensors the dump's files will hold.
    ``layout`` ("half" / "interleaved"): the RoPE pairs of the keys in the files when their writer
    knows them (a serving engine's own rotary kernel); default: what the transformers modeling code
    applies, read from its source (an unknown rotation is refused).

    Raises KvtcError (UNSUPPORTED_ARCHITECTURE) for what a dump cannot describe: mRoPE, dynamic NTK,
    unknown rope types or RoPE code, MLA families other than DeepSeek-V2/V3, unknown cache layer types.
    """
    _require()
    import torch  # noqa: PLC0415

    model = config_or_model if isinstance(config_or_model, torch.nn.Module) else None
    full_cfg = model.config if model is not None else config_or_model
    cfg = _text_config(full_cfg)
    if hasattr(cfg, "standardize_rope_params"):
        try:
            cfg.standardize_rope_params()
        except Exception:  # noqa: BLE001 - configs without RoPE (or odd ones) keep their fields
            pass
    family = str(getattr(cfg, "model_type", "") or "")
    if not _FAMILY_RE.match(family):
        raise _unsupported(f"model type {family!r} is not a transformers model_type label", "Use a transformers model.")
    if layout not in (None, "half", "interleaved"):
        raise KvtcError("USAGE", f"layout {layout!r}: RoPE pairs are half or interleaved", "Pass one of those (or None).")
    if dtype not in ("float32", "float16", "bfloat16"):
        raise KvtcError("USAGE", f"dtype {dtype!r}: dumps hold float32, float16 or bfloat16", "Pass one of those.")
    # Multimodal RoPE (Qwen2-VL style: rotations by temporal/height/width positions): the VL and
    # omni families, or any rope parameters naming mrope_section / mrope_interleaved.
    if _MROPE_FAMILY.search(family) or "mrope" in json.dumps(getattr(cfg, "rope_parameters", None) or {}, default=str):
        raise _unsupported(
            f"model type {family} uses multimodal RoPE (mRoPE: rotations by several position axes), which kvtc cannot undo "
            "by one position per token",
            "Capture a text-only model (kvtc records and undoes 1-D RoPE only).",
            model_type=family,
        )
    n = _layer_count(cfg)
    kinds = _layer_kinds(cfg, n)
    ctypes = _cache_types(cfg, kinds)
    if len(ctypes) != n:
        raise _unsupported(f"model type {family}: {len(ctypes)} cache layer types for {n} layers", "Please report the model.")
    unknown = sorted({t for t in ctypes if t not in _KV_TYPES and t not in _STATE_TYPES})
    if unknown:
        raise _unsupported(
            f"model type {family}: cache layer type(s) {', '.join(unknown)} are not supported (kvtc dumps per-token keys "
            f"and values of {', '.join(_KV_TYPES)} layers)",
            "Use a model whose attention layers keep plain key/value caches.",
            model_type=family,
            layer_types=unknown,
        )
    cache_layers = [i for i, t in enumerate(ctypes) if t in _KV_TYPES]
    if not cache_layers:
        raise _unsupported(f"model type {family}: no layer keeps a KV cache", "Nothing to capture: use a model with attention layers.")
    heads = int(getattr(cfg, "num_attention_heads"))
    mla = getattr(cfg, "kv_lora_rank", None) is not None and getattr(cfg, "qk_rope_head_dim", None) is not None
    if mla and family not in _MLA_LAYOUT:
        raise _unsupported(
            f"model type {family} has multi-head latent attention, which kvtc capture handles for {', '.join(sorted(_MLA_LAYOUT))} only",
            "Capture a DeepSeek-V2/V3 (or Kimi K2) model, or convert your engine's latent cache into the dump layout (docs/kv-dumps.md §2.1).",
            model_type=family,
        )
    if mla:
        kv_heads, head_dim, value_dim = 1, int(cfg.qk_rope_head_dim), int(cfg.kv_lora_rank)
    else:
        kv_heads = int(getattr(cfg, "num_key_value_heads", None) or heads)
        head_dim = int(getattr(cfg, "head_dim", None) or (cfg.hidden_size // heads))
        value_dim = head_dim
    maxpos = getattr(cfg, "max_position_embeddings", None)
    if not isinstance(maxpos, int) or maxpos <= 0:
        raise _unsupported(f"model type {family}: the config has no max_position_embeddings", "Please report the model.")
    if model is None and family in _CONDITIONAL_ROPE:
        raise _unsupported(
            f"model type {family} applies RoPE on some layers only, decided when the model runs; from its config alone "
            "kvtc cannot say which layers rotate their keys",
            "Capture it with `python -m kvtc capture` (or kvtc.capture.capture), which observes the layers that rotate.",
            model_type=family,
        )
    rots, module = _rotary_per_layer(cfg, n, model)
    no_rope = getattr(cfg, "no_rope_layers", None)
    if any(rots[i] is None for i in cache_layers) and _config_has_rope(cfg):
        # never record "no RoPE" for a model that has it just because its rotary module was not found
        raise _unsupported(
            f"model type {family}: its config has RoPE parameters, but kvtc capture cannot find the rotary module "
            f"{'of the loaded model' if model is not None else 'its modeling code defines'}",
            "Please report the model (kvtc reads the rotary_emb module transformers models define).",
            model_type=family,
        )
    rope: List[Optional[Dict[str, Any]]] = []
    for i in range(n):
        if i not in cache_layers or rots[i] is None or (isinstance(no_rope, (list, tuple)) and len(no_rope) == n and not no_rope[i]):
            rope.append(None)
            continue
        if model is not None:  # the attention module's own switch (SmolLM3's use_rope) has the last word
            attn = _attention(_layers(_decoder(model))[i])
            if getattr(attn, "use_rope", True) is False:
                rope.append(None)
                continue
        if layout is None:
            layout = _layout(family, module)
        rope.append(
            _rope_entry(cfg, rots[i], kinds[i] if kinds[i] in _KV_TYPES else None, layout, head_dim, family, f"layer {i} ({kinds[i]})")
        )
    archs = getattr(full_cfg, "architectures", None)
    arch = (
        archs[0]
        if isinstance(archs, (list, tuple)) and archs
        else (type(model).__name__ if model is not None else _base_class(cfg).__name__)
    )
    facts: Dict[str, Any] = {
        "name": name or str(getattr(full_cfg, "_name_or_path", "") or family),
        "family": family,
        "architecture": str(arch),
        "layers": n,
        "heads": heads,
        "kv_heads": kv_heads,
        "head_dim": head_dim,
    }
    if mla or value_dim != head_dim:
        facts["value_head_dim"] = value_dim
    facts.update(
        {
            "dtype": dtype,
            "max_positions": maxpos,
            "cache": "mla-latent" if mla else "gqa",
            "layer_kinds": kinds,
            "cache_layers": cache_layers,
            "rope": rope,
        }
    )
    return facts


# ---------------------------------------------------------------------------------------------
# Writing a dump directory (atomically)

_SEQ_RE = re.compile(r"^seq-\d{6,}\.safetensors$")
_ST_DTYPE = {"float32": "F32", "float16": "F16", "bfloat16": "BF16"}


def _tensor_bytes(t) -> Tuple[str, List[int], bytes]:
    """(safetensors dtype, shape, little-endian bytes) of a CPU torch tensor."""
    import torch  # noqa: PLC0415

    t = t.detach().to("cpu").contiguous()
    if t.dtype == torch.bfloat16:  # NumPy has no bfloat16: its bits, as int16
        a, dt = t.view(torch.int16).numpy().astype("<i2", copy=False), "BF16"
    elif t.dtype == torch.float16:
        a, dt = t.numpy().astype("<f2", copy=False), "F16"
    elif t.dtype == torch.float32:
        a, dt = t.numpy().astype("<f4", copy=False), "F32"
    elif t.dtype == torch.int64:
        a, dt = t.numpy().astype("<i8", copy=False), "I64"
    else:
        raise KvtcError("KV_INVALID", f"tensor of dtype {t.dtype}: dumps hold float32, float16 or bfloat16", "Pass --dtype.")
    return dt, list(t.shape), a.tobytes()


def serialize_sequence(tensors: Dict[str, Any], metadata: Dict[str, str]) -> bytes:
    """A sequence file (docs/kv-dumps.md §3) as kvtc writes safetensors: names sorted, data
    contiguous in that order, header padded with spaces to a multiple of 8, ``format: pt``."""
    header: Dict[str, Any] = {"__metadata__": {"format": "pt", **metadata}}
    parts = []
    at = 0
    for name in sorted(tensors):
        dt, shape, data = _tensor_bytes(tensors[name])
        header[name] = {"dtype": dt, "shape": shape, "data_offsets": [at, at + len(data)]}
        parts.append(data)
        at += len(data)
    hb = json.dumps(header, separators=(",", ":")).encode("utf-8")
    hb += b" " * ((8 - len(hb) % 8) % 8)
    return b"".join([struct.pack("<Q", len(hb)), hb, *parts])


class DumpDir:
    """A dump written into a temporary sibling directory and renamed into place at the end.

    An existing non-empty ``out`` is refused unless ``force``; even then only a directory holding
    nothing but a dump (kvtc-dump.json and seq-*.safetensors) is replaced, and only those files are
    deleted: kvtc never deletes files it did not write.
    """

    def __init__(self, out: str, force: bool = False):
        self.out = os.path.abspath(out)
        parent = os.path.dirname(self.out)
        if not os.path.isdir(parent):
            raise KvtcError(
                "OUTPUT_UNWRITABLE",
                f"cannot write {out}: directory {parent} does not exist",
                "Create it or choose another --out.",
                {"out": out},
            )
        self.replace = False
        if os.path.lexists(self.out):
            if not os.path.isdir(self.out) or os.path.islink(self.out):
                raise KvtcError("OUTPUT_EXISTS", f"output {out} exists and is not a directory", "Choose another --out.", {"out": out})
            entries = sorted(os.listdir(self.out))
            if entries:
                if not force:
                    raise KvtcError(
                        "OUTPUT_EXISTS",
                        f"output directory {out} is not empty",
                        "Pass --force to replace a dump kvtc wrote there, or choose another --out.",
                        {"out": out},
                    )
                foreign = [e for e in entries if e != MANIFEST and not _SEQ_RE.match(e)]
                if foreign or MANIFEST not in entries:
                    what = ", ".join(foreign[:5]) + (" …" if len(foreign) > 5 else "") if foreign else f"no {MANIFEST}"
                    raise KvtcError(
                        "OUTPUT_EXISTS",
                        f"output directory {out} is not a kvtc dump ({what}); --force replaces only dumps kvtc wrote",
                        "Choose another --out (kvtc never deletes files it did not write).",
                        {"out": out, "foreign": foreign[:20]},
                    )
                self.replace = True
        self.tmp = os.path.join(parent, f".{os.path.basename(self.out)}.kvtc-tmp-{os.getpid()}-{secrets.token_hex(4)}")
        os.mkdir(self.tmp)
        self.files: List[str] = []
        self.bytes = 0

    def write(self, name: str, data: bytes) -> None:
        with open(os.path.join(self.tmp, name), "wb") as f:
            f.write(data)
        self.files.append(name)
        self.bytes += len(data)

    def commit(self) -> None:
        old = None
        if os.path.isdir(self.out) and not self.replace:
            os.rmdir(self.out)  # empty: rename cannot replace a directory
        elif self.replace:
            old = f"{self.tmp}-old"
            os.rename(self.out, old)
        try:
            os.rename(self.tmp, self.out)
        except OSError:
            if old:  # put the previous dump back where it was
                os.rename(old, self.out)
            raise
        if old:
            for e in os.listdir(old):
                if e == MANIFEST or _SEQ_RE.match(e):
                    os.unlink(os.path.join(old, e))
            try:
                os.rmdir(old)
            except OSError:
                pass

    def abort(self) -> None:
        for name in self.files:
            try:
                os.unlink(os.path.join(self.tmp, name))
            except OSError:
                pass
        try:
            os.rmdir(self.tmp)
        except OSError:
            pass


# ---------------------------------------------------------------------------------------------
# Capturing


def _forward_kwargs(model, cache) -> Dict[str, Any]:
    params = inspect.signature(model.forward).parameters
    kw: Dict[str, Any] = {"use_cache": True}
    kw["cache" if "cache" in params else "past_key_values"] = cache
    if "logits_to_keep" in params:  # only the cache is wanted: skip the vocabulary projection of all tokens
        kw["logits_to_keep"] = 1
    return kw


#: The module-level functions transformers' attention layers rotate keys with (looked up at call time).
_ROPE_FUNCTIONS = ("apply_rotary_pos_emb", "apply_rotary_pos_emb_interleave", "apply_rotary_emb")


class _RopeWatch:
    """Records, per decoder layer, the keys each call of the modeling code's RoPE function got and
    gave. The functions are module globals, looked up when attention runs, so they are replaced in
    the module of each attention class (and the decoder's) for the pass; pre-hooks on each layer's
    attention say which layer is running."""

    def __init__(self, model, n_layers: int):
        self.calls: Dict[int, List[Tuple[str, Any, Any]]] = {}
        self.layer: Optional[int] = None
        layers = _layers(_decoder(model))
        self.attns = [(i, _attention(layers[i])) for i in range(min(n_layers, len(layers)))]
        self.attns = [(i, a) for i, a in self.attns if a is not None]
        names = {type(_decoder(model)).__module__, *(type(a).__module__ for _, a in self.attns)}
        modules = [sys.modules[n] for n in sorted(names) if n in sys.modules]
        self.saved = [(m, name, getattr(m, name)) for m in modules for name in _ROPE_FUNCTIONS if callable(getattr(m, name, None))]
        self.hooks: List[Any] = []

    def _watch(self, fn, name):
        def watched(q, k, *args, **kwargs):
            out = fn(q, k, *args, **kwargs)
            if self.layer is not None:
                self.calls.setdefault(self.layer, []).append((name, k.detach().to("cpu", copy=True), out[1].detach().to("cpu", copy=True)))
            return out

        return watched

    def __enter__(self):
        for i, attn in self.attns:
            self.hooks.append(attn.register_forward_pre_hook(lambda _m, _a, i=i: setattr(self, "layer", i)))
            self.hooks.append(attn.register_forward_hook(lambda _m, _a, _o: setattr(self, "layer", None)))
        for module, name, fn in self.saved:
            setattr(module, name, self._watch(fn, name))
        return self

    def __exit__(self, *exc):
        for module, name, fn in self.saved:
            setattr(module, name, fn)
        for h in self.hooks:
            h.remove()


def _rope_tolerance(dtype: str) -> float:
    # the model rotates in its dtype (cos/sin cast to it): a few of its rounding units of max |k|
    return {"float32": 1e-4, "float16": 8e-3, "bfloat16": 6e-2}[dtype]


def _check_rope_calls(facts: Dict[str, Any], calls, keys: Dict[int, Any], model) -> None:
    """What the pass did decides each layer's RoPE: a layer that rotated nothing is recorded without
    RoPE (families that skip it on some layers: full-attention layers of Exaone 4 / Cohere 2 style
    models, NoPE layers); a layer that rotated must match its description, applied to the keys the
    RoPE function got, within the model dtype's rounding. Mutates facts["rope"]."""
    family, rope = facts["family"], facts["rope"]
    if _config_has_rope(_text_config(model.config)) and not calls and any(rope[l] is not None for l in facts["cache_layers"]):
        raise _unsupported(
            f"model type {family}: its attention rotated no keys through {', '.join(_ROPE_FUNCTIONS)}, so kvtc capture cannot "
            "see which layers apply RoPE, or how",
            "Please report the model.",
            model_type=family,
        )
    tol = _rope_tolerance(facts["dtype"])
    for l in facts["cache_layers"]:
        got = calls.get(l, [])
        if not got:
            rope[l] = None
            continue
        if rope[l] is None:
            raise _unsupported(
                f"model type {family}, layer {l}: the attention rotated keys, but the config describes no RoPE for this layer",
                "Please report the model.",
                model_type=family,
                layer=l,
            )
        name, k_in, k_out = got[-1]
        T = keys[l].shape[2]
        k_in, k_out = k_in.double().numpy(), k_out.double().numpy()
        if k_in.ndim == 4 and k_in.shape[1] == T and k_in.shape[2] != T:  # [B, T, H, D] callers (unsqueeze_dim=2)
            k_in, k_out = k_in.transpose(0, 2, 1, 3), k_out.transpose(0, 2, 1, 3)
        if name == "apply_rotary_pos_emb_interleave":  # reads pairs (2i, 2i+1), writes evens then odds
            k_in = np.concatenate([k_in[..., 0::2], k_in[..., 1::2]], axis=-1)
        r = rope[l]
        desc = SimpleNamespace(theta=r["theta"], rotary_dim=r["rotary_dim"], layout=r["layout"], scaling=r.get("scaling"))
        cos, sin = _rope.tables(_rope.inv_freq(desc, T), 0, T, r.get("attention_factor", 1.0))
        ia, ib = _rope.pairs(desc, k_in.shape[-1])
        want = _rope.rotate64(k_in, cos, sin, ia, ib)
        err = float(np.max(np.abs(want - k_out))) if want.shape == k_out.shape else float("inf")
        scale = max(float(np.max(np.abs(k_out))), 1e-30)
        if not err <= tol * scale:
            raise _unsupported(
                f"model type {family}, layer {l}: the keys the model rotated differ from kvtc's RoPE description "
                f"({r['layout']} pairs, rotary_dim {r['rotary_dim']}, theta {r['theta']}) by {err / scale:.3g} of their largest value",
                "The family rotates keys in a way kvtc does not describe; please report the model.",
                model_type=family,
                layer=l,
            )


def capture_sequence(model, input_ids, facts: Dict[str, Any], rope_calls: Optional[Dict[int, Any]] = None) -> Dict[int, Tuple[Any, Any]]:
    """One prefill of ``input_ids`` (1-D) from position 0; returns {model layer: (key, value)} on the
    CPU, [1, kv_heads, tokens, head_dim|value_head_dim], as docs/kv-dumps.md lays them out.
    ``rope_calls`` (a dict): filled with each layer's calls of the RoPE function (_RopeWatch)."""
    import contextlib  # noqa: PLC0415

    import torch  # noqa: PLC0415
    from transformers import DynamicCache  # noqa: PLC0415

    ids = torch.as_tensor(input_ids, dtype=torch.long).reshape(1, -1).to(model.device)
    T = ids.shape[1]
    got: Dict[int, Tuple[Any, Any]] = {}
    cache = DynamicCache(config=model.config)
    update = cache.update

    def recording_update(key_states, value_states, layer_idx, *args, **kwargs):
        # The states this pass computed for every token, before a sliding-window layer drops any.
        if layer_idx in got:
            raise _unsupported(
                f"layer {layer_idx} updated the cache twice in one pass; kvtc capture expects one update per attention layer",
                "Please report the model.",
                layer=layer_idx,
            )
        got[layer_idx] = (key_states.detach().to("cpu", copy=True), value_states.detach().to("cpu", copy=True))
        return update(key_states, value_states, layer_idx, *args, **kwargs)

    cache.update = recording_update
    watch = _RopeWatch(model, facts["layers"]) if rope_calls is not None else contextlib.nullcontext()
    with torch.inference_mode(), watch:
        model(input_ids=ids, **_forward_kwargs(model, cache))
    if rope_calls is not None:
        rope_calls.update(watch.calls)
    want = facts["cache_layers"]
    if sorted(got) != want:
        raise _unsupported(
            f"model type {facts['family']}: the layers that cached keys and values ({sorted(got)}) are not the cache layers "
            f"its config names ({want})",
            "The family caches in a way kvtc capture does not know; please report the model.",
            cached=sorted(got),
            expected=want,
        )
    mla = facts["cache"] == "mla-latent"
    H, D = facts["kv_heads"], facts["head_dim"]
    Dv = facts.get("value_head_dim", D)
    out = {}
    for l in want:
        k, v = got[l]
        if mla:  # MLA attention calls update(c_kv, k_rot): the dump's key is k_rot, its value c_kv
            k, v = v, k
        for what, t, d in (("key", k, D), ("value", v, Dv)):
            if tuple(t.shape) != (1, H, T, d):
                raise _unsupported(
                    f"model type {facts['family']}, layer {l}: the cached {what} has shape {list(t.shape)}, expected {[1, H, T, d]}",
                    "The family's cache holds something other than per-head keys and values; please report the model.",
                    layer=l,
                )
            if not bool(torch.isfinite(t).all()):
                raise KvtcError(
                    "KV_INVALID",
                    f"layer {l}: the captured {what} holds non-finite values (NaN or ±inf)",
                    "Capture in a wider dtype (--dtype float32 or bfloat16): float16 overflows in some models.",
                    {"layer": l, "kind": what},
                )
        out[l] = (k, v)
    return out


def _dtype_name(t) -> str:
    import torch  # noqa: PLC0415

    names = {torch.float32: "float32", torch.float16: "float16", torch.bfloat16: "bfloat16"}
    if t not in names:
        raise KvtcError(
            "USAGE", f"the model runs in {t}; dumps hold float32, float16 or bfloat16", "Load it with --dtype float32, float16 or bfloat16."
        )
    return names[t]


def capture(
    model,
    sequences: Iterable[Sequence[int]],
    out: str,
    *,
    name: Optional[str] = None,
    force: bool = False,
    total_tokens: Optional[int] = None,
    progress: Optional[Callable[[Dict[str, Any]], None]] = None,
) -> Dict[str, Any]:
    """Captures each token sequence (one prefill each, from position 0) and writes the dump at ``out``.

    ``progress`` (optional) gets {sequence, tokens, total_tokens, seconds} after each sequence.
    Returns a summary: out, sequences, tokens, bytes, seconds, tokens_per_second, model facts.
    """
    _require()
    import torch  # noqa: PLC0415

    model.eval()
    dtype = _dtype_name(next(model.parameters()).dtype)
    facts = model_facts(model, name=name, dtype=dtype)
    dump = DumpDir(out, force)
    t0 = time.perf_counter()
    entries = []
    done = 0
    try:
        for i, ids in enumerate(sequences):
            ids = [int(x) for x in ids]
            T = len(ids)
            if T < 1:
                continue
            if T > facts["max_positions"]:
                raise KvtcError(
                    "USAGE",
                    f"sequence {i} has {T} tokens, more than the model's context ({facts['max_positions']})",
                    "Use a shorter --seq-len.",
                )
            # the first pass also shows which layers rotate their keys, and checks how (_check_rope_calls)
            calls: Optional[Dict[int, Any]] = {} if not entries else None
            kv = capture_sequence(model, ids, facts, calls)
            if calls is not None:
                _check_rope_calls(facts, calls, {l: k for l, (k, _) in kv.items()}, model)
            tensors: Dict[str, Any] = {}
            for l, (k, v) in kv.items():
                if k.dtype != v.dtype or _dtype_name(k.dtype) != dtype:
                    raise _unsupported(
                        f"layer {l}: cached tensors are {k.dtype}/{v.dtype} while the model runs in {dtype}",
                        "Load the model in one dtype (--dtype).",
                    )
                tensors[f"present.{l}.key"] = k
                tensors[f"present.{l}.value"] = v
            tensors["positions"] = torch.arange(T, dtype=torch.int64)
            tensors["input_ids"] = torch.tensor(ids, dtype=torch.int64)
            file = f"seq-{len(entries):06d}.safetensors"
            dump.write(file, serialize_sequence(tensors, {"tokens": str(T), "start_position": "0"}))
            entries.append({"file": file, "tokens": T, "start_position": 0})
            done += T
            if progress:
                progress({"sequence": len(entries), "tokens": done, "total_tokens": total_tokens, "seconds": time.perf_counter() - t0})
        if not entries:
            raise KvtcError("NOT_ENOUGH_TOKENS", "no tokens to capture", "Pass --data files with text in them.")
        manifest = {
            "format": "kvtc-kv-dump",
            "format_version": 1,
            "producer": {"name": PRODUCER_NAME, "version": _version()},
            "model": facts,
            "sequences": entries,
        }
        dump.write(MANIFEST, (json.dumps(manifest, indent=2, allow_nan=False) + "\n").encode("utf-8"))
        dump.commit()
    except BaseException:
        dump.abort()
        raise
    seconds = time.perf_counter() - t0
    return {
        "out": out,
        "sequences": len(entries),
        "tokens": done,
        "bytes": dump.bytes,
        "seconds": seconds,
        "tokens_per_second": done / seconds if seconds > 0 else None,
        "model": {k: facts[k] for k in ("name", "family", "layers", "kv_heads", "head_dim", "dtype", "cache", "cache_layers")}
        | ({"value_head_dim": facts["value_head_dim"]} if "value_head_dim" in facts else {}),
    }


def _version() -> str:
    from . import __version__  # noqa: PLC0415

    return __version__


# ---------------------------------------------------------------------------------------------
# Text → token sequences, and loading a model (the CLI's parts)

#: Text is tokenized in pieces of about this many characters (split at a newline), so a huge file
#: is never tokenized at once and reading stops once enough tokens are in hand.
_CHUNK_CHARS = 1 << 20


def _texts(path: str) -> Iterator[str]:
    try:
        f = open(path, encoding="utf-8")  # noqa: SIM115 - closed below
    except OSError as e:
        raise KvtcError("DATA_INVALID", f"cannot read --data {path}: {e.strerror or e}", "Check the path.", {"file": path}) from None
    with f:
        jsonl = path.endswith(".jsonl")
        buf: List[str] = []
        size = 0
        try:
            for n, line in enumerate(f, 1):
                if jsonl:
                    if not line.strip():
                        continue
                    try:
                        rec = json.loads(line)
                    except ValueError as e:
                        raise KvtcError(
                            "DATA_INVALID",
                            f"{path}:{n}: not a JSON line ({e})",
                            'Each line of a .jsonl file is {"text": "..."}.',
                            {"file": path},
                        ) from None
                    if not isinstance(rec, dict) or not isinstance(rec.get("text"), str):
                        raise KvtcError(
                            "DATA_INVALID",
                            f'{path}:{n}: no "text" string',
                            'Each line of a .jsonl file is {"text": "..."}.',
                            {"file": path},
                        )
                    yield rec["text"]
                    continue
                buf.append(line)
                size += len(line)
                if size >= _CHUNK_CHARS:
                    yield "".join(buf)
                    buf, size = [], 0
        except UnicodeDecodeError as e:
            raise KvtcError(
                "DATA_INVALID", f"{path} is not UTF-8 text ({e.reason} at byte {e.start})", "Pass UTF-8 text files.", {"file": path}
            ) from None
        if buf:
            yield "".join(buf)


def token_sequences(
    tokenizer, files: Sequence[str], *, seq_len: int, tokens: int, max_sequences: Optional[int] = None
) -> Iterator[List[int]]:
    """Sequences of at most ``seq_len`` token ids, ``tokens`` in all: each starts with the
    tokenizer's BOS (when it adds one) and continues the text of one file; a file's last piece
    is kept when it holds at least 2 tokens. Files are read lazily, in order."""
    probe = tokenizer("a").input_ids
    bos = tokenizer.bos_token_id
    lead = [bos] if bos is not None and probe and probe[0] == bos else []
    if seq_len <= len(lead):
        raise KvtcError("USAGE", f"--seq-len {seq_len} leaves no room for text", "Pass a larger --seq-len.")
    left, count = tokens, 0
    for path in files:
        pending: List[int] = []
        for text in _texts(path):
            pending.extend(tokenizer(text, add_special_tokens=False).input_ids)
            while len(pending) >= seq_len - len(lead):
                take = min(seq_len - len(lead), left - len(lead))
                if take < 1:
                    return
                seq, pending = lead + pending[:take], pending[take:]
                yield seq
                left -= len(seq)
                count += 1
                if left <= len(lead) or (max_sequences is not None and count >= max_sequences):
                    return
        take = min(len(pending), left - len(lead))
        if take >= 2:
            yield lead + pending[:take]
            left -= len(lead) + take
            count += 1
            if left <= len(lead) or (max_sequences is not None and count >= max_sequences):
                return


def _torch_dtype(name: str, on_gpu: bool, config):
    import torch  # noqa: PLC0415

    if name == "auto":
        if not on_gpu:
            return torch.float32  # CPUs: float32 (bfloat16 matmuls are slow or emulated there)
        d = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)
        d = getattr(torch, d, None) if isinstance(d, str) else d
        return d if d in (torch.float16, torch.bfloat16, torch.float32) else torch.bfloat16
    return {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[name]


def load_model(model_id: str, *, dtype: str = "auto", device: str = "auto", device_map: Optional[str] = None):
    """(model, tokenizer, placement) for a transformers model directory or hub id.

    Placement: ``device_map`` "auto" spreads the model over every GPU (needs accelerate); device
    "auto" does that when accelerate is installed and there is more than one GPU, uses the one GPU
    when there is one, and the CPU otherwise. The config is checked (model_facts) before any weight
    is loaded, so an unsupported model is refused without reading gigabytes.
    """
    torch, transformers = _require()
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer  # noqa: PLC0415

    try:
        config = AutoConfig.from_pretrained(model_id)
    except (OSError, ValueError) as e:
        raise KvtcError(
            "MODEL_NOT_FOUND",
            f"cannot load the config of model {model_id}: {str(e).splitlines()[0] if str(e) else type(e).__name__}",
            "Pass a transformers model directory (config.json, weights, tokenizer) or a hub id you can download.",
            {"model": model_id},
        ) from None
    model_facts(config, name=model_id)  # refuses what a dump cannot describe, before the weights load
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    try:
        import accelerate  # noqa: F401, PLC0415

        have_accelerate = True
    except ImportError:
        have_accelerate = False
    kw: Dict[str, Any] = {}
    if device_map is not None or (device == "auto" and gpus > 1 and have_accelerate):
        if not have_accelerate:
            raise KvtcError("DEVICE_UNAVAILABLE", "--device-map auto needs accelerate, which is not installed", "pip install accelerate")
        kw["device_map"] = device_map or "auto"
        place, on_gpu = f"device_map={kw['device_map']}", gpus > 0
    else:
        place = ("cuda" if gpus else "cpu") if device == "auto" else device
        on_gpu = place.startswith("cuda")
        if on_gpu and not gpus:
            raise KvtcError(
                "DEVICE_UNAVAILABLE", f"--device {device}: torch sees no CUDA device", "Use --device cpu, or a machine with a GPU."
            )
    kw["dtype"] = _torch_dtype(dtype, on_gpu, config)
    try:
        tokenizer = AutoTokenizer.from_pretrained(model_id)
    except (OSError, ValueError, TypeError) as e:
        raise KvtcError(
            "TOKENIZER_MISSING",
            f"cannot load the tokenizer of {model_id}: {str(e).splitlines()[0] if str(e) else type(e).__name__}",
            "The model directory needs its tokenizer files (tokenizer.json / tokenizer_config.json).",
            {"model": model_id},
        ) from None
    try:
        model = AutoModelForCausalLM.from_pretrained(model_id, **kw)
    except (OSError, ValueError) as e:
        raise KvtcError(
            "MODEL_INVALID",
            f"cannot load model {model_id}: {str(e).splitlines()[0] if str(e) else type(e).__name__}",
            "Check that the directory holds the model's weights, or pass a hub id.",
            {"model": model_id},
        ) from None
    if "device_map" not in kw:
        model.to(place)
    model.eval()
    return model, tokenizer, place


# ---------------------------------------------------------------------------------------------
# python -m kvtc capture (cli.py registers it)


def add_subcommand(sub) -> None:
    c = sub.add_parser(
        "capture",
        help="run a transformers model on text and write a KV dump (docs/kv-dumps.md) for `kvtc calibrate --kv`",
        description="Needs the capture extra: " + INSTALL + ".",
    )
    c.add_argument("--model", required=True, metavar="DIR_OR_ID", help="transformers model directory or hub id")
    c.add_argument(
        "--data",
        required=True,
        nargs="+",
        metavar="FILE",
        help="calibration text: UTF-8 files, directories of *.txt files (sorted by name), or .jsonl with a text field",
    )
    c.add_argument("--out", required=True, metavar="DIR", help="the dump directory to write (must not exist or be empty; see --force)")
    c.add_argument("--tokens", type=int, default=65536, metavar="N", help="tokens to capture in all (default 65536)")
    c.add_argument("--seq-len", type=int, default=2048, metavar="L", help="tokens per sequence, BOS included (default 2048)")
    c.add_argument("--max-sequences", type=int, metavar="N", help="stop after this many sequences")
    c.add_argument(
        "--dtype",
        choices=["auto", "float32", "float16", "bfloat16"],
        default="auto",
        help="model dtype (auto: float32 on CPU, the checkpoint's on GPU)",
    )
    c.add_argument(
        "--device", default="auto", help='"auto" (default: every GPU with accelerate, one GPU, else CPU), "cpu", "cuda" or "cuda:N"'
    )
    c.add_argument("--device-map", choices=["auto"], help="spread the model over every GPU (needs accelerate)")
    c.add_argument("--force", action="store_true", help="replace an existing dump kvtc wrote at --out (never other files)")
    c.add_argument("--json", action="store_true", help="print one JSON document")


def _stderr_progress(total: int):
    def report(p: Dict[str, Any]) -> None:
        rate = p["tokens"] / p["seconds"] if p["seconds"] > 0 else 0.0
        eta = (total - p["tokens"]) / rate if rate > 0 and total > p["tokens"] else 0.0
        sys.stderr.write(f"captured sequence {p['sequence']}: {p['tokens']}/{total} tokens, {rate:.0f} tokens/s, ETA {eta:.0f} s\n")
        sys.stderr.flush()

    return report


def _data_files(paths: Sequence[str]) -> List[str]:
    """--data as files: a file as it is, a directory as every *.txt directly inside it, sorted by
    name (as `kvtc calibrate --data` reads one)."""
    files: List[str] = []
    for path in paths:
        if os.path.isdir(path):
            names = sorted(n for n in os.listdir(path) if n.endswith(".txt") and os.path.isfile(os.path.join(path, n)))
            if not names:
                raise KvtcError(
                    "DATA_INVALID",
                    f"--data {path}: directory has no .txt files",
                    "Put UTF-8 .txt files in it, or pass a file.",
                    {"file": path},
                )
            files.extend(os.path.join(path, n) for n in names)
        elif os.path.isfile(path):
            files.append(path)
        else:
            raise KvtcError("DATA_INVALID", f"--data {path} does not exist", "Check the path.", {"file": path})
    return files


def run(a) -> Dict[str, Any]:
    for flag, v in (("--tokens", a.tokens), ("--seq-len", a.seq_len), ("--max-sequences", a.max_sequences)):
        if v is not None and v < 1:
            raise KvtcError("USAGE", f"{flag} must be at least 1, got {v}", f"Pass a positive {flag}.")
    a.data = _data_files(a.data)
    DumpDir(a.out, a.force).abort()  # refuse a bad --out before loading the model (creates and removes its temp dir)
    t0 = time.perf_counter()
    model, tokenizer, place = load_model(a.model, dtype=a.dtype, device=a.device, device_map=a.device_map)
    load_s = time.perf_counter() - t0
    maxpos = getattr(_text_config(model.config), "max_position_embeddings", None)
    if isinstance(maxpos, int) and a.seq_len > maxpos:
        raise KvtcError("USAGE", f"--seq-len {a.seq_len} exceeds the model's context ({maxpos})", f"Pass --seq-len {maxpos} or less.")
    seqs = token_sequences(tokenizer, a.data, seq_len=a.seq_len, tokens=a.tokens, max_sequences=a.max_sequences)
    sys.stderr.write(f"capturing up to {a.tokens} tokens of {a.model} on {place} ({_dtype_name(next(model.parameters()).dtype)})\n")
    r = capture(model, seqs, a.out, name=a.model, force=a.force, total_tokens=a.tokens, progress=_stderr_progress(a.tokens))
    r["device"] = place
    r["seconds"] = {"load": load_s, "capture": r["seconds"], "total": time.perf_counter() - t0}
    return r


def human(r: Dict[str, Any]) -> str:
    m = r["model"]
    return (
        f"captured {r['sequences']} sequences, {r['tokens']} tokens of {m['name']} ({m['family']}, {len(m['cache_layers'])} cache layers, "
        f"{m['cache']}, {m['dtype']}) → {r['out']} ({r['bytes']} B) in {r['seconds']['capture']:.1f} s "
        f"({r['tokens_per_second']:.0f} tokens/s) on {r['device']}"
    )
