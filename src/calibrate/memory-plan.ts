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
import { availableParallelism } from 'node:os';
import type { KvKind } from '../codec/types.js';
import { KvtcError } from '../errors.js';
import { maxRankForRatios } from '../fit/fit.js';
import { TWO_LEVEL_RANK } from '../fit/two-level.js';
import { blockEigenBytes, PARALLEL_BLOCK_EIGEN_BYTES } from './fit-pool.js';
import { EXTERNAL_EIGEN_MIN_P, type ExternalEigen } from '../fit/eigen-python.js';

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

/**
 * Measured peak over the sum of what each phase holds, with a margin: Llama 3.1 8B geometry
 * peaked at 5.70, 6.26, 5.73 and 6.34 GiB in four 16K-fit-token runs, 5.96 GiB at 64K and
 * 5.92 GiB at 160K against a sum of 3.95 GiB, 1.44–1.61 times (and 6.59 GiB, 1.67 times, with
 * node --cpu-prof holding its samples; docs/benchmarks.md, "Two-level fit": garbage the
 * JavaScript heap has not yet collected, allocator slack, ONNX Runtime's own buffers). A margin,
 * not a model: 1.65 was passed by the profiled run, so it is 1.8.
 */
export const OVERHEAD = 1.8;

/** The longest held-out sequence calibrate uses (calibrate.ts readSplit). */
export const MAX_SEQUENCE_TOKENS = 512;

const KINDS: KvKind[] = ['key', 'value'];
const isLayer = (x: { groups: number[][]; twoLevel: boolean }) => !x.twoLevel && x.groups.every((l) => l.length === 1);
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
    /** Fit workers (default: the machine's cores). */
    threads?: number;
    /** The longest held-out sequence (parked caches are read one at a time); default MAX_SEQUENCE_TOKENS. */
    sequenceTokens?: number;
    /** The external dense eigensolver (eigen-python.ts): its child process holds about five p × p float64 arrays per solve. */
    external?: ExternalEigen;
  },
): MemoryEstimate {
  const P = KINDS.reduce((a, k) => a + dim(g, k, g.layers), 0);
  const tuning = 4 * o.heldout * P;
  const report = 4 * o.report * P;
  const anyTwo = o.groupings.some((x) => x.twoLevel);
  // Each grouping's covariances (dense ones) and working set: its bases being fitted, then its
  // plans in the codec. Groupings are fitted in order, each one's covariances released after it.
  const covs: number[] = [];
  const working: number[] = [];
  let plans = 0;
  const threads = o.threads ?? availableParallelism();
  for (const x of o.groupings) {
    let cov = 0;
    // Every basis's tables (their tuning coefficients) until the allocation; one basis's tuning
    // features at a time while they are gathered.
    let fitting = 0;
    let gather = 0;
    let measuring = 0;
    let worker = 0;
    let jobs = 0;
    let blocks = 0;
    // Reduced columns of each kind not yet given to a group: the groups' blocks share R.
    const columnsLeft = new Map(KINDS.map((kind) => [kind, Math.min(o.rank ?? TWO_LEVEL_RANK, dim(g, kind, g.layers))]));
    for (const layers of x.groups)
      for (const kind of KINDS) {
        const p = dim(g, kind, layers.length);
        let k = Math.min(p, maxRankForRatios(p, o.ratios));
        gather = Math.max(gather, 4 * o.heldout * p);
        if (x.twoLevel) {
          // Its block has at most min(R, p) columns; the groups' blocks together at most R. The
          // bases' sizes (p·k) add up to the most when the first groups, as wide as any later
          // one, take all they can, so they are counted that way; the block eigensolve, one at
          // a time, as the widest a block can be.
          const R = Math.min(o.rank ?? TWO_LEVEL_RANK, dim(g, kind, g.layers));
          const m = Math.min(R, p);
          const share = Math.min(m, columnsLeft.get(kind)!);
          columnsLeft.set(kind, columnsLeft.get(kind)! - share);
          // Up to every column of its block (two-level-fit.ts TwoLevelFit.basis).
          const kBlock = Math.min(k, m);
          k = Math.min(k, share);
          // The float32 basis and the coefficients.
          fitting += 4 * p * k + 4 * o.heldout * k;
          // Block eigensolves in flight on the workers (fit-pool.ts BlockEigenTask), two at once
          // only while they fit PARALLEL_BLOCK_EIGEN_BYTES together (BlockEigenGate).
          const b = blockEigenBytes(m, kBlock, o.external);
          blocks = Math.max(blocks, 2 * b <= PARALLEL_BLOCK_EIGEN_BYTES ? Math.min(threads, 2) * b : b);
        } else {
          cov += 8 * p * p;
          fitting += 4 * o.heldout * k;
          jobs++;
          // A job in flight (fit-pool.ts LazyFitJob, moved to its worker): the covariance copy,
          // the tuning features, the eigenvectors and the float64 centred features.
          worker = Math.max(
            worker,
            8 * p * p + 4 * o.heldout * p + 8 * p * k + 8 * o.heldout * p + (o.external && p >= EXTERNAL_EIGEN_MIN_P ? 5 * 8 * p * p : 0),
          );
        }
        // A plan's basis and its encode and decode sessions' copies, plus the graph being built
        // (codec/transform.ts builds one at a time; measured 2.66 GiB for two all-layer 8B plans
        // of 0.3 GiB: about 4 bases each, counted as 4.5). A plan stores at most the int2
        // components of its budget at the lowest ratio (the tables' margin is for the search).
        measuring += 4.5 * 4 * p * Math.min(k, maxRankForRatios(p, o.ratios, 1));
      }
    covs.push(cov);
    working.push(Math.max(fitting + gather + Math.min(threads, jobs) * worker + blocks, measuring));
    plans = Math.max(plans, measuring);
  }
  // The two-level fit's sums, and the per-layer covariances unless a one-layer grouping holds
  // them already (calibrate.ts candidateStates shares them).
  const layerHeld = o.groupings.some(isLayer);
  let two = 0;
  if (anyTwo)
    for (const kind of KINDS) {
      const R = Math.min(o.rank ?? TWO_LEVEL_RANK, dim(g, kind, g.layers));
      two += 2 * 8 * R * R + (layerHeld ? 0 : g.layers * 8 * dim(g, kind, 1) ** 2);
    }
  // Parked on disk when the two-level fit runs (cache-park.ts), else held from capture to the end;
  // parked, one sequence and its decoded copy are in memory at a time.
  const sequence = 2 * 4 * Math.min(o.sequenceTokens ?? MAX_SEQUENCE_TOKENS, Math.max(o.heldout, o.report)) * P;
  const tuningHeld = anyTwo ? sequence : tuning;
  const reportHeld = anyTwo ? 0 : report;
  const cov = covs.reduce((a, b) => a + b, 0);
  const capture = RUNTIME_BYTES + 1.25 * o.modelBytes + tuningHeld + reportHeld + cov + two;
  // While grouping i is fitted and measured: its covariances and those of the groupings after
  // it; a one-layer grouping's stay until the first two-level grouping has read them (calibrate.ts fitAndWrite).
  const firstTwo = o.groupings.findIndex((x) => x.twoLevel);
  let fitHeld = 0;
  for (let i = 0; i < o.groupings.length; i++) {
    let held = 0;
    for (let j = 0; j < o.groupings.length; j++) if (j >= i || (j < i && i <= firstTwo && isLayer(o.groupings[j]))) held += covs[j];
    fitHeld = Math.max(fitHeld, held + working[i]);
  }
  const fit = RUNTIME_BYTES + tuningHeld + reportHeld + two + fitHeld;
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
