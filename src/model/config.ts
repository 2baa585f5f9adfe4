/**
 * Normalizes a Hugging Face `config.json` or an onnxruntime-genai `genai_config.json` into
 * the fields of a ModelSpec. kvDtype comes from the ONNX session, and for genai exports RoPE
 * comes from the graph's cos/sin caches (both in load.ts).
 */
import { fileError, KvtcError } from '../errors.js';
import { ropeFromConfig } from '../rope/from-config.js';
import { uniformModelRope } from '../rope/types.js';
import type { Family, ModelSpec } from './types.js';

export type { Family } from './types.js';

/**
 * The decoder architectures kvtc reads (architectures[0] → family = transformers model_type).
 * Their KV caches have the same shape; what differs is the RoPE on the keys (src/rope/from-config.ts).
 */
const ARCHITECTURES: Record<string, Family> = {
  LlamaForCausalLM: 'llama',
  MistralForCausalLM: 'mistral',
  Qwen2ForCausalLM: 'qwen2',
  Qwen3ForCausalLM: 'qwen3',
  Qwen3MoeForCausalLM: 'qwen3_moe',
  MixtralForCausalLM: 'mixtral',
  Gemma2ForCausalLM: 'gemma2',
  Gemma3ForCausalLM: 'gemma3_text',
  Phi3ForCausalLM: 'phi3',
  SmolLM3ForCausalLM: 'smollm3',
  Olmo2ForCausalLM: 'olmo2',
  GraniteForCausalLM: 'granite',
  GPTNeoXForCausalLM: 'gpt_neox',
  GPT2LMHeadModel: 'gpt2',
};
export const SUPPORTED_FAMILIES: readonly Family[] = [...new Set(Object.values(ARCHITECTURES))];

/** A ModelSpec before the ONNX graph is read: no kvDtype yet. */
export type ConfigSpec = Omit<ModelSpec, 'kvDtype'>;

export interface NormalizedConfig {
  spec: ConfigSpec;
  /** Facts worth telling the user (ignored settings, defaults taken). */
  notes: string[];
}

type Json = Record<string, unknown>;

function invalid(file: string, message: string, fix = 'Re-export the model, or fix the config file.'): KvtcError {
  return fileError('MODEL_INVALID', file, message, fix);
}

function posInt(cfg: Json, key: string, file: string, fallback?: number): number {
  const v = cfg[key] ?? fallback;
  if (typeof v !== 'number' || !Number.isInteger(v) || v <= 0) {
    throw invalid(file, `"${key}" must be a positive integer, got ${JSON.stringify(cfg[key])}`);
  }
  return v;
}

function optionalId(v: unknown): number | undefined {
  if (typeof v === 'number' && Number.isInteger(v)) return v;
  if (Array.isArray(v) && typeof v[0] === 'number') return v[0];
  return undefined;
}

function unsupported(what: string, file: string): KvtcError {
  return new KvtcError(
    'UNSUPPORTED_ARCHITECTURE',
    `${file}: unsupported architecture ${what}. kvtc supports ${Object.keys(ARCHITECTURES).join(', ')} (model_type ${SUPPORTED_FAMILIES.join(', ')}).`,
    {
      fix: 'Use a decoder of one of these families exported with KV cache outputs (present.N.key/value).',
      context: { file, architecture: what },
    },
  );
}

/**
 * Attention variants whose cache is not keys and values with RoPE kvtc can undo, refused with why:
 * DeepSeek-V2/V3 multi-head latent attention (modeling_deepseek_v3.py: the cache holds the
 * kv_lora_rank latent plus a shared decoupled RoPE key, not per-head keys), Llama 4 (chunked
 * attention layers with RoPE mixed with global NoPE layers, RoPE as complex multiplication with
 * its own frequencies, and a temperature-scaled query on NoPE layers).
 */
function refuseVariants(cfg: Json, file: string): void {
  const type = typeof cfg.model_type === 'string' ? cfg.model_type : '';
  const arch = Array.isArray(cfg.architectures) && typeof cfg.architectures[0] === 'string' ? (cfg.architectures[0] as string) : '';
  if (/^deepseek_v[23]$/.test(type) || /^DeepseekV[23]/.test(arch) || cfg.kv_lora_rank !== undefined) {
    throw new KvtcError(
      'UNSUPPORTED_ARCHITECTURE',
      `${file}: ${arch || type || 'this model'} uses multi-head latent attention (kv_lora_rank ${JSON.stringify(cfg.kv_lora_rank)}): its cache is a compressed latent and one shared decoupled-RoPE key per token, not per-head keys and values; kvtc's transform coding of per-head K/V does not apply to it.`,
      {
        fix: 'Compress a decoder with standard (GQA/MQA/MHA) attention; MLA caches are not supported.',
        context: { file, architecture: arch || type },
      },
    );
  }
  if (/^llama4/.test(type) || /^Llama4/.test(arch)) {
    throw new KvtcError(
      'UNSUPPORTED_ARCHITECTURE',
      `${file}: ${arch || type} mixes chunked-attention layers (RoPE, attention_chunk_size ${JSON.stringify(cfg.attention_chunk_size ?? (cfg.text_config as Json | undefined)?.attention_chunk_size)}) with global NoPE layers whose queries are temperature-scaled, with its own RoPE implementation; kvtc does not read that layout yet and will not guess it.`,
      {
        fix: 'Use a Llama 3.x (or another supported family) model; Llama 4 is not supported.',
        context: { file, architecture: arch || type },
      },
    );
  }
}

