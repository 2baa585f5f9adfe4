// Tested by test/rope/model-rope.test.ts and test/model/fingerprint.test.ts.
/**
 * RoPE descriptions as JSON (snake_case, for inspect --json, the fingerprint and the profile
 * manifest) and as words (inspect's table).
 */
import { type LayerRope, layerRanges, type ModelRope, ropeGroups, type RopeScaling, type RopeSpec, uniformRope } from './types.js';

/** A layer's RoPE as JSON: the fields a reader needs to recompute its frequencies exactly. */
export interface LayerRopeJson {
  theta: number;
  rotary_dim: number;
  layout: 'half' | 'interleaved';
  scaling: Record<string, unknown> | null;
  attention_factor: number;
}

export function scalingJson(s: RopeScaling): Record<string, unknown> {
  switch (s.type) {
    case 'linear':
      return { type: 'linear', factor: s.factor };
    case 'llama3':
      return {
        type: 'llama3',
        factor: s.factor,
        low_freq_factor: s.lowFreqFactor,
        high_freq_factor: s.highFreqFactor,
        original_max_position_embeddings: s.originalMaxPositionEmbeddings,
      };
    case 'yarn':
      return {
        type: 'yarn',
        factor: s.factor,
        original_max_position_embeddings: s.originalMaxPositionEmbeddings,
        beta_fast: s.betaFast,
        beta_slow: s.betaSlow,
        truncate: s.truncate,
      };
    case 'longrope':
      return {
        type: 'longrope',
        short_factor: [...s.shortFactor],
        long_factor: [...s.longFactor],
        original_max_position_embeddings: s.originalMaxPositionEmbeddings,
      };
  }
}

export function layerRopeJson(r: RopeSpec): LayerRopeJson {
  return {
    theta: r.theta,
    rotary_dim: r.rotaryDim,
    layout: r.layout,
    scaling: r.scaling ? scalingJson(r.scaling) : null,
    attention_factor: r.attentionFactor ?? 1,
  };
}

/** Distinct descriptions with their layers as ranges ("0-4, 6"); rope null: no RoPE on those layers. */
export function ropeGroupsJson(rope: ModelRope): { layers: string; rope: LayerRopeJson | null }[] {
  return ropeGroups(rope).map((g) => ({ layers: layerRanges(g.layers), rope: g.rope ? layerRopeJson(g.rope) : null }));
}

/** The fingerprint's form of one shared RoPE, exactly as kvtc wrote it before RoPE was per layer. */
export interface LegacyRopeFields {
  theta: number;
  rotary_dim: number;
  layout: string;
  scaling: Record<string, unknown> | null;
}

export type RopeFields = LegacyRopeFields | { per_layer: { layers: string; rope: LayerRopeJson | null }[] };

/** Whether `r` is what a single pre-per-layer description could say (default, linear, llama3; no attention factor). */
export function legacyExpressible(r: LayerRope): r is RopeSpec {
  return r !== null && (r.attentionFactor ?? 1) === 1 && (!r.scaling || r.scaling.type === 'linear' || r.scaling.type === 'llama3');
}

/**
 * The fingerprint's RoPE fields: the legacy object when every layer shares one legacy-expressible
 * description (fingerprints of existing models do not change), otherwise the per-layer groups.
 */
export function ropeFields(rope: ModelRope): RopeFields {
  const u = uniformRope(rope);
  if (u !== undefined && legacyExpressible(u)) {
    const s = u.scaling;
    return {
      theta: u.theta,
      rotary_dim: u.rotaryDim,
      layout: u.layout,
      // camelCase keys, sorted: the form fingerprints always hashed
      scaling: s
        ? Object.fromEntries(
            Object.entries(s)
              .filter(([, v]) => v !== undefined)
              .sort(([a], [b]) => a.localeCompare(b)),
          )
        : null,
    };
  }
  return { per_layer: ropeGroupsJson(rope) };
}

/** "linear ×8", "yarn ×4 (β 32/1, original 4096)", "longrope (short ≤ 4096 < long)", "none". */
export function scalingWords(s: RopeScaling | undefined): string {
  if (!s) return 'none';
  switch (s.type) {
    case 'linear':
      return `linear ×${s.factor}`;
    case 'llama3':
      return `llama3 ×${s.factor} (low ${s.lowFreqFactor}, high ${s.highFreqFactor}, original ${s.originalMaxPositionEmbeddings})`;
    case 'yarn':
      return `yarn ×${s.factor} (β fast ${s.betaFast}, slow ${s.betaSlow}, original ${s.originalMaxPositionEmbeddings}${s.truncate ? '' : ', untruncated'})`;
    case 'longrope':
      return `longrope (short factors up to ${s.originalMaxPositionEmbeddings} positions, long beyond)`;
  }
}

/** One line of words for a layer's RoPE. */
export function layerRopeWords(r: LayerRope, headDim: number): string {
  if (!r) return 'no RoPE (nothing to undo)';
  const pairs = r.layout === 'half' ? `pairs (i, i+${r.rotaryDim / 2})` : 'pairs (2i, 2i+1)';
  const af = (r.attentionFactor ?? 1) !== 1 ? `, attention factor ${r.attentionFactor}` : '';
  return `θ=${r.theta}, ${r.rotaryDim} of ${headDim} dims, ${r.layout} ${pairs}, scaling ${scalingWords(r.scaling)}${af}`;
}
