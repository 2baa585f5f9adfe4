/**
 * Tiny random-weight decoders of each model family, built by the project's graph builder
 * (src/convert/llama-graph.ts) from a seed, in a model directory: onnx/model.onnx with
 * present.N.key/value outputs, config.json in the form transformers writes for that family
 * (4.x: rope_theta / rope_scaling; 5.x: rope_parameters, one dict per layer type where the
 * family has several), and the bundled stories260K tokenizer (models/stories260k).
 *
 * The graph applies RoPE per layer as transformers' modeling file for the family does
 * (transformersLayerRopes, written from the transformers source), with the family's q/k norm:
 *   Qwen3 / Qwen3-MoE  modeling_qwen3.py: q_norm/k_norm = Qwen3RMSNorm(head_dim) on
 *                      q_proj(x).view(hidden_shape), i.e. per head, before RoPE
 *   Gemma 3            modeling_gemma3.py: Gemma3RMSNorm(head_dim) per head, weight (1 + w)
 *   OLMo 2             modeling_olmo2.py: Olmo2RMSNorm(num_heads * head_dim) on the whole
 *                      q_proj(x) (k: num_key_value_heads * head_dim), then view, then RoPE
 *   GPT-2              modeling_gpt2.py: learned wpe added to the token embeddings, no RoPE
 * What does not change the cache's RoPE is kept Llama-shaped: the MLP is dense for the MoE
 * families, norms are RMSNorm (Phi-3's qkv_proj is one fused MatMul, as exported), Gemma's embedding
 * scale, soft-capping and Granite's multipliers are not applied. The config still says what
 * the family's config says, because that is what kvtc reads.
 */
