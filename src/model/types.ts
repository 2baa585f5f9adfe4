// Tested by test/model/kv-io.test.ts.
/** Normalized description of a decoder-only model, derived from config.json or genai_config.json. */

export type KvDtype = 'float32' | 'float16';

// RoPE descriptions live in src/rope (one per layer); re-exported for the model's users.
export type { LayerRope, ModelRope, RopeLayout, RopeScaling, RopeSpec } from '../rope/types.js';
import type { LayerRope } from '../rope/types.js';

/** Model families kvtc reads, by transformers model_type (config.ts maps architectures to them). */
export const FAMILIES = [
  'llama',
  'mistral',
  'qwen2',
  'qwen3',
  'qwen3_moe',
  'mixtral',
  'gemma2',
  'gemma3_text',
  'phi3',
  'smollm3',
  'olmo2',
  'granite',
  'gpt_neox',
  'gpt2',
] as const;
export type Family = (typeof FAMILIES)[number];

/** How the cache holds keys and values (profile manifest `model.cache`, docs/profile-format.md §2.4). */
export const CACHE_LAYOUTS = ['gqa', 'mla-latent'] as const;
/**
 * gqa: per-head keys and values. mla-latent: MLA's latent (DeepSeek-V2/V3, Kimi K2): kvHeads 1,
 * key = the decoupled RoPE key k_rot, value = c_kv after kv_a_layernorm (valueDim = kv_lora_rank, no RoPE).
 */
export type CacheLayout = (typeof CACHE_LAYOUTS)[number];

/** A tensor-parallel / pipeline rank's share of a model's cache (profile manifest `shard`). */
export interface ShardSpec {
  tpRank: number;
  tpSize: number;
  ppRank: number;
  ppSize: number;
  /** The model's KV head index of each head this rank holds, in cache order (length = kvHeads). */
  kvHeads: number[];
}

export interface ModelSpec {
  /** e.g. LlamaForCausalLM */
  architecture: string;
  /**
   * transformers model_type: one of FAMILIES for a model kvtc loads (config.ts); a model
   * calibrated from a KV dump may carry any label ([a-z0-9_]{1,64}, profile format 3).
   */
  family: Family | (string & {});
  /** Layers in this cache (a pipeline stage's, or the model's layers that keep a KV cache). */
  layers: number;
  heads: number;
  /** KV heads in this cache (a tensor-parallel rank's share when sharded). */
  kvHeads: number;
  /** Width of each key head. */
  headDim: number;
  /** Width of each value head; absent: headDim (profile manifest `model.value_head_dim`). */
  valueDim?: number;
  /** Absent: 'gqa'. */
  cacheLayout?: CacheLayout;
  /** The model's decoder layers, all of them (with `cacheLayers`); absent: `layers`. */
  modelLayers?: number;
  /** The model layer index of each cache layer l, strictly increasing (length = layers); absent: identity. */
  cacheLayers?: number[];
  /** This rank's share, when the cache is one rank's of a sharded model. */
  shard?: ShardSpec;
  hidden: number;
  vocabSize: number;
  kvDtype: KvDtype;
  /** RoPE of each layer (index = layer; null: the layer applies none), from src/rope/from-config.ts. */
  rope: LayerRope[];
  maxPositions: number;
  bosTokenId?: number;
  eosTokenId?: number;
}

/**
 * A captured KV cache for batch 1, in ONNX Runtime's native layout.
 * keys[l]: Float32Array // [kvHeads, tokens, headDim], RoPE applied (as the model stores it)
 * values[l]: Float32Array // [kvHeads, tokens, valueDim ?? headDim]
 * Always float32 in memory; `dtype` records what the model produced (fp16 values are exact in f32).
 */
export interface KvCache {
  layers: number;
  kvHeads: number;
  headDim: number;
  /** Width of each value head; absent: headDim (MLA latents: kv_lora_rank, keys: qk_rope_head_dim). */
  valueDim?: number;
  tokens: number;
  dtype: KvDtype;
  keys: Float32Array[];
  values: Float32Array[];
  /** Absolute position of token 0 (0 for a cache captured from the start of a prompt). */
  startPosition: number;
}

/** Width of each value head: `valueDim` when given, else `headDim`. */
export function valueDimOf(x: { headDim: number; valueDim?: number }): number {
  return x.valueDim ?? x.headDim;
}
