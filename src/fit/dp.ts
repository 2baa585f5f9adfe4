/**
 * Exact dynamic-programming bit allocation over the measured error tables.
 *
 * Components are in variance order. A plan partitions [0, p) into contiguous groups, each
 * 'none' (0 bits), static (width·bits) or dynamic (width·bits + 32); minimize Σ error subject
 * to Σ bits per token <= budget. f[j][b] = least error of the prefix [0, j) spending exactly
 * b bits; transitions: one component none/static (j-1 -> j), or a dynamic candidate group
 * (start, j) from the tables. All costs are even, so b counts 2-bit units. Exact over the
 * tables' candidate set (static anywhere, dynamic on the granule grid).
 *
 * Memory: f is a ring of (maxWidth + 1) rows × (budget/2 + 1) float64; back-pointers are one
 * Uint16 per (component, budget unit): p=1024 at ratio 2 is 4.2M entries (8 MB).
 */
import { invariant } from '../errors.js';
import { type ErrorTables, dynamicIndex } from './error-tables.js';
import { STORED_TYPES } from '../codec/quant.js';
import { DYNAMIC_OVERHEAD_BITS, type QuantGroup, TYPE_BITS } from '../codec/types.js';

export interface Allocation {
  /** Groups covering [0, rank), trailing 'none' removed; adjacent static groups of one type merged. */
  groups: QuantGroup[];
  /** Stored components (last kept component + 1). */
  rank: number;
  /** Σ measured squared error over the held-out tokens (dropped components included). */
  error: number;
  /** Bits per token of the plan (<= budget). */
  bits: number;
}

// Back-pointer codes: opt (low 4 bits) 0 = none, 1..4 = static STORED_TYPES[opt-1],
// 5..8 = dynamic STORED_TYPES[opt-5]; high bits = m (dynamic width in granules).
const OPT_NONE = 0;

export function allocateBits(tables: ErrorTables, budgetBits: number): Allocation {
  const p = tables.dim;
  const g = tables.granule;
  const M = tables.maxGranules;
  invariant(Number.isFinite(budgetBits) && budgetBits >= 0, `Error in allocateBits: budget (${budgetBits}) must be a finite number >= 0`);
  const B = Math.floor(budgetBits / 2);
  const stride = B + 1;
  const ring = Math.min(p, M * g) + 1;
  invariant(p * stride < 2 ** 31, `Error in allocateBits: p·budget (${p}·${B}) too large for one DP`);
  const f = new Float64Array(ring * stride).fill(Infinity);
  const back = new Uint16Array((p + 1) * stride);
  f[0] = 0;
  const staticUnits = STORED_TYPES.map((t) => TYPE_BITS[t] / 2);

  for (let i = 0; i < p; i++) {
    const cur = (i % ring) * stride;
    const nxt = ((i + 1) % ring) * stride;
    const bnx = (i + 1) * stride;
    // Dropped component.
    const en = tables.none[i];
    for (let b = 0; b <= B; b++) {
      const v = f[cur + b] + en;
      if (v < f[nxt + b]) {
        f[nxt + b] = v;
        back[bnx + b] = OPT_NONE;
      }
    }
    // Static component.
    for (let ti = 0; ti < 4; ti++) {
      const cu = staticUnits[ti];
      const es = tables.staticErr[ti * p + i];
      if (!(es < Infinity)) continue;
      const opt = 1 + ti;
      for (let b = 0; b + cu <= B; b++) {
        const v = f[cur + b] + es;
        if (v < f[nxt + b + cu]) {
          f[nxt + b + cu] = v;
          back[bnx + b + cu] = opt;
        }
      }
    }
    // Dynamic groups starting here.
    if (i % g === 0) {
      const k = i / g;
      for (let m = 1; m <= M; m++) {
        if (i + (m - 1) * g >= p) break;
        const e = Math.min(p, i + m * g);
        const width = e - i;
        const row = (e % ring) * stride;
        const brow = e * stride;
        for (let ti = 0; ti < 4; ti++) {
          const ed = tables.dynamicErr[dynamicIndex(tables, k, m, ti)];
          if (!(ed < Infinity)) continue;
          const cu = (width * TYPE_BITS[STORED_TYPES[ti]] + DYNAMIC_OVERHEAD_BITS) / 2;
          const code = (m << 4) | (5 + ti);
          for (let b = 0; b + cu <= B; b++) {
            const v = f[cur + b] + ed;
            if (v < f[row + b + cu]) {
              f[row + b + cu] = v;
              back[brow + b + cu] = code;
            }
          }
        }
      }
    }
    // Row i is final and no longer a source: recycle it for row i + ring.
    f.fill(Infinity, cur, cur + stride);
  }

  const last = (p % ring) * stride;
  let bestB = 0;
  for (let b = 1; b <= B; b++) if (f[last + b] < f[last + bestB]) bestB = b;
  const error = f[last + bestB];
  invariant(error < Infinity, 'Error in allocateBits: no feasible plan (all-drop should always be feasible)');

  // Backtrack into per-run groups (reverse order).
  const rev: QuantGroup[] = [];
  let j = p;
  let b = bestB;
  while (j > 0) {
    const code = back[j * stride + b];
    const opt = code & 15;
    if (opt === OPT_NONE) {
      rev.push({ start: j - 1, end: j, type: 'none', mode: 'static' });
      j -= 1;
    } else if (opt <= 4) {
      rev.push({ start: j - 1, end: j, type: STORED_TYPES[opt - 1], mode: 'static' });
      b -= staticUnits[opt - 1];
      j -= 1;
    } else {
      const m = code >>> 4;
      const start = (Math.ceil(j / g) - m) * g;
      const type = STORED_TYPES[opt - 5];
      rev.push({ start, end: j, type, mode: 'dynamic' });
      b -= ((j - start) * TYPE_BITS[type] + DYNAMIC_OVERHEAD_BITS) / 2;
      j = start;
    }
  }
  invariant(b === 0, `Error in allocateBits: backtrack ended with ${b} units left (DP bookkeeping bug)`);

  const groups: QuantGroup[] = [];
  for (let q = rev.length - 1; q >= 0; q--) {
    const gr = rev[q];
    const prev = groups[groups.length - 1];
    if (prev && gr.mode === 'static' && prev.mode === 'static' && prev.type === gr.type && prev.end === gr.start) prev.end = gr.end;
    else groups.push({ ...gr });
  }
  while (groups.length > 0 && groups[groups.length - 1].type === 'none') groups.pop();
  const rank = groups.length > 0 ? groups[groups.length - 1].end : 0;
  let bits = 0;
  for (const gr of groups) if (gr.type !== 'none') bits += (gr.end - gr.start) * TYPE_BITS[gr.type] + (gr.mode === 'dynamic' ? DYNAMIC_OVERHEAD_BITS : 0);
  return { groups, rank, error, bits };
}
