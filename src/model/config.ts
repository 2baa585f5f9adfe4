/**
 * Normalizes a Hugging Face `config.json` or an onnxruntime-genai `genai_config.json` into
 * the fields of a ModelSpec. kvDtype comes from the ONNX session, and for genai exports RoPE
 * comes from the graph's cos/sin caches (both in load.ts).
 */
import { KvtcError } from '../errors.js';
import { uniformModelRope } from '../rope/types.js';
import type { ModelSpec, RopeScaling, RopeSpec } from './types.js';

export type Family = ModelSpec['family'];
export const SUPPORTED_FAMILIES: readonly Family[] = ['llama', 'mistral', 'qwen2'];
const ARCHITECTURES: Record<string, Family> = {
  LlamaForCausalLM: 'llama',
  MistralForCausalLM: 'mistral',
  Qwen2ForCausalLM: 'qwen2',
};

/** A ModelSpec before the ONNX graph is read: no kvDtype yet. */
export type ConfigSpec = Omit<ModelSpec, 'kvDtype'>;

export interface NormalizedConfig {
  spec: ConfigSpec;
  /** Facts worth telling the user (ignored settings, defaults taken). */
  notes: string[];
}

type Json = Record<string, unknown>;

function invalid(file: string, message: string, fix = 'Re-export the model, or fix the config file.'): KvtcError {
  return new KvtcError('MODEL_INVALID', `${file}: ${message}`, { fix, context: { file } });
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
  return new KvtcError('UNSUPPORTED_ARCHITECTURE', `${file}: unsupported architecture ${what}. kvtc supports ${Object.keys(ARCHITECTURES).join(', ')} (model_type ${SUPPORTED_FAMILIES.join(', ')}).`, {
    fix: 'Use a Llama-, Mistral- or Qwen2-family decoder exported with KV cache outputs (present.N.key/value).',
    context: { file, architecture: what },
  });
}

/** Family from architectures[0], else model_type; throws UNSUPPORTED_ARCHITECTURE. */
export function familyOf(cfg: Json, file: string): { family: Family; architecture: string } {
  const arch = Array.isArray(cfg.architectures) && typeof cfg.architectures[0] === 'string' ? (cfg.architectures[0] as string) : undefined;
  if (arch !== undefined) {
    const family = ARCHITECTURES[arch];
    if (!family) throw unsupported(`"${arch}"`, file);
    return { family, architecture: arch };
  }
  const type = typeof cfg.model_type === 'string' ? cfg.model_type : undefined;
  const family = SUPPORTED_FAMILIES.find((f) => f === type);
  if (!family) throw unsupported(type === undefined ? '(config has neither "architectures" nor "model_type")' : `model_type "${type}"`, file);
  return { family, architecture: Object.keys(ARCHITECTURES).find((a) => ARCHITECTURES[a] === family)! };
}

/**
 * rope_scaling (transformers <= 4.x) or rope_parameters (transformers 5): llama3 and linear
 * are exact position-independent maps; dynamic/yarn/longrope change with length or scale
 * attention, which kvtc's un-rotation does not model, so they are refused.
 */
function ropeScaling(cfg: Json, file: string): RopeScaling | undefined {
  const raw = (cfg.rope_scaling ?? cfg.rope_parameters) as Json | null | undefined;
  if (!raw || typeof raw !== 'object') return undefined;
  const type = (raw.rope_type ?? raw.type) as string | undefined;
  if (type === undefined || type === 'default') return undefined;
  const factor = Number(raw.factor);
  if (!(factor > 0)) throw invalid(file, `rope scaling "${type}" needs a positive "factor", got ${JSON.stringify(raw.factor)}`);
  if (type === 'linear') return { type: 'linear', factor };
  if (type === 'llama3') {
    return {
      type: 'llama3',
      factor,
      lowFreqFactor: Number(raw.low_freq_factor ?? 1),
      highFreqFactor: Number(raw.high_freq_factor ?? 4),
      originalMaxPositionEmbeddings: Number(raw.original_max_position_embeddings ?? 8192),
    };
  }
  throw new KvtcError('UNSUPPORTED_ARCHITECTURE', `${file}: rope scaling type "${type}" is not supported; kvtc supports default, linear and llama3.`, {
    fix: 'kvtc must undo RoPE exactly; use a model whose rope_scaling is linear or llama3 (or none).',
    context: { file, ropeScaling: type },
  });
}

/**
 * RoPE layout: Hugging Face LlamaForCausalLM uses rotate_half ('half'); a converter that keeps
 * llama2.c's interleaved pairs records it as `"rope_interleaved": true` (or `"rope_layout"`).
 */
function ropeLayout(cfg: Json, file: string): RopeSpec['layout'] {
  if (cfg.rope_layout === 'half' || cfg.rope_layout === 'interleaved') return cfg.rope_layout;
  if (cfg.rope_layout !== undefined) throw invalid(file, `"rope_layout" must be "half" or "interleaved", got ${JSON.stringify(cfg.rope_layout)}`);
  return cfg.rope_interleaved === true ? 'interleaved' : 'half';
}

/** config.json (Optimum / transformers.js export). */
export function normalizeHfConfig(cfg: Json, file = 'config.json'): NormalizedConfig {
  const notes: string[] = [];
  const { family, architecture } = familyOf(cfg, file);
  const hidden = posInt(cfg, 'hidden_size', file);
  const heads = posInt(cfg, 'num_attention_heads', file);
  const kvHeads = posInt(cfg, 'num_key_value_heads', file, heads);
  if (heads % kvHeads !== 0) throw invalid(file, `num_attention_heads ${heads} is not a multiple of num_key_value_heads ${kvHeads}`);
  const headDim = posInt(cfg, 'head_dim', file, cfg.head_dim == null ? hidden / heads : undefined);
  const layers = posInt(cfg, 'num_hidden_layers', file);
  const vocabSize = posInt(cfg, 'vocab_size', file);
  const maxPositions = posInt(cfg, 'max_position_embeddings', file, 2048);
  const params = (cfg.rope_parameters ?? {}) as Json;
  const theta = Number(cfg.rope_theta ?? params.rope_theta ?? 10000);
  if (!(theta > 0)) throw invalid(file, `"rope_theta" must be positive, got ${JSON.stringify(cfg.rope_theta)}`);
  if (cfg.rope_theta === undefined && params.rope_theta === undefined) notes.push('rope_theta not set: using 10000');
  const factor = Number(cfg.partial_rotary_factor ?? params.partial_rotary_factor ?? 1);
  const rotaryDim = Math.floor(headDim * factor);
  if (!(rotaryDim > 0 && rotaryDim <= headDim && rotaryDim % 2 === 0)) {
    throw invalid(file, `partial_rotary_factor ${factor} gives rotary dim ${rotaryDim} for head_dim ${headDim}; it must be even and in (0, head_dim]`);
  }
  const scaling = ropeScaling(cfg, file);
  const layerRope: RopeSpec = { theta, rotaryDim, layout: ropeLayout(cfg, file), ...(scaling ? { scaling } : {}) };
  const rope = uniformModelRope(layerRope, layers);
  if (typeof cfg.sliding_window === 'number' && cfg.use_sliding_window !== false) {
    notes.push(`sliding_window ${cfg.sliding_window}: the cache keeps every token; attention beyond the window is the ONNX graph's business`);
  }
  return {
    spec: {
      architecture, family, layers, heads, kvHeads, headDim, hidden, vocabSize, rope, maxPositions,
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
  const family = SUPPORTED_FAMILIES.find((f) => f === type);
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
