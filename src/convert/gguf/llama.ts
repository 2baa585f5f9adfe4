// Tested by test/convert/gguf-llama.test.ts (synthetic GGUFs: mapping, un-permutation, refusals) and test/gguf/smollm2.test.ts (SmolLM2-135M against transformers).
/**
 * GGUF `llama` architecture → LlamaForCausalLM: hyper-parameters from `llama.*` metadata,
 * tensors token_embd / blk.N.{attn_q,attn_k,attn_v,attn_output,ffn_gate,ffn_up,ffn_down,
 * attn_norm,ffn_norm} / output_norm / output (absent: tied to the embedding).
 *
 * llama.cpp's convert_hf_to_gguf.py (LlamaModel.permute) reorders the rows of attn_q and attn_k
 * of each head from Hugging Face's rotate_half layout (pairs i, i + d/2) to GGML's interleaved
 * RoPE (pairs 2i, 2i + 1): reshape(n_head, 2, d/2, in).swapaxes(1, 2). transformers undoes it
 * when it loads a GGUF (src/transformers/modeling_gguf_pytorch_utils.py, LlamaConverter →
 * `reverse_permute_weights(weights, n_head, num_kv_heads)`:
 * reshape(n_head, d/2, 2, in).swapaxes(2, 1)), and so does this converter: the graph builder
 * applies half-split RoPE, which is what the config.json it writes says.
 */
import { KvtcError } from '../../errors.js';
import type { LayerRope, RopeSpec } from '../../rope/types.js';
import { uniformModelRope } from '../../rope/types.js';
import type { LlamaLayerWeights, LlamaWeights } from '../llama-graph.js';
import { llamaConfigJson, type LlamaDirSpec } from '../model-dir.js';
import {
  countParameters,
  metaCount,
  metaNumber,
  readWeight,
  type ConvertedFamily,
  type FamilyConverter,
  type GgufModel,
} from './family.js';
import { baseHyper, type BaseHyper, CORRUPT, invalid, linearRopeScaling, shortestFloat32, unsupported } from './hyper.js';
import { bpeTokenizerFromGguf } from './tokenizer-bpe.js';

/** Hugging Face rows of one projection from llama.cpp's permuted rows (transformers' reverse_permute_weights). */
export function unpermuteRopeRows(w: Float32Array, nHead: number, headDim: number, cols: number): Float32Array {
  if (w.length !== nHead * headDim * cols || headDim % 2 !== 0) {
    throw new KvtcError(
      'MODEL_INVALID',
      `unpermuteRopeRows: ${w.length} values are not ${nHead} heads x ${headDim} rows x ${cols} columns with an even head_dim`,
      { fix: 'The q/k projection does not match the metadata.' },
    );
  }
  const out = new Float32Array(w.length);
  const half = headDim / 2;
  // GGUF row h*d + 2i + j holds HF row h*d + j*d/2 + i.
  for (let h = 0; h < nHead; h++) {
    for (let i = 0; i < half; i++) {
      for (let j = 0; j < 2; j++) {
        const src = (h * headDim + 2 * i + j) * cols;
        const dst = (h * headDim + j * half + i) * cols;
        out.set(w.subarray(src, src + cols), dst);
      }
    }
  }
  return out;
}

/** The inverse (HF → GGUF rows), what llama.cpp's converter does; tests write GGUFs with it. */
export function permuteRopeRows(w: Float32Array, nHead: number, headDim: number, cols: number): Float32Array {
  const out = new Float32Array(w.length);
  const half = headDim / 2;
  for (let h = 0; h < nHead; h++) {
    for (let i = 0; i < half; i++) {
      for (let j = 0; j < 2; j++) {
        const dst = (h * headDim + 2 * i + j) * cols;
        const src = (h * headDim + j * half + i) * cols;
        out.set(w.subarray(src, src + cols), dst);
      }
    }
  }
  return out;
}

const LAYER_TENSORS = ['attn_q', 'attn_k', 'attn_v', 'attn_output', 'ffn_gate', 'ffn_up', 'ffn_down', 'attn_norm', 'ffn_norm'] as const;

export interface LlamaHyper extends BaseHyper {
  rope: RopeSpec;
}

