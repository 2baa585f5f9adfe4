// The per-layer RoPE description helpers (src/rope/types.ts, describe.ts): keys, runs and groups
// of layers, the fingerprint's fields (the pre-per-layer form kept for one shared RoPE), and how a
// profile's RoPE is compared with a model's (src/profile/rope.ts ropeDifferences).
import { describe, expect, it } from 'vitest';
import { layerRopeJson, ropeFields, ropeGroupsJson } from '../../src/rope/describe.js';
import {
  hasRope,
  layerRanges,
  ropeGroups,
  ropeKey,
  ropeRuns,
  sameRope,
  uniformModelRope,
  uniformRope,
  type LayerRope,
  type RopeSpec,
} from '../../src/rope/types.js';
import { ropeDifferences } from '../../src/profile/rope.js';

const A: RopeSpec = { theta: 10000, rotaryDim: 8, layout: 'half' };
const G: RopeSpec = { theta: 1e6, rotaryDim: 8, layout: 'half', scaling: { type: 'linear', factor: 8 } };
const Y: RopeSpec = {
  theta: 1e6,
  rotaryDim: 8,
  layout: 'half',
  attentionFactor: 1.1386,
  scaling: { type: 'yarn', factor: 4, originalMaxPositionEmbeddings: 32768, betaFast: 32, betaSlow: 1, truncate: true },
};
const gemma: LayerRope[] = [A, A, G, A, A, G];

describe('per-layer RoPE descriptions', () => {
  it('ropeKey: equal descriptions give equal keys whatever the object; an attention factor of 1 is the default', () => {
    expect(ropeKey({ ...A })).toBe(ropeKey(A));
    expect(ropeKey({ ...A, attentionFactor: 1 })).toBe(ropeKey(A));
    expect(ropeKey({ ...A, theta: 10001 })).not.toBe(ropeKey(A));
    expect(ropeKey(null)).toBe('none');
    expect(sameRope(G, { ...G, scaling: { type: 'linear', factor: 8 } })).toBe(true);
    expect(sameRope(Y, { ...Y, scaling: { ...(Y.scaling as object), truncate: false } as RopeSpec['scaling'] })).toBe(false);
  });

  it('runs, groups and ranges of layers sharing a description', () => {
    expect(ropeRuns(gemma).map((r) => [r.first, r.last, r.rope])).toEqual([
      [0, 1, A],
      [2, 2, G],
      [3, 4, A],
      [5, 5, G],
    ]);
    expect(ropeGroups(gemma)).toEqual([
      { layers: [0, 1, 3, 4], rope: A },
      { layers: [2, 5], rope: G },
    ]);
    expect(layerRanges([0, 1, 3, 4, 5, 7])).toBe('0-1, 3-5, 7');
    expect(uniformRope(gemma)).toBeUndefined();
    expect(uniformRope(uniformModelRope(A, 3))).toBe(A);
    expect(hasRope([null, null])).toBe(false);
    expect(hasRope([null, A])).toBe(true);
  });

  it('JSON for inspect, the manifest and the fingerprint (snake_case, every field)', () => {
    expect(layerRopeJson(Y)).toEqual({
      theta: 1e6,
      rotary_dim: 8,
      layout: 'half',
      attention_factor: 1.1386,
      scaling: { type: 'yarn', factor: 4, original_max_position_embeddings: 32768, beta_fast: 32, beta_slow: 1, truncate: true },
    });
    expect(ropeGroupsJson([A, null, A])).toEqual([
      { layers: '0, 2', rope: layerRopeJson(A) },
      { layers: '1', rope: null },
    ]);
  });

  it('the fingerprint keeps the pre-per-layer form for one shared default/linear/llama3 RoPE, per_layer otherwise', () => {
    expect(ropeFields(uniformModelRope(G, 4))).toEqual({
      theta: 1e6,
      rotary_dim: 8,
      layout: 'half',
      scaling: { factor: 8, type: 'linear' },
    });
    expect(ropeFields(uniformModelRope(A, 4))).toEqual({ theta: 10000, rotary_dim: 8, layout: 'half', scaling: null });
    expect(ropeFields(gemma)).toEqual({
      per_layer: [
        { layers: '0-1, 3-4', rope: layerRopeJson(A) },
        { layers: '2, 5', rope: layerRopeJson(G) },
      ],
    });
    expect(ropeFields(uniformModelRope(Y, 2))).toEqual({ per_layer: [{ layers: '0-1', rope: layerRopeJson(Y) }] });
    expect(ropeFields([null, null])).toEqual({ per_layer: [{ layers: '0-1', rope: null }] });
  });

  it('ropeDifferences names each differing field, by layer when the layers differ differently', () => {
    expect(ropeDifferences(uniformModelRope({ ...A, theta: 20000 }, 3), uniformModelRope(A, 3))).toEqual([
      'theta: profile 20000, model 10000',
    ]);
    expect(ropeDifferences(uniformModelRope(A, 2), uniformModelRope(G, 2))).toEqual([
      'theta: profile 10000, model 1000000',
      'scaling: profile none, model linear',
    ]);
    expect(ropeDifferences(gemma, [A, A, A, A, A, A])).toEqual([
      'layers 2, 5: theta: profile 1000000, model 10000; scaling: profile linear, model none',
    ]);
    expect(ropeDifferences([A, null], [A, A])).toEqual(['layer 1: rope: profile none, model RoPE']);
    expect(ropeDifferences([Y], [{ ...Y, attentionFactor: 1.2 }])).toEqual(['attention_factor: profile 1.1386, model 1.2']);
    expect(ropeDifferences(gemma, gemma)).toEqual([]);
  });
});
