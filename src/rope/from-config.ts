// Tested by test/rope/from-config.test.ts and test/model/config.test.ts.
/**
 * Each layer's RoPE from a Hugging Face config.json, as transformers reads it, in both forms:
 *   4.x  `rope_theta`, `rope_scaling` (and family keys: `partial_rotary_factor`, Gemma 3's
 *        `rope_local_base_freq`, GPT-NeoX's `rotary_pct` / `rotary_emb_base`);
 *   5.x  `rope_parameters`: one dict, or one dict per layer type (Gemma 3:
 *        {full_attention: {...}, sliding_attention: {...}}), picked per layer by `layer_types`
 *        (modeling_rope_utils.py `standardize_rope_params`; each family's
 *        configuration_<family>.py `convert_rope_params_to_dict` maps the 4.x keys onto it).
 * Each dict gives one layer's frequencies (freqs.ts) and attention factor, as
 * ROPE_INIT_FUNCTIONS[rope_type] computes them. Layers without RoPE come from SmolLM3's
 * `no_rope_layers`, and GPT-2 (learned absolute positions) has RoPE on no layer.
 *
 * kvtc must undo RoPE exactly, so what it cannot recompute is refused, saying why: dynamic NTK
 * (theta rescaled by each forward pass's length), rope types it does not know.
 */
import { fileError, KvtcError } from '../errors.js';
import type { Family } from '../model/types.js';
import { type LayerRope, type RopeLayout, type RopeScaling, type RopeSpec } from './types.js';

type Json = Record<string, unknown>;

export interface RopeConfigContext {
  family: Family;
  layers: number;
  headDim: number;
  /** config.max_position_embeddings (yarn's and longrope's defaults derive from it). */
  maxPositions: number;
  file: string;
  /** Facts worth telling the user (defaults taken, conventions chosen) are appended here. */
  notes: string[];
}

function invalid(file: string, message: string, fix = 'Fix the config file (or re-export the model).'): KvtcError {
  return fileError('MODEL_INVALID', file, message, fix);
}

function refuse(file: string, message: string, fix: string, context: Record<string, unknown> = {}): KvtcError {
  return new KvtcError('UNSUPPORTED_ARCHITECTURE', `${file}: ${message}`, { fix, context: { file, ...context } });
}

const isObj = (v: unknown): v is Json => typeof v === 'object' && v !== null && !Array.isArray(v);

function positive(p: Json, key: string, file: string, where: string): number {
  const v = p[key];
  if (typeof v !== 'number' || !Number.isFinite(v) || v <= 0)
    throw invalid(file, `${where}.${key} must be a positive number, got ${JSON.stringify(v)}`);
  return v;
}

function optionalPositive(p: Json, key: string, file: string, where: string): number | undefined {
  return p[key] === undefined || p[key] === null ? undefined : positive(p, key, file, where);
}

/**
 * RoPE layout: Hugging Face models use rotate_half ('half'); a converter that keeps llama2.c's
 * interleaved pairs records it as `"rope_interleaved": true` (or `"rope_layout"`).
 */
export function ropeLayout(cfg: Json, file: string): RopeLayout {
  if (cfg.rope_layout === 'half' || cfg.rope_layout === 'interleaved') return cfg.rope_layout;
  if (cfg.rope_layout !== undefined)
    throw invalid(file, `"rope_layout" must be "half" or "interleaved", got ${JSON.stringify(cfg.rope_layout)}`);
  return cfg.rope_interleaved === true ? 'interleaved' : 'half';
}

/** yarn's `get_mscale` (modeling_rope_utils.py `_compute_yarn_parameters`). */
function getMscale(scale: number, mscale = 1): number {
  return scale <= 1 ? 1 : 0.1 * mscale * Math.log(scale) + 1;
}

/** The rope types transformers has that kvtc recomputes exactly. */
const EXACT_TYPES = ['default', 'linear', 'llama3', 'yarn', 'longrope'];

