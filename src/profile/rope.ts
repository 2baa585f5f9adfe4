// Tested by test/profile/rope-v2.test.ts, test/rope/model-rope.test.ts and test/profile/invalid-profiles.test.ts.
/**
 * The profile's RoPE (manifest `model.rope`) to and from each layer's RoPE (src/rope): what the
 * manifest records, what encode/decode un-rotate with, and how a profile's RoPE differs from a
 * model's, per field, for validate.
 */
import { KvtcError } from '../errors.js';
import { ropeInvFreq } from '../rope/freqs.js';
import { layerRopeJson } from '../rope/describe.js';
import {
  type LayerRope,
  layerRanges,
  type ModelRope,
  ropeGroups,
  ropeKey,
  type RopeScaling,
  type RopeSpec,
  uniformModelRope,
} from '../rope/types.js';
import type { Manifest } from './schema.js';

type ManifestRope = Manifest['model']['rope'];
type V1Rope = Extract<ManifestRope, { theta: number }>;
/** One group of format v2's `model.rope`. */
export type RopeGroup = Exclude<ManifestRope, V1Rope>[number];

/** A manifest's (or a KV dump's) snake_case scaling object as kvtc's RopeScaling. */
export function ropeScalingFromJson(s: Record<string, unknown>): RopeScaling {
  const n = (k: string) => s[k] as number;
  switch (s.type) {
    case 'linear':
      return { type: 'linear', factor: n('factor') };
    case 'llama3':
      // v1 manifests may omit the llama3 fields: kvtc has always taken transformers' defaults
      return {
        type: 'llama3',
        factor: n('factor'),
        lowFreqFactor: n('low_freq_factor') ?? 1,
        highFreqFactor: n('high_freq_factor') ?? 4,
        originalMaxPositionEmbeddings: n('original_max_position_embeddings') ?? 8192,
      };
    case 'yarn':
      return {
        type: 'yarn',
        factor: n('factor'),
        originalMaxPositionEmbeddings: n('original_max_position_embeddings'),
        betaFast: n('beta_fast'),
        betaSlow: n('beta_slow'),
        truncate: s.truncate === true,
      };
    case 'longrope':
      return {
        type: 'longrope',
        shortFactor: [...(s.short_factor as number[])],
        longFactor: [...(s.long_factor as number[])],
        originalMaxPositionEmbeddings: n('original_max_position_embeddings'),
      };
    default:
      throw new KvtcError('PROFILE_INVALID', `model.rope scaling type ${JSON.stringify(s.type)} is unknown`, {
        fix: 'Re-calibrate the model with kvtc.',
      });
  }
}

/** A group's RoPE (null: none). */
function groupRope(g: RopeGroup): LayerRope {
  if ('none' in g) return null;
  return {
    theta: g.theta,
    rotaryDim: g.rotary_dim,
    layout: g.layout,
    ...(g.scaling ? { scaling: ropeScalingFromJson(g.scaling) } : {}),
    ...(g.attention_factor !== undefined && g.attention_factor !== 1 ? { attentionFactor: g.attention_factor } : {}),
  };
}

/**
 * Each layer's RoPE as the manifest records it: v1 one description for every layer, v2 its
 * groups (checkRope has checked that they name every layer once; a layer left out is an error).
 */
export function ropeFromManifest(m: Pick<Manifest, 'model'>): LayerRope[] {
  const r = m.model.rope;
  if (!Array.isArray(r)) {
    const s = r.scaling;
    return uniformModelRope(
      { theta: r.theta, rotaryDim: r.rotary_dim, layout: r.layout, ...(s ? { scaling: ropeScalingFromJson(s) } : {}) },
      m.model.layers,
    );
  }
  const out: (LayerRope | undefined)[] = Array.from({ length: m.model.layers }, () => undefined);
  for (const g of r) {
    const rope = groupRope(g);
    for (const l of g.layers) if (l < out.length) out[l] = rope;
  }
  const missing = out.findIndex((x) => x === undefined);
  if (missing >= 0) {
    throw new KvtcError('PROFILE_INVALID', `model.rope names no RoPE (or none) for layer ${missing}`, {
      fix: 'Re-calibrate the model with kvtc: every layer needs its RoPE in the manifest.',
    });
  }
  return out as LayerRope[];
}