import { copyFile, mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { buildLlamaGraph, type GraphLayerRope, type LlamaWeights } from '../../src/convert/llama-graph.js';
import { normals, randomLlamaWeights } from '../../src/convert/random-llama.js';
import { DEFAULT_MODEL_DIR } from '../../src/paths.js';
import { mulberry32 } from '../../src/random.js';
import { transformersLayerRopes, type RefLayerRope } from './transformers-reference.js';

type Json = Record<string, unknown>;
export type ConfigStyle = '4.x' | '5.x';

export interface FamilyDef {
  /** Fixture name (a family, or family-variant). */
  name: string;
  layers: number;
  hidden: number;
  heads: number;
  kvHeads: number;
  headDim: number;
  qkNorm?: 'head' | 'projection';
  absolutePositions?: boolean;
  /** One qkv_proj MatMul, split into q, k, v (Phi-3). */
  fusedQkv?: boolean;
  /** config.json as transformers 4.x and 5.x write it (5.x omitted: same as 4.x). */
  config: Record<ConfigStyle, Json>;
}

const VOCAB = 512;
const INTER = 128;

/** Fields every transformers config.json of these families carries. */
function common(
  d: Pick<FamilyDef, 'layers' | 'hidden' | 'heads' | 'kvHeads'>,
  style: ConfigStyle,
  arch: string,
  type: string,
  maxPos = 256,
): Json {
  return {
    architectures: [arch],
    model_type: type,
    bos_token_id: 1,
    eos_token_id: 2,
    hidden_size: d.hidden,
    intermediate_size: INTER,
    num_attention_heads: d.heads,
    num_hidden_layers: d.layers,
    num_key_value_heads: d.kvHeads,
    max_position_embeddings: maxPos,
    rms_norm_eps: 1e-6,
    tie_word_embeddings: true,
    vocab_size: VOCAB,
    use_cache: true,
    ...(style === '4.x' ? { torch_dtype: 'float32', transformers_version: '4.56.1' } : { dtype: 'float32', transformers_version: '5.0.0' }),
  };
}

/** The 4.x form (rope_theta + rope_scaling) and the 5.x form (rope_parameters with rope_theta inside). */
function twoStyles(base: (s: ConfigStyle) => Json, theta: number, scaling: Json | null, extra5: Json = {}): Record<ConfigStyle, Json> {
  return {
    '4.x': { ...base('4.x'), rope_theta: theta, rope_scaling: scaling },
    '5.x': { ...base('5.x'), rope_parameters: { ...(scaling ?? { rope_type: 'default' }), rope_theta: theta, ...extra5 } },
  };
}

const shape = (o: Partial<FamilyDef> = {}) => ({ layers: 3, hidden: 64, heads: 4, kvHeads: 2, headDim: 16, ...o });

function qwen3(): FamilyDef {
  const s = shape({ headDim: 32 }); // explicit head_dim != hidden / heads, as in Qwen3
  const base = (st: ConfigStyle) => ({
    ...common(s, st, 'Qwen3ForCausalLM', 'qwen3'),
    head_dim: s.headDim,
    attention_bias: false,
    hidden_act: 'silu',
    max_window_layers: s.layers,
    sliding_window: null,
    use_sliding_window: false,
    attention_dropout: 0,
  });
  return { name: 'qwen3', ...s, qkNorm: 'head', config: twoStyles(base, 1000000, null) };
}

function qwen3Moe(): FamilyDef {
  const s = shape({ headDim: 32, layers: 2 });
  const base = (st: ConfigStyle) => ({
    ...common(s, st, 'Qwen3MoeForCausalLM', 'qwen3_moe'),
    head_dim: s.headDim,
    attention_bias: false,
    hidden_act: 'silu',
    num_experts: 4,
    num_experts_per_tok: 2,
    moe_intermediate_size: 32,
    decoder_sparse_step: 1,
    norm_topk_prob: true,
    mlp_only_layers: [],
    sliding_window: null,
    use_sliding_window: false,
    router_aux_loss_coef: 0.001,
  });
  // YaRN as Qwen3 model cards set it for long context, with a factor (2) that is not
  // max / original (256 / 64): transformers 5 uses the factor.
  return {
    name: 'qwen3_moe-yarn',
    ...s,
    qkNorm: 'head',
    config: twoStyles(base, 1000000, { rope_type: 'yarn', factor: 2.0, original_max_position_embeddings: 64 }),
  };
}

function gemma2(): FamilyDef {
  const s = shape({ headDim: 32, layers: 2 });
  const base = (st: ConfigStyle) => ({
    ...common(s, st, 'Gemma2ForCausalLM', 'gemma2'),
    head_dim: s.headDim,
    hidden_activation: 'gelu_pytorch_tanh',
    query_pre_attn_scalar: 32,
    sliding_window: 32,
    final_logit_softcapping: 30.0,
    attn_logit_softcapping: 50.0,
    attention_bias: false,
    cache_implementation: 'hybrid',
    ...(st === '5.x' ? { layer_types: ['sliding_attention', 'full_attention'] } : {}),
  });
  return { name: 'gemma2', ...s, config: twoStyles(base, 10000, null) };
}

function gemma3(): FamilyDef {
  const s = shape({ headDim: 32, layers: 6, kvHeads: 1 }); // one KV head, as Gemma 3 1B
  const base = (st: ConfigStyle) => ({
    ...common(s, st, 'Gemma3ForCausalLM', 'gemma3_text'),
    head_dim: s.headDim,
    hidden_activation: 'gelu_pytorch_tanh',
    query_pre_attn_scalar: 32,
    sliding_window: 32,
    final_logit_softcapping: null,
    attn_logit_softcapping: null,
    attention_bias: false,
  });
  const layerTypes = Array.from({ length: s.layers }, (_, i) => ((i + 1) % 3 ? 'sliding_attention' : 'full_attention'));
  return {
    name: 'gemma3',
    ...s,
    qkNorm: 'head',
    config: {
      // 4.x: the global base and scaling at top level, the local base apart, the pattern as a period.
      '4.x': {
        ...base('4.x'),
        rope_theta: 1000000,
        rope_local_base_freq: 10000,
        rope_scaling: { rope_type: 'linear', factor: 8.0 },
        sliding_window_pattern: 3,
      },
      '5.x': {
        ...base('5.x'),
        layer_types: layerTypes,
        rope_parameters: {
          full_attention: { rope_type: 'linear', factor: 8.0, rope_theta: 1000000 },
          sliding_attention: { rope_type: 'default', rope_theta: 10000 },
        },
      },
    },
  };
}

function phi3(): FamilyDef {
  // Phi-4-mini's shape of RoPE: partial rotary 0.75 and longrope (factors per rotated pair).
  const s = shape({ layers: 2 });
  const pairs = (s.headDim * 0.75) / 2;
  const short = Array.from({ length: pairs }, (_, i) => 1 + 0.05 * i);
  const long = Array.from({ length: pairs }, (_, i) => 1 + 1.5 * i * i);
  const base = (st: ConfigStyle) => ({
    ...common(s, st, 'Phi3ForCausalLM', 'phi3'),
    original_max_position_embeddings: 64,
    hidden_act: 'silu',
    resid_pdrop: 0,
    embd_pdrop: 0,
    attention_dropout: 0,
    sliding_window: 262144,
    pad_token_id: 0,
    ...(st === '4.x' ? { partial_rotary_factor: 0.75 } : {}),
  });
  return {
    name: 'phi3-longrope',
    ...s,
    fusedQkv: true,
    config: {
      '4.x': { ...base('4.x'), rope_theta: 10000, rope_scaling: { type: 'longrope', short_factor: short, long_factor: long } },
      '5.x': {
        ...base('5.x'),
        rope_parameters: { rope_type: 'longrope', rope_theta: 10000, partial_rotary_factor: 0.75, short_factor: short, long_factor: long },
      },
    },
  };
}

function smollm3(): FamilyDef {
  const s = shape({ layers: 4 });
  const base = (st: ConfigStyle) => ({
    ...common(s, st, 'SmolLM3ForCausalLM', 'smollm3'),
    hidden_act: 'silu',
    no_rope_layers: [1, 1, 1, 0],
    no_rope_layer_interval: 4,
    use_sliding_window: false,
    sliding_window: null,
    attention_bias: false,
    mlp_bias: false,
    pad_token_id: 0,
    layer_types: ['full_attention', 'full_attention', 'full_attention', 'full_attention'],
  });
  return { name: 'smollm3', ...s, config: twoStyles(base, 2000000, null) };
}

function olmo2(): FamilyDef {
  const s = shape({ layers: 2 });
  const base = (st: ConfigStyle) => ({
    ...common(s, st, 'Olmo2ForCausalLM', 'olmo2'),
    hidden_act: 'silu',
    attention_bias: false,
    pad_token_id: 0,
  });
  return { name: 'olmo2', ...s, qkNorm: 'projection', config: twoStyles(base, 500000, null) };
}

function granite(): FamilyDef {
  const s = shape({ layers: 2 });
  const base = (st: ConfigStyle) => ({
    ...common(s, st, 'GraniteForCausalLM', 'granite'),
    hidden_act: 'silu',
    attention_multiplier: 0.015625,
    embedding_multiplier: 12.0,
    residual_multiplier: 0.22,
    logits_scaling: 8.0,
    attention_bias: false,
    mlp_bias: false,
  });
  return { name: 'granite', ...s, config: twoStyles(base, 10000, null) };
}

function mixtral(): FamilyDef {
  const s = shape({ layers: 2 });
  const base = (st: ConfigStyle) => ({
    ...common(s, st, 'MixtralForCausalLM', 'mixtral'),
    hidden_act: 'silu',
    num_local_experts: 4,
    num_experts_per_tok: 2,
    router_aux_loss_coef: 0.02,
    sliding_window: null,
    output_router_logits: false,
  });
  return { name: 'mixtral', ...s, config: twoStyles(base, 1000000, null) };
}

function gptNeox(): FamilyDef {
  const s = shape({ layers: 2, kvHeads: 4 }); // multi-head: no num_key_value_heads in the config
  const base = (st: ConfigStyle) => {
    const c: Json = {
      ...common(s, st, 'GPTNeoXForCausalLM', 'gpt_neox'),
      hidden_act: 'gelu',
      layer_norm_eps: 1e-5,
      use_parallel_residual: true,
      attention_bias: true,
      attention_dropout: 0,
      hidden_dropout: 0,
      tie_word_embeddings: false,
    };
    delete c.num_key_value_heads;
    delete c.rms_norm_eps;
    return c;
  };
  return {
    name: 'gpt_neox',
    ...s,
    config: {
      '4.x': { ...base('4.x'), rotary_pct: 0.25, rotary_emb_base: 10000 },
      '5.x': { ...base('5.x'), rope_parameters: { rope_type: 'default', rope_theta: 10000, partial_rotary_factor: 0.25 } },
    },
  };
}

function gpt2(): FamilyDef {
  const s = shape({ layers: 2, kvHeads: 4 });
  const c = (st: ConfigStyle): Json => ({
    architectures: ['GPT2LMHeadModel'],
    model_type: 'gpt2',
    activation_function: 'gelu_new',
    bos_token_id: 1,
    eos_token_id: 2,
    n_embd: s.hidden,
    n_head: s.heads,
    n_layer: s.layers,
    n_positions: 256,
    n_ctx: 256,
    n_inner: null,
    layer_norm_epsilon: 1e-5,
    vocab_size: VOCAB,
    use_cache: true,
    tie_word_embeddings: true,
    ...(st === '4.x' ? { torch_dtype: 'float32', transformers_version: '4.56.1' } : { dtype: 'float32', transformers_version: '5.0.0' }),
  });
  return { name: 'gpt2', ...s, absolutePositions: true, config: { '4.x': c('4.x'), '5.x': c('5.x') } };
}

function llama3Scaled(): FamilyDef {
  const s = shape({ layers: 2 });
  const base = (st: ConfigStyle) => ({
    ...common(s, st, 'LlamaForCausalLM', 'llama'),
    head_dim: s.headDim,
    hidden_act: 'silu',
    attention_bias: false,
    mlp_bias: false,
  });
  return {
    name: 'llama-llama3',
    ...s,
    config: twoStyles(base, 500000, {
      rope_type: 'llama3',
      factor: 8.0,
      low_freq_factor: 1.0,
      high_freq_factor: 4.0,
      original_max_position_embeddings: 64,
    }),
  };
}

function llamaInterleaved(): FamilyDef {
  // kvtc's converter convention for llama2.c checkpoints: GPT-J pairs (2i, 2i + 1).
  const s = shape({ layers: 2 });
  const base = (st: ConfigStyle) => ({
    ...common(s, st, 'LlamaForCausalLM', 'llama'),
    head_dim: s.headDim,
    hidden_act: 'silu',
    rope_interleaved: true,
  });
  return { name: 'llama-interleaved-linear', ...s, config: twoStyles(base, 10000, { rope_type: 'linear', factor: 4.0 }) };
}

export const FAMILIES: FamilyDef[] = [
  qwen3(),
  qwen3Moe(),
  gemma2(),
  gemma3(),
  phi3(),
  smollm3(),
  olmo2(),
  granite(),
  mixtral(),
  gptNeox(),
  gpt2(),
  llama3Scaled(),
  llamaInterleaved(),
];

export const family = (name: string): FamilyDef => {
  const f = FAMILIES.find((x) => x.name === name);
  if (!f) throw new Error(`no family fixture ${name}`);
  return f;
};

export interface FamilyFixture {
  def: FamilyDef;
  style: ConfigStyle;
  dir: string;
  config: Json;
  /** Each layer's RoPE as transformers derives it from config (null: none). */
  ropes: (RefLayerRope | null)[];
  weights: LlamaWeights;
  positionEmbeddings?: Float32Array;
}

/** RoPE of a layer for the graph builder (the reference's values, float32 inv_freq). */
export const graphRope = (r: RefLayerRope | null): GraphLayerRope | null =>
  r && {
    invFreq: r.invFreq,
    rotaryDim: r.rotaryDim,
    layout: r.layout,
    attentionFactor: r.attentionFactor,
    ...(r.long ? { long: r.long } : {}),
  };

/** Writes the fixture model directory `out` for one family and config style; deterministic in the seed. */
export async function buildFamilyFixture(
  def: FamilyDef,
  style: ConfigStyle,
  out: string,
  opts: { seed?: number; std?: number; kvDtype?: 'float32' | 'float16'; cacheWindow?: (number | null)[] } = {},
): Promise<FamilyFixture> {
  const { seed = 1, std = 0.1, kvDtype = 'float32' } = opts;
  const config = def.config[style];
  const ropes = transformersLayerRopes(config);
  const rand = mulberry32(seed);
  const { layers, hidden, heads, kvHeads, headDim } = def;
  const weights = randomLlamaWeights(rand, {
    layers,
    hidden,
    heads,
    kvHeads,
    headDim,
    intermediate: INTER,
    vocab: VOCAB,
    std,
    qkNorm: def.qkNorm,
  });
  const positionEmbeddings = def.absolutePositions ? normals(rand, 256 * hidden, std) : undefined;
  const onnx = buildLlamaGraph(
    weights,
    {
      layers,
      heads,
      kvHeads,
      headDim,
      hidden,
      vocabSize: VOCAB,
      kvDtype,
      rope: { theta: 10000, rotaryDim: headDim, layout: 'half' }, // unused: layerRope is given
    },
    {
      rmsNormEps: 1e-6,
      name: `${def.name}-${style}`,
      layerRope: ropes.map(graphRope),
      qkNorm: def.qkNorm,
      positionEmbeddings,
      cacheWindow: opts.cacheWindow,
      fusedQkv: def.fusedQkv,
    },
  );
  await mkdir(join(out, 'onnx'), { recursive: true });
  await writeFile(join(out, 'onnx', 'model.onnx'), onnx);
  await writeFile(join(out, 'config.json'), `${JSON.stringify({ _name_or_path: `kvtc-test/${def.name}`, ...config }, null, 2)}\n`);
  for (const f of ['tokenizer.json', 'tokenizer_config.json']) await copyFile(join(DEFAULT_MODEL_DIR, f), join(out, f));
  return { def, style, dir: out, config, ropes, weights, ...(positionEmbeddings ? { positionEmbeddings } : {}) };
}
