/**
 * Test-only, independent of src/rope: the RoPE each layer of a decoder applies, read from its
 * config.json the way Hugging Face transformers reads it, and the exact un-rotation of the
 * cached keys. Written from the transformers source (5.x unless noted; the 4.x config forms are
 * what the same classes read through their backward-compatibility paths):
 *
 * - modeling_rope_utils.py: `standardize_rope_params` (one dict, or one dict per layer type),
 *   `_compute_default_rope_parameters`, `_compute_linear_scaling_rope_parameters`,
 *   `_compute_llama3_parameters`, `_compute_yarn_parameters` (get_mscale attention factor,
 *   find_correction_range with `truncate`, linear_ramp_factor), `_compute_longrope_parameters`
 *   and `dynamic_rope_update`'s `longrope_frequency_update` (long factors when
 *   max(position_ids) + 1 > original_max_position_embeddings).
 * - models/llama/modeling_llama.py `LlamaRotaryEmbedding.forward` (cos = cos(freqs) *
 *   attention_scaling, same for sin), `apply_rotary_pos_emb`, `rotate_half`.
 * - models/phi3/modeling_phi3.py and models/gpt_neox/modeling_gpt_neox.py `apply_rotary_pos_emb`:
 *   only the first `cos.shape[-1]` dims rotate (partial_rotary_factor / rotary_pct), the rest pass.
 * - configuration_phi3.py `convert_rope_params_to_dict`: partial_rotary_factor moves into
 *   rope_parameters; original_max_position_embeddings stays top-level.
 * - configuration_gpt_neox.py `convert_rope_params_to_dict`: rotary_emb_base → rope_theta,
 *   rotary_pct (default 0.25) → partial_rotary_factor.
 * - models/gemma3: sliding layers use `rope_local_base_freq` with default RoPE, full layers
 *   rope_theta with rope_scaling (4.x `rotary_emb_local` / 5.x rope_parameters[layer_type]);
 *   4.x layer type: sliding iff (layer + 1) % sliding_window_pattern != 0.
 * - configuration_smollm3.py: `no_rope_layers[l]` is 1 for a layer WITH RoPE (default: 0 every
 *   `no_rope_layer_interval` layers); modeling_smollm3.py `if self.use_rope: apply_rotary_pos_emb`.
 * - models/gpt2/modeling_gpt2.py: learned `wpe` position embeddings, no rotary at all.
 * - kvtc's own converter convention `"rope_interleaved": true` (llama2.c's GPT-J pairs 2i, 2i+1).
 *
 * Arithmetic follows transformers: inv_freq is a float32 tensor (rounded here with Math.fround),
 * the angle position * inv_freq and the rotation are done in float64 (transformers does them in
 * float32; the difference is far below the 1e-5 the tests ask).
 */
type Json = Record<string, unknown>;

export interface RefLayerRope {
  /** inv_freq of each rotated pair (float32 values), length rotaryDim/2. */
  invFreq: Float64Array;
  rotaryDim: number;
  layout: 'half' | 'interleaved';
  /** transformers' attention_scaling: cos and sin are multiplied by it. */
  attentionFactor: number;
  /** longrope: inv_freq when max(position_ids) + 1 > above (the forward pass's length). */
  long?: { invFreq: Float64Array; above: number };
}

const f32 = (a: ArrayLike<number>) => Float64Array.from(a, (v) => Math.fround(v));
const num = (v: unknown, what: string): number => {
  if (typeof v !== 'number' || !Number.isFinite(v)) throw new Error(`reference: ${what} must be a number, got ${JSON.stringify(v)}`);
  return v;
};

/** `base ** (arange(0, dim, 2) / dim)`: the default RoPE wavelength denominators. */
function posFreqs(base: number, dim: number): Float64Array {
  return Float64Array.from({ length: dim / 2 }, (_, i) => base ** ((2 * i) / dim));
}

