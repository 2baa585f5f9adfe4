// Tested by test/rope/data-check.test.ts.
/**
 * Checks the RoPE kvtc derived from a model's config against the keys the model cached.
 *
 * Before RoPE, a first-layer key is a function of the token alone (k_norm(k_proj(norm(embed)))
 * in every pre-norm RoPE decoder), so the same token id at two positions gives the same key
 * once RoPE is undone correctly, to the cache dtype's rounding. In deeper layers the context
 * adds to it, but the token still dominates the residual stream, so a correct un-rotation keeps
 * the same token's keys closer than a wrong one does. The check scores each layer's
 * un-rotation by how far apart the un-rotated keys of the same token are (0: identical, ~1:
 * unrelated), scores a few plausible misreadings the same way (theta ×/÷ 10 and 100, the other
 * layout, another rotary dim, no RoPE / RoPE on a layer read as NoPE, scaling ignored, another
 * layer's RoPE), and stops with ROPE_MISMATCH when the data fits a misreading clearly better
 * than the config, or when layer 0's keys do not agree at all. No model run, and the work does
 * not grow with the cache: MAX_PAIRS token pairs on layer 0, ~DEEP_WORK (pair, head) samples on
 * each deeper layer, ~15 readings each; 0.6 s for 32 layers × 8 KV heads × head_dim 128 on a
 * busy 2-core machine, milliseconds on the test fixtures.
 *
 * It works on a small per-layer description (CheckRope), so any reading of a config can be
 * checked; checkModelRope is the call for kvtc's own reading (ModelRope, src/rope/types.ts), as
 * capture and calibrate make it.
 */
import { KvtcError } from '../errors.js';
import type { KvCache } from '../model/types.js';
import { ropeInvFreq } from './freqs.js';
import type { LayerRope, ModelRope } from './types.js';

/** One layer's RoPE as kvtc will undo it. */
export interface CheckRope {
  /** Inverse frequency of each rotated pair, length rotaryDim/2: pair i turns by position * invFreq[i]. */
  invFreq: ArrayLike<number>;
  rotaryDim: number;
  layout: 'half' | 'interleaved';
  /** Factor on cos/sin (yarn, longrope); it scales keys uniformly, which this check cannot see. */
  attentionFactor?: number;
  /** RoPE base before scaling, when known: lets the check try other rotary dims and "scaling ignored". */
  theta?: number;
  /** Name of the scaling rule applied to invFreq (e.g. 'llama3', 'yarn'), when there is one. */
  scaling?: string;
  /** longrope: invFreq of the long factors, used for tokens whose forward pass had max(position_ids) + 1 > above. */
  long?: { invFreq: ArrayLike<number>; above: number };
}

export interface RopeCheckInput {
  /** keys[l]: Float32Array // [kvHeads, tokens, headDim], RoPE applied as the model cached them. */
  keys: Float32Array[];
  kvHeads: number;
  headDim: number;
  tokens: number;
  /** Absolute position of token 0. */
  startPosition: number;
  /** Token id of each cached token (ids[t] for keys[.][., t, .]). */
  ids: ArrayLike<number>;
  /** RoPE of each layer as kvtc reads the config; null: the layer has none (NoPE). */
  layers: (CheckRope | null)[];
  /** Learned absolute positions (GPT-2): first-layer keys depend on the position; only relative tests run. */
  absolutePositions?: boolean;
  /** longrope: max(position_ids) + 1 of the forward pass that produced token t (default: startPosition + tokens). */
  seqLen?: (t: number) => number;
}

export interface LayerScore {
  layer: number;
  /** Mean squared distance of the same token's un-rotated keys, relative to their squared norms (0..~2). */
  score: number;
  /** The misreading that fits best, and its score. */
  best?: { what: string; score: number };
}

export interface RopeCheckReport {
  checked: boolean;
  /** Why the check did not run (too few repeated tokens). */
  reason?: string;
  pairs: number;
  layers: LayerScore[];
}

