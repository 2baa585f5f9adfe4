"""Tiny random-weight models of the families issue 20 names, built from transformers' own
implementations (no download), and what the end-to-end KV tests do with them:

- `build(family)`: the model (float32, eager attention, seeded weights, eval mode);
- `prefill(model, ids)`: its cache after a prompt, as transformers keeps it;
- `cache_kv(model, cache)`: that cache in the dump layout (docs/kv-dumps.md): one (key, value)
  [kv_heads, tokens, dim] pair per cache layer; MLA: key = k_rot, value = the c_kv latent;
- `feed_back(model, cache, decoded, next_ids)`: the same cache with its attention K/V replaced by
  decoded ones (hybrid models keep their linear-attention states), run on the next tokens;
- `export_onnx(model, dir)`: an Optimum-layout directory (config.json, tokenizer.json, model.onnx
  with input_ids / attention_mask / position_ids / past_key_values.{i}.key|value in, logits /
  present.{i}.key|value out) that `kvtc capture` runs, through torch.onnx's TorchScript exporter.

torch and transformers are imported by the caller (test_e2e_kv.py), which fails with the install
command when they are missing.
"""

from __future__ import annotations

import copy
import inspect
import json
import pathlib
from typing import Dict, List, Sequence, Tuple

import numpy as np
import torch
import transformers
from transformers import DynamicCache

VOCAB = 96
#: Longer than any sequence the tests run: sliding-window layers then keep every token, as kvtc expects.
WINDOW = 1024

_COMMON = dict(
    vocab_size=VOCAB,
    hidden_size=64,
    intermediate_size=96,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=2048,
    bos_token_id=None,
    eos_token_id=None,
    pad_token_id=None,
    tie_word_embeddings=False,
    # transformers' 0.02 leaves a random model's attention nearly uniform and its logits nearly flat
    # (std 0.16), so that any cache gives about the same next token; 0.1 gives logits of std ~0.8 and
    # makes a wrong cache cost KL 0.1–0.8, which the feed-back checks need to mean something.
    initializer_range=0.1,
)


def _configs() -> Dict[str, transformers.PretrainedConfig]:
    """Small configs of each family. The MoE ones route every token to all of their 4 experts: a
    top-2 choice among near-equal random router logits flips under any perturbation of the cache,
    and one flipped expert moved the next-token logits by 0.85 (KL 0.05) where the decoded cache
    alone moved them by 0.1; with every expert active the routing weights still vary, continuously."""
    t = transformers
    rope = {"rope_type": "default", "rope_theta": 10000.0}
    c = _COMMON
    return {
        "llama": t.LlamaConfig(**c, rope_parameters=rope),
        "qwen3": t.Qwen3Config(**c, head_dim=16, rope_parameters={"rope_type": "default", "rope_theta": 1e6}),
        "qwen3_moe": t.Qwen3MoeConfig(
            **c, head_dim=16, num_experts=4, num_experts_per_tok=4, moe_intermediate_size=32, rope_parameters=rope
        ),
        # Layers 0-4 alternate local (sliding, θ 1e4) and global (θ 1e6, linear scaling) attention.
        "gemma3_text": t.Gemma3TextConfig(
            **{**c, "num_hidden_layers": 4},
            head_dim=16,
            query_pre_attn_scalar=16,
            sliding_window=WINDOW,
            layer_types=["sliding_attention", "full_attention", "sliding_attention", "full_attention"],
            rope_parameters={
                "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
                "full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1e6},
            },
        ),
        "phi3": t.Phi3Config(**c, rope_parameters=rope, original_max_position_embeddings=2048),
        # Every 4th layer has no RoPE (no_rope_layer_interval 4): layer 3 is NoPE.
        "smollm3": t.SmolLM3Config(**c, rope_parameters=rope),
        "deepseek_v3": t.DeepseekV3Config(
            **{**c, "num_key_value_heads": 4},
            kv_lora_rank=32,
            q_lora_rank=48,
            qk_rope_head_dim=8,
            qk_nope_head_dim=16,
            v_head_dim=16,
            n_routed_experts=4,
            num_experts_per_tok=4,
            n_shared_experts=1,
            n_group=1,
            topk_group=1,
            first_k_dense_replace=1,
            moe_intermediate_size=32,
            rope_parameters=rope,
        ),
        # The hybrid: Gated DeltaNet (linear attention) layers 0 and 2, full attention 1 and 3.
        "qwen3_next": t.Qwen3NextConfig(
            **c,
            head_dim=16,
            layer_types=["linear_attention", "full_attention", "linear_attention", "full_attention"],
            linear_conv_kernel_dim=4,
            linear_key_head_dim=16,
            linear_value_head_dim=16,
            linear_num_key_heads=2,
            linear_num_value_heads=4,
            num_experts=4,
            num_experts_per_tok=4,
            moe_intermediate_size=32,
            shared_expert_intermediate_size=32,
            rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.5},
        ),
    }


