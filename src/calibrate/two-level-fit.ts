// Tested by test/calibrate/two-level-calibrate.test.ts.
/**
 * Calibration's side of the two-level fit (src/fit/two-level.ts) of the groupings whose bases are
 * too wide for a p×p covariance: during the fit pass each cache's features over all layers are
 * spilled to disk in float16 (feature-spill.ts) beside the per-layer covariances; then, once,
 * the per-layer eigenbases, the reduced layout, a second pass over the spill into the reduced
 * covariance C_Z (the spill is deleted after it); then each group's basis from its block of C_Z,
 * with the tuning coefficients computed through the per-layer bases (never the p_G-wide product).
 */
import type { KvKind } from '../codec/types.js';
import { invariant } from '../errors.js';
import { matMulAsync, symmetricEigenAsync } from '../fit/eigen-ort.js';
import { featureDim, gatherFeatures } from '../fit/features.js';
import {
  covarianceBlock,
  groupColumns,
  liftVectors,
  ReducedGram,
  reducedLayout,
  TWO_LEVEL_RANK,
  type ReducedLayout,
} from '../fit/two-level.js';
import type { KvCache, ModelSpec } from '../model/types.js';
import type { Device } from '../onnx/session.js';
import type { CovarianceAccumulator } from '../fit/covariance.js';
import { FeatureSpill } from './feature-spill.js';
import { blockEigenHere, type BlockEigenRunner } from './fit-pool.js';
import type { ProgressFn } from '../progress.js';
import type { ExternalEigen } from '../fit/eigen-python.js';

/** The per-layer covariance of one (kind, layer), accumulated in the fit pass. */
export interface LayerCovariance {
  kind: KvKind;
  layer: number;
  acc: CovarianceAccumulator;
}

/** What each kind's prepared reduction holds. */
interface Prepared {
  layout: ReducedLayout;
  /** [L] U_l [p_l, cols[l]] float64 row-major and its column count. */
  vectors: (Float64Array | Float32Array)[];
  cols: number[];
  /** [L·p_l] float64 mean over all layers. */
  mean: Float64Array;
  /** [R, R] reduced covariance. */
  C: Float64Array;
}

/** A basis fitted from the reduction: its top k eigenpairs over all its features. */
export interface TwoLevelBasis {
  values: Float64Array;
  /** [p_G, k] float32. */
  vectors: Float32Array;
  mean: Float64Array;
  /** [H, k] held-out coefficients and the held-out energy outside the k components. */
  coeffs: Float32Array;
  residual: number;
  /** How the reduced block was decomposed. */
  solver: 'randomized' | 'dense' | 'dense-truncated';
  /** Reduced columns of the group (R_G) and the variance the per-layer truncation left out (Σ over its layers). */
  reduced: number;
  discarded: number;
}

/** The reduction's figures (for the result and the docs). */
export interface TwoLevelSummary {
  kinds: {
    kind: KvKind;
    /** R: reduced columns, of `features` over all layers. */
    reduced_columns: number;
    features: number;
    /** Fit-split variance the per-layer truncation left out, as a share of the total (what a basis over all layers can lose to it at most). */
    discarded_share: number;
  }[];
  /** Bytes of float16 features spilled to disk (deleted after the second pass). */
  spill_bytes: number;
  /** Seconds: spilling in the fit pass; preparing (per-layer bases not offered, second pass). */
  seconds: { spill: number; prepare: number };
}

export class TwoLevelFit {
  private spill: FeatureSpill | undefined;
  private readonly preparedKinds = new Map<KvKind, Prepared>();
  private readonly kindSummaries: TwoLevelSummary['kinds'] = [];
  private readonly offered = new Map<string, { values: Float64Array; vectors: Float64Array | Float32Array; cols: number }>();
  private scratch = new Float32Array(0);
  private preparing: Promise<void> | undefined;
  /** Seconds spent: spilling (in the fit pass), preparing (eigen, second pass), per basis. */
  readonly seconds = { spill: 0, prepare: 0 };
  private spillBytes = 0;

  constructor(
    readonly spec: ModelSpec,
    /** Model cache layers, in order. */
    readonly layers: number[],
    readonly perLayer: LayerCovariance[],
    readonly opts: { device: Device; rank?: number; external?: ExternalEigen },
  ) {}

  get rank(): number {
    return this.opts.rank ?? TWO_LEVEL_RANK;
  }

