/**
 * Statistics for `kvtc evaluate`: accuracy with the harness's standard error, group
 * aggregation, and the paired comparisons between an uncompressed and a compressed run
 * on the same questions. Everything is deterministic given the seed.
 */
import { invariant } from '../errors.js';
import { mulberry32 } from '../random.js';

export { mulberry32 };

/** Per-question correctness: 1/true = correct. */
export type Outcomes = ArrayLike<number | boolean>;

export interface Accuracy {
  n: number;
  correct: number;
  /** correct / n (NaN when n = 0). */
  accuracy: number;
  /** Standard error of the mean, as the harness reports `acc_stderr`. */
  stderr: number;
}

export function mean(xs: ArrayLike<number>): number {
  let s = 0;
  for (let i = 0; i < xs.length; i++) s += xs[i];
  return s / xs.length;
}

/** Sample standard deviation (n − 1 denominator), lm_eval.api.metrics.sample_stddev. */
export function sampleStd(xs: ArrayLike<number>): number {
  const n = xs.length;
  if (n < 2) return NaN;
  const mu = mean(xs);
  let ss = 0;
  for (let i = 0; i < n; i++) ss += (xs[i] - mu) ** 2;
  return Math.sqrt(ss / (n - 1));
}

/** sample_stddev / √n, lm_eval.api.metrics.mean_stderr. */
export function meanStderr(xs: ArrayLike<number>): number {
  return sampleStd(xs) / Math.sqrt(xs.length);
}

function toNumbers(outcomes: Outcomes): Float64Array {
  const out = new Float64Array(outcomes.length);
  for (let i = 0; i < outcomes.length; i++) out[i] = Number(outcomes[i]);
  return out;
}

export function accuracy(outcomes: Outcomes): Accuracy {
  const xs = toNumbers(outcomes);
  let correct = 0;
  for (let i = 0; i < xs.length; i++) correct += xs[i];
  return { n: xs.length, correct, accuracy: correct / xs.length, stderr: meanStderr(xs) };
}

/**
 * Group accuracy micro-averaged over questions (the harness's weight_by_size), with its
 * pooled standard error: lm_eval.api.metrics.pooled_sample_stderr,
 *   sqrt( Σ (n_i − 1)·se_i²·n_i / (Σ n_i − k) / Σ n_i ).
 */
export function groupAccuracy(parts: readonly Accuracy[]): Accuracy {
  const used = parts.filter((p) => p.n > 0);
  let n = 0;
  let correct = 0;
  let pooledVar = 0;
  for (const p of used) {
    n += p.n;
    correct += p.correct;
    // A one-question subtask has no sample variance: it contributes nothing, as n_i − 1 = 0.
    if (p.n > 1) pooledVar += (p.n - 1) * p.stderr ** 2 * p.n;
  }
  pooledVar /= n - used.length;
  return { n, correct, accuracy: correct / n, stderr: Math.sqrt(pooledVar / n) };
}

/** bootstrapMeans' interval of the per-question difference, its mean named `delta`. */
export interface PairedDelta extends Omit<BootstrapMean, 'mean'> {
  /** accuracy(candidate) − accuracy(baseline), in [−1, 1]. */
  delta: number;
}

export interface BootstrapOptions {
  /** Default 10,000. */
  resamples?: number;
  /** Default 0. */
  seed?: number;
  /** Default 0.95. */
  confidence?: number;
}

/**
 * Paired bootstrap of the accuracy delta: resample question indices with replacement
 * (the same indices for both runs), take the percentile interval of the resampled deltas.
 * Identical runs give exactly [0, 0].
 */
export function pairedBootstrapDelta(baseline: Outcomes, candidate: Outcomes, options: BootstrapOptions = {}): PairedDelta {
  const n = baseline.length;
  invariant(candidate.length === n, `Error in pairedBootstrapDelta: runs have ${n} and ${candidate.length} questions`);
  invariant(n > 0, 'Error in pairedBootstrapDelta: no questions');
  const a = toNumbers(baseline);
  const b = toNumbers(candidate);
  const d = new Float64Array(n);
  for (let i = 0; i < n; i++) d[i] = b[i] - a[i];
  const [{ mean, ...interval }] = bootstrapMeans([d], options);
  return { delta: mean, ...interval };
}

/** The mean of one per-item column with its percentile bootstrap interval (bootstrapMeans). */
export interface BootstrapMean {
  mean: number;
  /** Percentile bootstrap interval of the mean. */
  lo: number;
  hi: number;
  confidence: number;
  resamples: number;
  seed: number;
  n: number;
}

/**
 * Bootstrap of the means of several per-item columns (each Float64Array // [items]) over the
 * same resampled items: per resample, n indices are drawn with floor(rng()·n) from
 * mulberry32(seed) and every column is averaged over them, so the columns' intervals are paired
 * (and the first column's interval is the one pairedBootstrapDelta gives for it). Percentile
 * intervals; a constant column gives exactly [c, c].
 */