FAMILIES = list(_configs())
#: Families kvtc's ONNX path reads (`kvtc capture` on a torch.onnx export).
ONNX_FAMILIES = ["llama", "qwen3"]


def build(family: str, seed: int = 0) -> torch.nn.Module:
    cfg = _configs()[family]
    cfg._attn_implementation = "eager"
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(cfg, attn_implementation="eager", dtype=torch.float32)
    return model.eval()


def cache_layers(model) -> List[int]:
    """The model layers that keep a K/V cache (hybrids leave out their linear-attention layers)."""
    kinds = getattr(model.config, "layer_types", None) or ["full_attention"] * model.config.num_hidden_layers
    return [l for l, k in enumerate(kinds) if k not in ("linear_attention", "mamba", "conv")]


def _cache_kw(model) -> str:
    """transformers 5.x renamed forward's past_key_values to cache (the old name warns until 5.40 removes it)."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def is_mla(model) -> bool:
    return getattr(model.config, "kv_lora_rank", None) is not None


@torch.no_grad()
def prefill(model, ids: Sequence[int]):
    """(cache, logits [tokens, vocab]) of the prompt ids, one forward pass."""
    cache = DynamicCache(config=model.config)
    out = model(input_ids=torch.tensor([list(ids)]), use_cache=True, **{_cache_kw(model): cache})
    return out.past_key_values, out.logits[0].double().numpy()


def _attn(cache, l):
    layer = cache.layers[l]
    return layer.keys, layer.values


def cache_kv(model, cache) -> List[Tuple[np.ndarray, np.ndarray]]:
    """[(key, value)] per cache layer, float32 [kv_heads, tokens, dim] in the dump layout. MLA:
    transformers 5 keeps the latent itself (keys slot: c_kv after kv_a_layernorm, values slot: k_rot
    after RoPE, modeling_deepseek_v3.py), which the dump names the other way round."""
    out = []
    for l in cache_layers(model):
        k, v = _attn(cache, l)
        if is_mla(model):
            k, v = v, k
        out.append((k[0].float().numpy().copy(), v[0].float().numpy().copy()))
    return out


@torch.no_grad()
def feed_back(model, cache, decoded: Sequence[Tuple[np.ndarray, np.ndarray]], next_ids: Sequence[int]) -> np.ndarray:
    """Logits [len(next_ids), vocab] (float64) of the next tokens run on a copy of `cache` whose
    attention K/V are `decoded` (dump layout, one pair per cache layer); every other state (a
    hybrid's linear-attention conv and recurrent states) stays as the prefill left it."""
    c = copy.deepcopy(cache)
    layers = cache_layers(model)
    if len(decoded) != len(layers):
        raise ValueError(f"{len(decoded)} decoded layers for {len(layers)} cache layers")
    for l, (k, v) in zip(layers, decoded):
        ok, ov = _attn(c, l)
        if is_mla(model):
            k, v = v, k
        nk, nv = torch.from_numpy(np.asarray(k, dtype=np.float32))[None], torch.from_numpy(np.asarray(v, dtype=np.float32))[None]
        if nk.shape != ok.shape or nv.shape != ov.shape:
            raise ValueError(
                f"layer {l}: decoded shapes {tuple(nk.shape)}, {tuple(nv.shape)}; the cache holds {tuple(ok.shape)}, {tuple(ov.shape)}"
            )
        c.layers[l].keys, c.layers[l].values = nk.to(ok.dtype), nv.to(ov.dtype)
    out = model(input_ids=torch.tensor([list(next_ids)]), use_cache=True, **{_cache_kw(model): c})
    return out.logits[0].double().numpy()


def logit_gap(a: np.ndarray, b: np.ndarray) -> Tuple[float, float]:
    """(max |Δlogit|, max over positions of KL(softmax a ‖ softmax b)) of two [n, vocab] logit sets."""
    la = a - np.log(np.exp(a - a.max(-1, keepdims=True)).sum(-1, keepdims=True)) - a.max(-1, keepdims=True)
    lb = b - np.log(np.exp(b - b.max(-1, keepdims=True)).sum(-1, keepdims=True)) - b.max(-1, keepdims=True)
    kl = (np.exp(la) * (la - lb)).sum(-1)
    return float(np.max(np.abs(a - b))), float(np.max(kl))


# ------------------------------------------------------------------------------------------------
# ONNX export in the Optimum layout kvtc loads (src/model/graph-io.ts)


def words(ids: Sequence[int]) -> str:
    """The text whose tokenization by `write_tokenizer`'s tokenizer is exactly `ids`."""
    return " ".join(f"w{i}" for i in ids)


def write_tokenizer(d: pathlib.Path) -> None:
    """tokenizer.json of a word-level tokenizer: token "w<i>" is id i, split on whitespace, no
    special tokens added, so kvtc and the tests agree on the ids without a trained vocabulary."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    tok = Tokenizer(models.WordLevel(vocab={f"w{i}": i for i in range(VOCAB)}, unk_token="w0"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.save(str(d / "tokenizer.json"))


class _Decoder(torch.nn.Module):
    """The model with flat tensors in and out, as an Optimum text-generation-with-past export has them."""

    def __init__(self, model):
        super().__init__()
        self.model = model
        self.layers = model.config.num_hidden_layers

    def forward(self, input_ids, attention_mask, position_ids, *past):
        cache = DynamicCache(config=self.model.config)
        for l in range(self.layers):
            cache.update(past[2 * l], past[2 * l + 1], l)
        kw = {_cache_kw(self.model): cache}
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=True, **kw)
        res = [out.logits]
        for l in range(self.layers):
            res += [out.past_key_values.layers[l].keys, out.past_key_values.layers[l].values]
        return tuple(res)


def export_onnx(model, d: pathlib.Path) -> pathlib.Path:
    """Writes config.json, tokenizer.json and model.onnx (torch.onnx, TorchScript exporter, opset 17,
    traced with a past of 3 and 5 new tokens; the sequence and past axes are dynamic), and the
    weights and tokenizer_config.json, so that the directory is also a transformers model directory
    (`python -m kvtc capture --model d`). Returns d."""
    d.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(d)
    cfg = model.config
    L, H = cfg.num_hidden_layers, cfg.num_key_value_heads
    D = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    P, T = 3, 5
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, VOCAB, (1, T), generator=g)
    mask = torch.ones(1, P + T, dtype=torch.int64)
    pos = torch.arange(P, P + T, dtype=torch.int64)[None]
    past = [torch.randn(1, H, P, D, generator=g) for _ in range(2 * L)]
    kv = [(l, k) for l in range(L) for k in ("key", "value")]
    ins = ["input_ids", "attention_mask", "position_ids"] + [f"past_key_values.{l}.{k}" for l, k in kv]
    outs = ["logits"] + [f"present.{l}.{k}" for l, k in kv]
    dyn = {"input_ids": {1: "sequence"}, "attention_mask": {1: "total"}, "position_ids": {1: "sequence"}, "logits": {1: "sequence"}}
    dyn.update({n: {2: "past"} for n in ins[3:]})
    dyn.update({n: {2: "total"} for n in outs[1:]})
    import warnings

    with warnings.catch_warnings():
        # The tracer warns about Python conditionals on shapes; the test proves the graph right by
        # comparing `kvtc capture` (several chunks, so several past lengths) with transformers.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            _Decoder(model),
            (ids, mask, pos, *past),
            str(d / "model.onnx"),
            input_names=ins,
            output_names=outs,
            dynamic_axes=dyn,
            dynamo=False,
            opset_version=17,
        )
    conf = cfg.to_dict()
    conf["architectures"] = [type(model).__name__]
    # The whole config (save_pretrained writes only what differs from the defaults; kvtc reads the file).
    (d / "config.json").write_text(json.dumps(conf, indent=2), "utf-8")
    write_tokenizer(d)
    # The plain fast tokenizer of tokenizer.json: no family tokenizer class adding a BOS it lacks.
    (d / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "PreTrainedTokenizerFast"}), "utf-8")
    return d