/** Family from architectures[0], else model_type; throws UNSUPPORTED_ARCHITECTURE. */
export function familyOf(cfg: Json, file: string): { family: Family; architecture: string } {
  refuseVariants(cfg, file);
  const arch = Array.isArray(cfg.architectures) && typeof cfg.architectures[0] === 'string' ? (cfg.architectures[0] as string) : undefined;
  if (arch !== undefined) {
    const family = ARCHITECTURES[arch];
    if (!family) {
      if (arch === 'Gemma3ForConditionalGeneration') {
        throw new KvtcError(
          'UNSUPPORTED_ARCHITECTURE',
          `${file}: ${arch} is the multimodal Gemma 3; kvtc reads its text decoder as Gemma3ForCausalLM (model_type gemma3_text).`,
          {
            fix: 'Export the text model (Gemma3ForCausalLM) with KV cache outputs and point --model at it.',
            context: { file, architecture: arch },
          },
        );
      }
      throw unsupported(`"${arch}"`, file);
    }
    return { family, architecture: arch };
  }
  const type = typeof cfg.model_type === 'string' ? cfg.model_type : undefined;
  const family = SUPPORTED_FAMILIES.find((f) => f === type);
  if (!family)
    throw unsupported(type === undefined ? '(config has neither "architectures" nor "model_type")' : `model_type "${type}"`, file);
  return { family, architecture: Object.keys(ARCHITECTURES).find((a) => ARCHITECTURES[a] === family)! };
}

/** config.json (Optimum / transformers.js export). */
export function normalizeHfConfig(cfg: Json, file = 'config.json'): NormalizedConfig {
  const notes: string[] = [];
  const { family, architecture } = familyOf(cfg, file);
  // GPT-2 (configuration_gpt2.py) names its sizes n_embd, n_head, n_layer, n_positions.
  const k =
    family === 'gpt2'
      ? { hidden: 'n_embd', heads: 'n_head', layers: 'n_layer', positions: 'n_positions' }
      : { hidden: 'hidden_size', heads: 'num_attention_heads', layers: 'num_hidden_layers', positions: 'max_position_embeddings' };
  const hidden = posInt(cfg, k.hidden, file);
  const heads = posInt(cfg, k.heads, file);
  // GPT-NeoX and GPT-2 are multi-head: no num_key_value_heads
  const kvHeads = posInt(cfg, 'num_key_value_heads', file, heads);
  if (heads % kvHeads !== 0) throw invalid(file, `num_attention_heads ${heads} is not a multiple of num_key_value_heads ${kvHeads}`);
  // explicit head_dim (Qwen3, Gemma: not hidden / heads), else hidden / heads
  const headDim = posInt(cfg, 'head_dim', file, cfg.head_dim == null ? hidden / heads : undefined);
  const layers = posInt(cfg, k.layers, file);
  const vocabSize = posInt(cfg, 'vocab_size', file);
  const maxPositions = posInt(cfg, k.positions, file, 2048);
  const rope = ropeFromConfig(cfg, { family, layers, headDim, maxPositions, file, notes });
  if (typeof cfg.sliding_window === 'number' && cfg.use_sliding_window !== false) {
    notes.push(
      `sliding_window ${cfg.sliding_window}: kvtc expects every layer's cache to keep every token (an export whose sliding layers keep only the last ${cfg.sliding_window} is not supported); attention beyond the window is the ONNX graph's business`,
    );
  }
  return {
    spec: {
      architecture,
      family,
      layers,
      heads,
      kvHeads,
      headDim,
      hidden,
      vocabSize,
      rope,
      maxPositions,
      bosTokenId: optionalId(cfg.bos_token_id),
      eosTokenId: optionalId(cfg.eos_token_id),
    },
    notes,
  };
}

/**
 * genai_config.json (onnxruntime-genai export). It has no RoPE settings: the caller reads
 * theta and layout from the graph's cos/sin caches; `rope` here is a placeholder.
 */
export function normalizeGenaiConfig(cfg: Json, file = 'genai_config.json'): NormalizedConfig {
  const model = cfg.model as Json | undefined;
  const decoder = model?.decoder as Json | undefined;
  if (!model || !decoder) throw invalid(file, 'missing "model.decoder" section');
  const type = typeof model.type === 'string' ? model.type : undefined;
  const family = (['llama', 'mistral', 'qwen2'] as const).find((f) => f === type);
  if (!family) throw unsupported(`genai model type "${type}"`, file);
  const heads = posInt(decoder, 'num_attention_heads', file);
  const kvHeads = posInt(decoder, 'num_key_value_heads', file, heads);
  const hidden = posInt(decoder, 'hidden_size', file);
  const headDim = posInt(decoder, 'head_size', file, hidden / heads);
  return {
    spec: {
      architecture: Object.keys(ARCHITECTURES).find((a) => ARCHITECTURES[a] === family)!,
      family,
      layers: posInt(decoder, 'num_hidden_layers', file),
      heads,
      kvHeads,
      headDim,
      hidden,
      vocabSize: posInt(model, 'vocab_size', file),
      rope: uniformModelRope({ theta: 10000, rotaryDim: headDim, layout: 'half' }, posInt(decoder, 'num_hidden_layers', file)),
      maxPositions: posInt(model, 'context_length', file, 2048),
      bosTokenId: optionalId(model.bos_token_id),
      eosTokenId: optionalId(model.eos_token_id),
    },
    notes: [],
  };
}
