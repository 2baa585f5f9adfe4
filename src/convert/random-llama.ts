/**
 * Seeded random-weight Llama model directories of any shape (GQA ratios, head dims, RoPE
 * variants, float16 KV, sliding-window layers, power-law K/V spectra), with the bundled
 * stories260K tokenizer, for tests and benchmarks.
 */
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { KvtcError, UsageError } from '../errors.js';
import { orthonormalizeRows } from '../fit/eigen-randomized.js';
import { runStepsOnOrt } from '../fit/eigen-ort.js';
import type { MatMulRequest } from '../fit/eigen-types.js';
import { transpose } from '../math/gemm.js';
import type { KvDtype, ModelSpec, RopeSpec } from '../model/types.js';
import { DEFAULT_MODEL_DIR } from '../paths.js';
import type { LlamaWeights } from './llama-graph.js';
import { writeLlamaModelDir, type LlamaDirSpec, type WrittenModelDir } from './model-dir.js';
import { mulberry32 } from '../random.js';
import { uniformModelRope } from '../rope/types.js';

export interface RandomLlamaOptions {
  /** Output model directory. */
  out: string;
  layers?: number; // default 2
  hidden?: number; // default 64
  heads?: number; // default 4
  kvHeads?: number; // default 2
  headDim?: number; // default hidden / heads
  intermediate?: number; // default 2 * hidden
  /** >= 512 (the bundled tokenizer's vocabulary); default 512. */
  vocab?: number;
  /** Defaults: theta 10000, rotaryDim headDim, layout 'half', no scaling. */
  rope?: Partial<RopeSpec>;
  kvDtype?: KvDtype; // default 'float32'
  seed?: number; // default 0
  maxPositions?: number; // default 2048
  /** Standard deviation of the projection and embedding weights; default 0.02. */
  std?: number;
  rmsNormEps?: number; // default 1e-5
  /** Untied lm_head (default false: tied to the embedding). */
  untied?: boolean;
  /** k_proj and v_proj with power-law singular values (see KvSpectrum); default: plain normal(0, std). */
  kvSpectrum?: KvSpectrum;
  /**
   * Per layer, a sliding attention window W (query i sees keys i-W < j <= i) or null for a
   * global layer: LlamaGraphOptions.attentionWindow, so the cache still keeps every token.
   * Only the ONNX graph knows it (config.json stays a plain LlamaConfig). Default: all global.
   */
  attentionWindow?: (number | null)[];
  force?: boolean;
  name?: string;
}

/**
 * Singular values of k_proj and v_proj: s_j = c·(j+1)^-decay, j < min(out, in), c such that
 * ‖W‖_F² = Σ s_j² = out·in·std², the expected squared norm of the plain normal(0, std) weight,
 * so activations keep their scale.
 *
 * Why: KVTC relies on keys and values being low-rank, a few percent of the PCA components
 * carrying most of the energy (Staniszewski & Łańcucki, arXiv 2511.01815); a normal(0, std)
 * projection's singular values are instead flat (Marchenko–Pastur). On the committed profiles
 * (kvtc-profiles/smollm2-135m-instruct, gemma3-270m; shares of the stored components' variance)
 * the top 1% of components hold 15–50%, the top 5% 38–88%, the top 10% 54–95%; a power law with
 * decay 0.5 (variance ∝ (j+1)^-1) gives 40/60/69% at p = 1024, decay 1 gives 95% in the top 1%.
 *
 * What it changes in captured caches is modest, measured on an 8-layer model with 8 KV heads ×
 * 128, hidden 1024 (1536 tokens of calibration text, mean removed, keys with RoPE): decay 0.5
 * raises layer 0's top-1% share from 0.11 to 0.18 (keys) and 0.34 to 0.53 (values) and leaves
 * later layers as they were (about 0.4 keys, 0.8–0.9 values), whose inputs, a random model's
 * hidden states, are already nearly low-rank.
 */
export interface KvSpectrum {
  /** Power-law exponent of the singular values, >= 0 (0: flat, W = c·U·Vᵀ). */
  decay: number;
}

/** KvSpectrum's seeded stream is its own (this salt on the seed), so every other weight is the plain model's. */
const KV_SPECTRUM_SALT = 0x6b765f73; // 'kv_s'

export interface RandomLlama extends WrittenModelDir {
  spec: ModelSpec;
  intermediate: number;
}

/** Seeded normal(0, std) values (Box-Muller). */
export function normals(rand: () => number, n: number, std: number): Float32Array {
  const out = new Float32Array(n);
  for (let i = 0; i < n; i += 2) {
    const r = Math.sqrt(-2 * Math.log(1 - rand())) * std;
    const th = 2 * Math.PI * rand();
    out[i] = r * Math.cos(th);
    if (i + 1 < n) out[i + 1] = r * Math.sin(th);
  }
  return out;
}