/** One layer's inv_freq and attention factor from its rope parameters dict (transformers' ROPE_INIT_FUNCTIONS). */
function computeRope(p: Json, cfg: Json, dim: number, layout: 'half' | 'interleaved'): RefLayerRope {
  const type = String(p.rope_type ?? p.type ?? 'default');
  const base = num(p.rope_theta, 'rope_theta');
  const plain = () => posFreqs(base, dim).map((d) => 1 / d);
  const maxPos = num(cfg.max_position_embeddings, 'max_position_embeddings');
  switch (type) {
    case 'default':
      return { invFreq: f32(plain()), rotaryDim: dim, layout, attentionFactor: 1 };
    case 'linear': // _compute_linear_scaling_rope_parameters: inv_freq /= factor
      return { invFreq: f32(plain().map((v) => v / num(p.factor, 'factor'))), rotaryDim: dim, layout, attentionFactor: 1 };
    case 'llama3': {
      // _compute_llama3_parameters
      const factor = num(p.factor, 'factor');
      const low = num(p.low_freq_factor, 'low_freq_factor');
      const high = num(p.high_freq_factor, 'high_freq_factor');
      const old = num(p.original_max_position_embeddings, 'original_max_position_embeddings');
      const lowWavelen = old / low;
      const highWavelen = old / high;
      const inv = plain().map((f) => {
        const wavelen = (2 * Math.PI) / f;
        const llama = wavelen > lowWavelen ? f / factor : f;
        const smooth = (old / wavelen - low) / (high - low);
        const medium = !(wavelen < highWavelen) && !(wavelen > lowWavelen);
        return medium ? ((1 - smooth) * llama) / factor + smooth * llama : llama;
      });
      return { invFreq: f32(inv), rotaryDim: dim, layout, attentionFactor: 1 };
    }
    case 'yarn': {
      // _compute_yarn_parameters
      // transformers 5: original_max_position_embeddings from the dict (standardized from the
      // top level, else max_position_embeddings); factor from the dict, max / original only when
      // absent ("if factor is None"; some 4.x releases always took the ratio).
      const orig = num(
        p.original_max_position_embeddings ?? cfg.original_max_position_embeddings ?? maxPos,
        'original_max_position_embeddings',
      );
      const f = num(p.factor ?? maxPos / orig, 'factor');
      const mscale = (scale: number, m = 1) => (scale <= 1 ? 1 : 0.1 * m * Math.log(scale) + 1);
      let attentionFactor = p.attention_factor as number | undefined;
      if (attentionFactor === undefined || attentionFactor === null) {
        attentionFactor = p.mscale && p.mscale_all_dim ? mscale(f, p.mscale as number) / mscale(f, p.mscale_all_dim as number) : mscale(f);
      }
      const betaFast = (p.beta_fast as number) || 32;
      const betaSlow = (p.beta_slow as number) || 1;
      const corrDim = (rot: number) => (dim * Math.log(orig / (rot * 2 * Math.PI))) / (2 * Math.log(base));
      const truncate = p.truncate ?? true;
      let lo = corrDim(betaFast);
      let hi = corrDim(betaSlow);
      if (truncate) {
        lo = Math.floor(lo);
        hi = Math.ceil(hi);
      }
      lo = Math.max(lo, 0);
      hi = Math.min(hi, dim - 1);
      if (lo === hi) hi += 0.001;
      const pos = posFreqs(base, dim);
      const inv = pos.map((d, i) => {
        const ramp = Math.min(1, Math.max(0, (i - lo) / (hi - lo)));
        const extrapolation = 1 - ramp;
        return (1 / (f * d)) * (1 - extrapolation) + (1 / d) * extrapolation;
      });
      return { invFreq: f32(inv), rotaryDim: dim, layout, attentionFactor };
    }
    case 'longrope': {
      // _compute_longrope_parameters + longrope_frequency_update
      // transformers 5: original_max_position_embeddings in the dict (Phi-3 keeps it top level;
      // standardize_rope_params moves it in), factor from the dict or max / original when absent.
      const orig = num(
        p.original_max_position_embeddings ?? cfg.original_max_position_embeddings ?? maxPos,
        'original_max_position_embeddings',
      );
      const f = num(p.factor ?? maxPos / orig, 'factor');
      let attentionFactor = p.attention_factor as number | undefined;
      if (attentionFactor === undefined || attentionFactor === null)
        attentionFactor = f <= 1 ? 1 : Math.sqrt(1 + Math.log(f) / Math.log(orig));
      const pos = posFreqs(base, dim);
      const withFactors = (ext: unknown) => {
        if (!Array.isArray(ext) || ext.length !== dim / 2) throw new Error(`reference: longrope factors must have ${dim / 2} entries`);
        return f32(pos.map((d, i) => 1 / (Math.fround(ext[i] as number) * d)));
      };
      return {
        invFreq: withFactors(p.short_factor),
        rotaryDim: dim,
        layout,
        attentionFactor,
        long: { invFreq: withFactors(p.long_factor), above: orig },
      };
    }
    default:
      throw new Error(`reference: rope_type ${type} is not modelled`);
  }
}