/** Format v2's `model.rope`: the layers of each distinct RoPE (attention_factor only when not 1). */
export function manifestRope(rope: ModelRope): RopeGroup[] {
  return ropeGroups(rope).map((g) => {
    if (!g.rope) return { layers: g.layers, none: true as const };
    const j = layerRopeJson(g.rope);
    return {
      layers: g.layers,
      theta: j.theta,
      rotary_dim: j.rotary_dim,
      layout: j.layout,
      ...(j.scaling ? { scaling: j.scaling as RopeGroup extends { scaling?: infer S } ? S : never } : {}),
      ...(j.attention_factor !== 1 ? { attention_factor: j.attention_factor } : {}),
    } as RopeGroup;
  });
}

/**
 * The profile id's canonical lines for `model.rope` (docs/profile-format.md §2.1). RoPE that
 * format v1 could say — one default, linear or llama3 RoPE on every layer — gives v1's lines
 * whichever form the manifest uses, so such a profile keeps its id (and its blobs their bytes);
 * other RoPE gives one block of lines per group.
 */
export function ropeIdLines(m: { model: Pick<Manifest['model'], 'rope'> }, f64Hex: (x: number) => string): string[] {
  const L: string[] = [];
  const r = m.model.rope;
  const v1 = !Array.isArray(r)
    ? r
    : r.length === 1 &&
        !('none' in r[0]) &&
        (r[0].attention_factor ?? 1) === 1 &&
        (!r[0].scaling || r[0].scaling.type === 'linear' || r[0].scaling.type === 'llama3')
      ? r[0]
      : undefined;
  if (v1) {
    L.push(`model.rope.theta ${f64Hex(v1.theta)}`, `model.rope.rotary_dim ${v1.rotary_dim}`, `model.rope.layout ${v1.layout}`);
    const s = v1.scaling as Record<string, number | string | undefined> | undefined;
    if (s) {
      L.push(`model.rope.scaling.type ${s.type}`, `model.rope.scaling.factor ${f64Hex(s.factor as number)}`);
      for (const k of ['low_freq_factor', 'high_freq_factor', 'original_max_position_embeddings'] as const) {
        if (s[k] !== undefined) L.push(`model.rope.scaling.${k} ${f64Hex(s[k] as number)}`);
      }
    }
    return L;
  }
  const groups = r as RopeGroup[];
  L.push(`model.rope.groups ${groups.length}`);
  groups.forEach((g, j) => {
    const p = `model.rope.${j}`;
    L.push(`${p}.layers ${g.layers.join(',')}`);
    if ('none' in g) {
      L.push(`${p}.none`);
      return;
    }
    L.push(
      `${p}.theta ${f64Hex(g.theta)}`,
      `${p}.rotary_dim ${g.rotary_dim}`,
      `${p}.layout ${g.layout}`,
      `${p}.attention_factor ${f64Hex(g.attention_factor ?? 1)}`,
    );
    const s = g.scaling;
    if (!s) return;
    L.push(`${p}.scaling.type ${s.type}`);
    for (const [k, v] of Object.entries(s)
      .filter(([k]) => k !== 'type')
      .sort(([a], [b]) => a.localeCompare(b))) {
      if (typeof v === 'boolean') L.push(`${p}.scaling.${k} ${v ? 1 : 0}`);
      else if (Array.isArray(v)) L.push(`${p}.scaling.${k} ${v.map((x) => f64Hex(x as number)).join(',')}`);
      else L.push(`${p}.scaling.${k} ${f64Hex(v as number)}`);
    }
  });
  return L;
}

const show = (v: unknown) => (v === undefined || v === null ? 'none' : JSON.stringify(v));

