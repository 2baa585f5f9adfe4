// Tested by test/convert/gguf-gemma3.test.ts (synthetic GGUFs: mapping, graph options, refusals) and test/gguf/gemma3.test.ts (Gemma 3 270M against transformers).
/**
 * GGUF `gemma3` architecture (Gemma 3 text) → Gemma3ForCausalLM (model_type gemma3_text), the
 * decoder of transformers' models/gemma3/modeling_gemma3.py built by llama-graph.ts's Gemma
 * options:
 *   - embeddings × hidden_size**0.5 as float32 (Gemma3TextScaledWordEmbedding); the tied lm_head
 *     uses the unscaled matrix;
 *   - Gemma3RMSNorm x·(1 + w): llama.cpp's convert_hf_to_gguf.py stores every `*norm.weight` with
 *     1 added (Gemma3Model: data_torch + norm_shift), transformers' GGUF loader subtracts it again
 *     (modeling_gguf_pytorch_utils.py Gemma2TensorProcessor: weights - 1, used for gemma3); so do we,
 *     in float32, and the graph adds the 1 back;
 *   - four norms per layer: attn_norm → input_layernorm, post_attention_norm →
 *     post_attention_layernorm, ffn_norm → pre_feedforward_layernorm, post_ffw_norm →
 *     post_feedforward_layernorm; attn_q_norm / attn_k_norm → q_norm / k_norm over each head;
 *   - attention scale query_pre_attn_scalar**-0.5, GELU-tanh MLP (gelu_pytorch_tanh);
 *   - sliding-window attention on local layers (every layer but each 6th, llama.cpp's and
 *     Gemma3TextConfig's default pattern), masked in the graph while the cache keeps every token;
 *     local layers rotate with base rope_local_base_freq (10k), global ones with rope.freq_base
 *     (1M) and the file's linear rope scaling, if any.
 * No q/k row permutation: Gemma uses NEOX (rotate_half) RoPE, which llama.cpp stores as it is
 * (transformers only un-permutes llama/mistral).
 * What the GGUF does not say (the local base, the pattern, query_pre_attn_scalar), llama.cpp
 * hard-codes for gemma3 (src/llama-model.cpp); the same values are written to config.json.
 */
import type { LayerRope, RopeSpec } from '../../rope/types.js';
import type { LlamaGraphOptions, LlamaLayerWeights, LlamaWeights } from '../llama-graph.js';
import type { LlamaDirSpec } from '../model-dir.js';
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
import { spmTokenizerFromGguf } from './tokenizer-spm.js';

/** GGUF tensor of each layer → what it is in transformers' Gemma3DecoderLayer. */
const LAYER_TENSORS = {
  attn_norm: 'input_layernorm',
  attn_q: 'self_attn.q_proj',
  attn_k: 'self_attn.k_proj',
  attn_v: 'self_attn.v_proj',
  attn_output: 'self_attn.o_proj',
  attn_q_norm: 'self_attn.q_norm',
  attn_k_norm: 'self_attn.k_norm',
  post_attention_norm: 'post_attention_layernorm',
  ffn_norm: 'pre_feedforward_layernorm',
  ffn_gate: 'mlp.gate_proj',
  ffn_up: 'mlp.up_proj',
  ffn_down: 'mlp.down_proj',
  post_ffw_norm: 'post_feedforward_layernorm',
} as const;

/** llama.cpp (llama-model.cpp, LLM_ARCH_GEMMA3): every 6th layer attends globally. */
export const GEMMA3_SLIDING_PATTERN = 6;
/** Gemma3TextConfig.rope_local_base_freq default, llama.cpp's rope_freq_base_train_swa for gemma3. */
export const GEMMA3_LOCAL_ROPE_BASE = 10000;

export interface Gemma3Hyper extends BaseHyper {
  slidingWindow: number;
  /** Per layer: 'sliding_attention' or 'full_attention' (config.json layer_types). */
  layerTypes: ('sliding_attention' | 'full_attention')[];
  globalRope: RopeSpec;
  localRope: RopeSpec;
  queryPreAttnScalar: number;
}