/** The RoPE of every layer (null: the layer applies none) as transformers builds the model from this config. */
export function transformersLayerRopes(cfg: Json): (RefLayerRope | null)[] {
  const type = String(cfg.model_type);
  const layers = num(cfg.num_hidden_layers ?? cfg.n_layer, 'num_hidden_layers');
  if (type === 'gpt2') return Array.from({ length: layers }, () => null);
  const hidden = num(cfg.hidden_size, 'hidden_size');
  const heads = num(cfg.num_attention_heads, 'num_attention_heads');
  const headDim = type === 'phi3' ? hidden / heads : (cfg.head_dim as number | undefined) || hidden / heads;
  const layout = cfg.rope_interleaved === true ? 'interleaved' : 'half';

  let layerTypes = cfg.layer_types as string[] | undefined;
  if (!layerTypes && type === 'gemma3_text') {
    const pattern = num(cfg.sliding_window_pattern, 'sliding_window_pattern');
    layerTypes = Array.from({ length: layers }, (_, i) => ((i + 1) % pattern ? 'sliding_attention' : 'full_attention'));
  }
  const rp = cfg.rope_parameters as Json | undefined;
  const nested = rp && layerTypes && layerTypes.some((t) => t in rp);
  const paramsOf = (l: number): Json => {
    if (nested) return rp![layerTypes![l]] as Json;
    if (rp) return rp;
    // 4.x: rope_theta / rope_scaling at top level (standardize_rope_params' backward-compatible
    // path; "type" is the old name of "rope_type").
    const scaling = (cfg.rope_scaling as Json | null) ?? {};
    const ropeType = scaling.rope_type ?? scaling.type ?? 'default';
    if (type === 'gpt_neox')
      return { rope_theta: cfg.rotary_emb_base ?? 10000, partial_rotary_factor: cfg.rotary_pct ?? 0.25, ...scaling, rope_type: ropeType };
    if (type === 'gemma3_text' && layerTypes![l] === 'sliding_attention')
      return { rope_type: 'default', rope_theta: cfg.rope_local_base_freq };
    return { rope_theta: cfg.rope_theta, ...scaling, rope_type: ropeType };
  };
  const noRope =
    type === 'smollm3'
      ? ((cfg.no_rope_layers as number[] | undefined) ??
        Array.from({ length: layers }, (_, i) => Number((i + 1) % ((cfg.no_rope_layer_interval as number) ?? 4) !== 0)))
      : undefined;
  return Array.from({ length: layers }, (_, l) => {
    if (noRope && !noRope[l]) return null;
    const p = paramsOf(l);
    const prf = (p.partial_rotary_factor as number | undefined) ?? (cfg.partial_rotary_factor as number | undefined) ?? 1;
    return computeRope(p, cfg, Math.floor(headDim * prf), layout);
  });
}

/**
 * The pre-RoPE keys: keys Float32Array // [kvHeads, tokens, headDim] as the model cached them,
 * token t at position start + t, produced by forward passes whose max(position_ids) + 1 was
 * `seqLen(t)` (longrope's switch; default start + tokens, one pass). Undoes
 * `k * cos + rotate_half(k) * sin` (both times attention_scaling): rotation by −angle, then
 * divided by the attention factor. Float64Array // [kvHeads, tokens, headDim].
 */
export function referenceUnrotate(
  keys: Float32Array,
  kvHeads: number,
  tokens: number,
  headDim: number,
  rope: RefLayerRope | null,
  start = 0,
  seqLen: (t: number) => number = () => start + tokens,
): Float64Array {
  const out = Float64Array.from(keys);
  if (!rope) return out;
  const R = rope.rotaryDim;
  const half = R / 2;
  for (let t = 0; t < tokens; t++) {
    const pos = start + t;
    const inv = rope.long && seqLen(t) > rope.long.above ? rope.long.invFreq : rope.invFreq;
    for (let h = 0; h < kvHeads; h++) {
      const o = (h * tokens + t) * headDim;
      for (let i = 0; i < half; i++) {
        const [ia, ib] = rope.layout === 'half' ? [o + i, o + i + half] : [o + 2 * i, o + 2 * i + 1];
        const c = Math.cos(pos * inv[i]);
        const s = Math.sin(pos * inv[i]);
        const a = keys[ia];
        const b = keys[ib];
        // k_rot = (a c - b s, b c + a s) * af  ⇒  (a, b) = (k0 c + k1 s, k1 c - k0 s) / af
        out[ia] = (a * c + b * s) / rope.attentionFactor;
        out[ib] = (b * c - a * s) / rope.attentionFactor;
      }
    }
  }
  return out;
}

/** sqrt(Σ(a − b)² / Σ b²). */
export function relativeError(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let n = 0;
  let d = 0;
  for (let i = 0; i < b.length; i++) {
    n += (a[i] - b[i]) ** 2;
    d += b[i] ** 2;
  }
  return Math.sqrt(n / d);
}
