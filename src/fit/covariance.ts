/**
 * Streaming float64 mean and covariance over any number of tokens, memory O(p²).
 *
 * Cancellation: every chunk is centred on a fixed shift (the first chunk's mean) before
 * its Gram matrix is taken, so S2 = Σ (x-shift)(x-shift)ᵀ stays small relative to the
 * variance; cov = S2/n - d·dᵀ with d = S1/n the (small) offset of the mean from the shift.
 * The covariance is the maximum-likelihood estimate (divides by n, not n-1).
 *
 * The Gram product YᵀY dominates (tokens·p² multiply-adds per basis). Two kernels:
 *  - 'js': float64 4x4-register-tiled dot products on the transposed chunk (exact-ish, no deps);
 *  - 'ort': float32 Gemm(transA=1) on ONNX Runtime per chunk of <= 1024 centred tokens,
 *    accumulated into float64 here. Chunks are centred, so float32 partial sums over 1024
 *    tokens lose ~1e-6 relative, far below sampling noise; 1024-token chunks amortize the
 *    float64 accumulation of the p² result better than 512.
 * Timings of both kernels: docs/benchmarks.md, "Calibration kernels".
 */
import type * as ortTypes from 'onnxruntime-node';
import { invariant } from '../errors.js';
import { gemmABt } from '../math/gemm.js';
import type { Device } from '../onnx/devices.js';
import { ORT_GRAM_MIN_P } from './ort-thresholds.js';

/** Computes G[p, p] = YᵀY (at least the upper triangle j >= i) of a centred chunk Y [tokens, p]. */
export interface GramKernel {
  readonly name: string;
  /** Largest chunk the kernel accepts in one call. */
  readonly maxTokens: number;
  /** Adds YᵀY into S [p, p] float64 (upper triangle suffices). */
  addGram(Y: Float32Array | Float64Array, tokens: number, p: number, S: Float64Array): Promise<void> | void;
  dispose?(): Promise<void> | void;
}

/** float64 JS kernel: transposes the chunk and takes tiled dot products (upper triangle only). */
export class JsGramKernel implements GramKernel {
  readonly name = 'js';
  readonly maxTokens = 256;
  private yt = new Float64Array(0);

  addGram(Y: Float32Array | Float64Array, tokens: number, p: number, S: Float64Array): void {
    if (this.yt.length < p * tokens) this.yt = new Float64Array(p * tokens);
    const yt = this.yt;
    for (let t = 0; t < tokens; t++) {
      const r = t * p;
      for (let i = 0; i < p; i++) yt[i * tokens + t] = Y[r + i];
    }
    gemmABt(yt, yt, S, p, p, tokens, { accumulate: true, upper: true });
  }
}

/** ONNX Runtime kernel: G = Gemm(Y, Y, transA=1) in float32, one session per p. */
export class OrtGramKernel implements GramKernel {
  readonly name = 'ort';
  private constructor(
    private readonly session: ortTypes.InferenceSession,
    private readonly ort: typeof ortTypes,
    readonly maxTokens: number,
    readonly p: number,
  ) {}

  static async create(p: number, opts: { device?: Device; threads?: number; maxTokens?: number } = {}): Promise<OrtGramKernel> {
    const { GraphBuilder } = await import('../onnx/builder.js');
    const { createSession, ort } = await import('../onnx/session.js');
    const g = new GraphBuilder('kvtc_gram');
    const y = g.input('y', 'float32', ['tokens', p]);
    const out = g.op('Gemm', [y, y], { transA: 1 });
    g.output(out, 'gram', 'float32', [p, p]);
    const session = await createSession(g.toModel(), { device: opts.device, threads: opts.threads });
    return new OrtGramKernel(session, ort, opts.maxTokens ?? 1024, p);
  }

  async addGram(Y: Float32Array | Float64Array, tokens: number, p: number, S: Float64Array): Promise<void> {
    invariant(p === this.p, `Error in OrtGramKernel: built for p=${this.p}, called with p=${p}`);
    const y32 = Y instanceof Float32Array ? Y.subarray(0, tokens * p) : Float32Array.from(Y.subarray(0, tokens * p));
    const res = await this.session.run({ y: new this.ort.Tensor('float32', y32, [tokens, p]) });
    const G = res.gram.data as Float32Array;
    for (let i = 0; i < p; i++) {
      const o = i * p;
      for (let j = i; j < p; j++) S[o + j] += G[o + j];
    }
    res.gram.dispose?.();
  }

  async dispose(): Promise<void> {
    await this.session.release();
  }
}

export interface CovarianceResult {
  /** [p] float64 */
  mean: Float64Array;
  /** [p, p] float64 row-major, symmetric */
  cov: Float64Array;
  count: number;
}

