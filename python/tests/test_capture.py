"""python -m kvtc capture and kvtc.capture (python/kvtc/capture.py): KV dumps from transformers models.

Tiny random-weight models (no download) of each family kvtc captures: Llama (llama3 scaling),
Qwen3 (yarn: an attention factor), Qwen3-MoE, Gemma 3 (sliding layers with a window shorter than
the sequence, linear scaling on global layers), Phi-3 (partial rotary 0.75 with LongRoPE), SmolLM3 (a NoPE layer),
DeepSeek-V3 and -V2 (MLA latents, both RoPE layouts) and Qwen3-Next (hybrid: gated-delta linear
attention layers have no KV cache). For each:

- the dump is checked against docs/kv-dumps.md by an independent reader (validate_dump below);
- the captured keys and values equal the model's own cache tensors from a pass whose cache keeps
  every token (and, for sliding layers, the model's own truncated cache holds the captured tail),
  while that pass's logits equal the model's normal pass;
- the manifest's RoPE is right: its inv_freq equals the rotary module's buffer and §4.1's
  recomputation (kvtc's 1e-6 rule), and rotating the keys as the model had them before RoPE
  (forward hooks on k_norm / k_proj / qkv_proj / kv_a_proj_with_mqa) by that description gives
  the captured keys;
- MLA latents reproduce the model's expanded keys and values through kv_b_proj.

torch and transformers are required here: without them this file fails with the install command.
"""

import json
import sys
import types

import numpy as np
import pytest

try:
    import torch
    import transformers
    from transformers import AutoConfig, AutoModelForCausalLM, DynamicCache
    from transformers.cache_utils import DynamicLayer
except ImportError as e:  # the policy: a missing test dependency fails the run and names the fix
    raise ImportError(
        f"python/tests/test_capture.py needs torch and transformers ({e}); install them: "
        "python3 -m pip install torch transformers (or pip install './python[capture]')"
    ) from None

import kvtc
from kvtc import _rope, capture
from kvtc._safetensors import Strict, parse
from kvtc.cli import main

REPO = __import__("pathlib").Path(__file__).resolve().parents[2]
COMMON = dict(
    vocab_size=128,
    hidden_size=64,
    intermediate_size=96,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=128,
    pad_token_id=0,
)
MLA = dict(
    num_key_value_heads=4,
    kv_lora_rank=32,
    q_lora_rank=48,
    qk_rope_head_dim=8,
    qk_nope_head_dim=16,
    v_head_dim=16,
    n_routed_experts=4,
    num_experts_per_tok=2,
    first_k_dense_replace=1,
    moe_intermediate_size=32,
    n_group=1,
    topk_group=1,
)
FAMILIES = {
    "llama": dict(
        rope_parameters={
            "rope_type": "llama3",
            "rope_theta": 500000.0,
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 32,
        }
    ),
    "qwen3": dict(
        head_dim=16, rope_parameters={"rope_type": "yarn", "rope_theta": 1e6, "factor": 4.0, "original_max_position_embeddings": 32}
    ),
    "qwen3_moe": dict(head_dim=16, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32),
    "gemma3_text": dict(
        head_dim=16,
        sliding_window=8,
        layer_types=["sliding_attention", "sliding_attention", "full_attention", "sliding_attention"],
        rope_parameters={
            "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
            "full_attention": {"rope_type": "linear", "rope_theta": 1e6, "factor": 8.0},
        },
    ),
    # Phi-4-mini style: partial rotary 0.75 with LongRoPE (factor 128/64 = 2: an attention factor)
    "phi3": dict(
        original_max_position_embeddings=64,
        rope_parameters={
            "rope_type": "longrope",
            "rope_theta": 10000.0,
            "partial_rotary_factor": 0.75,
            "short_factor": [1.0, 1.1, 1.2, 1.4, 1.7, 2.0],
            "long_factor": [2.0, 3.0, 4.0, 5.0, 6.0, 8.0],
        },
    ),
    "smollm3": dict(no_rope_layers=[1, 1, 0, 1]),
    "deepseek_v3": MLA,
    "deepseek_v2": MLA,
    # sliding layers rotate, the full-attention one does not (decided in the attention's forward)
    "exaone4": dict(sliding_window=8, layer_types=["sliding_attention", "sliding_attention", "sliding_attention", "full_attention"]),
    "qwen3_next": dict(
        head_dim=16,
        layer_types=["linear_attention", "full_attention", "linear_attention", "full_attention"],
        linear_num_value_heads=4,
        linear_num_key_heads=2,
        linear_key_head_dim=16,
        linear_value_head_dim=16,
        num_experts=4,
        num_experts_per_tok=2,
        moe_intermediate_size=32,
        shared_expert_intermediate_size=32,
    ),
}
LENGTHS = (21, 13)  # two sequences; 21 > Gemma's window of 8


