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

export interface ModelSpec {
  /** e.g. LlamaForCausalLM */
  architecture: string;
  family: Family;
  layers: number;
  heads: number;
  kvHeads: number;
  headDim: number;
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
 * keys[l], values[l]: Float32Array // [kvHeads, tokens, headDim], RoPE applied (as the model stores it)
 * Always float32 in memory; `dtype` records what the model produced (fp16 values are exact in f32).
 */
export interface KvCache {
  layers: number;
  kvHeads: number;
  headDim: number;
  tokens: number;
  dtype: KvDtype;
  keys: Float32Array[];
  values: Float32Array[];
  /** Absolute position of token 0 (0 for a cache captured from the start of a prompt). */
  startPosition: number;
}
