/**
 * Exact DP bit allocation over the Dynamo kernels' types, in bytes per row (per block).
 *
 * The same dynamic program as src/fit/dp.ts (components in variance order, f[j][u] = least
 * measured error of the prefix [0, j) spending exactly u units, ring of rows, back-pointers,
 * backtrack), with the kernels' menu and costs instead of kvtc's:
 *   - drop component j: 0 bytes, error none[j] (the column is left out of the projection);
 *   - FP8 component j: 1 byte, error fp8[j] (no per-row overhead: the cast is unscaled);
 *   - IntX(b) range [k·g, e): width·b/8 bytes of codes + 8 bytes of float32 min and max per row
 *     (kvtc_range_metadata_size), error from the table.
 * Every cost is a whole number of bytes (IntX widths are multiples of 8/b), so the unit is a
 * byte. src/fit/dp.ts does not fit as it is: its per-group overhead is kvtc's 32 bits, it
 * counts 2-bit units, and it offers static int types and scaled fp8 that these kernels lack.
 * The 40-byte range headers are per kernel call, not per row, and are left out of the budget.
 *
 * Memory: back-pointers are one Uint16 per (component, budget byte): p = 16384 at 8x is
 * 16384 × 4097 × 2 B = 134 MB; the error ring is (maxWidth + 1) × (budget + 1) float64.
 */
import { invariant, KvtcError } from '../errors.js';
import { intxIndex, type DynamoTables } from './tables.js';

export interface DynamoGroup {
  /** Components [start, end) in variance order. */
  start: number;
  end: number;
  type: 'none' | 'fp8' | 'intx';
  /** IntX bits (0 for fp8 and none). */
  bits: number;
}

export interface DynamoAllocation {
  /** Groups covering [0, p) in variance order ('none' runs merged, fp8 runs merged). */
  groups: DynamoGroup[];
  /** Σ measured squared error over the held-out rows, dropped components included. */
  error: number;
  /** Bytes per row of the plan (≤ budget), range headers excluded. */
  bytesPerRow: number;
}

const OPT_NONE = 0;
const OPT_FP8 = 1;
const MAX_CELLS = 2 ** 28;

export function allocateDynamo(t: DynamoTables, budgetBytes: number): DynamoAllocation {
  const p = t.dim;
  const g = t.granule;
  const M = t.maxGranules;
  const nb = t.intBits.length;
  invariant(Number.isFinite(budgetBytes) && budgetBytes >= 0, `Error in allocateDynamo: budget (${budgetBytes}) must be a finite number >= 0`);
  const U = Math.floor(budgetBytes);
  const stride = U + 1;
  if ((p + 1) * stride > MAX_CELLS) {
    throw new KvtcError('USAGE', `the bit allocation for ${p} features at ${U} bytes per block needs ${((p + 1) * stride * 2 / 2 ** 20).toFixed(0)} MB of back-pointers`, {
      fix: 'Use a higher --ratio or a smaller --block-tokens (fewer features per kernel row).',
      context: { features: p, budget_bytes: U },
    });
  }
  const ring = Math.min(p, M * g) + 1;
  const f = new Float64Array(ring * stride).fill(Infinity);
  const back = new Uint16Array((p + 1) * stride);
  f[0] = 0;
  for (let i = 0; i < p; i++) {
    const cur = (i % ring) * stride;
    const nxt = ((i + 1) % ring) * stride;
    const bnx = (i + 1) * stride;
    const en = t.none[i];
    for (let u = 0; u <= U; u++) {
      const v = f[cur + u] + en;
      if (v < f[nxt + u]) {
        f[nxt + u] = v;
        back[bnx + u] = OPT_NONE;
      }
    }
    const ef = t.fp8[i];
    if (ef < Infinity) {
      for (let u = 0; u + 1 <= U; u++) {
        const v = f[cur + u] + ef;
        if (v < f[nxt + u + 1]) {
          f[nxt + u + 1] = v;
          back[bnx + u + 1] = OPT_FP8;
        }
      }
    }
    if (i % g === 0) {
      const k = i / g;
      for (let m = 1; m <= M; m++) {
        if (i + (m - 1) * g >= p) break;
        const e = Math.min(p, i + m * g);
        const width = e - i;
        const row = (e % ring) * stride;
        const brow = e * stride;
        for (let b = 0; b < nb; b++) {
          const err = t.intx[intxIndex(t, k, m, b)];
          if (!(err < Infinity)) continue;
          const cost = (width * t.intBits[b]) / 8 + 8;
          const code = (m << 3) | (2 + b);
          for (let u = 0; u + cost <= U; u++) {
            const v = f[cur + u] + err;
            if (v < f[row + u + cost]) {
              f[row + u + cost] = v;
              back[brow + u + cost] = code;
            }
          }
        }
      }
    }
    f.fill(Infinity, cur, cur + stride);
  }
  const last = (p % ring) * stride;
  let bestU = 0;
  for (let u = 1; u <= U; u++) if (f[last + u] < f[last + bestU]) bestU = u;
  const error = f[last + bestU];
  invariant(error < Infinity, 'Error in allocateDynamo: no feasible plan (dropping everything is always feasible)');

  const rev: DynamoGroup[] = [];
  let j = p;
  let u = bestU;
  while (j > 0) {
    const code = back[j * stride + u];
    const opt = code & 7;
    if (opt === OPT_NONE) {
      rev.push({ start: j - 1, end: j, type: 'none', bits: 0 });
      j -= 1;
    } else if (opt === OPT_FP8) {
      rev.push({ start: j - 1, end: j, type: 'fp8', bits: 0 });
      u -= 1;
      j -= 1;
    } else {
      const m = code >>> 3;
      const start = (Math.ceil(j / g) - m) * g;
      const bits = t.intBits[opt - 2];
      rev.push({ start, end: j, type: 'intx', bits });
      u -= ((j - start) * bits) / 8 + 8;
      j = start;
    }
  }
  invariant(u === 0, `Error in allocateDynamo: backtrack ended with ${u} bytes left (DP bookkeeping bug)`);
  const groups: DynamoGroup[] = [];
  for (let q = rev.length - 1; q >= 0; q--) {
    const gr = rev[q];
    const prev = groups[groups.length - 1];
    if (prev && gr.type !== 'intx' && prev.type === gr.type && prev.end === gr.start) prev.end = gr.end;
    else groups.push({ ...gr });
  }
  return { groups, error, bytesPerRow: groupBytes(groups) };
}

/** Bytes per row of a set of groups. */
export function groupBytes(groups: readonly DynamoGroup[]): number {
  let s = 0;
  for (const gr of groups) {
    if (gr.type === 'fp8') s += gr.end - gr.start;
    else if (gr.type === 'intx') s += ((gr.end - gr.start) * gr.bits) / 8 + 8;
  }
  return s;
}