/** Hyper-parameters from `<arch>.*` metadata, checked against each other before any tensor is read. */
export function llamaHyper(g: GgufModel): LlamaHyper {
  const a = g.architecture;
  const { layers, hidden, intermediate, heads, kvHeads, headDim, vocabSize, contextLength, rmsNormEps } = baseHyper(g, a, {
    family: 'Llama',
    epsDefault: 1e-5,
    headDim: (hidden, heads) => Math.floor(hidden / heads),
  });
  const theta = shortestFloat32(metaNumber(g, `${a}.rope.freq_base`) ?? 10000);
  if (!(theta > 1)) throw invalid(g, `rope.freq_base ${theta} is not above 1`, CORRUPT);
  const rotaryDim = metaCount(g, `${a}.rope.dimension_count`, headDim);
  if (rotaryDim > headDim || rotaryDim % 2 !== 0)
    throw invalid(g, `rope.dimension_count ${rotaryDim} must be even and at most head_dim ${headDim}`, CORRUPT);
  // transformers' GGUF loader maps rope.scaling.{type,factor} to rope_scaling (linear); yarn and
  // Llama 3.1's per-frequency factors (the rope_freqs tensor) describe RoPE kvtc does not rebuild here.
  const rope = linearRopeScaling(
    g,
    a,
    { theta, rotaryDim, layout: 'half' },
    {
      family: 'Llama',
      fix: 'Export the model from its Hugging Face checkpoint with Optimum instead; kvtc reads yarn from a config.json.',
    },
  );
  if (g.tensors.has('rope_freqs.weight')) {
    throw unsupported(
      g,
      'the rope_freqs tensor (Llama 3.1-style per-frequency RoPE factors) is not supported for GGUF import',
      'Export the model from its Hugging Face checkpoint with Optimum instead; kvtc reads llama3 rope_scaling from a config.json.',
    );
  }
  return { layers, hidden, intermediate, heads, kvHeads, headDim, vocabSize, contextLength, rmsNormEps, rope };
}

/** Every tensor a llama GGUF may hold; anything else (biases, experts, ...) would be silently dropped, so it is refused. */
function checkTensorNames(g: GgufModel, h: LlamaHyper): void {
  const known = new Set(['token_embd.weight', 'output_norm.weight', 'output.weight']);
  for (let l = 0; l < h.layers; l++) for (const t of LAYER_TENSORS) known.add(`blk.${l}.${t}.weight`);
  const extra = [...g.tensors.keys()].filter((n) => !known.has(n));
  if (extra.length > 0) {
    throw unsupported(
      g,
      `tensors a Llama model does not have: ${extra.slice(0, 5).join(', ')}${extra.length > 5 ? ` and ${extra.length - 5} more` : ''} (biases, experts or a block_count that does not match)`,
      'kvtc converts plain Llama GGUFs (no biases, no mixture of experts); export other models with Optimum.',
      { tensors: extra.slice(0, 20) },
    );
  }
}

/**
 * The graph holds float32 weights inline and protobuf caps a file at 2 GB (llama-graph.ts): a
 * bigger model is refused from its metadata, before gigabytes of weights are dequantized.
 */
function checkSize(g: GgufModel, h: LlamaHyper): void {
  const q = h.heads * h.headDim;
  const kv = h.kvHeads * h.headDim;
  const perLayer = 2 * h.hidden + 2 * h.hidden * q + 2 * h.hidden * kv + 3 * h.hidden * h.intermediate;
  const floats = h.vocabSize * h.hidden * (g.tensors.has('output.weight') ? 2 : 1) + h.hidden + h.layers * perLayer;
  if (floats * 4 > 2_000_000_000) {
    throw new KvtcError(
      'GGUF_UNSUPPORTED',
      `${g.path}: ${(floats / 1e9).toFixed(2)}B parameters are ${((floats * 4) / 1e9).toFixed(1)} GB as float32, more than one ONNX file holds (2 GB); kvtc's GGUF import handles models up to about 500M parameters`,
      {
        fix: 'Export the model with Optimum (optimum-cli export onnx writes external weight data) and pass that directory as --model.',
        context: { file: g.path, parameters: floats },
      },
    );
  }
}

