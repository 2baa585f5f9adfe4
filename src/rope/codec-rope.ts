// Tested by test/rope/codec-rope.test.ts, test/codec/codec.test.ts and test/codec/host-kernels.test.ts.
/**
 * RoPE as the codec applies it: per plan, the layers it groups may each have their own RoPE (or
 * none), so a plan's G = layers × KV heads rows are split into segments of consecutive layers
 * sharing one description, each un-rotated with its own cos/sin table.
 *
 * Tables are computed in float64 on the host (angles reach 1e5 rad at long contexts, where
 * float32 angle products lose the phase) and used as float32 — by the host kernels on the CPU
 * and fed as graph inputs on CUDA. A layer with an attention factor f has its undo tables
 * divided by f and its apply tables multiplied by f (f = 1: one table, as before).
 */
import type { GraphBuilder } from '../onnx/builder.js';
import { ropeInvFreq } from './freqs.js';
import { type LayerRope, type ModelRope, type RopeSpec, ropeKey } from './types.js';

export interface RopeIndex {
  /** Within-head indices of the first and second element of each rotated pair, and the untouched rest. */
  a: number[];
  b: number[];
  rest: number[];
  /** Gather indices that put [a, b, rest] back into head order. */
  inverse: number[];
}

export function ropePairs(rope: RopeSpec, headDim: number): RopeIndex {
  const half = rope.rotaryDim / 2;
  const a: number[] = [];
  const b: number[] = [];
  for (let i = 0; i < half; i++) {
    if (rope.layout === 'half') {
      a.push(i);
      b.push(i + half);
    } else {
      a.push(2 * i);
      b.push(2 * i + 1);
    }
  }
  const rest: number[] = [];
  for (let d = rope.rotaryDim; d < headDim; d++) rest.push(d);
  const order = [...a, ...b, ...rest];
  const inverse = new Array<number>(headDim);
  order.forEach((d, k) => (inverse[d] = k));
  return { a, b, rest, inverse };
}

/**
 * cos/sin tables [n, rotaryDim/2] (float32) for absolute positions start..start+n-1, computed in
 * float64, each multiplied by `scale` (the attention factor, or its inverse to undo).
 */
export function ropeTables(invFreq: Float64Array, start: number, n: number, scale = 1): { cos: Float32Array; sin: Float32Array } {
  const h = invFreq.length;
  const cos = new Float32Array(n * h);
  const sin = new Float32Array(n * h);
  for (let t = 0; t < n; t++) {
    const pos = start + t;
    for (let i = 0; i < h; i++) {
      const ang = pos * invFreq[i];
      cos[t * h + i] = scale === 1 ? Math.cos(ang) : Math.cos(ang) * scale;
      sin[t * h + i] = scale === 1 ? Math.sin(ang) : Math.sin(ang) * scale;
    }
  }
  return { cos, sin };
}

/** One segment of a plan's rows: layers [li0, li1) of plan.layers share `rope` (table `table`, -1 without RoPE). */
export interface RopeSegment {
  li0: number;
  li1: number;
  rope: LayerRope;
  table: number;
}

/** A plan's RoPE: its segments and its distinct descriptions (table j = ropes[j]). */
export interface PlanRope {
  segments: RopeSegment[];
  ropes: RopeSpec[];
}

/** Segments of a plan's layers (in plan order) by each layer's RoPE in `rope`. */
export function planRope(rope: ModelRope, layers: readonly number[]): PlanRope {
  const ropes: RopeSpec[] = [];
  const keys: string[] = [];
  const segments: RopeSegment[] = [];
  layers.forEach((l, li) => {
    const r = rope[l];
    const k = ropeKey(r);
    let table = -1;
    if (r) {
      table = keys.indexOf(k);
      if (table < 0) {
        table = ropes.length;
        ropes.push(r);
        keys.push(k);
      }
    }
    const last = segments.at(-1);
    if (last && last.table === table) last.li1 = li + 1;
    else segments.push({ li0: li, li1: li + 1, rope: r, table });
  });
  return { segments, ropes };
}

/** Whether a plan rotates any of its layers. */
export function planHasRope(p: PlanRope): boolean {
  return p.ropes.length > 0;
}

/** Graph input names of table j of a plan: 'cos'/'sin' when the plan has one table (the graphs kvtc always built). */
export function tableInputNames(p: PlanRope, j: number): { cos: string; sin: string } {
  return p.ropes.length === 1 ? { cos: 'cos', sin: 'sin' } : { cos: `cos_${j}`, sin: `sin_${j}` };
}