/** Which layers slide: `gemma3.attention.sliding_window_pattern` (a period, or one bool per layer, true = sliding) when present, else every 6th layer is global. */
function layerTypes(g: GgufModel, layers: number): Gemma3Hyper['layerTypes'] {
  const key = 'gemma3.attention.sliding_window_pattern';
  const raw = g.meta(key);
  if (Array.isArray(raw)) {
    if (raw.length !== layers || !raw.every((b) => typeof b === 'boolean'))
      throw invalid(g, `${key} must hold one boolean per layer (${layers}), got ${raw.length} values`, CORRUPT, { key });
    return raw.map((b) => (b ? 'sliding_attention' : 'full_attention'));
  }
  const period = raw === undefined ? GEMMA3_SLIDING_PATTERN : metaCount(g, key);
  return Array.from({ length: layers }, (_, i) => ((i + 1) % period ? 'sliding_attention' : 'full_attention'));
}

/** Hyper-parameters from `gemma3.*` metadata, checked before any tensor is read. */
export function gemma3Hyper(g: GgufModel): Gemma3Hyper {
  const a = 'gemma3';
  // Gemma's head_dim is not hidden / heads (270M: 256 vs 160): the GGUF must say it.
  const { layers, hidden, intermediate, heads, kvHeads, headDim, vocabSize, contextLength, rmsNormEps } = baseHyper(g, a, {
    family: 'Gemma 3',
    epsDefault: 1e-6,
  });
  const slidingWindow = metaCount(g, `${a}.attention.sliding_window`);
  const theta = shortestFloat32(metaNumber(g, `${a}.rope.freq_base`) ?? 1e6);
  const localTheta = shortestFloat32(metaNumber(g, `${a}.rope.freq_base_swa`) ?? GEMMA3_LOCAL_ROPE_BASE);
  if (!(theta > 1) || !(localTheta > 1))
    throw invalid(g, `rope.freq_base ${theta} / rope.freq_base_swa ${localTheta} must be above 1`, CORRUPT);
  const rotaryDim = metaCount(g, `${a}.rope.dimension_count`, headDim);
  if (rotaryDim !== headDim)
    throw unsupported(
      g,
      `rope.dimension_count ${rotaryDim} differs from head_dim ${headDim} (partial rotary)`,
      'Gemma 3 rotates whole heads; this GGUF is not a Gemma 3 kvtc knows.',
    );
  // Gemma 3 4B+ scale global layers' RoPE linearly (factor 8); local layers are never scaled.
  const globalRope = linearRopeScaling(
    g,
    a,
    { theta, rotaryDim, layout: 'half' },
    {
      family: 'Gemma 3',
      fix: 'Export the model from its Hugging Face checkpoint with Optimum instead.',
    },
  );
  for (const k of ['final_logit_softcapping', 'attn_logit_softcapping']) {
    if (g.meta(`${a}.${k}`) !== undefined)
      throw unsupported(
        g,
        `${a}.${k} is set; Gemma 3 has no soft-capping and kvtc's graph applies none`,
        'Export the model with Optimum instead.',
        { key: `${a}.${k}` },
      );
  }
  // llama.cpp scales Gemma 3 27B (62 layers) queries by (hidden / heads)^-0.5, the rest by head_dim^-0.5 (query_pre_attn_scalar 168 vs 256 in the original configs).
  const queryPreAttnScalar = layers === 62 ? hidden / heads : headDim;
  return {
    layers,
    hidden,
    intermediate,
    heads,
    kvHeads,
    headDim,
    vocabSize,
    contextLength,
    rmsNormEps,
    slidingWindow,
    layerTypes: layerTypes(g, layers),
    globalRope,
    localRope: { theta: localTheta, rotaryDim, layout: 'half' },
    queryPreAttnScalar,
  };
}