def tiny(family, **over):
    torch.manual_seed(0)
    cfg = AutoConfig.for_model(family, **{**COMMON, **FAMILIES[family], **over})
    return AutoModelForCausalLM.from_config(cfg).eval()


def token_ids(T, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(1, COMMON["vocab_size"], (T,), generator=g).tolist()


# ---------------------------------------------------------------------------------------------
# An independent reader of docs/kv-dumps.md


def _no_dups(pairs):
    keys = [k for k, _ in pairs]
    assert len(keys) == len(set(keys)), f"repeated keys {keys}"
    return dict(pairs)


MODEL_KEYS = {
    "name",
    "family",
    "architecture",
    "layers",
    "heads",
    "kv_heads",
    "head_dim",
    "value_head_dim",
    "dtype",
    "max_positions",
    "cache",
    "layer_kinds",
    "cache_layers",
    "rope",
}
OPTIONAL_MODEL_KEYS = {"value_head_dim"}


def _floats(a, dtype):
    if dtype == "BF16":  # bfloat16 bits are the top half of a float32
        return (a.astype(np.uint32) << 16).view(np.float32)
    return a.astype(np.float32)


def validate_dump(d):
    """Checks a dump directory against docs/kv-dumps.md; returns (manifest, [{layer: (K, V)}, ...])."""
    raw = (d / "kvtc-dump.json").read_text("utf-8")
    m = json.loads(raw, object_pairs_hook=_no_dups, parse_constant=lambda c: pytest.fail(f"{c} in the manifest"))
    assert set(m) == {"format", "format_version", "producer", "model", "sequences"}
    assert m["format"] == "kvtc-kv-dump" and m["format_version"] == 1
    assert set(m["producer"]) == {"name", "version"}
    md = m["model"]
    assert MODEL_KEYS - OPTIONAL_MODEL_KEYS <= set(md) <= MODEL_KEYS
    L = md["layers"]
    assert len(md["layer_kinds"]) == L and all(isinstance(k, str) for k in md["layer_kinds"])
    cl = md["cache_layers"]
    assert cl == sorted(set(cl)) and all(0 <= x < L for x in cl) and cl
    assert md["cache"] in ("gqa", "mla-latent") and md["dtype"] in ("float32", "float16", "bfloat16")
    H, D = md["kv_heads"], md["head_dim"]
    Dv = md.get("value_head_dim", D)
    if md["cache"] == "mla-latent":
        assert H == 1 and "value_head_dim" in md
    assert len(md["rope"]) == L
    for l, r in enumerate(md["rope"]):
        if l not in cl:
            assert r is None, f"layer {l} has no cache, so no RoPE entry"
        if r is None:
            continue
        assert (
            {"theta", "rotary_dim", "layout", "inv_freq"}
            <= set(r)
            <= {"theta", "rotary_dim", "layout", "attention_factor", "scaling", "inv_freq"}
        )
        assert r["rotary_dim"] % 2 == 0 and 0 < r["rotary_dim"] <= D and r["layout"] in ("half", "interleaved")
        assert len(r["inv_freq"]) == r["rotary_dim"] // 2
        desc = types.SimpleNamespace(theta=r["theta"], rotary_dim=r["rotary_dim"], scaling=r.get("scaling"))
        want = _rope.inv_freq(desc, 1)
        np.testing.assert_allclose(r["inv_freq"], want, rtol=1e-6, atol=0)  # kvtc's rule for dumps
    st_dtype = {"float32": "F32", "float16": "F16", "bfloat16": "BF16"}[md["dtype"]]
    seqs = []
    for s in m["sequences"]:
        assert set(s) == {"file", "tokens", "start_position"}
        T, start = s["tokens"], s["start_position"]
        want = {f"present.{l}.{kind}": (1, H, T, D if kind == "key" else Dv) for l in cl for kind in ("key", "value")}
        want.update({"positions": (T,), "input_ids": (T,)})
        buf = (d / s["file"]).read_bytes()
        tensors, meta = parse(buf, s["file"], Strict(max_header_bytes=1 << 20, tensors=want))
        assert meta.get("tokens", str(T)) == str(T) and meta.get("start_position", str(start)) == str(start)
        assert tensors["positions"].dtype == "I64" and tensors["input_ids"].dtype == "I64"
        arr = {
            n: np.frombuffer(
                buf, dtype=np.dtype(kvtc._safetensors.DTYPES[t.dtype][0]), count=int(np.prod(t.shape)), offset=t.begin
            ).reshape(t.shape)
            for n, t in tensors.items()
        }
        np.testing.assert_array_equal(arr["positions"], start + np.arange(T))
        kv = {}
        for l in cl:
            k, v = (_floats(arr[f"present.{l}.{kind}"], st_dtype) for kind in ("key", "value"))
            assert tensors[f"present.{l}.key"].dtype == st_dtype and np.isfinite(k).all() and np.isfinite(v).all()
            kv[l] = (k, v)
        seqs.append({"kv": kv, "input_ids": arr["input_ids"].tolist(), "tokens": T})
    assert {p.name for p in d.iterdir()} == {"kvtc-dump.json", *(s["file"] for s in m["sequences"])}
    return m, seqs


# ---------------------------------------------------------------------------------------------
# What the model itself computes


def full_cache(model):
    """The model's own DynamicCache with every sliding layer made a full one (it keeps all tokens)."""
    cache = DynamicCache(config=model.config)
    for i, layer in enumerate(cache.layers):
        if getattr(layer, "is_sliding", False):
            cache.layers[i] = DynamicLayer()
    return cache


def run(model, ids, cache):
    with torch.inference_mode():
        return model(input_ids=torch.tensor([ids]), cache=cache, use_cache=True).logits


def pre_rope_keys(model, ids, facts, cache):
    """Runs the model with ``cache``; returns its logits and {layer: keys before RoPE, [H, T, D] float64},
    taken by forward hooks where each family makes them."""
    got, hooks = {}, []
    dec = model.get_decoder()
    H, T = facts["kv_heads"], len(ids)
    for l in facts["cache_layers"]:
        attn = dec.layers[l].self_attn

        def keep(out, l=l, attn=attn):
            x = out.detach().double()
            if hasattr(attn, "kv_a_proj_with_mqa"):  # MLA: the rope part of the compressed projection
                x = x[..., -facts["head_dim"] :].reshape(1, 1, T, -1)
                if getattr(attn.config, "rope_interleave", False):  # DeepSeek-V3 reads pairs (2i, 2i+1)
                    x = torch.cat([x[..., 0::2], x[..., 1::2]], dim=-1)
            elif hasattr(attn, "qkv_proj"):  # Phi-3: [q | k | v]
                nq = attn.config.num_attention_heads * attn.head_dim
                x = x[..., nq : nq + H * attn.head_dim].reshape(1, T, H, -1).transpose(1, 2)
            elif x.dim() == 3:  # k_proj output [1, T, H*D]
                x = x.reshape(1, T, H, -1).transpose(1, 2)
            elif x.shape[1] == T:  # k_norm over [1, T, H, D]
                x = x.transpose(1, 2)
            got[l] = x[0].numpy()

        mod = next(getattr(attn, n) for n in ("kv_a_proj_with_mqa", "qkv_proj", "k_norm", "k_proj") if hasattr(attn, n))
        hooks.append(mod.register_forward_hook(lambda _m, _i, out, keep=keep: keep(out)))
    try:
        logits = run(model, ids, cache)
    finally:
        for h in hooks:
            h.remove()
    return logits, got


def rotate(x, r, T):
    desc = types.SimpleNamespace(theta=r["theta"], rotary_dim=r["rotary_dim"], layout=r["layout"], scaling=r.get("scaling"))
    cos, sin = _rope.tables(_rope.inv_freq(desc, T), 0, T, r.get("attention_factor", 1.0))
    ia, ib = _rope.pairs(desc, x.shape[-1])
    return _rope.rotate64(x, cos, sin, ia, ib)


def close(a, b, what, rel=1e-5):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    assert a.shape == b.shape, f"{what}: shapes {a.shape} vs {b.shape}"
    err = float(np.max(np.abs(a - b))) if a.size else 0.0
    assert err <= rel * max(1.0, float(np.max(np.abs(b)))), f"{what}: max abs diff {err}"


def rotary_modules(model):
    dec = model.get_decoder()
    return dec.rotary_emb


# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", list(FAMILIES))
def test_capture_matches_the_model(family, tmp_path):
    model = tiny(family)
    seqs = [token_ids(T, i) for i, T in enumerate(LENGTHS[:1] if family == "qwen3_next" else LENGTHS)]
    progress = []
    mod = sys.modules[type(model.get_decoder()).__module__]
    before = {n: getattr(mod, n, None) for n in capture._ROPE_FUNCTIONS}
    r = capture.capture(model, seqs, str(tmp_path / "dump"), name="tiny-" + family, progress=progress.append)
    assert {n: getattr(mod, n, None) for n in capture._ROPE_FUNCTIONS} == before, "the RoPE functions are put back"
    m, files = validate_dump(tmp_path / "dump")
    md = m["model"]
    assert r["sequences"] == len(seqs) and r["tokens"] == sum(map(len, seqs)) and len(progress) == len(seqs)
    assert md["family"] == family and md["name"] == "tiny-" + family and md["dtype"] == "float32"
    assert md["architecture"] == type(model).__name__
    if family == "exaone4":  # the pass showed layer 3 rotates nothing; a config alone cannot say so
        assert [r is None for r in md["rope"]] == [False, False, False, True]
        with pytest.raises(kvtc.KvtcError, match="applies RoPE on some layers only"):
            capture.model_facts(model.config)
    else:
        assert md == capture.model_facts(model.config, name="tiny-" + family), (
            "model_facts from the config alone (no weights) says the same"
        )
    rot = rotary_modules(model)
    for i, ids in enumerate(seqs):
        f = files[i]
        assert f["input_ids"] == ids and f["tokens"] == len(ids)
        # the model's own cache, keeping every token; the same forward pass as the model's own
        ref = full_cache(model)
        logits, pre = pre_rope_keys(model, ids, md, ref)
        own = DynamicCache(config=model.config)
        close(logits, run(model, ids, own), "logits with a cache that keeps every token")
        T = len(ids)
        for l in md["cache_layers"]:
            k, v = f["kv"][l]
            rk, rv = ref.layers[l].keys, ref.layers[l].values
            if md["cache"] == "mla-latent":  # the model caches (c_kv, k_rot)
                rk, rv = rv, rk
            close(k, rk, f"layer {l} key")
            close(v, rv, f"layer {l} value")
            ok, ov = own.layers[l].keys, own.layers[l].values
            if md["cache"] == "mla-latent":
                ok, ov = ov, ok
            n = ok.shape[2]  # sliding layers keep only their window's tail
            close(k[:, :, T - n :], ok, f"layer {l} key (model's own cache)")
            close(v[:, :, T - n :], ov, f"layer {l} value (model's own cache)")
            rope = md["rope"][l]
            if rope is None:
                close(k[0], pre[l], f"layer {l}: a NoPE layer's keys are its pre-RoPE keys")
                continue
            close(k[0], rotate(pre[l], rope, T), f"layer {l}: pre-RoPE keys rotated by the manifest's description")
            lt = md["layer_kinds"][l]
            buf = getattr(rot, f"{lt}_inv_freq", None)
            buf = rot.inv_freq if buf is None else buf
            np.testing.assert_array_equal(np.array(rope["inv_freq"], np.float32), buf.numpy())


def test_family_specifics(tmp_path):
    """What each family's manifest must say (checked on model_facts from the configs; the captures above
    prove these descriptions against the models' tensors)."""
    f = {
        fam: capture.model_facts(AutoConfig.for_model(fam, **{**COMMON, **FAMILIES[fam]}))
        for fam in ("gemma3_text", "phi3", "smollm3", "deepseek_v3", "deepseek_v2", "qwen3_next", "qwen3", "llama")
    }
    g = f["gemma3_text"]
    assert g["layer_kinds"][2] == "full_attention" and g["cache_layers"] == [0, 1, 2, 3]
    assert g["rope"][2]["theta"] == 1e6 and g["rope"][2]["scaling"] == {"type": "linear", "factor": 8.0}
    assert g["rope"][0]["theta"] == 10000.0 and "scaling" not in g["rope"][0]
    p = f["phi3"]["rope"][0]
    assert p["rotary_dim"] == 12 and f["phi3"]["head_dim"] == 16  # partial rotary 0.75
    assert p["scaling"]["type"] == "longrope" and p["scaling"]["original_max_position_embeddings"] == 64
    assert p["attention_factor"] == pytest.approx(np.sqrt(1 + np.log(2) / np.log(64)))
    assert p["inv_freq"][1] == pytest.approx(1 / (1.1 * 10000 ** (2 / 12)), rel=1e-6)  # the short factors: sequences ≤ 64
    assert [r is None for r in f["smollm3"]["rope"]] == [False, False, True, False]
    assert f["qwen3"]["rope"][0]["attention_factor"] == pytest.approx(0.1 * np.log(4.0) + 1)
    assert f["qwen3"]["rope"][0]["scaling"]["type"] == "yarn" and f["llama"]["rope"][0]["scaling"]["type"] == "llama3"
    for fam, layout in (("deepseek_v3", "half"), ("deepseek_v2", "interleaved")):
        d = f[fam]
        assert d["cache"] == "mla-latent" and d["kv_heads"] == 1 and d["head_dim"] == 8 and d["value_head_dim"] == 32
        assert {r["layout"] for r in d["rope"]} == {layout}
    q = f["qwen3_next"]
    assert q["cache_layers"] == [1, 3] and q["layer_kinds"][0] == "linear_attention"
    assert q["rope"][0] is None and q["rope"][1]["rotary_dim"] == 4  # partial_rotary_factor 0.25 of 16


@pytest.mark.parametrize("family", ["deepseek_v3", "deepseek_v2"])
def test_mla_latent_expands_to_the_models_keys_and_values(family, tmp_path):
    model = tiny(family)
    ids = token_ids(17, 7)
    capture.capture(model, [ids], str(tmp_path / "d"))
    m, files = validate_dump(tmp_path / "d")
    dec = model.get_decoder()
    expanded, wraps = {}, []
    for l in m["model"]["cache_layers"]:
        attn = dec.layers[l].self_attn
        inner = attn.expand_kv

        def expand(kv_nope, k_rot, l=l, inner=inner):
            out = inner(kv_nope, k_rot)
            expanded[l] = [t.detach().double().numpy() for t in out]
            return out

        attn.expand_kv = expand
        wraps.append(attn)
    run(model, ids, DynamicCache(config=model.config))
    for attn in wraps:
        del attn.expand_kv
    cfg = model.config
    for l in m["model"]["cache_layers"]:
        k_rot, c_kv = files[0]["kv"][l]  # dump: key = k_rot [1, 1, T, R], value = c_kv [1, 1, T, r]
        W = dec.layers[l].self_attn.kv_b_proj.weight.detach().double().numpy()
        kv = (c_kv[0, 0].astype(np.float64) @ W.T).reshape(len(ids), cfg.num_attention_heads, -1).transpose(1, 0, 2)
        k_nope, v = kv[..., : cfg.qk_nope_head_dim], kv[..., cfg.qk_nope_head_dim :]
        keys = np.concatenate([k_nope, np.broadcast_to(k_rot[0], (cfg.num_attention_heads, len(ids), k_rot.shape[-1]))], axis=-1)
        close(keys, expanded[l][0][0], f"layer {l}: keys expanded from the latent")
        close(v, expanded[l][1][0], f"layer {l}: values expanded from the latent")


def test_refusals():
    with pytest.raises(kvtc.KvtcError) as e:
        capture.model_facts(AutoConfig.for_model("qwen2_vl"))
    assert e.value.code == "UNSUPPORTED_ARCHITECTURE" and "mRoPE" in e.value.message
    dyn = AutoConfig.for_model("llama", **{**COMMON, "rope_parameters": {"rope_type": "dynamic", "rope_theta": 10000.0, "factor": 2.0}})
    with pytest.raises(kvtc.KvtcError) as e:
        capture.model_facts(dyn)
    assert e.value.code == "UNSUPPORTED_ARCHITECTURE" and "dynamic NTK" in e.value.message
    with pytest.raises(kvtc.KvtcError) as e:
        capture.model_facts(AutoConfig.for_model("granitemoehybrid", **{**COMMON, "layer_types": ["mamba"] * 4}))
    assert "no layer keeps a KV cache" in e.value.message
    model = tiny("llama")
    del model.model.rotary_emb  # RoPE in the config, no rotary module found: never recorded as "no RoPE"
    with pytest.raises(kvtc.KvtcError) as e:
        capture.model_facts(model)
    assert "cannot find the rotary module" in e.value.message


def test_without_torch_names_the_install_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)  # import torch → ImportError, as where it is not installed
    with pytest.raises(kvtc.KvtcError) as e:
        capture.model_facts(object())
    assert "kvtc[capture]" in e.value.fix


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A tiny random Llama saved with the bundled stories260k tokenizer (vocabulary 512)."""
    d = tmp_path_factory.mktemp("model")
    torch.manual_seed(0)
    cfg = AutoConfig.for_model("llama", **{**COMMON, "vocab_size": 512, "num_hidden_layers": 2})
    AutoModelForCausalLM.from_config(cfg).save_pretrained(d)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (d / name).write_bytes((REPO / "models" / "stories260k" / name).read_bytes())
    return d


def test_cli_capture(model_dir, tmp_path, capsys):
    text = tmp_path / "a.txt"
    text.write_text("Once upon a time there was a little cat. It liked to play in the sun with its friends.\n" * 6, "utf-8")
    out = tmp_path / "dump"

    def args(tokens=70, *more):
        return [
            "capture",
            "--model",
            str(model_dir),
            "--data",
            str(text),
            "--out",
            str(out),
            "--tokens",
            str(tokens),
            "--seq-len",
            "32",
            "--json",
            *more,
        ]

    assert main(args()) == 0
    io = capsys.readouterr()
    r = json.loads(io.out)
    assert r["tokens"] == 70 and r["sequences"] == 3 and r["device"] == "cpu" and r["model"]["family"] == "llama"
    assert "tokens/s" in io.err and "ETA" in io.err
    m, files = validate_dump(out)
    assert [s["tokens"] for s in m["sequences"]] == [32, 32, 6]
    tok = transformers.AutoTokenizer.from_pretrained(model_dir)
    ids = tok(text.read_text("utf-8"), add_special_tokens=False).input_ids
    assert files[0]["input_ids"] == [tok.bos_token_id] + ids[:31]
    assert files[1]["input_ids"] == [tok.bos_token_id] + ids[31:62]  # each sequence is its own prefill from BOS

    # an existing dump is refused without --force; --force replaces it
    before = (out / "kvtc-dump.json").read_bytes()
    assert main(args()) == 1
    assert json.loads(capsys.readouterr().out)["error"]["code"] == "OUTPUT_EXISTS"
    assert main(args(20, "--force")) == 0
    capsys.readouterr()
    assert (out / "kvtc-dump.json").read_bytes() != before and len(validate_dump(out)[1]) == 1
    # never deletes what kvtc did not write
    (out / "notes.txt").write_text("mine", "utf-8")
    assert main(args(20, "--force")) == 1
    assert "not a kvtc dump" in json.loads(capsys.readouterr().out)["error"]["message"]
    assert (out / "notes.txt").read_text("utf-8") == "mine"
    assert not [p for p in tmp_path.iterdir() if "kvtc-tmp" in p.name], "no temporary directory left behind"

    assert main(["capture", "--model", str(tmp_path / "nope"), "--data", str(text), "--out", str(tmp_path / "x"), "--json"]) == 1
    assert json.loads(capsys.readouterr().out)["error"]["code"] == "MODEL_NOT_FOUND"
    assert (
        main(["capture", "--model", str(model_dir), "--data", str(tmp_path / "missing.txt"), "--out", str(tmp_path / "x"), "--json"]) == 1
    )
    assert json.loads(capsys.readouterr().out)["error"]["code"] == "DATA_INVALID"
    # A directory is its *.txt files sorted by name (as kvtc calibrate --data reads one); one without any is refused.
    texts = tmp_path / "texts"
    texts.mkdir()
    (texts / "b.txt").write_text(text.read_text("utf-8"), "utf-8")
    (texts / "a.txt").write_text(text.read_text("utf-8"), "utf-8")
    (texts / "skip.md").write_text("not read", "utf-8")
    from kvtc.capture import _data_files

    assert _data_files([str(texts)]) == [str(texts / "a.txt"), str(texts / "b.txt")]
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["capture", "--model", str(model_dir), "--data", str(empty), "--out", str(tmp_path / "x"), "--json"]) == 1
    err = json.loads(capsys.readouterr().out)["error"]
    assert err["code"] == "DATA_INVALID" and "directory has no .txt files" in err["message"]


def test_bfloat16_dump_holds_the_models_bits(tmp_path):
    with pytest.raises(kvtc.KvtcError) as e:  # .to(dtype) casts inv_freq too: the model then rotates by rounded frequencies
        capture.capture(tiny("llama").to(torch.bfloat16), [[1, 2, 3]], str(tmp_path / "d"))
    assert e.value.code == "UNSUPPORTED_ARCHITECTURE" and "inv_freq is bfloat16" in e.value.message
    assert not (tmp_path / "d").exists()
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(AutoConfig.for_model("llama", **COMMON), dtype=torch.bfloat16).eval()
    assert model.model.rotary_emb.inv_freq.dtype == torch.float32
    ids = token_ids(19, 3)
    capture.capture(model, [ids], str(tmp_path / "d"))
    m, files = validate_dump(tmp_path / "d")
    assert m["model"]["dtype"] == "bfloat16"
    ref = full_cache(model)
    run(model, ids, ref)
    for l in m["model"]["cache_layers"]:
        k, v = files[0]["kv"][l]
        np.testing.assert_array_equal(k, ref.layers[l].keys.float().numpy())  # bfloat16 → float32 is exact
        np.testing.assert_array_equal(v, ref.layers[l].values.float().numpy())


def test_token_sequences_follow_the_files_in_order(model_dir, tmp_path):
    tok = transformers.AutoTokenizer.from_pretrained(model_dir)
    a, b = tmp_path / "a.txt", tmp_path / "b.jsonl"
    a.write_text("The cat sat on the mat.\n", "utf-8")
    b.write_text(
        json.dumps({"text": "A dog ran in the park with a red ball."}) + "\n\n" + json.dumps({"text": " It was happy."}) + "\n", "utf-8"
    )
    ta = tok(a.read_text("utf-8"), add_special_tokens=False).input_ids
    tb = (
        tok("A dog ran in the park with a red ball.", add_special_tokens=False).input_ids
        + tok(" It was happy.", add_special_tokens=False).input_ids
    )
    bos = [tok.bos_token_id]
    seqs = list(capture.token_sequences(tok, [str(a), str(b)], seq_len=8, tokens=1000))
    want = [bos + ta[i : i + 7] for i in range(0, len(ta), 7)] + [bos + tb[i : i + 7] for i in range(0, len(tb), 7)]
    assert seqs == [s for s in want if len(s) >= 3]  # a file's last piece needs at least 2 text tokens
    assert sum(map(len, capture.token_sequences(tok, [str(a), str(b)], seq_len=8, tokens=12))) == 12
    assert len(list(capture.token_sequences(tok, [str(a), str(b)], seq_len=8, tokens=1000, max_sequences=2))) == 2
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"txt": 1}\n', "utf-8")
    with pytest.raises(kvtc.KvtcError) as e:
        list(capture.token_sequences(tok, [str(bad)], seq_len=8, tokens=10))
    assert e.value.code == "DATA_INVALID" and "bad.jsonl:1" in e.value.message


def test_a_writer_that_knows_its_pairs_can_say_so():
    """convert-sglang records the pairs SGLang's rotary kernel used (model_facts(..., layout=))."""
    cfg = AutoConfig.for_model("llama", **COMMON)
    assert {r["layout"] for r in capture.model_facts(cfg)["rope"]} == {"half"}
    assert {r["layout"] for r in capture.model_facts(cfg, layout="interleaved")["rope"]} == {"interleaved"}
    with pytest.raises(kvtc.KvtcError) as e:
        capture.model_facts(cfg, layout="neox")
    assert e.value.code == "USAGE"


def test_the_first_pass_checks_the_description_against_the_rotation(tmp_path, monkeypatch):
    """A description that does not reproduce what attention did (here: the wrong pairs) writes nothing."""
    real = capture.model_facts
    monkeypatch.setattr(capture, "model_facts", lambda *a, **k: real(*a, **{**k, "layout": "interleaved"}))
    with pytest.raises(kvtc.KvtcError) as e:
        capture.capture(tiny("llama"), [token_ids(21, 0)], str(tmp_path / "d"))
    assert "differ from kvtc's RoPE description" in e.value.message and "layer 0" in e.value.message
    assert not (tmp_path / "d").exists() and not list(tmp_path.iterdir())
