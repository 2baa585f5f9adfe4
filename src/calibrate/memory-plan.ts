// Tested by test/calibrate/memory-plan.test.ts.
/**
 * What a calibration will hold in memory, estimated from the model's geometry and the options
 * before any work starts, and checked against the --memory budget (default: half the machine).
 * The estimate is the largest of three phases:
 *  - capture: the model's session, the tuning caches, every covariance and the two-level sums;
 *  - fit: the tuning caches, the covariances, the reduction and the widest basis's working set
 *    (its tuning features, basis and coefficients, twice over while a worker builds its tables,
 *    or its plans in the codec);
 *  - report: the report caches and the chosen plans' bases in the codec.
 * With the two-level fit the tuning and report caches are parked on disk (cache-park.ts) and
 * read one sequence at a time: the estimate counts one sequence and its decoded copy.
 * Fit tokens add nothing: the fit pass streams them (the two-level fit spills them to disk).
 * Checked against measured peaks in docs/benchmarks.md, "Two-level fit".
 */
import type { KvKind } from '../codec/types.js';
import { KvtcError } from '../errors.js';
import { maxRankForRatios } from '../fit/fit.js';
import { RANDOMIZED_MAX_RANK_FRACTION } from '../fit/eigen-randomized.js';
import { TWO_LEVEL_RANK } from '../fit/two-level.js';

type Geometry = { layers: number; kvHeads: number; headDim: number; valueDim?: number };

export interface MemoryEstimate {
  /** Bytes per phase and the peak (their largest). */
  capture: number;
  fit: number;
  report: number;
  peak: number;
  /** The budget it was checked against. */
  budget: number;
}

/** Node, ONNX Runtime and kvtc's own code before any data (measured RSS after loading a small model: ~0.4 GiB). */
export const RUNTIME_BYTES = 0.5 * 2 ** 30;

/** Measured peak over the sum of what each phase holds (Llama 3.1 8B geometry: 7.94 GiB against a sum of 6.0 GiB, docs/benchmarks.md), so the estimate errs high: a margin, not a model. */
export const OVERHEAD = 1.35;

/** The longest held-out sequence calibrate uses (calibrate.ts readSplit). */
export const MAX_SEQUENCE_TOKENS = 512;

const KINDS: KvKind[] = ['key', 'value'];
const dim = (g: Geometry, kind: KvKind, layers: number) => layers * g.kvHeads * (kind === 'value' ? (g.valueDim ?? g.headDim) : g.headDim);