/** Every tensor a gemma3 GGUF may hold; anything else would be silently dropped, so it is refused. */
function checkTensorNames(g: GgufModel, h: Gemma3Hyper): void {
  const known = new Set(['token_embd.weight', 'output_norm.weight', 'output.weight']);
  for (let l = 0; l < h.layers; l++) for (const t of Object.keys(LAYER_TENSORS)) known.add(`blk.${l}.${t}.weight`);
  const extra = [...g.tensors.keys()].filter((n) => !known.has(n));
  if (extra.length > 0) {
    throw unsupported(
      g,
      `tensors a Gemma 3 text model does not have: ${extra.slice(0, 5).join(', ')}${extra.length > 5 ? ` and ${extra.length - 5} more` : ''} (a vision tower, biases, or a block_count that does not match)`,
      'kvtc converts the Gemma 3 text decoder; convert the text-only GGUF, or export other models with Optimum.',
      { tensors: extra.slice(0, 20) },
    );
  }
}

/** transformers' Gemma3RMSNorm parameter from llama.cpp's stored (1 + w), in float32 as numpy subtracts. */
export function unshiftNorm(w: Float32Array): Float32Array {
  const out = new Float32Array(w.length);
  for (let i = 0; i < w.length; i++) out[i] = w[i] - 1; // rounded to float32 on store
  return out;
}

async function readLayer(g: GgufModel, h: Gemma3Hyper, l: number): Promise<LlamaLayerWeights> {
  const { hidden: H, heads, kvHeads: KV, headDim: D, intermediate: I } = h;
  const w = (t: keyof typeof LAYER_TENSORS, shape: number[]) => readWeight(g, `blk.${l}.${t}.weight`, shape);
  const norm = async (t: keyof typeof LAYER_TENSORS, n: number) => unshiftNorm(await w(t, [n]));
  return {
    inputNorm: await norm('attn_norm', H),
    qProj: await w('attn_q', [heads * D, H]),
    kProj: await w('attn_k', [KV * D, H]),
    vProj: await w('attn_v', [KV * D, H]),
    oProj: await w('attn_output', [H, heads * D]),
    qNorm: await norm('attn_q_norm', D),
    kNorm: await norm('attn_k_norm', D),
    postAttentionNorm: await norm('post_attention_norm', H),
    preFeedforwardNorm: await norm('ffn_norm', H),
    gateProj: await w('ffn_gate', [I, H]),
    upProj: await w('ffn_up', [I, H]),
    downProj: await w('ffn_down', [H, I]),
    postFeedforwardNorm: await norm('post_ffw_norm', H),
  };
}

/** config.json as transformers writes Gemma3ForCausalLM (4.x keys, which 5.x reads as rope_parameters per layer type). */
export function gemma3ConfigJson(
  h: Gemma3Hyper,
  opts: { name: string; tied: boolean; bos?: number; eos?: number; pad?: number },
): Record<string, unknown> {
  const s = h.globalRope.scaling;
  return {
    _name_or_path: opts.name,
    architectures: ['Gemma3ForCausalLM'],
    attention_bias: false,
    attention_dropout: 0,
    attn_logit_softcapping: null,
    bos_token_id: opts.bos ?? null,
    eos_token_id: opts.eos ?? null,
    final_logit_softcapping: null,
    head_dim: h.headDim,
    hidden_activation: 'gelu_pytorch_tanh',
    hidden_size: h.hidden,
    initializer_range: 0.02,
    intermediate_size: h.intermediate,
    layer_types: h.layerTypes,
    max_position_embeddings: h.contextLength,
    model_type: 'gemma3_text',
    num_attention_heads: h.heads,
    num_hidden_layers: h.layers,
    num_key_value_heads: h.kvHeads,
    pad_token_id: opts.pad ?? null,
    query_pre_attn_scalar: h.queryPreAttnScalar,
    rms_norm_eps: h.rmsNormEps,
    rope_local_base_freq: h.localRope.theta,
    rope_scaling: s?.type === 'linear' ? { factor: s.factor, rope_type: 'linear' } : null,
    rope_theta: h.globalRope.theta,
    sliding_window: h.slidingWindow,
    tie_word_embeddings: opts.tied,
    // Weights are float32; a float16 KV cache is visible in the ONNX input/output types.
    torch_dtype: 'float32',
    use_bidirectional_attention: false,
    use_cache: true,
    vocab_size: h.vocabSize,
  };
}