/** Token pairs sampled for layer 0 (the exact test). */
export const MAX_PAIRS = 256;
/** Deeper layers (the relative test): at most DEEP_HEADS heads and DEEP_WORK (pair, head) samples. */
const DEEP_WORK = 384;
const DEEP_HEADS = 4;
/** Fewer same-token pairs than this: too little evidence, the check reports checked: false. */
export const MIN_PAIRS = 8;
/** Layer 0 must agree to this score (fp16 rounding gives ~1e-7; a wrong reading ~0.1-1). */
const EXACT = 1e-3;
/**
 * Deeper layers: a misreading wins when it scores below RATIO × the config's score, and by at
 * least MARGIN. On the family fixtures a correct reading scores 0.2-0.35 there, a wrong one
 * 0.45-0.55 while the right alternative is back at 0.25-0.4; no alternative comes within 10% of
 * beating a correct reading.
 */
const RATIO = 0.8;
const MARGIN = 0.05;

interface Alternative {
  what: string;
  setting: string;
  fix: string;
  rope: CheckRope | null;
}

function describe(r: CheckRope | null): string {
  if (!r) return 'no RoPE';
  const theta = r.theta !== undefined ? `theta ${r.theta}` : `inv_freq[1] ${Number(r.invFreq[1] ?? r.invFreq[0]).toPrecision(4)}`;
  return `RoPE ${theta}, rotary dim ${r.rotaryDim}, ${r.layout} layout${r.scaling ? `, ${r.scaling} scaling` : ''}${r.long ? ', longrope' : ''}`;
}

/** Same-token pairs (t1 < t2), consecutive occurrences first, spread over the cache, at most MAX_PAIRS. */
function sameTokenPairs(ids: ArrayLike<number>, tokens: number, startPosition: number): [number, number][] {
  const seen = new Map<number, number[]>();
  for (let t = 0; t < tokens; t++) {
    if (startPosition + t === 0) continue; // position 0 is often an attention sink in deeper layers
    const id = ids[t];
    const list = seen.get(id);
    if (list) list.push(t);
    else seen.set(id, [t]);
  }
  const pairs: [number, number][] = [];
  for (const list of seen.values()) {
    for (let i = 1; i < list.length; i++) pairs.push([list[i - 1], list[i]]);
    if (list.length > 2) pairs.push([list[0], list[list.length - 1]]); // a long gap tests the low frequencies
  }
  if (pairs.length <= MAX_PAIRS) return pairs;
  const step = pairs.length / MAX_PAIRS;
  return Array.from({ length: MAX_PAIRS }, (_, i) => pairs[Math.floor(i * step)]);
}

/** Tokens the pairs use, and each pair as indices into that list. */
interface PairSet {
  tokens: number[];
  pairs: [number, number][]; // token indices (t1, t2)
  slots: [number, number][]; // the same as indices into `tokens`
}

function pairSet(pairs: [number, number][]): PairSet {
  const index = new Map<number, number>();
  const tokens: number[] = [];
  const slot = (t: number) => {
    let i = index.get(t);
    if (i === undefined) {
      i = tokens.length;
      index.set(t, i);
      tokens.push(t);
    }
    return i;
  };
  return { tokens, pairs, slots: pairs.map(([p, q]) => [slot(p), slot(q)]) };
}

/**
 * Score of one layer's keys under one reading: Σ |U_p − U_q|² / Σ (|U_p|² + |U_q|²) over the
 * same-token pairs, heads and dims, U = the key with RoPE undone (pair (x, y) at angle a →
 * (x cos a + y sin a, y cos a − x sin a); dims past rotaryDim as they are). perPair, when
 * given, receives the same ratio for each rotated pair i.
 */