/**
 * One layer's RoPE from its parameters dict (rope_type, rope_theta, partial_rotary_factor and the
 * scaling keys), as transformers' ROPE_INIT_FUNCTIONS compute it.
 */
export function layerRopeFromParams(p: Json, cfg: Json, ctx: RopeConfigContext, where: string): RopeSpec {
  const { file, headDim, maxPositions, notes } = ctx;
  let type = String(p.rope_type ?? p.type ?? 'default');
  if (type === 'su') {
    // configuration_phi3.py (4.x): the LongRoPE type was first called "su"
    notes.push(`${where}: rope type "su" is LongRoPE (transformers renamed it "longrope")`);
    type = 'longrope';
  }
  if (type === 'dynamic') {
    throw refuse(
      file,
      `${where}: rope type "dynamic" (dynamic NTK) is not supported: transformers' \`_compute_dynamic_ntk_parameters\` rescales theta by the length of each forward pass, so the rotation of a cached key depends on how long the pass that wrote it was, which a KV cache does not record; kvtc must undo RoPE exactly.`,
      'Use the model without dynamic rope scaling (rope_scaling null, or linear/llama3/yarn), or a checkpoint trained for its context length.',
      { ropeType: type },
    );
  }
  if (!EXACT_TYPES.includes(type)) {
    throw refuse(
      file,
      `${where}: rope type "${type}" is not supported; kvtc recomputes ${EXACT_TYPES.join(', ')} exactly and must undo RoPE exactly.`,
      'Use a model whose RoPE is one of those (see `kvtc inspect --model DIR` for what kvtc reads).',
      { ropeType: type },
    );
  }
  const theta = positive(p, 'rope_theta', file, where);
  const partial = p.partial_rotary_factor ?? 1;
  if (typeof partial !== 'number' || !(partial > 0 && partial <= 1))
    throw invalid(file, `${where}.partial_rotary_factor must be in (0, 1], got ${JSON.stringify(partial)}`);
  // _compute_default_rope_parameters: dim = int(head_dim * partial_rotary_factor)
  const rotaryDim = Math.floor(headDim * partial);
  if (!(rotaryDim > 0 && rotaryDim % 2 === 0)) {
    throw invalid(
      file,
      `${where}: partial_rotary_factor ${partial} gives rotary dim ${rotaryDim} for head_dim ${headDim}; it must be even and in (0, head_dim]`,
    );
  }
  const layout = ropeLayout(cfg, file);
  const base: RopeSpec = { theta, rotaryDim, layout };
  const half = rotaryDim / 2;
  switch (type) {
    case 'default':
      return base;
    case 'linear':
      return { ...base, scaling: { type: 'linear', factor: positive(p, 'factor', file, where) } };
    case 'llama3': {
      // _compute_llama3_parameters reads all four; kvtc ≤ 0.x took Llama 3.1's values when absent
      const s: RopeScaling = {
        type: 'llama3',
        factor: positive(p, 'factor', file, where),
        lowFreqFactor: optionalPositive(p, 'low_freq_factor', file, where) ?? 1,
        highFreqFactor: optionalPositive(p, 'high_freq_factor', file, where) ?? 4,
        originalMaxPositionEmbeddings: optionalPositive(p, 'original_max_position_embeddings', file, where) ?? 8192,
      };
      if (!(s.highFreqFactor > s.lowFreqFactor))
        throw invalid(
          file,
          `${where}: llama3 high_freq_factor ${s.highFreqFactor} must be greater than low_freq_factor ${s.lowFreqFactor}`,
        );
      return { ...base, scaling: s };
    }
    case 'yarn': {
      // _compute_yarn_parameters (transformers 5): original_max_position_embeddings from the dict
      // (the 4.x top-level key, or max_position_embeddings, where absent); factor from the dict,
      // or max / original where absent.
      const orig =
        optionalPositive(p, 'original_max_position_embeddings', file, where) ??
        optionalPositive(cfg, 'original_max_position_embeddings', file, 'config') ??
        maxPositions;
      const given = optionalPositive(p, 'factor', file, where);
      const factor = given ?? maxPositions / orig;
      if (given !== undefined && p.original_max_position_embeddings !== undefined && Math.abs(given - maxPositions / orig) > 1e-9 * given) {
        notes.push(
          `${where}: yarn factor ${given} is not max_position_embeddings / original_max_position_embeddings (${maxPositions} / ${orig}); kvtc uses the factor, as transformers 5 does (some 4.x releases used the ratio)`,
        );
      }
      const mscale = optionalPositive(p, 'mscale', file, where);
      const mscaleAll = optionalPositive(p, 'mscale_all_dim', file, where);
      const attentionFactor =
        optionalPositive(p, 'attention_factor', file, where) ??
        (mscale && mscaleAll ? getMscale(factor, mscale) / getMscale(factor, mscaleAll) : getMscale(factor));
      const truncate = p.truncate ?? true;
      if (typeof truncate !== 'boolean') throw invalid(file, `${where}.truncate must be true or false, got ${JSON.stringify(truncate)}`);
      return {
        ...base,
        scaling: {
          type: 'yarn',
          factor,
          originalMaxPositionEmbeddings: orig,
          betaFast: (p.beta_fast as number) || 32,
          betaSlow: (p.beta_slow as number) || 1,
          truncate,
        },
        ...(attentionFactor !== 1 ? { attentionFactor } : {}),
      };
    }
    case 'longrope': {
      const factors = (key: string) => {
        const v = p[key];
        if (!Array.isArray(v) || v.length !== half || !v.every((x) => typeof x === 'number' && Number.isFinite(x) && x > 0)) {
          throw invalid(
            file,
            `${where}.${key} must be ${half} positive numbers (one per rotated pair of rotary dim ${rotaryDim}), got ${Array.isArray(v) ? `${v.length} entries` : JSON.stringify(v)}`,
          );
        }
        return v as number[];
      };
      // _compute_longrope_parameters: with a top-level original_max_position_embeddings (Phi-3),
      // factor = max_position_embeddings / original (4.x), else rope_scaling.factor.
      const topOrig = optionalPositive(cfg, 'original_max_position_embeddings', file, 'config');
      const orig = optionalPositive(p, 'original_max_position_embeddings', file, where) ?? topOrig ?? maxPositions;
      const given = optionalPositive(p, 'factor', file, where);
      const factor = given ?? maxPositions / orig;
      const attentionFactor =
        optionalPositive(p, 'attention_factor', file, where) ?? (factor <= 1 ? 1 : Math.sqrt(1 + Math.log(factor) / Math.log(orig)));
      notes.push(
        `${where}: longrope — keys are un-rotated with the short factors when the cache (start position + tokens) is at most ${orig} positions long and with the long factors beyond, as one prefill of the whole cache rotates them; a cache grown past ${orig} by generation after a shorter prefill mixes both and cannot be undone exactly`,
      );
      return {
        ...base,
        scaling: {
          type: 'longrope',
          shortFactor: factors('short_factor'),
          longFactor: factors('long_factor'),
          originalMaxPositionEmbeddings: orig,
        },
        ...(attentionFactor !== 1 ? { attentionFactor } : {}),
      };
    }
  }
  throw refuse(file, `${where}: rope type "${type}" is not supported`, 'Use a model with default, linear, llama3, yarn or longrope RoPE.');
}