/** The graph options that make llama-graph.ts a Gemma 3 text decoder. */
export function gemma3GraphOptions(h: Gemma3Hyper, name: string): LlamaGraphOptions {
  return {
    rmsNormEps: h.rmsNormEps,
    name,
    qkNorm: 'head',
    embedScale: Math.fround(Math.sqrt(h.hidden)),
    normPlusOne: true,
    sandwichNorms: true,
    attentionScale: h.queryPreAttnScalar ** -0.5,
    hiddenAct: 'gelu_tanh',
    attentionWindow: h.layerTypes.map((t) => (t === 'sliding_attention' ? h.slidingWindow : null)),
  };
}

export async function convertGemma3Gguf(g: GgufModel, opts: { name: string }): Promise<ConvertedFamily> {
  const h = gemma3Hyper(g);
  checkTensorNames(g, h);
  // The tokenizer first: a GGUF kvtc cannot tokenize is refused before reading any weight.
  const tok = spmTokenizerFromGguf(g, { modelMaxLength: h.contextLength, vocabSize: h.vocabSize });
  const layers: LlamaLayerWeights[] = [];
  for (let l = 0; l < h.layers; l++) layers.push(await readLayer(g, h, l));
  const weights: LlamaWeights = {
    embedTokens: await readWeight(g, 'token_embd.weight', [h.vocabSize, h.hidden]),
    layers,
    finalNorm: unshiftNorm(await readWeight(g, 'output_norm.weight', [h.hidden])),
    ...(g.tensors.has('output.weight') ? { lmHead: await readWeight(g, 'output.weight', [h.vocabSize, h.hidden]) } : {}),
  };
  const rope: LayerRope[] = h.layerTypes.map((t) => (t === 'sliding_attention' ? h.localRope : h.globalRope));
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
  const config = gemma3ConfigJson(h, {
    name: opts.name,
    tied: !weights.lmHead,
    bos: tok.bosTokenId,
    eos: tok.eosTokenId,
    pad: tok.padTokenId,
  });
  const generationConfig: Record<string, unknown> = {
    _from_model_config: true,
    ...(tok.bosTokenId !== undefined ? { bos_token_id: tok.bosTokenId } : {}),
    // Gemma 3 generation_config.json uses the hybrid cache; kvtc's graph keeps every token in every layer instead.
    cache_implementation: 'hybrid',
    ...(tok.eosTokenId !== undefined ? { eos_token_id: tok.eosTokenId } : {}),
    ...(tok.padTokenId !== undefined ? { pad_token_id: tok.padTokenId } : {}),
  };
  const globals = h.layerTypes.flatMap((t, i) => (t === 'full_attention' ? [i] : []));
  return {
    modelType: 'gemma3_text',
    weights,
    spec,
    graph: gemma3GraphOptions(h, opts.name),
    config,
    generationConfig,
    tokenizerJson: tok.tokenizerJson,
    tokenizerConfig: tok.tokenizerConfig,
    parameters: countParameters(weights),
    notes: [
      `global attention on layers ${globals.join(', ')} (RoPE base ${h.globalRope.theta}${h.globalRope.scaling ? `, linear scaling ${(h.globalRope.scaling as { factor: number }).factor}` : ''}); the others attend to the last ${h.slidingWindow} tokens (RoPE base ${h.localRope.theta}), masked in the graph: every layer's cache keeps every token`,
      "norm weights stored by llama.cpp as 1 + w: w restored (as transformers' GGUF loader does) and the graph computes x·(1 + w)",
      `weights dequantized to float32${weights.lmHead ? '' : '; output tied to token_embd (unscaled; inputs are scaled by √hidden)'}`,
      `tokenizer: ${tok.description}`,
      'Gemma is provided under the Gemma Terms of Use (https://ai.google.dev/gemma/terms): they apply to the converted model too',
    ],
  };
}

export const gemma3Family: FamilyConverter = {
  architectures: ['gemma3'],
  convert: convertGemma3Gguf,
};
