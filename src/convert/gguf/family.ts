// Tested by test/convert/gguf-llama.test.ts (synthetic GGUFs) and test/gguf/smollm2.test.ts (SmolLM2-135M).
/**
 * What a GGUF family converter implements. convert.ts opens the GGUF (src/gguf), wraps it as a
 * GgufModel, picks the family by `general.architecture` and writes what the family returns as an
 * Optimum-layout model directory (the graph from llama-graph.ts, config.json as transformers
 * writes it for the family, tokenizer files, generation config).
 *
 * Families read metadata through the accessors below, so every missing or mistyped key is the
 * same typed GGUF_INVALID error naming the key and the file.
 */
import { ggufInvalid } from '../../gguf/errors.js';
import type { LlamaGraphOptions, LlamaWeights } from '../llama-graph.js';
import type { LlamaDirSpec } from '../model-dir.js';

/** A GGUF metadata value as the converters see it (arrays of any element type become JS arrays). */
export type GgufValue = string | number | bigint | boolean | readonly GgufValue[];

export interface GgufTensorDesc {
  /** ggml dims, ne[0] first (the fastest-varying): a PyTorch [out, in] weight is [in, out] here. */
  dims: readonly number[];
  /** ggml type name (F32, F16, Q4_1, Q6_K, ...). */
  type: string;
}

/** The GGUF as a family reads it. */
export interface GgufModel {
  /** The file, for messages. */
  path: string;
  /** `general.architecture`. */
  architecture: string;
  /** Metadata by key; undefined when absent. */
  meta(key: string): GgufValue | undefined;
  tensors: ReadonlyMap<string, GgufTensorDesc>;
  /**
   * Dequantized float32 in ggml order (ne[0] fastest): a 2-D tensor of dims [in, out] is the
   * row-major [out, in] matrix PyTorch holds, with no transpose.
   */
  read(name: string): Promise<Float32Array>;
}

export interface ConvertedFamily {
  /** transformers model_type written in config.json (llama, gemma3_text). */
  modelType: string;
  weights: LlamaWeights;
  spec: LlamaDirSpec;
  /** Graph options, rmsNormEps included (passed to buildLlamaGraph as they are). */
  graph: LlamaGraphOptions;
  /** config.json as transformers writes it for the family. */
  config: Record<string, unknown>;
  generationConfig: Record<string, unknown>;
  tokenizerJson: Record<string, unknown>;
  tokenizerConfig: Record<string, unknown>;
  parameters: number;
  /** What the conversion did that a user may want to know (one line each, for the CLI). */
  notes: string[];
}

export interface FamilyOptions {
  /** Recorded as config.json `_name_or_path` and the graph name. */
  name: string;
}

export interface FamilyConverter {
  /** Values of `general.architecture` this family converts. */
  architectures: readonly string[];
  convert(gguf: GgufModel, opts: FamilyOptions): Promise<ConvertedFamily>;
}

// Malformed or inconsistent metadata and tensors are GGUF_INVALID, as the reader's own errors.
const invalid = (g: GgufModel, message: string, fix: string, context: Record<string, unknown> = {}) =>
  ggufInvalid(g.path, message, context, fix);

const describe = (v: GgufValue | undefined) =>
  v === undefined ? 'absent' : Array.isArray(v) ? `an array of ${v.length}` : `${typeof v} ${String(v).slice(0, 40)}`;

/** A metadata number (integer or float, bigint within 2^53). */
export function metaNumber(g: GgufModel, key: string): number | undefined {
  const v = g.meta(key);
  if (v === undefined) return undefined;
  if (typeof v === 'bigint' && v <= BigInt(Number.MAX_SAFE_INTEGER) && v >= -BigInt(Number.MAX_SAFE_INTEGER)) return Number(v);
  if (typeof v === 'number' && Number.isFinite(v)) return v;
  throw invalid(
    g,
    `metadata ${key} should be a number, it is ${describe(v)}`,
    'The GGUF is corrupt or was written by an incompatible converter.',
    { key },
  );
}