/** Gemma 3's layer types: `layer_types`, else sliding iff (i + 1) % sliding_window_pattern != 0 (configuration_gemma3.py). */
function layerTypes(cfg: Json, ctx: RopeConfigContext, defaultPattern?: number): string[] | undefined {
  const lt = cfg.layer_types;
  if (Array.isArray(lt)) {
    if (lt.length !== ctx.layers || !lt.every((t) => typeof t === 'string'))
      throw invalid(ctx.file, `"layer_types" must name the type of each of the ${ctx.layers} layers, got ${JSON.stringify(lt)}`);
    return lt as string[];
  }
  const pattern = cfg.sliding_window_pattern ?? defaultPattern;
  if (pattern === undefined) return undefined;
  if (typeof pattern !== 'number' || !Number.isInteger(pattern) || pattern <= 0)
    throw invalid(ctx.file, `"sliding_window_pattern" must be a positive integer, got ${JSON.stringify(pattern)}`);
  return Array.from({ length: ctx.layers }, (_, i) => ((i + 1) % pattern ? 'sliding_attention' : 'full_attention'));
}

/** The 4.x scaling dict (rope_scaling), with the theta it applies to. */
function params4x(cfg: Json, theta: unknown, extra: Json = {}): Json {
  const scaling = isObj(cfg.rope_scaling) ? cfg.rope_scaling : {};
  // the key was "type" before transformers 4.45 named it "rope_type"
  return { ...scaling, rope_type: scaling.rope_type ?? scaling.type ?? 'default', rope_theta: theta, ...extra };
}

