/**
 * Exact dynamic-programming bit allocation over measured error tables, for any target.
 *
 * Components are in variance order. A plan partitions [0, p) into contiguous runs, each dropped
 * (0 bits), static (width·bits, no per-group overhead) or dynamic (width·bits + the group's
 * range overhead); minimize Σ error subject to Σ bits per row <= budget. f[j][u] = least error
 * of the prefix [0, j) spending exactly u cost units; transitions: one component dropped or
 * static (j-1 -> j), or a dynamic candidate group (start, j) from the tables. Exact over the
 * tables' candidate set (static anywhere, dynamic on the granule grid).
 *
 * A target is its type set and its cost unit (CostModel):
 *   - kvtc (allocateBits): static and dynamic int2/int4/int8/fp8, a dynamic group carries fp16
 *     offset and scale (32 bits), every cost is even so the unit is 2 bits;
 *   - Dynamo's kernels (src/dynamo/fit.ts): static = unscaled FP8 only, dynamic = IntX ranges
 *     with float32 min and max (64 bits), every cost a whole byte so the unit is 8 bits.
 *
 * solveAllocation keeps the solved table so that every budget up to its cap is read off it.
 *
 * Memory: f is a ring of (maxWidth + 1) rows × (budget units + 1) float64; back-pointers are one
 * Uint16 per (component, budget unit): p=1024 at ratio 2 is 4.2M entries (8 MB).
 */
import { invariant } from '../errors.js';
import type { ErrorTables } from './error-tables.js';
import { STORED_TYPES } from '../codec/quant.js';
import { DYNAMIC_OVERHEAD_BITS, type QuantGroup, TYPE_BITS } from '../codec/types.js';

/** What a target's choices cost, in bits per row; each cost must be a whole number of units. */
export interface CostModel {
  /** Bits per budget unit (the DP counts units: the larger, the smaller its tables). */
  unitBits: number;
  /** [S] bits per component of each static type. */
  staticBits: readonly number[];
  /** [D] bits per component of each dynamic type. */
  dynamicBits: readonly number[];
  /** Bits per row that one dynamic group adds for its range. */
  dynamicOverheadBits: number;
}

/** The measured errors the DP reads (MeasuredTables of error-tables.ts, or hand-made in tests). */
export interface AllocationInput {
  dim: number;
  granule: number;
  maxGranules: number;
  /** [p] error of dropping component j. */
  none: Float64Array;
  /** [S, p] error of component j with static type s. */
  staticErr: Float64Array;
  /** [ceil(p/g), maxGranules, D] error of group [k·g, min(k·g + m·g, p)) with dynamic type d; Infinity where not a valid group. */
  dynamicErr: Float64Array;
}

/** One run of the plan: [start, end) dropped, or with `type` indexing staticBits / dynamicBits. */
export interface AllocationRun {
  start: number;
  end: number;
  mode: 'none' | 'static' | 'dynamic';
  type: number;
}

export interface RunAllocation {
  /** Runs tiling [0, p) in order; adjacent dropped runs and adjacent static runs of one type merged. */
  runs: AllocationRun[];
  /** Σ measured squared error over the held-out rows (dropped components included). */
  error: number;
  /** Bits per row of the plan (<= budget). */
  bits: number;
}

export function runBits(cost: CostModel, r: AllocationRun): number {
  const w = r.end - r.start;
  if (r.mode === 'static') return w * cost.staticBits[r.type];
  if (r.mode === 'dynamic') return w * cost.dynamicBits[r.type] + cost.dynamicOverheadBits;
  return 0;
}

function units(cost: CostModel, bits: number, what: string): number {
  const u = bits / cost.unitBits;
  invariant(Number.isInteger(u), `Error in allocate: ${what} (${bits} bits) is not a whole number of ${cost.unitBits}-bit units`);
  return u;
}

/** Least-error runs within `budgetBits` per row (the DP above). */
export function allocateRuns(t: AllocationInput, cost: CostModel, budgetBits: number): RunAllocation {
  return solveAllocation(t, cost, budgetBits).runs(budgetBits);
}

