// Tested by test/convert/gguf-llama.test.ts and test/convert/gguf-gemma3.test.ts (each family's hyper-parameters and refusals).
/**
 * What every GGUF decoder family reads the same way: the attention/MLP sizes under `<arch>.*`,
 * the RMSNorm epsilon, RoPE's base and linear scaling, and the errors for metadata kvtc cannot use.
 */
import { KvtcError } from '../../errors.js';
import { ggufInvalid } from '../../gguf/errors.js';
import type { RopeSpec } from '../../rope/types.js';
import { metaCount, metaNumber, metaString, type GgufModel } from './family.js';

/** A valid GGUF of something kvtc does not convert. */
export const unsupported = (g: GgufModel, message: string, fix: string, context: Record<string, unknown> = {}) =>
  new KvtcError('UNSUPPORTED_ARCHITECTURE', `${g.path}: ${message}`, { fix, context: { file: g.path, ...context } });

/** Malformed or inconsistent metadata: GGUF_INVALID, as the reader's own errors. */
export const invalid = (g: GgufModel, message: string, fix: string, context: Record<string, unknown> = {}) =>
  ggufInvalid(g.path, message, context, fix);

export const CORRUPT = 'The GGUF metadata is corrupt or inconsistent; re-create it with llama.cpp convert_hf_to_gguf.py.';

/** The shortest decimal that is the same float32: GGUF stores 1e-5 as 9.99999974e-6, config.json says 1e-5. */
export function shortestFloat32(v: number): number {
  const f = Math.fround(v);
  for (let p = 1; p <= 9; p++) {
    const d = Number(f.toPrecision(p));
    if (Math.fround(d) === f) return d;
  }
  return f;
}

export interface BaseHyper {
  layers: number;
  hidden: number;
  intermediate: number;
  heads: number;
  kvHeads: number;
  headDim: number;
  vocabSize: number;
  contextLength: number;
  rmsNormEps: number;
}

/**
 * Sizes shared by decoder families, checked against each other before any tensor is read.
 * `headDim`: the default of `<arch>.attention.key_length` (Llama: hidden / heads); undefined makes
 * the key required (Gemma's head_dim is not hidden / heads). `family` names the family in refusals.
 */
export function baseHyper(
  g: GgufModel,
  a: string,
  opts: { family: string; epsDefault: number; headDim?: (hidden: number, heads: number) => number },
): BaseHyper {
  const layers = metaCount(g, `${a}.block_count`);
  const hidden = metaCount(g, `${a}.embedding_length`);
  const intermediate = metaCount(g, `${a}.feed_forward_length`);
  const heads = metaCount(g, `${a}.attention.head_count`);
  const kvHeads = metaCount(g, `${a}.attention.head_count_kv`, heads);
  const headDim = metaCount(g, `${a}.attention.key_length`, opts.headDim?.(hidden, heads));
  const valueLength = metaCount(g, `${a}.attention.value_length`, headDim);
  if (valueLength !== headDim)
    throw unsupported(
      g,
      `key_length ${headDim} differs from value_length ${valueLength}`,
      `kvtc converts ${opts.family} models whose keys and values have one head_dim.`,
    );
  if (heads % kvHeads !== 0) throw invalid(g, `head_count ${heads} is not a multiple of head_count_kv ${kvHeads}`, CORRUPT);
  if (headDim % 2 !== 0) throw invalid(g, `head_dim ${headDim} is odd; RoPE needs pairs`, CORRUPT);
  const embd = g.tensors.get('token_embd.weight');
  const vocabSize = metaCount(g, `${a}.vocab_size`, embd?.dims[1]);
  const contextLength = metaCount(g, `${a}.context_length`);
  const rmsNormEps = shortestFloat32(metaNumber(g, `${a}.attention.layer_norm_rms_epsilon`) ?? opts.epsDefault);
  if (!(rmsNormEps > 0 && rmsNormEps < 1)) throw invalid(g, `layer_norm_rms_epsilon ${rmsNormEps} is not in (0, 1)`, CORRUPT);
  return { layers, hidden, intermediate, heads, kvHeads, headDim, vocabSize, contextLength, rmsNormEps };
}

/**
 * `rope` with `<arch>.rope.scaling.{type,factor}` applied: linear is kept (transformers' GGUF
 * loader maps it to rope_scaling), none or a factor of 1 is nothing, anything else is refused.
 */
export function linearRopeScaling(g: GgufModel, a: string, rope: RopeSpec, opts: { family: string; fix: string }): RopeSpec {
  const scalingType = metaString(g, `${a}.rope.scaling.type`) ?? 'none';
  const rawFactor = metaNumber(g, `${a}.rope.scaling.factor`);
  const factor = rawFactor === undefined ? undefined : shortestFloat32(rawFactor);
  if (scalingType === 'linear' && factor !== undefined && factor !== 1) {
    if (!(factor > 0)) throw invalid(g, `rope.scaling.factor ${factor} is not positive`, CORRUPT);
    return { ...rope, scaling: { type: 'linear', factor } };
  }
  if (scalingType !== 'none' && scalingType !== 'linear') {
    throw unsupported(
      g,
      `RoPE scaling "${scalingType}" is not supported for ${opts.family} GGUF import (supported: none, linear)`,
      opts.fix,
      {
        scaling: scalingType,
      },
    );
  }
  return rope;
}