/**
 * RoPE of each layer of a model from its config.json (`cfg` already known to be of `ctx.family`).
 * Returns one entry per layer (null: no RoPE).
 */
export function ropeFromConfig(cfg: Json, ctx: RopeConfigContext): LayerRope[] {
  const { file, layers, notes, family } = ctx;
  if (family === 'gpt2') {
    // modeling_gpt2.py: learned position embeddings (wpe) are added to the token embeddings; attention has no rotary
    notes.push('learned absolute position embeddings (GPT-2 wpe): keys carry no RoPE, nothing to undo on any layer');
    return Array.from({ length: layers }, () => null);
  }
  const rp = cfg.rope_parameters;
  const v5 = isObj(rp);
  let perLayer: Json[];
  if (family === 'gemma3_text') {
    const types = layerTypes(cfg, ctx, 6)!;
    let dicts: Record<string, Json>;
    if (v5 && isObj(rp.full_attention) && isObj(rp.sliding_attention)) {
      dicts = { full_attention: rp.full_attention, sliding_attention: rp.sliding_attention };
    } else {
      // 4.x (configuration_gemma3.py): rope_theta (default 1e6) with rope_scaling on global layers,
      // rope_local_base_freq (default 1e4) with default RoPE on sliding ones
      if (cfg.rope_theta === undefined) notes.push("rope_theta not set: using Gemma 3's default 1000000 on full-attention layers");
      if (cfg.rope_local_base_freq === undefined)
        notes.push("rope_local_base_freq not set: using Gemma 3's default 10000 on sliding layers");
      dicts = {
        full_attention: v5 ? { rope_type: 'default', rope_theta: 1e6, ...rp } : params4x(cfg, cfg.rope_theta ?? 1e6),
        sliding_attention: { rope_type: 'default', rope_theta: cfg.rope_local_base_freq ?? 1e4 },
      };
    }
    perLayer = types.map((t, i) => {
      const d = dicts[t];
      if (!d) throw invalid(file, `layer ${i} has layer type "${t}", which has no RoPE parameters (have ${Object.keys(dicts).join(', ')})`);
      return d;
    });
    return perLayer.map((p, i) => layerRopeFromParams(p, cfg, ctx, `layer ${i} (${types[i]}) rope`));
  }
  let one: Json;
  if (v5) {
    const types = Array.isArray(cfg.layer_types) ? layerTypes(cfg, ctx) : undefined;
    const typed = types && types.every((t) => isObj(rp[t]));
    if (typed) {
      // one dict per layer type (standardize_rope_params)
      perLayer = types!.map((t) => ({ ...(rp[t] as Json) }));
      const out = perLayer.map((p, i) => {
        if (p.rope_theta === undefined) throw invalid(file, `rope_parameters.${types![i]} has no rope_theta`);
        return layerRopeFromParams(p, cfg, ctx, `layer ${i} (${types![i]}) rope`);
      });
      return applyNoRope(out, cfg, ctx);
    }
    one = { ...rp };
    if (family === 'phi3' && one.partial_rotary_factor === undefined && cfg.partial_rotary_factor !== undefined)
      one.partial_rotary_factor = cfg.partial_rotary_factor;
    if (one.rope_theta === undefined) {
      one.rope_theta = cfg.rope_theta ?? 10000;
      if (cfg.rope_theta === undefined) notes.push('rope_theta not set: using 10000');
    }
  } else if (family === 'gpt_neox') {
    // configuration_gpt_neox.py (4.x): rotary_emb_base → rope_theta, rotary_pct (default 0.25) → partial_rotary_factor
    const theta = cfg.rope_theta ?? cfg.rotary_emb_base ?? 10000;
    if (cfg.rope_theta === undefined && cfg.rotary_emb_base === undefined) notes.push('rotary_emb_base not set: using 10000');
    const pct = cfg.partial_rotary_factor ?? cfg.rotary_pct ?? 0.25;
    if (cfg.partial_rotary_factor === undefined && cfg.rotary_pct === undefined)
      notes.push("rotary_pct not set: using GPT-NeoX's default 0.25");
    one = params4x(cfg, theta, { partial_rotary_factor: pct });
  } else {
    const theta = cfg.rope_theta ?? 10000;
    if (cfg.rope_theta === undefined) notes.push('rope_theta not set: using 10000');
    one = params4x(cfg, theta, cfg.partial_rotary_factor !== undefined ? { partial_rotary_factor: cfg.partial_rotary_factor } : {});
  }
  const r = layerRopeFromParams(one, cfg, ctx, v5 ? 'rope_parameters' : 'rope');
  return applyNoRope(
    Array.from({ length: layers }, () => r),
    cfg,
    ctx,
  );
}