  /** The fit pass: spills one cache's features (tokens [sink, end)) of both kinds over all layers. */
  async add(cache: KvCache, sink: number): Promise<void> {
    const t = performance.now();
    this.spill ??= await FeatureSpill.create();
    const n = cache.tokens - sink;
    for (const kind of ['key', 'value'] as KvKind[]) {
      const P = featureDim(cache, this.layers, kind);
      if (this.scratch.length < n * P) this.scratch = new Float32Array(n * P);
      const X = gatherFeatures(cache, { kind, layers: this.layers }, this.spec.rope, sink, cache.tokens, this.scratch);
      await this.spill.append(kind, X, n, P);
    }
    this.seconds.spill += (performance.now() - t) / 1000;
  }

  /**
   * Offers a per-layer fit already made (the 'layer' grouping's tables: top components only), so
   * preparing needs no eigensolve of its own for that layer.
   */
  offerLayer(kind: KvKind, layer: number, values: Float64Array, vectors: Float64Array | Float32Array): void {
    this.offered.set(`${kind}/${layer}`, { values, vectors, cols: values.length });
  }

  /** Per-layer bases, the layout, and the second pass into C_Z; once, for both kinds. */
  prepare(onProgress?: ProgressFn): Promise<void> {
    this.preparing ??= this.doPrepare(onProgress);
    return this.preparing;
  }

  private async doPrepare(onProgress?: ProgressFn): Promise<void> {
    const t = performance.now();
    invariant(this.spill !== undefined, 'Error in TwoLevelFit.prepare: no fit tokens were spilled');
    try {
      for (const kind of ['key', 'value'] as KvKind[]) {
        const covs = this.layers.map((l) => this.perLayer.find((c) => c.kind === kind && c.layer === l));
        const p = covs[0]!.acc.p;
        const vectors: (Float64Array | Float32Array)[] = [];
        const cols: number[] = [];
        const values: Float64Array[] = [];
        const traces: number[] = [];
        const mean = new Float64Array(this.layers.length * p);
        for (const [li, c] of covs.entries()) {
          invariant(c !== undefined && c.acc.p === p, `Error in TwoLevelFit: no ${kind} covariance for layer ${this.layers[li]}`);
          const cov = c.acc.finish();
          mean.set(cov.mean, li * p);
          let tr = 0;
          for (let i = 0; i < p; i++) tr += cov.cov[i * p + i];
          traces.push(tr);
          const given = this.offered.get(`${kind}/${this.layers[li]}`);
          if (given) {
            values.push(given.values);
            vectors.push(given.vectors);
            cols.push(given.cols);
          } else {
            onProgress?.({ stage: `two-level fit: ${kind} bases of each layer`, done: li, total: covs.length, unit: 'layers' });
            const e = await symmetricEigenAsync(cov.cov, p, { device: this.opts.device, external: this.opts.external });
            values.push(e.values);
            vectors.push(e.vectors);
            cols.push(p);
          }
        }
        const layout = reducedLayout(values, traces, p, this.rank);
        const stage = `two-level fit: reduced ${kind} covariance (${layout.total} columns, second pass over the spilled features)`;
        const total = this.spill.rows(kind);
        onProgress?.({ stage, done: 0, total, unit: 'tokens' });
        const gram = await ReducedGram.create(layout, mean, vectors, cols, { device: this.opts.device });
        try {
          for await (const { x, rows } of this.spill.read(kind, 1024)) {
            await gram.add(x, rows);
            onProgress?.({ stage, done: gram.count, total, unit: 'tokens' });
          }
          this.preparedKinds.set(kind, { layout, vectors, cols, mean, C: gram.finish() });
          const kept = layout.kept.reduce((a, b) => a + b, 0);
          const lost = layout.discarded.reduce((a, b) => a + b, 0);
          this.kindSummaries.push({
            kind,
            reduced_columns: layout.total,
            features: mean.length,
            discarded_share: kept + lost > 0 ? lost / (kept + lost) : 0,
          });
        } finally {
          await gram.dispose();
        }
      }
      for (const c of this.perLayer) c.acc.release();
    } finally {
      this.spillBytes = this.spill.bytes;
      await this.dispose();
      this.seconds.prepare += (performance.now() - t) / 1000;
    }
  }

  summary(): TwoLevelSummary {
    const kinds = [...this.kindSummaries];
    return { kinds, spill_bytes: Math.max(this.spillBytes, this.spill?.bytes ?? 0), seconds: { ...this.seconds } };
  }

