// Tested by test/profile/profile-io.test.ts and test/profile/invalid-profiles.test.ts.
/**
 * The profile's RoPE (manifest `model.rope`) to and from each layer's RoPE (src/rope): what the
 * manifest records, what encode/decode un-rotate with, and how a profile's RoPE differs from a
 * model's, per field, for validate.
 */
import { KvtcError } from '../errors.js';
import { layerRopeJson } from '../rope/describe.js';
import { type LayerRope, layerRanges, type ModelRope, ropeKey, uniformModelRope, uniformRope } from '../rope/types.js';
import type { Manifest } from './schema.js';

type V1Rope = Manifest['model']['rope'];

/** Each layer's RoPE as the manifest records it (v1: one description for every layer). */
export function ropeFromManifest(m: Pick<Manifest, 'model'>): LayerRope[] {
  const r = m.model.rope;
  const s = r.scaling;
  return uniformModelRope(
    {
      theta: r.theta,
      rotaryDim: r.rotary_dim,
      layout: r.layout,
      ...(s
        ? {
            scaling: s.type === 'linear'
              ? { type: 'linear' as const, factor: s.factor }
              : { type: 'llama3' as const, factor: s.factor, lowFreqFactor: s.low_freq_factor!, highFreqFactor: s.high_freq_factor!, originalMaxPositionEmbeddings: s.original_max_position_embeddings! },
          }
        : {}),
    },
    m.model.layers,
  );
}

/**
 * The v1 manifest's `model.rope` for a model whose layers all share one default, linear or llama3
 * RoPE; anything else needs per-layer RoPE in the manifest and is refused here.
 */
export function manifestRopeV1(rope: ModelRope): V1Rope {
  const u = uniformRope(rope);
  if (!u || (u.attentionFactor ?? 1) !== 1 || (u.scaling && u.scaling.type !== 'linear' && u.scaling.type !== 'llama3')) {
    throw new KvtcError('UNSUPPORTED_ARCHITECTURE', 'this model\'s RoPE differs between layers (or uses yarn/longrope or no RoPE), which a format v1 profile cannot record', {
      fix: 'Per-layer RoPE in profiles (format v2) is needed for this model.',
    });
  }
  const s = u.scaling;
  return {
    theta: u.theta,
    rotary_dim: u.rotaryDim,
    layout: u.layout,
    ...(s
      ? {
          scaling: s.type === 'linear'
            ? { type: 'linear' as const, factor: s.factor }
            : { type: 'llama3' as const, factor: s.factor, low_freq_factor: s.lowFreqFactor, high_freq_factor: s.highFreqFactor, original_max_position_embeddings: s.originalMaxPositionEmbeddings },
        }
      : {}),
  };
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