function score(
  keys: Float32Array,
  inp: RopeCheckInput,
  rope: CheckRope | null,
  ps: PairSet,
  kvHeads: number,
  perPair?: Float64Array,
): number {
  const { headDim: D, tokens, startPosition } = inp;
  const R = rope ? rope.rotaryDim : 0;
  const half = R / 2;
  // cos/sin of every token the pairs use: [slot, pair]
  const cos = new Float64Array(ps.tokens.length * half);
  const sin = new Float64Array(ps.tokens.length * half);
  if (rope) {
    const seqLen = inp.seqLen ?? (() => startPosition + tokens);
    ps.tokens.forEach((t, j) => {
      const inv = rope.long && seqLen(t) > rope.long.above ? rope.long.invFreq : rope.invFreq;
      for (let i = 0; i < half; i++) {
        const a = (startPosition + t) * inv[i];
        cos[j * half + i] = Math.cos(a);
        sin[j * half + i] = Math.sin(a);
      }
    });
  }
  const interleaved = rope?.layout === 'interleaved';
  let num = 0;
  let den = 0;
  const perNum = perPair ? new Float64Array(half) : undefined;
  const perDen = perPair ? new Float64Array(half) : undefined;
  for (let k = 0; k < ps.pairs.length; k++) {
    const [p, q] = ps.pairs[k];
    const tp = ps.slots[k][0] * half;
    const tq = ps.slots[k][1] * half;
    for (let h = 0; h < kvHeads; h++) {
      const op = (h * tokens + p) * D;
      const oq = (h * tokens + q) * D;
      for (let i = 0; i < half; i++) {
        const a = interleaved ? 2 * i : i;
        const b = interleaved ? 2 * i + 1 : i + half;
        const cp = cos[tp + i],
          sp = sin[tp + i],
          cq = cos[tq + i],
          sq = sin[tq + i];
        const xp = keys[op + a],
          yp = keys[op + b],
          xq = keys[oq + a],
          yq = keys[oq + b];
        const d0 = xp * cp + yp * sp - (xq * cq + yq * sq);
        const d1 = yp * cp - xp * sp - (yq * cq - xq * sq);
        const n = d0 * d0 + d1 * d1;
        const d = xp * xp + yp * yp + xq * xq + yq * yq;
        num += n;
        den += d;
        if (perNum) {
          perNum[i] += n;
          perDen![i] += d;
        }
      }
      for (let d = R; d < D; d++) {
        num += (keys[op + d] - keys[oq + d]) ** 2;
        den += keys[op + d] ** 2 + keys[oq + d] ** 2;
      }
    }
  }
  if (perPair) for (let i = 0; i < half; i++) perPair[i] = perDen![i] > 0 ? perNum![i] / perDen![i] : 0;
  return den > 0 ? num / den : 0;
}

const plainInvFreq = (theta: number, dim: number) => Float64Array.from({ length: dim / 2 }, (_, i) => 1 / theta ** ((2 * i) / dim));
/** RoPE base implied by pairs 0 and 1 (inv_1 / inv_0 = theta^(-2/R) for plain, linear, llama3 and yarn's high frequencies). */
const impliedTheta = (r: CheckRope) => (r.invFreq.length > 1 ? (Number(r.invFreq[1]) / Number(r.invFreq[0])) ** (-r.rotaryDim / 2) : 10000);
const ropeKey = (r: CheckRope | null) => (r ? JSON.stringify([Array.from(r.invFreq), r.rotaryDim, r.layout]) : 'none');