async function readLayer(g: GgufModel, h: LlamaHyper, l: number): Promise<LlamaLayerWeights> {
  const { hidden: H, heads, kvHeads: KV, headDim: D, intermediate: I } = h;
  const w = (t: string, shape: number[]) => readWeight(g, `blk.${l}.${t}.weight`, shape);
  return {
    inputNorm: await w('attn_norm', [H]),
    qProj: unpermuteRopeRows(await w('attn_q', [heads * D, H]), heads, D, H),
    kProj: unpermuteRopeRows(await w('attn_k', [KV * D, H]), KV, D, H),
    vProj: await w('attn_v', [KV * D, H]),
    oProj: await w('attn_output', [H, heads * D]),
    postAttentionNorm: await w('ffn_norm', [H]),
    gateProj: await w('ffn_gate', [I, H]),
    upProj: await w('ffn_up', [I, H]),
    downProj: await w('ffn_down', [H, I]),
  };
}

export async function convertLlamaGguf(g: GgufModel, opts: { name: string }): Promise<ConvertedFamily> {
  const h = llamaHyper(g);
  checkTensorNames(g, h);
  checkSize(g, h);
  // The tokenizer first: a GGUF kvtc cannot tokenize is refused before reading any weight.
  const tok = bpeTokenizerFromGguf(g, { modelMaxLength: h.contextLength, vocabSize: h.vocabSize });
  const layers: LlamaLayerWeights[] = [];
  for (let l = 0; l < h.layers; l++) layers.push(await readLayer(g, h, l));
  const weights: LlamaWeights = {
    embedTokens: await readWeight(g, 'token_embd.weight', [h.vocabSize, h.hidden]),
    layers,
    finalNorm: await readWeight(g, 'output_norm.weight', [h.hidden]),
    ...(g.tensors.has('output.weight') ? { lmHead: await readWeight(g, 'output.weight', [h.vocabSize, h.hidden]) } : {}),
  };
  const rope: LayerRope[] = uniformModelRope(h.rope, h.layers);
  const spec: LlamaDirSpec = {
    layers: h.layers,
    heads: h.heads,
    kvHeads: h.kvHeads,
    headDim: h.headDim,
    hidden: h.hidden,
    vocabSize: h.vocabSize,
    kvDtype: 'float32',
    rope,
    maxPositions: h.contextLength,
    bosTokenId: tok.bosTokenId,
    eosTokenId: tok.eosTokenId,
  };
  const config = llamaConfigJson(spec, { intermediate: h.intermediate, rmsNormEps: h.rmsNormEps, tied: !weights.lmHead, name: opts.name });
  // transformers' LlamaConfig defaults bos/eos to 1/2; a GGUF without them keeps them unset rather than wrong.
  if (tok.bosTokenId === undefined) config.bos_token_id = null;
  if (tok.eosTokenId === undefined) config.eos_token_id = null;
  if (tok.padTokenId !== undefined) config.pad_token_id = tok.padTokenId;
  const generationConfig: Record<string, unknown> = {
    _from_model_config: true,
    ...(tok.bosTokenId !== undefined ? { bos_token_id: tok.bosTokenId } : {}),
    ...(tok.eosTokenId !== undefined ? { eos_token_id: tok.eosTokenId } : {}),
    ...(tok.padTokenId !== undefined ? { pad_token_id: tok.padTokenId } : {}),
  };
  return {
    modelType: 'llama',
    weights,
    spec,
    graph: { rmsNormEps: h.rmsNormEps, name: opts.name },
    config,
    generationConfig,
    tokenizerJson: tok.tokenizerJson,
    tokenizerConfig: tok.tokenizerConfig,
    parameters: countParameters(weights),
    notes: [
      "attn_q/attn_k rows un-permuted from llama.cpp's interleaved RoPE to Hugging Face rotate_half (as transformers' GGUF loader does)",
      `weights dequantized to float32${weights.lmHead ? '' : '; output tied to token_embd'}`,
      `tokenizer: ${tok.description}`,
    ],
  };
}

export const llamaFamily: FamilyConverter = {
  architectures: ['llama'],
  convert: convertLlamaGguf,
};
