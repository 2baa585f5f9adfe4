/**
 * Seeded random-weight Llama model directories of any shape (GQA ratios, head dims, RoPE
 * variants, float16 KV), with the bundled stories260K tokenizer, for tests and benchmarks.
 */
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { KvtcError, UsageError } from '../errors.js';
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
  force?: boolean;
  name?: string;
}

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

  const weights = randomLlamaWeights(mulberry32(opts.seed ?? 0), {
    layers,
    hidden,
    heads,
    kvHeads,
    headDim,
    intermediate,
    vocab,
    std,
    untied: opts.untied,
  });

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
  });
  return {
    ...written,
    intermediate,
    spec: { architecture: 'LlamaForCausalLM', family: 'llama', ...spec },
  };
}