export function bootstrapMeans(columns: readonly ArrayLike<number>[], options: BootstrapOptions = {}): BootstrapMean[] {
  const { resamples = 10_000, seed = 0, confidence = 0.95 } = options;
  invariant(columns.length > 0, 'Error in bootstrapMeans: no columns');
  const n = columns[0].length;
  invariant(n > 0, 'Error in bootstrapMeans: no items');
  invariant(
    columns.every((c) => c.length === n),
    `Error in bootstrapMeans: columns have ${columns.map((c) => c.length).join(', ')} items`,
  );
  invariant(resamples >= 1 && confidence > 0 && confidence < 1, 'Error in bootstrapMeans: bad resamples or confidence');
  const k = columns.length;
  const cols = columns.map((c) => Float64Array.from(c));
  const stats = cols.map(() => new Float64Array(resamples));
  const rng = mulberry32(seed);
  // One resample's draws, then one tight loop per column (faster than k sums per draw).
  const idx = new Int32Array(n);
  for (let r = 0; r < resamples; r++) {
    for (let i = 0; i < n; i++) idx[i] = Math.floor(rng() * n);
    for (let c = 0; c < k; c++) {
      const col = cols[c];
      let s = 0;
      for (let i = 0; i < n; i++) s += col[idx[i]];
      stats[c][r] = s / n;
    }
  }
  const alpha = (1 - confidence) / 2;
  return cols.map((col, c) => {
    let sum = 0;
    for (let i = 0; i < n; i++) sum += col[i];
    const sorted = stats[c].sort();
    return { mean: sum / n, lo: quantile(sorted, alpha), hi: quantile(sorted, 1 - alpha), confidence, resamples, seed, n };
  });
}

/** Linear-interpolated quantile of sorted data (NumPy's default 'linear' method). */
export function quantile(sorted: ArrayLike<number>, q: number): number {
  const pos = (sorted.length - 1) * q;
  const lo = Math.floor(pos);
  const hi = Math.ceil(pos);
  return sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo);
}

/** Fraction of questions on which the two runs pick the same answer. */
export function agreementRate(predsA: ArrayLike<number>, predsB: ArrayLike<number>): number {
  invariant(predsA.length === predsB.length, `Error in agreementRate: ${predsA.length} and ${predsB.length} predictions`);
  let same = 0;
  for (let i = 0; i < predsA.length; i++) if (predsA[i] === predsB[i]) same++;
  return same / predsA.length;
}

/** Index of the largest value; the first one on ties (as numpy.argmax). */
export function argmax(xs: ArrayLike<number>): number {
  let best = 0;
  for (let i = 1; i < xs.length; i++) if (xs[i] > xs[best]) best = i;
  return best;
}

/** log-sum-exp, stable: max + log Σ exp(x − max). */
export function logSumExp(xs: ArrayLike<number>): number {
  let m = -Infinity;
  for (let i = 0; i < xs.length; i++) if (xs[i] > m) m = xs[i];
  if (m === -Infinity) return -Infinity;
  let s = 0;
  for (let i = 0; i < xs.length; i++) s += Math.exp(xs[i] - m);
  return m + Math.log(s);
}

/** log softmax(x) = (x − max) − log Σ exp(x − max), float64 (shifting first keeps precision). */
export function logSoftmax(xs: ArrayLike<number>): Float64Array {
  let m = -Infinity;
  for (let i = 0; i < xs.length; i++) if (xs[i] > m) m = xs[i];
  const out = new Float64Array(xs.length);
  if (m === -Infinity) return out.fill(NaN);
  let s = 0;
  for (let i = 0; i < xs.length; i++) {
    out[i] = xs[i] - m;
    s += Math.exp(out[i]);
  }
  const log = Math.log(s);
  for (let i = 0; i < xs.length; i++) out[i] -= log;
  return out;
}

export function softmax(xs: ArrayLike<number>): Float64Array {
  return logSoftmax(xs).map(Math.exp);
}

/**
 * KL(P ‖ Q) in nats between the answer distributions P = softmax(logLikP) and
 * Q = softmax(logLikQ) over the four continuations (P: uncompressed, Q: compressed).
 * Terms with p = 0 contribute 0; never negative (rounding is clamped).
 */
export function klDivergence(logLikP: ArrayLike<number>, logLikQ: ArrayLike<number>): number {
  invariant(logLikP.length === logLikQ.length, `Error in klDivergence: ${logLikP.length} and ${logLikQ.length} choices`);
  const lp = logSoftmax(logLikP);
  const lq = logSoftmax(logLikQ);
  let kl = 0;
  for (let i = 0; i < lp.length; i++) {
    const p = Math.exp(lp[i]);
    if (p > 0) kl += p * (lp[i] - lq[i]);
  }
  return Math.max(0, kl);
}
