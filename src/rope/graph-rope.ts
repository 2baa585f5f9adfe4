// Tested by test/model/runner.test.ts and test/model/config.test.ts (genai RoPE from the graph).
/**
 * RoPE recovered from an ONNX graph. RoPE must be known exactly (keys are un-rotated before
 * PCA). For genai exports the config has no RoPE settings, so they are read from the graph: the
 * com.microsoft RotaryEmbedding / GroupQueryAttention nodes give the layout (`interleaved` /
 * `rotary_interleaved`), and theta is fitted to the cos/sin cache initializers, then checked
 * against every entry.
 */
import { basename } from 'node:path';
import { KvtcError } from '../errors.js';
import { ropeInvFreq } from './freqs.js';
import { type Graph, readInitializer } from '../model/graph-read.js';
import { modelInvalid } from '../model/model-files.js';
import { type LayerRope, layerRanges, ropeGroups, ropeKey, type RopeSpec } from './types.js';

interface RotaryNode {
  op: string;
  interleaved: boolean;
  /** 0 = whole head */
  rotaryDim: number;
  cos: string;
  sin: string;
}

/** com.microsoft RotaryEmbedding and GroupQueryAttention(do_rotary=1) nodes. */
function rotaryNodes(g: Graph): RotaryNode[] {
  const out: RotaryNode[] = [];
  for (const n of g.node ?? []) {
    const attr = (name: string) => Number(n.attribute?.find((a) => a.name === name)?.i ?? 0);
    const inputs = n.input ?? [];
    if (n.opType === 'RotaryEmbedding' && inputs.length >= 4) {
      out.push({
        op: 'RotaryEmbedding',
        interleaved: attr('interleaved') === 1,
        rotaryDim: attr('rotary_embedding_dim'),
        cos: inputs[2],
        sin: inputs[3],
      });
    } else if (n.opType === 'GroupQueryAttention' && attr('do_rotary') === 1 && inputs.length >= 9) {
      out.push({ op: 'GroupQueryAttention', interleaved: attr('rotary_interleaved') === 1, rotaryDim: 0, cos: inputs[7], sin: inputs[8] });
    }
  }
  return out;
}

/**
 * Fits RoPE inverse frequencies to a cos/sin cache [positions, rotaryDim/2]: the angle at
 * position 1 seeds each frequency, then doubling positions refine it (unwrapping by the
 * prediction), so fp16 rounding of the cache costs ~5e-4/p rad at the last p.
 */
function fitInvFreq(cos: Float64Array, sin: Float64Array, rows: number, half: number): Float64Array {
  const inv = new Float64Array(half);
  for (let i = 0; i < half; i++) {
    let f = Math.atan2(sin[half + i], cos[half + i]);
    for (let p = 2; p < rows; p *= 2) {
      const a = Math.atan2(sin[p * half + i], cos[p * half + i]);
      const unwrapped = a + 2 * Math.PI * Math.round((p * f - a) / (2 * Math.PI));
      f = unwrapped / p;
    }
    inv[i] = f;
  }
  return inv;
}

/** Largest |cos - cos_cache| and |sin - sin_cache| over every position and pair. */
function cacheError(rope: RopeSpec, cos: Float64Array, sin: Float64Array, rows: number): number {
  const inv = ropeInvFreq(rope);
  const half = inv.length;
  let worst = 0;
  for (let p = 0; p < rows; p++) {
    for (let i = 0; i < half; i++) {
      // float32 angles, as exporters compute them
      const ang = Math.fround(p * Math.fround(inv[i]));
      worst = Math.max(worst, Math.abs(Math.cos(ang) - cos[p * half + i]), Math.abs(Math.sin(ang) - sin[p * half + i]));
    }
  }
  return worst;
}

/** Rounds theta to 3 significant digits when that still explains the cache (10000, 500000, 1e6...). */
function snapTheta(theta: number): number {
  const mag = 10 ** (Math.floor(Math.log10(theta)) - 2);
  return Math.round(theta / mag) * mag;
}

export interface GraphRope {
  rope: RopeSpec;
  maxPositions: number;
  source: string;
}

