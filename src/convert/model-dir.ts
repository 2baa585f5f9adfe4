// Tested by test/convert/stories260k.test.ts.
/**
 * Writes an Optimum-layout model directory (config.json, generation_config.json,
 * tokenizer.json, tokenizer_config.json, onnx/model.onnx) atomically and deterministically:
 * the same weights and settings give byte-identical files.
 */
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { KvtcError } from '../errors.js';
import { writeFileAtomic } from '../io/atomic.js';
import { checkOutputDir } from '../io/output.js';
import type { ModelSpec } from '../model/types.js';
import { legacyExpressible } from '../rope/describe.js';
import { uniformRope } from '../rope/types.js';
import { buildLlamaGraph, type LlamaGraphSpec, type LlamaWeights } from './llama-graph.js';

export type LlamaDirSpec = LlamaGraphSpec & Pick<ModelSpec, 'maxPositions' | 'bosTokenId' | 'eosTokenId'>;

export interface LlamaModelDirOptions {
  weights: LlamaWeights;
  spec: LlamaDirSpec;
  rmsNormEps: number;
  tokenizerJson: Record<string, unknown>;
  tokenizerConfig: Record<string, unknown>;
  /** Recorded as config.json `_name_or_path` and the ONNX graph name. */
  name: string;
  /** Replace an existing directory (its `source/` subfolder is kept). */
  force?: boolean;
  /** Per-layer sliding attention windows, masked in the graph (LlamaGraphOptions.attentionWindow); config.json does not record them. */
  attentionWindow?: (number | null)[];
}

export interface WrittenModelDir {
  dir: string;
  /** Paths relative to `dir`, in write order, with sizes in bytes. */
  files: { path: string; bytes: number }[];
}

/** Hugging Face LlamaConfig fields for the spec. */
export function llamaConfigJson(
  spec: LlamaDirSpec,
  opts: { intermediate: number; rmsNormEps: number; tied: boolean; name: string },
): Record<string, unknown> {
  // A Llama config.json says one RoPE for every layer (default, linear or llama3).
  const r = uniformRope(spec.rope);
  if (!r || !legacyExpressible(r)) {
    throw new KvtcError(
      'MODEL_INVALID',
      'llamaConfigJson: a LlamaConfig has one RoPE (default, linear or llama3) for all layers; this spec gives its layers different or other RoPE',
      {
        fix: 'Write the config.json of such a model as its own family does.',
      },
    );
  }
  const s = r.scaling;
  const ropeScaling = !s
    ? null
    : s.type === 'linear'
      ? { rope_type: 'linear', factor: s.factor }
      : s.type === 'llama3' && {
          rope_type: 'llama3',
          factor: s.factor,
          low_freq_factor: s.lowFreqFactor ?? 1,
          high_freq_factor: s.highFreqFactor ?? 4,
          original_max_position_embeddings: s.originalMaxPositionEmbeddings ?? 8192,
        };
  return {
    _name_or_path: opts.name,
    architectures: ['LlamaForCausalLM'],
    attention_bias: false,
    attention_dropout: 0,
    bos_token_id: spec.bosTokenId ?? 1,
    eos_token_id: spec.eosTokenId ?? 2,
    head_dim: spec.headDim,
    hidden_act: 'silu',
    hidden_size: spec.hidden,
    initializer_range: 0.02,
    intermediate_size: opts.intermediate,
    max_position_embeddings: spec.maxPositions,
    mlp_bias: false,
    model_type: 'llama',
    num_attention_heads: spec.heads,
    num_hidden_layers: spec.layers,
    num_key_value_heads: spec.kvHeads,
    ...(r.rotaryDim !== spec.headDim ? { partial_rotary_factor: r.rotaryDim / spec.headDim } : {}),
    pretraining_tp: 1,
    rms_norm_eps: opts.rmsNormEps,
    rope_scaling: ropeScaling,
    rope_theta: r.theta,
    tie_word_embeddings: opts.tied,
    // Weights are float32; a float16 KV cache is visible in the ONNX input/output types.
    torch_dtype: 'float32',
    use_cache: true,
    vocab_size: spec.vocabSize,
  };
}

const json = (v: unknown) => `${JSON.stringify(v, null, 2)}\n`;

/** Throws OUTPUT_EXISTS when `dir` exists and `force` is not set. */
export function checkOutput(dir: string, force: boolean | undefined): void {
  if (existsSync(dir) && !force) {
    throw new KvtcError('OUTPUT_EXISTS', `${dir} already exists.`, {
      fix: 'Pass --force to replace it, or choose another --out directory.',
      context: { dir },
    });
  }
}

export async function writeLlamaModelDir(dir: string, opts: LlamaModelDirOptions): Promise<WrittenModelDir> {
  checkOutput(dir, opts.force);
  const { weights, spec } = opts;
  const intermediate = weights.layers[0].gateProj.length / spec.hidden;
  const onnx = buildLlamaGraph(weights, spec, {
    rmsNormEps: opts.rmsNormEps,
    name: opts.name,
    ...(opts.attentionWindow ? { attentionWindow: opts.attentionWindow } : {}),
  });
  const config = llamaConfigJson(spec, { intermediate, rmsNormEps: opts.rmsNormEps, tied: !weights.lmHead, name: opts.name });
  const generation = { _from_model_config: true, bos_token_id: spec.bosTokenId ?? 1, eos_token_id: spec.eosTokenId ?? 2 };
  const contents: [string, string | Uint8Array][] = [
    ['config.json', json(config)],
    ['generation_config.json', json(generation)],
    ['tokenizer.json', json(opts.tokenizerJson)],
    ['tokenizer_config.json', json(opts.tokenizerConfig)],
    ['onnx/model.onnx', onnx],
  ];
  // Each file is replaced atomically, and only the files a conversion writes: --force into an
  // existing directory never deletes anything else in it (provenance in source/, the user's files).
  checkOutputDir(dir);
  for (const [rel, data] of contents) await writeFileAtomic(join(dir, rel), data);
  return {
    dir,
    files: contents.map(([path, data]) => ({ path, bytes: typeof data === 'string' ? Buffer.byteLength(data) : data.byteLength })),
  };
}