function usage(message: string, fix: string, context: Record<string, unknown>): KvtcError {
  return new UsageError(`buildRandomLlama: ${message}`, fix, context);
}

export interface RandomWeightShape {
  layers: number;
  hidden: number;
  heads: number;
  kvHeads: number;
  headDim: number;
  intermediate: number;
  vocab: number;
  /** Standard deviation of the projection and embedding weights. */
  std: number;
  untied?: boolean;
  /** Adds q/k RMSNorm weights (1 + small noise) of this kind (see LlamaGraphOptions.qkNorm). */
  qkNorm?: 'head' | 'projection';
}

/** Seeded random Llama weights (norms 1, projections normal(0, std)); same seed, same weights. */
export function randomLlamaWeights(rand: () => number, s: RandomWeightShape): LlamaWeights {
  const w = (n: number) => normals(rand, n, s.std);
  const ones = (n: number) => new Float32Array(n).fill(1);
  // Norm weights not all 1, so a norm over the wrong dims would show in the keys.
  const near1 = (n: number) => normals(rand, n, 0.2).map((v) => 1 + v);
  const qDim = s.heads * s.headDim;
  const kvDim = s.kvHeads * s.headDim;
  const weights: LlamaWeights = {
    embedTokens: w(s.vocab * s.hidden),
    layers: Array.from({ length: s.layers }, () => ({
      inputNorm: ones(s.hidden),
      qProj: w(qDim * s.hidden),
      kProj: w(kvDim * s.hidden),
      vProj: w(kvDim * s.hidden),
      oProj: w(s.hidden * qDim),
      postAttentionNorm: ones(s.hidden),
      gateProj: w(s.intermediate * s.hidden),
      upProj: w(s.intermediate * s.hidden),
      downProj: w(s.hidden * s.intermediate),
      ...(s.qkNorm === 'head' ? { qNorm: near1(s.headDim), kNorm: near1(s.headDim) } : {}),
      ...(s.qkNorm === 'projection' ? { qNorm: near1(qDim), kNorm: near1(kvDim) } : {}),
    })),
    finalNorm: ones(s.hidden),
  };
  if (s.untied) weights.lmHead = w(s.vocab * s.hidden);
  return weights;
}

/** KvSpectrum's singular values [min(rows, cols)], descending: c·(j+1)^-decay with Σ s_j² = rows·cols·std². */
export function powerLawSpectrum(rows: number, cols: number, std: number, decay: number): Float64Array {
  const s = Float64Array.from({ length: Math.min(rows, cols) }, (_, j) => (j + 1) ** -decay);
  const energy = s.reduce((a, v) => a + v * v, 0);
  const c = std * Math.sqrt((rows * cols) / energy);
  return s.map((v) => v * c);
}

/** W [rows, cols] = U·diag(s)·Vᵀ as products: U, V orthonormalized from the Gaussian rows of gu [r, rows] and gv [r, cols]. */
function* spectralSteps(
  gu: Float64Array,
  gv: Float64Array,
  s: Float64Array,
  rows: number,
  cols: number,
  normal: () => number,
): Generator<MatMulRequest, Float64Array, Float64Array> {
  const r = s.length;
  const Ut = yield* orthonormalizeRows(gu, r, rows, normal, true); // [r, rows]
  const SVt = yield* orthonormalizeRows(gv, r, cols, normal, true); // [r, cols], scaled below
  for (let j = 0; j < r; j++) for (let i = 0; i < cols; i++) SVt[j * cols + i] *= s[j];
  return yield { A: transpose(Ut, r, rows), B: SVt, m: rows, k: r, n: cols };
}

/**
 * A [rows, cols] weight (nn.Linear [out, in]) with KvSpectrum's singular values: W = U·diag(s)·Vᵀ,
 * U [rows, r] and V [cols, r] with orthonormal columns from seeded Gaussians (shifted
 * Cholesky-QR in float64, the products on ONNX Runtime: 0.6–1.1 s for a 1024×1024 weight on a
 * shared 2-core box), s = powerLawSpectrum. Same `rand` state, same weight on one machine; across CPUs
 * ONNX Runtime's products may round the last bits differently.
 */
export async function spectralWeight(rand: () => number, rows: number, cols: number, std: number, decay: number): Promise<Float32Array> {
  const s = powerLawSpectrum(rows, cols, std, decay);
  const r = s.length;
  const gu = Float64Array.from(normals(rand, r * rows, 1));
  const gv = Float64Array.from(normals(rand, r * cols, 1));
  // Only used if a Gaussian row is numerically dependent on the others (not seen in practice).
  const normal = () => normals(rand, 1, 1)[0];
  return Float32Array.from(await runStepsOnOrt(spectralSteps(gu, gv, s, rows, cols, normal), 0));
}

/**
 * `weights` with each layer's kProj and vProj (in that order, layer by layer) replaced by
 * spectralWeight draws from their own stream, mulberry32(seed ^ KV_SPECTRUM_SALT): everything
 * else is exactly randomLlamaWeights' draw for the seed.
 */