/**
 * The DP solved up to a budget cap, from which the least-error runs of every budget up to the cap
 * are read off (`runs`): f[j][u] (least error of the prefix [0, j) spending exactly u units) and
 * its back-pointers do not depend on the cap for u ≤ cap, since every transition only raises u.
 * So runs(b) from a table solved at cap ≥ b is exactly allocateRuns(t, cost, b), and a search over
 * budgets (calibrate's budget-scale search, ~10 budgets per basis) solves the DP once or twice
 * instead of at every step. Holds (p + 1)·(cap units + 1) Uint16 back-pointers.
 */
export interface SolvedAllocation {
  /** The largest budget (bits per row) `runs` answers: Infinity once the cap covers the dearest plan. */
  readonly capBits: number;
  runs(budgetBits: number): RunAllocation;
}

export function solveAllocation(t: AllocationInput, cost: CostModel, capBits: number): SolvedAllocation {
  const p = t.dim;
  const g = t.granule;
  const M = t.maxGranules;
  const S = cost.staticBits.length;
  const D = cost.dynamicBits.length;
  invariant(Number.isFinite(capBits) && capBits >= 0, `Error in allocate: budget (${capBits}) must be a finite number >= 0`);
  invariant(
    t.staticErr.length >= S * p && t.dynamicErr.length >= Math.ceil(p / g) * M * D,
    `Error in allocate: tables (${t.staticErr.length}, ${t.dynamicErr.length}) do not hold ${S} static and ${D} dynamic types for p = ${p}`,
  );
  // Back-pointer codes: low `optBits` bits 0 = none, 1..S = static type, S+1..S+D = dynamic type;
  // the bits above = m (dynamic width in granules).
  const optBits = Math.max(1, Math.ceil(Math.log2(S + D + 1)));
  const optMask = (1 << optBits) - 1;
  invariant(M < 2 ** (16 - optBits), `Error in allocate: ${M} granules per group do not fit a 16-bit back-pointer`);
  // No plan costs more than every component at the dearest type plus one range per granule start:
  // f is infinite beyond, so a larger cap changes no answer and the table stops there.
  const maxBits = p * Math.max(...cost.staticBits, ...cost.dynamicBits) + Math.ceil(p / g) * cost.dynamicOverheadBits;
  const maxUnits = Math.ceil(maxBits / cost.unitBits);
  const saturated = Math.floor(capBits / cost.unitBits) >= maxUnits;
  const B = saturated ? maxUnits : Math.floor(capBits / cost.unitBits);
  const stride = B + 1;
  const ring = Math.min(p, M * g) + 1;
  invariant(p * stride < 2 ** 31, `Error in allocate: p·budget (${p}·${B}) too large for one DP`);
  const f = new Float64Array(ring * stride).fill(Infinity);
  const back = new Uint16Array((p + 1) * stride);
  f[0] = 0;
  const staticUnits = cost.staticBits.map((b) => units(cost, b, 'a static component'));

  for (let i = 0; i < p; i++) {
    const cur = (i % ring) * stride;
    const nxt = ((i + 1) % ring) * stride;
    const bnx = (i + 1) * stride;
    // Dropped component.
    const en = t.none[i];
    for (let b = 0; b <= B; b++) {
      const v = f[cur + b] + en;
      if (v < f[nxt + b]) {
        f[nxt + b] = v;
        back[bnx + b] = 0;
      }
    }
    // Static component.
    for (let s = 0; s < S; s++) {
      const cu = staticUnits[s];
      const es = t.staticErr[s * p + i];
      if (!(es < Infinity)) continue;
      const opt = 1 + s;
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
        for (let d = 0; d < D; d++) {
          const ed = t.dynamicErr[(k * M + (m - 1)) * D + d];
          if (!(ed < Infinity)) continue;
          const cu = units(cost, width * cost.dynamicBits[d] + cost.dynamicOverheadBits, 'a dynamic group');
          const code = (m << optBits) | (1 + S + d);
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
  const lastRow = (p % ring) * stride;
  const last = f.slice(lastRow, lastRow + stride);

  const runs = (budgetBits: number): RunAllocation => {
    invariant(
      Number.isFinite(budgetBits) && budgetBits >= 0 && (saturated || Math.floor(budgetBits / cost.unitBits) <= B),
      `Error in allocate: budget (${budgetBits} bits) must be between 0 and the solved cap (${B * cost.unitBits} bits)`,
    );
    const Bq = Math.min(B, Math.floor(budgetBits / cost.unitBits));
    let bestB = 0;
    for (let b = 1; b <= Bq; b++) if (last[b] < last[bestB]) bestB = b;
    const error = last[bestB];
    invariant(error < Infinity, 'Error in allocate: no feasible plan (dropping everything is always feasible)');

    // Backtrack into per-component or per-group runs (reverse order).
    const rev: AllocationRun[] = [];
    let j = p;
    let b = bestB;
    while (j > 0) {
      const code = back[j * stride + b];
      const opt = code & optMask;
      if (opt === 0) {
        rev.push({ start: j - 1, end: j, mode: 'none', type: -1 });
        j -= 1;
      } else if (opt <= S) {
        rev.push({ start: j - 1, end: j, mode: 'static', type: opt - 1 });
        b -= staticUnits[opt - 1];
        j -= 1;
      } else {
        const m = code >>> optBits;
        const start = (Math.ceil(j / g) - m) * g;
        const run: AllocationRun = { start, end: j, mode: 'dynamic', type: opt - 1 - S };
        rev.push(run);
        b -= runBits(cost, run) / cost.unitBits;
        j = start;
      }
    }
    invariant(b === 0, `Error in allocate: backtrack ended with ${b} units left (DP bookkeeping bug)`);

    const out: AllocationRun[] = [];
    for (let q = rev.length - 1; q >= 0; q--) {
      const r = rev[q];
      const prev = out[out.length - 1];
      if (prev && r.mode !== 'dynamic' && prev.mode === r.mode && prev.type === r.type && prev.end === r.start) prev.end = r.end;
      else out.push({ ...r });
    }
    let bits = 0;
    for (const r of out) bits += runBits(cost, r);
    return { runs: out, error, bits };
  };
  return { capBits: saturated ? Infinity : B * cost.unitBits, runs };
}

/** kvtc's menu: STORED_TYPES static or dynamic, fp16 offset/scale per dynamic group, 2-bit units. */
export const KVTC_COSTS: CostModel = {
  unitBits: 2,
  staticBits: STORED_TYPES.map((t) => TYPE_BITS[t]),
  dynamicBits: STORED_TYPES.map((t) => TYPE_BITS[t]),
  dynamicOverheadBits: DYNAMIC_OVERHEAD_BITS,
};

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

/** kvtc's allocation: the DP with KVTC_COSTS over buildErrorTables' tables, as QuantGroups. */
export function allocateBits(tables: ErrorTables, budgetBits: number): Allocation {
  return toAllocation(allocateRuns(tables, KVTC_COSTS, budgetBits));
}

/** allocateBits for every budget up to `capBits`, from one DP (solveAllocation). */
export function solveBits(tables: ErrorTables, capBits: number): { capBits: number; allocate(budgetBits: number): Allocation } {
  const solved = solveAllocation(tables, KVTC_COSTS, capBits);
  return { capBits: solved.capBits, allocate: (budgetBits) => toAllocation(solved.runs(budgetBits)) };
}

function toAllocation(a: RunAllocation): Allocation {
  const groups: QuantGroup[] = a.runs.map((r) => ({
    start: r.start,
    end: r.end,
    type: r.mode === 'none' ? 'none' : STORED_TYPES[r.type],
    mode: r.mode === 'dynamic' ? 'dynamic' : 'static',
  }));
  while (groups.length > 0 && groups[groups.length - 1].type === 'none') groups.pop();
  const rank = groups.length > 0 ? groups[groups.length - 1].end : 0;
  return { groups, rank, error: a.error, bits: a.bits };
}