function alternatives(layers: (CheckRope | null)[], l: number, headDim: number): Alternative[] {
  const r = layers[l];
  const out: Alternative[] = [];
  const perLayer =
    'Check the per-layer RoPE kvtc read (kvtc inspect --model DIR): layer_types / sliding_window_pattern, rope_local_base_freq, rope_parameters per layer type.';
  const others = new Map<string, { layer: number; rope: CheckRope | null }>();
  layers.forEach((o, k) => {
    if (k !== l && ropeKey(o) !== ropeKey(r) && !others.has(ropeKey(o))) others.set(ropeKey(o), { layer: k, rope: o });
  });
  if (!r) {
    const rotated = [...others.values()].filter((o) => o.rope);
    for (const o of rotated) {
      out.push({
        what: `the RoPE of layer ${o.layer} (${describe(o.rope)})`,
        setting: `layer ${l} is read as having no RoPE (NoPE), but its keys are rotated`,
        fix: 'Check no_rope_layers / no_rope_layer_interval (SmolLM3: 1 marks a layer WITH RoPE) and the model type kvtc detected.',
        rope: o.rope,
      });
    }
    if (rotated.length === 0) {
      out.push({
        what: `RoPE theta 10000 on every dim (${describe({ invFreq: plainInvFreq(10000, headDim), rotaryDim: headDim, layout: 'half' })})`,
        setting: `layer ${l} is read as having no RoPE, but its keys are rotated`,
        fix: 'The config says the model has no rotary embedding, but the graph applies one; check architectures/model_type in config.json.',
        rope: { invFreq: plainInvFreq(10000, headDim), rotaryDim: headDim, layout: 'half', theta: 10000 },
      });
    }
    return out;
  }
  const theta = r.theta ?? impliedTheta(r);
  const R = r.rotaryDim;
  out.push({
    what: 'no RoPE on this layer',
    setting: `layer ${l} is read as rotated (${describe(r)}), but its keys carry no RoPE (a NoPE layer)`,
    fix: 'Check no_rope_layers / no_rope_layer_interval (SmolLM3: 0 marks a NoPE layer) or the layer types.',
    rope: null,
  });
  for (const c of [10, 0.1, 100, 0.01]) {
    const scale = (inv: ArrayLike<number>) => Float64Array.from(inv, (v, i) => v * c ** (-(2 * i) / R));
    out.push({
      what: `theta ${(theta * c).toPrecision(4)} (${c >= 1 ? '×' : '÷'}${c >= 1 ? c : 1 / c})`,
      setting: `rope_theta: the keys fit theta ≈ ${(theta * c).toPrecision(4)}, not ${theta.toPrecision(4)}`,
      fix: 'Fix rope_theta (or rope_parameters.rope_theta / rope_local_base_freq) in config.json to the value the model was exported with.',
      rope: {
        ...r,
        invFreq: scale(r.invFreq),
        theta: theta * c,
        ...(r.long ? { long: { ...r.long, invFreq: scale(r.long.invFreq) } } : {}),
      },
    });
  }
  const other = r.layout === 'half' ? 'interleaved' : 'half';
  out.push({
    what: `the ${other} layout`,
    setting: `RoPE layout: the keys are rotated in ${other === 'half' ? 'half-split pairs (i, i + d/2), Hugging Face rotate_half' : 'interleaved pairs (2i, 2i + 1), GPT-J / llama2.c'}, not ${r.layout}`,
    fix:
      other === 'half'
        ? 'Remove "rope_interleaved": true / set "rope_layout": "half" in config.json.'
        : 'Set "rope_layout": "interleaved" in config.json (the q/k rows were not permuted to rotate_half).',
    rope: { ...r, layout: other },
  });
  const dims = R < headDim ? [headDim] : [headDim / 2, headDim / 4];
  for (const d of dims) {
    if (d % 2 !== 0 || d === R || d <= 0) continue;
    out.push({
      what: `rotary dim ${d}`,
      setting: `rotary dim: the keys rotate ${d} of ${headDim} dims, not ${R}`,
      fix: 'Fix partial_rotary_factor (rotary_pct for GPT-NeoX; rope_parameters.partial_rotary_factor in transformers 5) in config.json.',
      rope: { invFreq: plainInvFreq(theta, d), rotaryDim: d, layout: r.layout, theta },
    });
  }
  if (!r.scaling && !r.long) {
    for (const f of [2, 4, 8, 16, 32]) {
      out.push({
        what: `linear scaling factor ${f}`,
        setting: `RoPE scaling: the keys fit linear scaling (factor ${f}), which the config reading lacks`,
        fix: "Add the model's rope_scaling (transformers 5: rope_parameters, per layer type where it has several) to config.json.",
        rope: { ...r, invFreq: Float64Array.from(r.invFreq, (v) => v / f), scaling: `linear ×${f}` },
      });
    }
  }
  if (r.scaling || r.long) {
    out.push({
      what: 'RoPE without scaling',
      setting: `RoPE scaling: the keys fit unscaled frequencies, not ${r.scaling ?? 'longrope'} scaling`,
      fix: 'Remove rope_scaling (rope_parameters.rope_type) from config.json, or re-export the model with the scaling the config names.',
      rope: { invFreq: plainInvFreq(theta, R), rotaryDim: R, layout: r.layout, theta },
    });
  }
  for (const o of others.values()) {
    out.push({
      what: `the RoPE of layer ${o.layer} (${describe(o.rope)})`,
      setting: `per-layer RoPE: layer ${l}'s keys fit the RoPE of layer ${o.layer}, not ${describe(r)}`,
      fix: perLayer,
      rope: o.rope,
    });
  }
  return out;
}

