/**
 * Reader for llama2.c checkpoints (Karpathy's run.c formats):
 *   legacy: 7 int32 header, float32 weights in run.c order, freq_cis tables, wcls if unshared
 *           (negative vocab_size marks an unshared classifier);
 *   v1:     magic "ak42" (0x616b3432), int32 version 1, the same 7 ints, uint8 shared_classifier,
 *           zero padding to 256 bytes, then norms first (export.py `version1_export` order).
 * Weights are returned as llama2.c stores them: PyTorch [out, in] matrices with RoPE applied
 * to *interleaved* pairs of q/k rows; `toHfLlamaWeights` permutes them to Hugging Face layout.
 */
import { readFile } from 'node:fs/promises';
import { fileError, KvtcError } from '../errors.js';
import type { LlamaWeights } from './llama-graph.js';

export const LLAMA2C_V1_MAGIC = 0x616b3432;
const V1_HEADER_BYTES = 256;
const LEGACY_HEADER_BYTES = 28;

export interface Llama2cConfig {
  dim: number;
  hiddenDim: number;
  layers: number;
  heads: number;
  kvHeads: number;
  vocabSize: number;
  seqLen: number;
  sharedClassifier: boolean;
  format: 'legacy' | 'v1';
}

/** One layer, llama2.c layout: matrices [out, in], row-major float32. */
export interface Llama2cLayer {
  rmsAtt: Float32Array; // [dim]
  wq: Float32Array; // [dim, dim], interleaved RoPE rows
  wk: Float32Array; // [kvDim, dim], interleaved RoPE rows
  wv: Float32Array; // [kvDim, dim]
  wo: Float32Array; // [dim, dim]
  rmsFfn: Float32Array; // [dim]
  w1: Float32Array; // [hidden, dim]
  w2: Float32Array; // [dim, hidden]
  w3: Float32Array; // [hidden, dim]
}

export interface Llama2cCheckpoint {
  config: Llama2cConfig;
  tokenEmbedding: Float32Array; // [vocab, dim]
  layers: Llama2cLayer[];
  rmsFinal: Float32Array; // [dim]
  /** [vocab, dim]; undefined when the classifier is the token embedding. */
  wcls?: Float32Array;
}

function invalid(source: string, message: string, context: Record<string, unknown> = {}): KvtcError {
  return fileError(
    'MODEL_INVALID',
    source,
    message,
    'Pass a float32 llama2.c checkpoint (legacy or version 1 export of llama2.c export.py); re-download it if it is truncated.',
    context,
  );
}

function checkHeader(c: Omit<Llama2cConfig, 'format' | 'sharedClassifier'>, source: string): void {
  const fields = Object.entries(c);
  for (const [k, v] of fields) {
    if (!Number.isInteger(v) || v <= 0 || v > 1 << 20)
      throw invalid(source, `header field ${k} = ${v} is not a plausible size; this is not a llama2.c checkpoint`, { header: c });
  }
  const headSize = c.dim / c.heads;
  if (!Number.isInteger(headSize) || headSize % 2 !== 0)
    throw invalid(source, `dim ${c.dim} / n_heads ${c.heads} must be an even integer head size`, { header: c });
  if (c.heads % c.kvHeads !== 0) throw invalid(source, `n_heads ${c.heads} is not a multiple of n_kv_heads ${c.kvHeads}`, { header: c });
}

/** Float32 count of the transformer weights (embedding, norms, layers), without freq_cis or wcls. */
function bodyFloats(c: Llama2cConfig): number {
  const kvDim = (c.dim / c.heads) * c.kvHeads;
  const perLayer = 2 * c.dim + 2 * c.dim * c.dim + 2 * kvDim * c.dim + 3 * c.hiddenDim * c.dim;
  return c.vocabSize * c.dim + c.layers * perLayer + c.dim;
}

