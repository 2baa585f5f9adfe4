// Tested by test/rope/model-rope.test.ts.
/**
 * RoPE as kvtc describes it, one description per layer. kvtc must undo RoPE on keys exactly
 * (a wrong theta, layout or scaling does not break the round trip, it silently destroys the
 * compression), so everything that rotates keys — capture --pre-rope, calibration's features,
 * the codec's host kernels and ONNX graphs, the converter, inspect — asks this folder.
 *
 * A layer either applies no RoPE (null: NoPE layers such as SmolLM3's, or models with learned
 * absolute positions such as GPT-2) or rotates the first `rotaryDim` dims of each head:
 * pair i turns by position · invFreq[i] (freqs.ts), with cos and sin multiplied by
 * `attentionFactor` (transformers' `attention_scaling`: yarn, longrope).
 */

export type RopeLayout = 'half' | 'interleaved';

/**
 * The frequency rule (transformers' ROPE_INIT_FUNCTIONS in modeling_rope_utils.py); absent on a
 * RopeSpec: the default rule 1 / theta^(2i/rotaryDim). Only rules that give a fixed set of
 * frequencies kvtc can recompute exactly are representable; dynamic NTK is refused (config.ts).
 */
export type RopeScaling =
  /** `_compute_linear_scaling_rope_parameters`: inv_freq / factor. */
  | { type: 'linear'; factor: number }
  /** `_compute_llama3_parameters`: long wavelengths / factor, short kept, smooth in between. */
  | { type: 'llama3'; factor: number; lowFreqFactor: number; highFreqFactor: number; originalMaxPositionEmbeddings: number }
  /**
   * `_compute_yarn_parameters`: interpolation (inv_freq / factor) and extrapolation (inv_freq)
   * blended by a linear ramp over the dims find_correction_range(beta_fast, beta_slow) gives,
   * floored/ceiled when `truncate`. The attention factor is on the RopeSpec.
   */
  | { type: 'yarn'; factor: number; originalMaxPositionEmbeddings: number; betaFast: number; betaSlow: number; truncate: boolean }
  /**
   * `_compute_longrope_parameters`: inv_freq = 1 / (ext · theta^(2i/d)) with ext = shortFactor
   * while the sequence is at most originalMaxPositionEmbeddings long, longFactor beyond
   * (`longrope_frequency_update`: seq_len = max(position_ids) + 1 of the forward pass). kvtc
   * takes the sequence length of a cache as one prefill of all of it would have it:
   * startPosition + tokens (freqs.ts longropeUsesLong).
   */
  | { type: 'longrope'; shortFactor: number[]; longFactor: number[]; originalMaxPositionEmbeddings: number };

/** RoPE of one layer that has it. */
export interface RopeSpec {
  theta: number;
  /** Number of leading dims of each head that are rotated (== headDim unless partial rotary). */
  rotaryDim: number;
  /**
   * 'half': Hugging Face rotate_half, pairs (i, i + rotaryDim/2).
   * 'interleaved': GPT-J / llama2.c, pairs (2i, 2i+1).
   */
  layout: RopeLayout;
  scaling?: RopeScaling;
  /** cos and sin are multiplied by this (transformers' attention_scaling); absent: 1. */
  attentionFactor?: number;
}

/** One layer's RoPE; null: the layer applies none (NoPE, learned absolute positions): nothing to undo. */
export type LayerRope = RopeSpec | null;

/** RoPE of every layer of a model, index = layer. */
export type ModelRope = readonly LayerRope[];

/** A canonical string of a layer's RoPE: equal strings, equal rotation (field order fixed, absent = default). */
export function ropeKey(r: LayerRope): string {
  if (!r) return 'none';
  const s = r.scaling;
  return JSON.stringify([r.theta, r.rotaryDim, r.layout, r.attentionFactor ?? 1, s ? scalingFields(s) : null]);
}

function scalingFields(s: RopeScaling): unknown[] {
  switch (s.type) {
    case 'linear':
      return ['linear', s.factor];
    case 'llama3':
      return ['llama3', s.factor, s.lowFreqFactor, s.highFreqFactor, s.originalMaxPositionEmbeddings];
    case 'yarn':
      return ['yarn', s.factor, s.originalMaxPositionEmbeddings, s.betaFast, s.betaSlow, s.truncate];
    case 'longrope':
      return ['longrope', s.shortFactor, s.longFactor, s.originalMaxPositionEmbeddings];
  }
}

export function sameRope(a: LayerRope, b: LayerRope): boolean {
  return a === b || ropeKey(a) === ropeKey(b);
}

/** Every layer with the same description: `n` copies of `r` (one object, shared). */
export function uniformModelRope(r: LayerRope, n: number): LayerRope[] {
  return Array.from({ length: n }, () => r);
}

/** The one description all layers share, or undefined when they differ (or there are none). */
export function uniformRope(rope: ModelRope): LayerRope | undefined {
  if (rope.length === 0) return undefined;
  const k = ropeKey(rope[0]);
  return rope.every((r) => ropeKey(r) === k) ? rope[0] : undefined;
}

/** Runs of consecutive layers sharing one description: [{ first, last, rope }] in layer order. */
export function ropeRuns(rope: ModelRope): { first: number; last: number; rope: LayerRope }[] {
  const out: { first: number; last: number; rope: LayerRope; key: string }[] = [];
  rope.forEach((r, l) => {
    const k = ropeKey(r);
    const last = out.at(-1);
    if (last && last.key === k && last.last === l - 1) last.last = l;
    else out.push({ first: l, last: l, rope: r, key: k });
  });
  return out.map(({ first, last, rope: r }) => ({ first, last, rope: r }));
}

/** "0-3, 5, 7-9": layer indices as compact ranges. */
export function layerRanges(layers: readonly number[]): string {
  const parts: string[] = [];
  for (let i = 0; i < layers.length;) {
    let j = i;
    while (j + 1 < layers.length && layers[j + 1] === layers[j] + 1) j++;
    parts.push(j > i ? `${layers[i]}-${layers[j]}` : String(layers[i]));
    i = j + 1;
  }
  return parts.join(', ');
}

/** Distinct descriptions with the layers that use each (layers in order), first use first. */
export function ropeGroups(rope: ModelRope): { layers: number[]; rope: LayerRope }[] {
  const by = new Map<string, { layers: number[]; rope: LayerRope }>();
  rope.forEach((r, l) => {
    const k = ropeKey(r);
    const g = by.get(k);
    if (g) g.layers.push(l);
    else by.set(k, { layers: [l], rope: r });
  });
  return [...by.values()];
}

/** Whether any layer of the model rotates its keys. */
export function hasRope(rope: ModelRope): boolean {
  return rope.some((r) => r !== null);
}