  /**
   * The basis over `layers` (a contiguous run of this.layers) of `kind`: the top `maxRank`
   * eigenpairs of its block of C_Z (at most R_G), lifted to its features, and the coefficients
   * of `heldout` (X: Float32Array // [H, p_G]) on them. The block's eigensolve runs through
   * `run` (fit-pool.ts: on the pool's worker that takes the basis, or here).
   */
  async basis(
    kind: KvKind,
    layers: number[],
    maxRank: number,
    heldout: Float32Array,
    H: number,
    run: BlockEigenRunner = blockEigenHere,
  ): Promise<TwoLevelBasis> {
    const pr = this.preparedKinds.get(kind);
    invariant(pr !== undefined, 'Error in TwoLevelFit.basis: prepare() first');
    const idx = layers.map((l) => this.layers.indexOf(l));
    invariant(
      idx.every((i) => i >= 0),
      'Error in TwoLevelFit.basis: a layer outside the reduction',
    );
    const p = pr.layout.layerDim;
    const pG = idx.length * p;
    const cols = groupColumns(pr.layout, idx);
    const m = cols.length;
    invariant(m >= 1, `Error in TwoLevelFit.basis: layers ${layers.join(',')} keep no reduced columns`);
    // Up to every column of the block: blockEigen solves up to RANDOMIZED_MAX_RANK_FRACTION of
    // it by the randomized solver and above that by the dense one cut to k, which costs about the
    // same there (docs/benchmarks.md, "Rank ~10K"); what k leaves out is in the tables' residual.
    const k = Math.max(1, Math.min(maxRank, m));
    const device = this.opts.device;
    const external = this.opts.external;
    const { W, values, solver } = await run({
      op: 'block-eigen',
      block: covarianceBlock(pr.C, pr.layout.total, cols),
      m,
      k,
      device,
      ...(external ? { external } : {}),
    });
    const vectors = await liftVectors(pr.layout, idx, pr.vectors, pr.cols, W, k, device);
    const mean = new Float64Array(pG);
    for (const [gi, li] of idx.entries()) mean.set(pr.mean.subarray(li * p, (li + 1) * p), gi * p);

    // Held-out coefficients through the per-layer bases: Z = (X − μ)·B_G [H, m], then Z·W.
    invariant(heldout.length >= H * pG, 'Error in TwoLevelFit.basis: held-out features shorter than H·p_G');
    const Z = new Float64Array(H * m);
    let energy = 0;
    let zc = 0;
    const Y = new Float64Array(H * p);
    for (const [gi, li] of idx.entries()) {
      const r = pr.layout.ranks[li];
      for (let t = 0; t < H; t++) {
        const src = t * pG + gi * p;
        for (let i = 0; i < p; i++) {
          const v = heldout[src + i] - mean[gi * p + i];
          Y[t * p + i] = v;
          energy += v * v;
        }
      }
      if (r > 0) {
        const uc = pr.cols[li];
        const U = new Float64Array(p * r);
        for (let i = 0; i < p; i++) for (let c = 0; c < r; c++) U[i * r + c] = pr.vectors[li][i * uc + c];
        const Zl = await matMulAsync(Y, U, H, p, r, 0, device);
        for (let t = 0; t < H; t++) for (let c = 0; c < r; c++) Z[t * m + zc + c] = Zl[t * r + c];
      }
      zc += r;
    }
    const C64 = await matMulAsync(Z, W, H, m, k, 0, device);
    let inside = 0;
    for (let i = 0; i < C64.length; i++) inside += C64[i] * C64[i];
    const discarded = idx.reduce((a, li) => a + pr.layout.discarded[li], 0);
    return {
      values,
      vectors,
      mean,
      coeffs: Float32Array.from(C64),
      residual: Math.max(0, energy - inside),
      solver,
      reduced: m,
      discarded,
    };
  }

  /** Whether prepare() has run (the per-layer covariances are then released). */
  get prepared(): boolean {
    return this.kindSummaries.length > 0;
  }

  /** Drops the reduction (C_Z, the per-layer bases) once every two-level basis is fitted. */
  release(): void {
    this.preparedKinds.clear();
    this.offered.clear();
  }

  /** Deletes the spill (idempotent); the reduction itself stays for basis() until release().  */
  async dispose(): Promise<void> {
    const s = this.spill;
    if (s) {
      this.spillBytes = Math.max(this.spillBytes, s.bytes);
      await s.dispose();
    }
  }
}