/**
 * What every streaming accumulator of features keeps: each chunk centred on a fixed shift (the
 * first chunk's mean, against cancellation), the sum of the shifted features and the count.
 * CovarianceAccumulator takes the Gram matrix of each shifted chunk and finishes from d = S1/n,
 * the mean's offset from the shift.
 */
export class ShiftedFeatureStream {
  private readonly s1: Float64Array; // Σ (x - shift)
  private shift: Float64Array | undefined;
  private n = 0;
  private readonly chunk: Float32Array;

  constructor(
    readonly p: number,
    /** Tokens per chunk handed on. */
    readonly step: number,
    /** The accumulator's name, for its invariant messages. */
    private readonly owner: string,
  ) {
    invariant(Number.isInteger(p) && p > 0, `Error in ${owner}: p (${p}) must be a positive integer`);
    this.s1 = new Float64Array(p);
    this.chunk = new Float32Array(step * p);
  }

  get count(): number {
    return this.n;
  }

  /**
   * Shifts X: Float32Array // [tokens, p] token-major into chunks of at most `step` tokens and
   * awaits `use(chunk, n)` on each (the first n rows of the shared chunk buffer are the shifted tokens).
   */
  async add(X: Float32Array, tokens: number, use: (chunk: Float32Array, n: number) => void | Promise<void>): Promise<void> {
    const p = this.p;
    invariant(X.length >= tokens * p, `Error in ${this.owner}.add: X length (${X.length}) < tokens*p (${tokens}*${p})`);
    if (tokens === 0) return;
    if (!this.shift) {
      const sh = new Float64Array(p);
      for (let t = 0; t < tokens; t++) for (let i = 0; i < p; i++) sh[i] += X[t * p + i];
      for (let i = 0; i < p; i++) sh[i] /= tokens;
      this.shift = sh;
    }
    const shift = this.shift;
    const Y = this.chunk;
    for (let t0 = 0; t0 < tokens; t0 += this.step) {
      const n = Math.min(this.step, tokens - t0);
      for (let t = 0; t < n; t++) {
        const src = (t0 + t) * p;
        const dst = t * p;
        for (let i = 0; i < p; i++) {
          const v = X[src + i] - shift[i];
          Y[dst + i] = v;
          this.s1[i] += v;
        }
      }
      await use(Y, n);
      this.n += n;
    }
  }

  /** d = S1/n (the mean's offset from the shift) and the mean, float64. */
  means(): { n: number; d: Float64Array; mean: Float64Array } {
    const { p, n } = this;
    invariant(n > 0, `Error in ${this.owner}.finish: no tokens were added`);
    const shift = this.shift!;
    const d = new Float64Array(p);
    const mean = new Float64Array(p);
    for (let i = 0; i < p; i++) {
      d[i] = this.s1[i] / n;
      mean[i] = shift[i] + d[i];
    }
    return { n, d, mean };
  }
}

export class CovarianceAccumulator {
  private s2: Float64Array; // Σ (x - shift)(x - shift)ᵀ, upper triangle
  private readonly kernel: GramKernel;
  private readonly stream: ShiftedFeatureStream;

  constructor(
    readonly p: number,
    kernel: GramKernel = new JsGramKernel(),
  ) {
    this.stream = new ShiftedFeatureStream(p, kernel.maxTokens, 'CovarianceAccumulator');
    this.s2 = new Float64Array(p * p);
    this.kernel = kernel;
  }

  get count(): number {
    return this.stream.count;
  }

  /** Adds X: Float32Array // [tokens, p] token-major. Await it before touching X again. */
  async add(X: Float32Array, tokens: number): Promise<void> {
    await this.stream.add(X, tokens, (Y, n) => this.kernel.addGram(Y, n, this.p, this.s2));
  }

  /** Drops the running sums (8p² bytes); finish() may not be called again. */
  release(): void {
    this.s2 = new Float64Array(0);
  }

  finish(): CovarianceResult {
    const p = this.p;
    invariant(this.s2.length === p * p, 'Error in CovarianceAccumulator.finish: released');
    const { n, d, mean } = this.stream.means();
    const cov = new Float64Array(p * p);
    for (let i = 0; i < p; i++) {
      for (let j = i; j < p; j++) {
        const c = this.s2[i * p + j] / n - d[i] * d[j];
        cov[i * p + j] = c;
        cov[j * p + i] = c;
      }
    }
    return { mean, cov, count: n };
  }
}

/** The Gram kernel for p features: ONNX Runtime's Gemm from ORT_GRAM_MIN_P on, plain JS below. */
export async function createGramKernel(p: number, opts: { device?: Device } = {}): Promise<GramKernel> {
  return p >= ORT_GRAM_MIN_P ? OrtGramKernel.create(p, { device: opts.device }) : new JsGramKernel();
}