export async function withKvSpectrum(
  weights: LlamaWeights,
  s: RandomWeightShape,
  spectrum: KvSpectrum,
  seed: number,
): Promise<LlamaWeights> {
  const rand = mulberry32((seed ^ KV_SPECTRUM_SALT) >>> 0);
  const kvDim = s.kvHeads * s.headDim;
  const layers = [];
  for (const layer of weights.layers) {
    const kProj = await spectralWeight(rand, kvDim, s.hidden, s.std, spectrum.decay);
    const vProj = await spectralWeight(rand, kvDim, s.hidden, s.std, spectrum.decay);
    layers.push({ ...layer, kProj, vProj });
  }
  return { ...weights, layers };
}

export async function buildRandomLlama(opts: RandomLlamaOptions): Promise<RandomLlama> {
  const layers = opts.layers ?? 2;
  const hidden = opts.hidden ?? 64;
  const heads = opts.heads ?? 4;
  const kvHeads = opts.kvHeads ?? 2;
  const headDim = opts.headDim ?? hidden / heads;
  const intermediate = opts.intermediate ?? 2 * hidden;
  const vocab = opts.vocab ?? 512;
  const std = opts.std ?? 0.02;
  const rope: RopeSpec = { theta: 10000, rotaryDim: headDim, layout: 'half', ...opts.rope };
  for (const [k, v] of Object.entries({ layers, hidden, heads, kvHeads, headDim, intermediate, vocab })) {
    if (!Number.isInteger(v) || v <= 0) throw usage(`${k} must be a positive integer, got ${v}`, `Pass an integer ${k}.`, { [k]: v });
  }
  if (heads % kvHeads !== 0)
    throw usage(`heads ${heads} is not a multiple of kvHeads ${kvHeads}`, 'Pick kvHeads dividing heads.', { heads, kvHeads });
  if (vocab < 512) throw usage(`vocab ${vocab} is smaller than the bundled tokenizer's 512 pieces`, 'Use vocab >= 512.', { vocab });
  const decay = opts.kvSpectrum?.decay;
  if (decay !== undefined && !(Number.isFinite(decay) && decay >= 0))
    throw usage(`kvSpectrum.decay must be a finite number >= 0, got ${decay}`, 'Pass e.g. kvSpectrum: { decay: 0.5 }.', { decay });
  const aw = opts.attentionWindow;
  if (aw && (aw.length !== layers || aw.some((w) => w !== null && !(Number.isInteger(w) && w > 0))))
    throw usage(`attentionWindow must give each of the ${layers} layers a positive integer window or null`, 'Fix attentionWindow.', {
      attentionWindow: aw,
    });

  const shape: RandomWeightShape = { layers, hidden, heads, kvHeads, headDim, intermediate, vocab, std, untied: opts.untied };
  let weights = randomLlamaWeights(mulberry32(opts.seed ?? 0), shape);
  if (opts.kvSpectrum) weights = await withKvSpectrum(weights, shape, opts.kvSpectrum, opts.seed ?? 0);

  const spec: LlamaDirSpec = {
    layers,
    heads,
    kvHeads,
    headDim,
    hidden,
    vocabSize: vocab,
    rope: uniformModelRope(rope, layers),
    kvDtype: opts.kvDtype ?? 'float32',
    maxPositions: opts.maxPositions ?? 2048,
    bosTokenId: 1,
    eosTokenId: 2,
  };
  let tokenizerJson: Record<string, unknown>;
  let tokenizerConfig: Record<string, unknown>;
  try {
    tokenizerJson = JSON.parse(await readFile(join(DEFAULT_MODEL_DIR, 'tokenizer.json'), 'utf8'));
    tokenizerConfig = JSON.parse(await readFile(join(DEFAULT_MODEL_DIR, 'tokenizer_config.json'), 'utf8'));
  } catch (e) {
    throw new KvtcError(
      'TOKENIZER_MISSING',
      `buildRandomLlama: cannot read the bundled tokenizer in ${DEFAULT_MODEL_DIR}: ${(e as Error).message}`,
      {
        fix: 'Restore models/stories260k/ (see models/stories260k/source/SOURCE.md to regenerate it).',
        cause: e,
      },
    );
  }
  tokenizerConfig = { ...tokenizerConfig, model_max_length: spec.maxPositions };
  const name = opts.name ?? `random-llama-l${layers}-h${hidden}-q${heads}-kv${kvHeads}-d${headDim}`;
  const written = await writeLlamaModelDir(opts.out, {
    weights,
    spec,
    rmsNormEps: opts.rmsNormEps ?? 1e-5,
    tokenizerJson,
    tokenizerConfig,
    name,
    force: opts.force,
    ...(aw ? { attentionWindow: aw } : {}),
  });
  return {
    ...written,
    intermediate,
    spec: { architecture: 'LlamaForCausalLM', family: 'llama', ...spec },
  };
}