/** "field: profile X, model Y" for each field of one layer's RoPE that differs. */
function layerDifferences(p: LayerRope, m: LayerRope): string[] {
  if (!p || !m) return p || m ? [`rope: profile ${p ? 'RoPE' : 'none'}, model ${m ? 'RoPE' : 'none'}`] : [];
  const a = layerRopeJson(p);
  const b = layerRopeJson(m);
  const diffs: string[] = [];
  const cmp = (field: string, x: unknown, y: unknown) => {
    if (JSON.stringify(x) !== JSON.stringify(y)) diffs.push(`${field}: profile ${show(x)}, model ${show(y)}`);
  };
  cmp('theta', a.theta, b.theta);
  cmp('rotary_dim', a.rotary_dim, b.rotary_dim);
  cmp('layout', a.layout, b.layout);
  cmp('attention_factor', a.attention_factor, b.attention_factor);
  const ps = a.scaling;
  const ms = b.scaling;
  if (!ps || !ms) {
    if (ps || ms) diffs.push(`scaling: profile ${ps ? String(ps.type) : 'none'}, model ${ms ? String(ms.type) : 'none'}`);
    return diffs;
  }
  for (const k of [...new Set([...Object.keys(ps), ...Object.keys(ms)])]) cmp(`scaling.${k}`, ps[k], ms[k]);
  return diffs;
}

/**
 * The RoPE fields on which the profile and the model differ, as "field: profile X, model Y";
 * prefixed "layers 0-3: " when the layers do not all differ alike.
 */
export function ropeDifferences(profile: ModelRope, model: ModelRope): string[] {
  if (profile.length !== model.length) return [`layers: profile ${profile.length}, model ${model.length}`];
  const byText = new Map<string, number[]>();
  profile.forEach((p, l) => {
    if (ropeKey(p) === ropeKey(model[l])) return;
    const t = layerDifferences(p, model[l]).join('; ');
    byText.set(t, [...(byText.get(t) ?? []), l]);
  });
  if (byText.size === 1 && [...byText.values()][0].length === profile.length) return [...byText.keys()][0].split('; ');
  return [...byText.entries()].map(([t, layers]) => `layer${layers.length > 1 ? 's' : ''} ${layerRanges(layers)}: ${t}`);
}

/**
 * The reader's checks of `model.rope` (docs/profile-format.md §4): each description's fields,
 * every computed inverse frequency finite and > 0, and in v2 the groups naming every layer once.
 * Each failure goes to `fail`; returns the passing detail.
 */