/**
 * First pair (highest frequency) that disagrees, when the pairs before it agree: pair 0 turns by
 * the position itself whatever theta is, and scaling rules leave the high frequencies alone, so
 * a mismatch that starts further down points at scaling (or theta), not at layout or rotary dim.
 * -1 when pair 0 already disagrees.
 */
function firstDisagreeing(perPair: Float64Array): number {
  const first = Array.from(perPair, (s) => s > 0.01).indexOf(true);
  return first === 0 ? -1 : first;
}

/**
 * Scores kvtc's un-rotation on the captured keys and throws ROPE_MISMATCH naming the suspect
 * setting when the data contradicts it; returns the scores otherwise.
 */
export function checkRopeFromData(inp: RopeCheckInput): RopeCheckReport {
  const { keys, layers } = inp;
  const bug = (what: string) =>
    new KvtcError('INTERNAL', `checkRopeFromData: ${what}`, { fix: 'This is a kvtc bug: please report it with the command you ran.' });
  if (layers.length !== keys.length) throw bug(`${layers.length} layer RoPEs for ${keys.length} cached layers`);
  if (inp.ids.length !== inp.tokens) throw bug(`${inp.ids.length} token ids for ${inp.tokens} cached tokens`);
  keys.forEach((k, l) => {
    if (k.length !== inp.kvHeads * inp.tokens * inp.headDim)
      throw bug(`layer ${l} keys have ${k.length} values, not kvHeads*tokens*headDim = ${inp.kvHeads * inp.tokens * inp.headDim}`);
  });
  const pairs = sameTokenPairs(inp.ids, inp.tokens, inp.startPosition);
  const ps = pairSet(pairs);
  const deepHeads = Math.min(DEEP_HEADS, inp.kvHeads);
  const deepPairs = Math.min(pairs.length, Math.ceil(DEEP_WORK / deepHeads));
  const step = pairs.length / deepPairs;
  const deep = pairSet(Array.from({ length: deepPairs }, (_, i) => pairs[Math.floor(i * step)]));
  if (pairs.length < MIN_PAIRS) {
    return {
      checked: false,
      reason: `only ${pairs.length} pairs of repeated tokens (need ${MIN_PAIRS}); give a longer text`,
      pairs: pairs.length,
      layers: [],
    };
  }
  const report: RopeCheckReport = { checked: true, pairs: pairs.length, layers: [] };
  for (let l = 0; l < layers.length; l++) {
    const exact = l === 0 && !inp.absolutePositions;
    const [set, heads] = exact ? [ps, inp.kvHeads] : [deep, deepHeads];
    const perPair = layers[l] ? new Float64Array(layers[l]!.rotaryDim / 2) : undefined;
    const s0 = score(keys[l], inp, layers[l], set, heads, perPair);
    if (exact && s0 <= EXACT) {
      report.layers.push({ layer: l, score: s0 });
      continue;
    }
    let best: (Alternative & { score: number }) | undefined;
    for (const a of alternatives(layers, l, inp.headDim)) {
      const s = score(keys[l], inp, a.rope, set, heads);
      if (!best || s < best.score) best = { ...a, score: s };
    }
    report.layers.push({ layer: l, score: s0, ...(best ? { best: { what: best.what, score: best.score } } : {}) });
    const context = {
      layer: l,
      config: describe(layers[l]),
      score: s0,
      pairs: set.pairs.length,
      ...(best ? { bestFit: best.what, bestScore: best.score } : {}),
    };
    // Layer 0 is exact: a misreading is named only when it explains the keys exactly.
    if (best && (exact ? best.score <= EXACT : best.score < RATIO * s0 && s0 - best.score > MARGIN)) {
      throw new KvtcError(
        'ROPE_MISMATCH',
        `RoPE check failed on layer ${l}: ${best.setting}. The same token's keys at different positions, with RoPE undone as kvtc read the config (${describe(layers[l])}), differ by ${s0.toFixed(3)} (0 = identical, 1 = unrelated); with ${best.what} they differ by ${best.score.toFixed(3)}.`,
        {
          fix: `${best.fix} kvtc must undo RoPE exactly, or the compression silently degrades.`,
          context,
        },
      );
    }
    if (exact) {
      const first = perPair ? firstDisagreeing(perPair) : -1;
      const suspect =
        first > 0
          ? `RoPE scaling: the high-frequency pairs agree but the low-frequency ones do not (pairs ${first} and beyond of ${perPair!.length}; rope_scaling / rope_parameters: rope_type, factor, original_max_position_embeddings, or a rope_theta other than ×/÷ 10 and 100)`
          : 'theta, layout, rotary dim, scaling or the per-layer RoPE';
      const closest = best ? ` The closest reading tried, ${best.what}, leaves ${best.score.toFixed(3)}.` : '';
      throw new KvtcError(
        'ROPE_MISMATCH',
        `RoPE check failed on layer 0: the same token's first-layer keys at different positions should be identical once RoPE is undone, but differ by ${s0.toFixed(3)} (0 = identical, 1 = unrelated) with kvtc's reading of the config (${describe(layers[0])}); suspect ${suspect}.${closest}`,
        {
          fix: "Compare `kvtc inspect --model DIR` with the model's config.json and its transformers modeling file, and fix the RoPE settings in config.json; `kvtc capture --pre-rope` writes the keys as kvtc un-rotates them.",
          context,
        },
      );
    }
  }
  return report;
}