/** A required positive integer (a count or a size). */
export function metaCount(g: GgufModel, key: string, fallback?: number): number {
  const v = metaNumber(g, key) ?? fallback;
  if (v === undefined)
    throw invalid(
      g,
      `metadata ${key} is missing`,
      'The GGUF lacks a hyper-parameter its architecture needs; re-create it with a current llama.cpp convert_hf_to_gguf.py.',
      { key },
    );
  if (!Number.isInteger(v) || v <= 0 || v > 1 << 30)
    throw invalid(g, `metadata ${key} = ${v} is not a positive integer within bounds`, 'The GGUF is corrupt.', { key, value: v });
  return v;
}

export function metaString(g: GgufModel, key: string): string | undefined {
  const v = g.meta(key);
  if (v === undefined) return undefined;
  if (typeof v !== 'string') throw invalid(g, `metadata ${key} should be a string, it is ${describe(v)}`, 'The GGUF is corrupt.', { key });
  return v;
}

export function metaStrings(g: GgufModel, key: string): string[] | undefined {
  const v = g.meta(key);
  if (v === undefined) return undefined;
  if (!Array.isArray(v) || !v.every((s) => typeof s === 'string'))
    throw invalid(g, `metadata ${key} should be an array of strings, it is ${describe(v)}`, 'The GGUF is corrupt.', { key });
  return v as string[];
}

export function metaNumbers(g: GgufModel, key: string): number[] | undefined {
  const v = g.meta(key);
  if (v === undefined) return undefined;
  if (!Array.isArray(v) || !v.every((s) => typeof s === 'number' || typeof s === 'bigint'))
    throw invalid(g, `metadata ${key} should be an array of numbers, it is ${describe(v)}`, 'The GGUF is corrupt.', { key });
  return (v as (number | bigint)[]).map(Number);
}

/**
 * Reads a tensor checked against the shape the family expects, given PyTorch-style ([out, in])
 * so messages read like the model's own; returns the row-major float32 data.
 */
export async function readWeight(g: GgufModel, name: string, torchShape: readonly number[]): Promise<Float32Array> {
  const t = g.tensors.get(name);
  if (!t) {
    throw invalid(
      g,
      `tensor ${name} is missing`,
      'The GGUF is incomplete or not a model of the architecture it names; re-create it with llama.cpp convert_hf_to_gguf.py.',
      { tensor: name },
    );
  }
  const want = [...torchShape].reverse();
  // ggml drops trailing dims of 1 in some writers; compare with them trimmed.
  const trim = (d: readonly number[]) => {
    const a = [...d];
    while (a.length > 1 && a[a.length - 1] === 1) a.pop();
    return a;
  };
  if (trim(t.dims).join(',') !== trim(want).join(',')) {
    throw invalid(
      g,
      `tensor ${name} has ggml dims [${t.dims.join(', ')}], expected [${want.join(', ')}] (PyTorch [${torchShape.join(', ')}]) from the metadata`,
      'The tensors do not match the hyper-parameters in the metadata: the GGUF is corrupt or inconsistent.',
      { tensor: name, dims: t.dims, expected: want },
    );
  }
  const data = await g.read(name);
  const n = torchShape.reduce((a, b) => a * b, 1);
  if (data.length !== n)
    throw invalid(g, `tensor ${name} read ${data.length} values, expected ${n}`, 'The GGUF is corrupt.', { tensor: name });
  return data;
}

/** Number of float parameters in converted weights (tied head counted once). */
export function countParameters(w: LlamaWeights): number {
  return (
    w.embedTokens.length +
    w.finalNorm.length +
    (w.lmHead?.length ?? 0) +
    w.layers.reduce((n, l) => n + Object.values(l).reduce((m: number, a: Float32Array | undefined) => m + (a?.length ?? 0), 0), 0)
  );
}