export function checkManifestRope(m: Manifest, fail: (msg: string) => void, maxShape: number): string {
  const hd = m.model.head_dim;
  const L = m.model.layers;
  const r = m.model.rope;
  let ok = true;
  const bad = (msg: string) => {
    ok = false;
    fail(msg);
  };
  const v2 = Array.isArray(r);
  if (m.format_version === 1 && v2) bad('model.rope is a list of groups, which is format 2; a format 1 manifest has one RoPE object');
  if (m.format_version >= 2 && !v2)
    bad(`model.rope is one RoPE object (format 1); a format ${m.format_version} manifest lists the RoPE of each layer as groups`);
  /** Checks one description at `at` ("model.rope" or "model.rope[j]"); returns it as kvtc's RopeSpec when valid. */
  const one = (
    at: string,
    g: { theta: number; rotary_dim: number; layout: string; scaling?: Record<string, unknown>; attention_factor?: number },
  ): RopeSpec | undefined => {
    const before = ok;
    ok = true;
    if (!(Number.isFinite(g.theta) && g.theta > 0)) bad(`${at}.theta = ${g.theta} must be a finite number > 0`);
    if (g.rotary_dim % 2 !== 0) bad(`${at}.rotary_dim = ${g.rotary_dim} is odd; RoPE rotates pairs, so it must be even`);
    if (g.rotary_dim > hd) bad(`${at}.rotary_dim = ${g.rotary_dim} exceeds model.head_dim ${hd}`);
    if (g.attention_factor !== undefined && !(Number.isFinite(g.attention_factor) && g.attention_factor > 0))
      bad(`${at}.attention_factor = ${g.attention_factor} must be a finite number > 0`);
    const s = g.scaling as Record<string, number | boolean | number[] | string | undefined> | undefined;
    if (s) {
      const need = (k: string) => {
        const v = s[k];
        if (v === undefined) bad(`${at}.scaling.${k} is missing; ${String(s.type)} scaling needs it`);
        else if (!(typeof v === 'number' && Number.isFinite(v) && v > 0))
          bad(`${at}.scaling.${k} = ${String(v)} must be a finite number > 0`);
      };
      if (s.type !== 'longrope') need('factor');
      if (s.type === 'llama3') {
        for (const k of ['low_freq_factor', 'high_freq_factor', 'original_max_position_embeddings']) need(k);
        const lo = s.low_freq_factor as number | undefined;
        const hi = s.high_freq_factor as number | undefined;
        if (lo !== undefined && hi !== undefined && !(hi > lo))
          bad(`${at}.scaling.high_freq_factor ${hi} must be greater than low_freq_factor ${lo}`);
      }
      if (s.type === 'yarn') for (const k of ['original_max_position_embeddings', 'beta_fast', 'beta_slow']) need(k);
      if (s.type === 'longrope') {
        need('original_max_position_embeddings');
        for (const k of ['short_factor', 'long_factor']) {
          const v = s[k] as number[];
          if (v.length !== g.rotary_dim / 2)
            bad(`${at}.scaling.${k} has ${v.length} factors; rotary_dim ${g.rotary_dim} needs ${g.rotary_dim / 2}`);
          else if (!v.every((x) => Number.isFinite(x) && x > 0)) bad(`${at}.scaling.${k} holds a factor that is not a finite number > 0`);
        }
      }
    }
    let spec: RopeSpec | undefined;
    // (Within the shape limit only: rotary_dim/2 frequencies are computed.)
    if (ok && g.rotary_dim <= maxShape) {
      spec = {
        theta: g.theta,
        rotaryDim: g.rotary_dim,
        layout: g.layout as RopeSpec['layout'],
        ...(s ? { scaling: ropeScalingFromJson(s as Record<string, unknown>) } : {}),
      };
      const lens = spec.scaling?.type === 'longrope' ? [0, spec.scaling.originalMaxPositionEmbeddings + 1] : [0];
      for (const n of lens) {
        const inv = ropeInvFreq(spec, n);
        const i = inv.findIndex((v) => !(Number.isFinite(v) && v > 0));
        if (i >= 0) bad(`${at} gives inverse frequency ${inv[i]} for pair ${i}; every one must be finite and > 0`);
      }
    }
    ok = before && ok;
    return spec;
  };
  const words = (g: { theta: number; rotary_dim: number; layout: string; scaling?: { type: string; factor?: number } }) =>
    `theta ${g.theta}, rotary_dim ${g.rotary_dim} (even, ≤ head_dim ${hd}), ${g.layout} layout${g.scaling ? `, ${g.scaling.type} scaling${g.scaling.factor !== undefined ? ` ×${g.scaling.factor}` : ''}` : ''}`;
  if (!v2) {
    one('model.rope', r);
    return words(r);
  }
  const seen = new Array<number>(L).fill(-1);
  r.forEach((g, j) => {
    let prev = -1;
    for (const l of g.layers) {
      if (l >= L) bad(`model.rope[${j}].layers names layer ${l}; the model has ${L} (0-${L - 1})`);
      else if (seen[l] >= 0) bad(`model.rope[${j}].layers names layer ${l}, which model.rope[${seen[l]}] names too`);
      else seen[l] = j;
      if (l <= prev) bad(`model.rope[${j}].layers must be ascending (${prev} then ${l})`);
      prev = l;
    }
    if (!('none' in g)) one(`model.rope[${j}]`, g);
  });
  const missing = seen.findIndex((j) => j < 0);
  if (missing >= 0) bad(`model.rope names no RoPE (or none) for layer ${missing}; every layer needs one`);
  return r.map((g) => `layers ${layerRanges(g.layers)}: ${'none' in g ? 'no RoPE' : words(g)}`).join('; ');
}