export function estimateMemory(
  g: Geometry,
  o: {
    /** Each candidate grouping's layer groups, and whether it is fitted two-level. */
    groupings: { groups: number[][]; twoLevel: boolean }[];
    heldout: number;
    report: number;
    ratios: number[];
    rank?: number;
    /** Bytes of the model's weights (its ONNX files). */
    modelBytes: number;
    budget: number;
    /** The longest held-out sequence (parked caches are read one at a time); default MAX_SEQUENCE_TOKENS. */
    sequenceTokens?: number;
  },
): MemoryEstimate {
  const P = KINDS.reduce((a, k) => a + dim(g, k, g.layers), 0);
  const tuning = 4 * o.heldout * P;
  const report = 4 * o.report * P;
  const anyTwo = o.groupings.some((x) => x.twoLevel);
  let cov = 0;
  // The largest grouping's working set: its bases being fitted, then its plans in the codec.
  let widest = 0;
  let plans = 0;
  for (const x of o.groupings) {
    let fitting = 4 * o.heldout * P; // every basis's tuning features, gathered before the pool runs
    let measuring = 0;
    let worker = 0;
    for (const layers of x.groups)
      for (const kind of KINDS) {
        const p = dim(g, kind, layers.length);
        let k = Math.min(p, maxRankForRatios(p, o.ratios));
        if (x.twoLevel) {
          const m = Math.min(o.rank ?? TWO_LEVEL_RANK, dim(g, kind, g.layers), p);
          k = Math.min(k, Math.floor(RANDOMIZED_MAX_RANK_FRACTION * m));
          // The float32 basis and the coefficients.
          fitting += 4 * p * k + 4 * o.heldout * k;
        } else {
          cov += 8 * p * p;
          // The job's covariance (finish() copies it); in each of the two workers, its copy, the
          // eigenvectors and the float64 centred tuning features.
          fitting += 8 * p * p;
          worker = Math.max(worker, 8 * p * p + 8 * p * k + 8 * o.heldout * p);
        }
        // A plan's basis and its encode and decode sessions' copies, plus the graph being built
        // (codec/transform.ts builds one at a time; measured 2.66 GiB for two all-layer 8B plans
        // of 0.3 GiB: about 4 bases each, counted as 4.5).
        measuring += 4.5 * 4 * p * k;
      }
    widest = Math.max(widest, fitting + 2 * worker, measuring);
    plans = Math.max(plans, measuring);
  }
  let two = 0;
  if (anyTwo)
    for (const kind of KINDS) {
      const R = Math.min(o.rank ?? TWO_LEVEL_RANK, dim(g, kind, g.layers));
      two += 2 * 8 * R * R + g.layers * 8 * dim(g, kind, 1) ** 2;
    }
  // Parked on disk when the two-level fit runs (cache-park.ts), else held from capture to the end;
  // parked, one sequence and its decoded copy are in memory at a time.
  const sequence = 2 * 4 * Math.min(o.sequenceTokens ?? MAX_SEQUENCE_TOKENS, Math.max(o.heldout, o.report)) * P;
  const tuningHeld = anyTwo ? sequence : tuning;
  const reportHeld = anyTwo ? 0 : report;
  const capture = RUNTIME_BYTES + 1.25 * o.modelBytes + tuningHeld + reportHeld + cov + two;
  const fit = RUNTIME_BYTES + tuningHeld + reportHeld + cov + two + widest;
  // The chosen plans (any candidate's) in the codec, on the report caches (parked: one sequence).
  const end = RUNTIME_BYTES + (anyTwo ? sequence : report) + plans;
  // What the sum leaves out (garbage the JavaScript heap has not yet collected, allocator
  // slack): measured peaks were up to OVERHEAD times the sum (docs/benchmarks.md, "Two-level fit").
  const f = OVERHEAD;
  return { capture: f * capture, fit: f * fit, report: f * end, peak: f * Math.max(capture, fit, end), budget: o.budget };
}

/**
 * Ranks of one KV dump calibrated together (calibrate-kv.ts): every rank's captured state (its
 * covariances, two-level sums and held caches) is held at once while the dump is read; then one
 * rank at a time fits and measures, the others' state still held. Errs high: a rank's state
 * goes once its profiles are written.
 */
export function combineEstimates(es: MemoryEstimate[]): MemoryEstimate {
  const runtime = OVERHEAD * RUNTIME_BYTES;
  const held = es.map((e) => e.capture - runtime);
  const all = held.reduce((a, h) => a + h, 0);
  const capture = runtime + all;
  const fit = Math.max(...es.map((e, i) => e.fit + all - held[i]));
  const report = Math.max(...es.map((e, i) => e.report + all - held[i]));
  return { capture, fit, report, peak: Math.max(capture, fit, report), budget: es[0].budget };
}

const gib = (b: number) => `${(b / 2 ** 30).toFixed(b < 10 * 2 ** 30 ? 2 : 1)} GiB`;

/** Refuses (USAGE) a calibration whose estimate passes its budget, before any work. */
export function checkMemory(e: MemoryEstimate, o: { budgetGiven: boolean; totalBytes: number }): void {
  if (e.peak <= e.budget) return;
  const phase = e.peak === e.capture ? 'capturing the caches' : e.peak === e.fit ? 'fitting the bases' : 'measuring the report caches';
  throw new KvtcError(
    'USAGE',
    `calibration would need about ${gib(e.peak)} of memory (peak while ${phase}), more than ${o.budgetGiven ? 'the --memory budget of' : "half of this machine's"} ${gib(o.budgetGiven ? e.budget : o.totalBytes)}`,
    {
      fix: `Raise --memory (this machine has ${gib(o.totalBytes)}), or lower --tuning-tokens / --report-tokens (the caches kvtc holds), --two-level-rank, or use --grouping layer.`,
      context: { estimate: e },
    },
  );
}
