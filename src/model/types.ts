// Tested by test/model/kv-io.test.ts.
/** Normalized description of a decoder-only model, derived from config.json or genai_config.json. */

export type KvDtype = 'float32' | 'float16';

export interface RopeScaling {
  /** 'llama3' frequency-dependent scaling, or 'linear' position interpolation. */
  type: 'llama3' | 'linear';
  factor: number;
  lowFreqFactor?: number;
  highFreqFactor?: number;
  originalMaxPositionEmbeddings?: number;
}

export interface RopeSpec {
  theta: number;
  /** Number of leading dims of each head that are rotated (== headDim unless partial rotary). */
  rotaryDim: number;
  /**
   * 'half': Hugging Face rotate_half, pairs (i, i + rotaryDim/2).
   * 'interleaved': GPT-J / llama2.c, pairs (2i, 2i+1).
   */
  layout: 'half' | 'interleaved';
  scaling?: RopeScaling;
}

export interface ModelSpec {
  /** e.g. LlamaForCausalLM */
  architecture: string;
  family: 'llama' | 'mistral' | 'qwen2';
  layers: number;
  heads: number;
  kvHeads: number;
  headDim: number;
  hidden: number;
  vocabSize: number;
  kvDtype: KvDtype;
  rope: RopeSpec;
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