/**
 * SmolLM3 (configuration_smollm3.py): `no_rope_layers[i]` is 1 for a layer WITH RoPE; absent, a
 * NoPE layer every `no_rope_layer_interval` (default 4) layers: (i + 1) % interval == 0.
 * modeling_smollm3.py applies RoPE only `if self.use_rope`.
 */
function applyNoRope(rope: LayerRope[], cfg: Json, ctx: RopeConfigContext): LayerRope[] {
  if (ctx.family !== 'smollm3') return rope;
  let use: number[];
  if (Array.isArray(cfg.no_rope_layers) && cfg.no_rope_layers.length) {
    const v = cfg.no_rope_layers;
    if (v.length !== ctx.layers || !v.every((x) => x === 0 || x === 1))
      throw invalid(ctx.file, `"no_rope_layers" must be 0 or 1 for each of the ${ctx.layers} layers, got ${JSON.stringify(v)}`);
    use = v as number[];
  } else {
    const interval = cfg.no_rope_layer_interval ?? 4;
    if (typeof interval !== 'number' || !Number.isInteger(interval) || interval <= 0)
      throw invalid(ctx.file, `"no_rope_layer_interval" must be a positive integer, got ${JSON.stringify(interval)}`);
    use = Array.from({ length: ctx.layers }, (_, i) => ((i + 1) % interval !== 0 ? 1 : 0));
  }
  const none = use.flatMap((u, i) => (u ? [] : [i]));
  if (none.length)
    ctx.notes.push(
      `${none.length > 1 ? 'layers' : 'layer'} ${none.join(', ')} ${none.length > 1 ? 'apply' : 'applies'} no RoPE (no_rope_layers): their keys are taken as they are`,
    );
  return rope.map((r, i) => (use[i] ? r : null));
}