/** The check on a captured KvCache (cache.keys in its native layout). */
export function checkCacheRope(
  cache: KvCache,
  ids: ArrayLike<number>,
  layers: (CheckRope | null)[],
  opts: Pick<RopeCheckInput, 'absolutePositions' | 'seqLen'> = {},
): RopeCheckReport {
  return checkRopeFromData({
    keys: cache.keys,
    kvHeads: cache.kvHeads,
    headDim: cache.headDim,
    tokens: cache.tokens,
    startPosition: cache.startPosition,
    ids,
    layers,
    ...opts,
  });
}

/** kvtc's reading of one layer as the check's description; seqLen: startPosition + tokens of the cache (longrope). */
export function checkRopeOf(r: LayerRope, seqLen: number): CheckRope | null {
  if (!r) return null;
  return {
    invFreq: ropeInvFreq(r, seqLen),
    rotaryDim: r.rotaryDim,
    layout: r.layout,
    attentionFactor: r.attentionFactor ?? 1,
    theta: r.theta,
    ...(r.scaling ? { scaling: r.scaling.type } : {}),
  };
}

/**
 * The check of kvtc's RoPE reading `rope` against a captured cache and its token ids: throws
 * ROPE_MISMATCH when the keys contradict it. A model without RoPE on any layer is taken to
 * have learned absolute positions (GPT-2), so its first-layer keys are not required to agree.
 */
export function checkModelRope(cache: KvCache, ids: ArrayLike<number>, rope: ModelRope): RopeCheckReport {
  const seqLen = cache.startPosition + cache.tokens;
  return checkCacheRope(
    cache,
    ids,
    rope.map((r) => checkRopeOf(r, seqLen)),
    { absolutePositions: rope.every((r) => r === null) },
  );
}