/** Parses checkpoint bytes; `source` names the file in errors. */
export function parseLlama2cCheckpoint(bytes: Uint8Array, source = 'checkpoint'): Llama2cCheckpoint {
  if (bytes.byteLength < LEGACY_HEADER_BYTES) throw invalid(source, `file is ${bytes.byteLength} bytes, shorter than any llama2.c header`);
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const isV1 = view.getUint32(0, true) === LLAMA2C_V1_MAGIC;
  let offset: number;
  let config: Llama2cConfig;
  const ints = (at: number) => Array.from({ length: 7 }, (_, i) => view.getInt32(at + 4 * i, true));
  if (isV1) {
    if (bytes.byteLength < V1_HEADER_BYTES) throw invalid(source, `file is ${bytes.byteLength} bytes, shorter than the 256-byte v1 header`);
    const version = view.getInt32(4, true);
    if (version !== 1) {
      throw invalid(
        source,
        `llama2.c checkpoint version ${version} is not supported (only float32 version 1 and legacy; version 2 is int8-quantized)`,
        { version },
      );
    }
    const [dim, hiddenDim, layers, heads, kvHeads, vocabSize, seqLen] = ints(8);
    const shared = bytes[36];
    if (shared > 1) throw invalid(source, `shared_classifier byte is ${shared}, expected 0 or 1`);
    config = { dim, hiddenDim, layers, heads, kvHeads, vocabSize, seqLen, sharedClassifier: shared === 1, format: 'v1' };
    offset = V1_HEADER_BYTES;
  } else {
    const [dim, hiddenDim, layers, heads, kvHeads, vocab, seqLen] = ints(0);
    config = { dim, hiddenDim, layers, heads, kvHeads, vocabSize: Math.abs(vocab), seqLen, sharedClassifier: vocab > 0, format: 'legacy' };
    offset = LEGACY_HEADER_BYTES;
  }
  const { format: _f, sharedClassifier: _s, ...sizes } = config;
  checkHeader(sizes, source);

  const headSize = config.dim / config.heads;
  const freqFloats = config.format === 'legacy' ? config.seqLen * headSize : 0; // real + imag, seq_len x head_size/2 each
  const clsFloats = config.sharedClassifier ? 0 : config.vocabSize * config.dim;
  const expected = offset + 4 * (bodyFloats(config) + freqFloats + clsFloats);
  if (bytes.byteLength !== expected) {
    throw invalid(
      source,
      `${config.format} checkpoint with header ${JSON.stringify(sizes)} should be ${expected} bytes, but the file is ${bytes.byteLength} bytes (${bytes.byteLength < expected ? 'truncated' : 'trailing data'})`,
      {
        expectedBytes: expected,
        actualBytes: bytes.byteLength,
      },
    );
  }

  // Copy out of the file buffer: Float32Array needs 4-byte alignment, and callers may keep slices.
  const take = (n: number): Float32Array => {
    const out = new Float32Array(bytes.buffer.slice(bytes.byteOffset + offset, bytes.byteOffset + offset + 4 * n));
    offset += 4 * n;
    return out;
  };
  const { dim, hiddenDim: hid, layers: L, vocabSize: V } = config;
  const kvDim = headSize * config.kvHeads;
  const perLayer = (rows: number, cols: number) => Array.from({ length: L }, () => take(rows * cols));

  let tokenEmbedding: Float32Array;
  let rmsAtt: Float32Array[];
  let rmsFfn: Float32Array[];
  let rmsFinal: Float32Array | undefined;
  if (config.format === 'v1') {
    rmsAtt = perLayer(1, dim);
    rmsFfn = perLayer(1, dim);
    rmsFinal = take(dim);
    tokenEmbedding = take(V * dim);
  } else {
    tokenEmbedding = take(V * dim);
    rmsAtt = perLayer(1, dim);
  }
  const wq = perLayer(dim, dim);
  const wk = perLayer(kvDim, dim);
  const wv = perLayer(kvDim, dim);
  const wo = perLayer(dim, dim);
  if (config.format === 'legacy') rmsFfn = perLayer(1, dim);
  const w1 = perLayer(hid, dim);
  const w2 = perLayer(dim, hid);
  const w3 = perLayer(hid, dim);
  if (config.format === 'legacy') {
    rmsFinal = take(dim);
    offset += 4 * freqFloats; // freq_cis_real/imag: recomputed from position, not stored weights
  }
  const wcls = config.sharedClassifier ? undefined : take(V * dim);
  const layers = Array.from({ length: L }, (_, l) => ({
    rmsAtt: rmsAtt[l],
    wq: wq[l],
    wk: wk[l],
    wv: wv[l],
    wo: wo[l],
    rmsFfn: rmsFfn![l],
    w1: w1[l],
    w2: w2[l],
    w3: w3[l],
  }));
  for (const [name, arr] of [
    ['token_embedding', tokenEmbedding],
    ['rms_final', rmsFinal!],
    ['wq[0]', wq[0]],
  ] as const) {
    if (!arr.every(Number.isFinite)) throw invalid(source, `${name} holds NaN or infinite values; the file is corrupt`);
  }
  return { config, tokenEmbedding, layers, rmsFinal: rmsFinal!, wcls };
}

export async function readLlama2cCheckpoint(path: string): Promise<Llama2cCheckpoint> {
  let bytes: Uint8Array;
  try {
    bytes = await readFile(path);
  } catch (e) {
    throw new KvtcError('MODEL_NOT_FOUND', `cannot read llama2.c checkpoint ${path}: ${(e as Error).message}`, {
      fix: 'Pass the path of a llama2.c .bin checkpoint with --checkpoint.',
      context: { file: path },
      cause: e,
    });
  }
  return parseLlama2cCheckpoint(bytes, path);
}

/**
 * Rows of a q/k projection [heads*headSize, cols] from llama2.c's interleaved RoPE pairs
 * (2i, 2i+1) to Hugging Face's half split (i, i+headSize/2), as convert_llama_weights_to_hf.py:
 *   w.view(n_heads, dim1 // n_heads // 2, 2, dim2).transpose(1, 2).reshape(dim1, dim2)
 */
export function permuteRopeRows(w: Float32Array, heads: number, rows: number, cols: number): Float32Array {
  const headSize = rows / heads;
  const half = headSize / 2;
  const out = new Float32Array(w.length);
  for (let h = 0; h < heads; h++) {
    for (let i = 0; i < half; i++) {
      for (let c = 0; c < 2; c++) {
        const src = (h * headSize + 2 * i + c) * cols;
        const dst = (h * headSize + c * half + i) * cols;
        out.set(w.subarray(src, src + cols), dst);
      }
    }
  }
  return out;
}

/** Hugging Face LlamaForCausalLM weights (half-split RoPE rows) from a llama2.c checkpoint. */
export function toHfLlamaWeights(ckpt: Llama2cCheckpoint): LlamaWeights {
  const { dim, heads, kvHeads } = ckpt.config;
  const kvDim = (dim / heads) * kvHeads;
  return {
    embedTokens: ckpt.tokenEmbedding,
    layers: ckpt.layers.map((l) => ({
      inputNorm: l.rmsAtt,
      qProj: permuteRopeRows(l.wq, heads, dim, dim),
      kProj: permuteRopeRows(l.wk, kvHeads, kvDim, dim),
      vProj: l.wv,
      oProj: l.wo,
      postAttentionNorm: l.rmsFfn,
      gateProj: l.w1,
      downProj: l.w2,
      upProj: l.w3,
    })),
    finalNorm: ckpt.rmsFinal,
    lmHead: ckpt.wcls,
  };
}