/**
 * Float32 cos/sin tables of one cache for one description: undo (÷ attention factor) and apply
 * (× it); the same arrays when the factor is 1.
 */
export interface CacheTables {
  rope: RopeSpec;
  undo: { cos: Float32Array; sin: Float32Array };
  apply: { cos: Float32Array; sin: Float32Array };
}

/**
 * Tables for tokens [first, first + n) of a cache at absolute positions start + first ...;
 * `seqLen` = startPosition + tokens of the whole cache (longrope's factor choice). Memoized per
 * description key over the call.
 */
export function cacheTables(
  ropes: readonly RopeSpec[],
  positionStart: number,
  n: number,
  seqLen: number,
  memo = new Map<string, CacheTables>(),
): CacheTables[] {
  return ropes.map((r) => {
    const k = ropeKey(r);
    const hit = memo.get(k);
    if (hit) return hit;
    const inv = ropeInvFreq(r, seqLen);
    const f = r.attentionFactor ?? 1;
    const undo = ropeTables(inv, positionStart, n, f === 1 ? 1 : 1 / f);
    const apply = f === 1 ? undo : ropeTables(inv, positionStart, n, f);
    const t = { rope: r, undo, apply };
    memo.set(k, t);
    return t;
  });
}

/**
 * RoPE (apply or undo) on the rows of x [rows, n, headDim] for one description, with graph
 * inputs cos/sin [n, R/2] broadcast over the rows; returns [rows, n, headDim].
 */
function ropeRows(
  g: GraphBuilder,
  x: string,
  idx: RopeIndex,
  undo: boolean,
  names: { cos: string; sin: string },
  tag: string,
  declare = true,
): string {
  if (declare) {
    g.input(names.cos, 'float32', ['n', idx.a.length]);
    g.input(names.sin, 'float32', ['n', idx.a.length]);
  }
  const a = g.op('Gather', [x, g.i64(idx.a, `ia${tag}`)], { axis: 2 });
  const b = g.op('Gather', [x, g.i64(idx.b, `ib${tag}`)], { axis: 2 });
  const axes = g.i64([0], `axes${tag}`);
  const c = g.op('Unsqueeze', [names.cos, axes]);
  const s = g.op('Unsqueeze', [names.sin, axes]);
  // apply: a' = a·c − b·s, b' = b·c + a·s;  undo: the rotation by −θ.
  const ac = g.op('Mul', [a, c]);
  const bs = g.op('Mul', [b, s]);
  const bc = g.op('Mul', [b, c]);
  const as = g.op('Mul', [a, s]);
  const a2 = g.op(undo ? 'Add' : 'Sub', [ac, bs]);
  const b2 = g.op(undo ? 'Sub' : 'Add', [bc, as]);
  const parts = [a2, b2];
  if (idx.rest.length) parts.push(g.op('Gather', [x, g.i64(idx.rest, `irest${tag}`)], { axis: 2 }));
  const cat = g.op('Concat', parts, { axis: 2 });
  return g.op('Gather', [cat, g.i64(idx.inverse, `iinv${tag}`)], { axis: 2 });
}

/**
 * Adds a plan's RoPE (apply or undo) on x [G, n, headDim] (G = layers × KV heads of the plan, the
 * cache's own layout): one segment of rows per run of layers sharing a description, each with its
 * table's graph inputs; rows of layers without RoPE pass through. A plan whose layers all share
 * one description gets exactly the nodes (and input names 'cos'/'sin') kvtc always built.
 */
export function ropeNodes(g: GraphBuilder, x: string, p: PlanRope, kvHeads: number, headDim: number, undo: boolean): string {
  if (p.segments.length === 1) {
    const s = p.segments[0];
    return s.rope ? ropeRows(g, x, ropePairs(s.rope, headDim), undo, tableInputNames(p, s.table), '') : x;
  }
  const declared = new Set<number>();
  const parts = p.segments.map((s, k) => {
    const rows = g.op('Slice', [x, g.i64([s.li0 * kvHeads], `r0_${k}`), g.i64([s.li1 * kvHeads], `r1_${k}`), g.i64([0], `ax_${k}`)]);
    if (!s.rope) return rows;
    const names = tableInputNames(p, s.table);
    // an input is declared once, however many segments read it
    const idx = ropePairs(s.rope, headDim);
    const declare = !declared.has(s.table);
    declared.add(s.table);
    return ropeRows(g, rows, idx, undo, names, `_${k}`, declare);
  });
  return g.op('Concat', parts, { axis: 0 });
}