export async function ropeFromGraph(g: Graph, onnxPath: string, headDim: number, base: RopeSpec): Promise<GraphRope | undefined> {
  // The cache is fitted with a plain or linear/llama3 rule; yarn/longrope and attention factors
  // are not what com.microsoft rotary caches hold, so they are not candidates.
  const sc = base.scaling;
  base = {
    theta: base.theta,
    rotaryDim: base.rotaryDim,
    layout: base.layout,
    ...(sc && (sc.type === 'linear' || sc.type === 'llama3') ? { scaling: sc } : {}),
  };
  const nodes = rotaryNodes(g);
  if (nodes.length === 0) return undefined;
  const first = nodes[0];
  if (nodes.some((n) => n.interleaved !== first.interleaved || n.cos !== first.cos)) {
    throw modelInvalid(`${onnxPath}: rotary nodes disagree on layout or cos cache; kvtc needs one RoPE for all layers`, { file: onnxPath });
  }
  const init = new Map((g.initializer ?? []).map((t) => [t.name ?? '', t]));
  const cosT = init.get(first.cos);
  const sinT = init.get(first.sin);
  if (!cosT || !sinT || (cosT.dims ?? []).length !== 2) {
    throw modelInvalid(`${onnxPath}: ${first.op} reads ${first.cos}/${first.sin}, which are not 2-D initializers; cannot determine RoPE`, {
      file: onnxPath,
    });
  }
  const rows = Number(cosT.dims![0]);
  const half = Number(cosT.dims![1]);
  const rotaryDim = first.rotaryDim || 2 * half;
  if (rotaryDim !== 2 * half || rotaryDim > headDim) {
    throw modelInvalid(`${onnxPath}: cos cache [${rows}, ${half}] does not match rotary dim ${rotaryDim} (head dim ${headDim})`, {
      file: onnxPath,
    });
  }
  const [cos, sin] = await Promise.all([readInitializer(cosT, onnxPath), readInitializer(sinT, onnxPath)]);
  const inv = fitInvFreq(cos, sin, rows, half);
  // invFreq[i] = theta^(-2i/d): least squares on the high frequencies, which no scaling touches.
  const k = Math.max(1, Math.ceil(half / 2));
  let num = 0;
  let den = 0;
  for (let i = 1; i < k + 1 && i < half; i++) {
    num += i * Math.log(inv[i] / inv[0]);
    den += i * i;
  }
  const fitted = half > 1 ? Math.exp((-num / den) * (rotaryDim / 2)) : base.theta;
  const layout = first.interleaved ? 'interleaved' : 'half';
  const tol = 2e-3;
  const candidates: RopeSpec[] = [snapTheta(fitted), fitted].flatMap((theta) => [
    { ...base, theta, rotaryDim, layout },
    ...(base.scaling ? [{ theta, rotaryDim, layout } as RopeSpec] : []),
  ]);
  let best: { rope: RopeSpec; err: number } | undefined;
  for (const rope of candidates) {
    const err = cacheError(rope, cos, sin, rows);
    if (!best || err < best.err) best = { rope, err };
    if (err <= tol) break;
  }
  if (!best || best.err > tol) {
    throw new KvtcError(
      'UNSUPPORTED_ARCHITECTURE',
      `${onnxPath}: the rotary cos/sin cache is not plain RoPE with any theta (best fit theta ${fitted.toPrecision(6)}, max error ${best?.err.toExponential(2)}).`,
      {
        fix: 'kvtc must undo RoPE exactly; models with dynamic/yarn/longrope scaling are not supported.',
        context: { file: onnxPath, theta: fitted },
      },
    );
  }
  return {
    rope: best.rope,
    maxPositions: rows,
    source: `${first.op}(${first.interleaved ? 'interleaved' : 'half-split'}) cos/sin cache [${rows}, ${half}] in ${basename(onnxPath)}: fitted theta ${fitted.toPrecision(7)} → ${best.rope.theta}, max |Δ| ${best.err.toExponential(1)} over all positions`,
  };
}

/**
 * Each layer's RoPE once the graph has been read: the graph's cos/sin cache (`fromGraph`), where
 * there is one, replaces the config's RoPE on every layer that has RoPE — a graph with one rotary
 * cache rotates all of its layers alike, so a config whose rotated layers differ is refused.
 * `source` says where the RoPE was read, for inspect.
 */
export function resolveModelRope(
  config: LayerRope[],
  fromGraph: GraphRope | undefined,
  o: { format: 'optimum' | 'genai'; configFile: string; onnxPath: string; notes: string[] },
): { rope: LayerRope[]; source: string } {
  const rotated = config.filter((r): r is RopeSpec => r !== null);
  if (fromGraph) {
    if (rotated.some((r) => ropeKey(r) !== ropeKey(rotated[0]))) {
      throw new KvtcError(
        'UNSUPPORTED_ARCHITECTURE',
        `${o.onnxPath}: the graph has one rotary cos/sin cache for all layers, but ${basename(o.configFile)} gives its layers different RoPE`,
        {
          fix: 'Export the model with one rotary cache per RoPE (or without com.microsoft rotary nodes), or fix the config.',
          context: { file: o.onnxPath },
        },
      );
    }
    const c = rotated[0];
    if (o.format === 'optimum' && c && (fromGraph.rope.layout !== c.layout || Math.abs(fromGraph.rope.theta - c.theta) > 1e-6 * c.theta)) {
      o.notes.push(
        `config.json says RoPE theta ${c.theta} (${c.layout}) but the graph computes theta ${fromGraph.rope.theta} (${fromGraph.rope.layout}): using the graph's`,
      );
    }
    return { rope: config.map((r) => (r ? fromGraph.rope : null)), source: fromGraph.source };
  }
  if (o.format === 'genai') {
    o.notes.push('no RotaryEmbedding/GroupQueryAttention node with a cos/sin cache in the graph: assuming RoPE theta 10000, half-split');
    return { rope: config, source: 'assumed (graph has no rotary cache to read)' };
  }
  const groups = ropeGroups(config);
  const words = groups.map((g) => {
    const r = g.rope;
    const what = r
      ? `theta ${r.theta}, rotary dim ${r.rotaryDim}, ${r.layout}${r.scaling ? `, ${r.scaling.type} scaling${'factor' in r.scaling ? ` ×${r.scaling.factor}` : ''}` : ''}${(r.attentionFactor ?? 1) !== 1 ? `, attention factor ${r.attentionFactor}` : ''}`
      : 'no RoPE';
    return groups.length > 1 ? `layer${g.layers.length > 1 ? 's' : ''} ${layerRanges(g.layers)}: ${what}` : what;
  });
  return { rope: config, source: `${basename(o.configFile)}: ${words.join('; ')}` };
}
