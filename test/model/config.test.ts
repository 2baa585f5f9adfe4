import { describe, expect, it } from 'vitest';
import { KvtcError } from '../../src/errors.js';
import { normalizeGenaiConfig, normalizeHfConfig } from '../../src/model/config.js';

const llama = {
  architectures: ['LlamaForCausalLM'],
  model_type: 'llama',
  hidden_size: 64,
  num_attention_heads: 8,
  num_key_value_heads: 4,
  num_hidden_layers: 5,
  vocab_size: 512,
  max_position_embeddings: 512,
  rope_theta: 10000,
  bos_token_id: 1,
  eos_token_id: 2,
};

describe('normalizeHfConfig', () => {
  const cases: {
    name: string;
    cfg: Record<string, unknown>;
    expect: Record<string, unknown>;
    rope?: Record<string, unknown>;
    notes?: RegExp;
  }[] = [
    {
      name: 'llama (GQA)',
      cfg: llama,
      expect: {
        family: 'llama',
        layers: 5,
        heads: 8,
        kvHeads: 4,
        headDim: 8,
        hidden: 64,
        vocabSize: 512,
        maxPositions: 512,
        bosTokenId: 1,
        eosTokenId: 2,
      },
      rope: { theta: 10000, rotaryDim: 8, layout: 'half' },
    },
    {
      name: 'llama, no num_key_value_heads → MHA, default theta',
      cfg: { ...llama, num_key_value_heads: undefined, rope_theta: undefined },
      expect: { kvHeads: 8 },
      rope: { theta: 10000 },
      notes: /rope_theta not set/,
    },
    {
      name: 'mistral with sliding window',
      cfg: {
        architectures: ['MistralForCausalLM'],
        model_type: 'mistral',
        hidden_size: 4096,
        num_attention_heads: 32,
        num_key_value_heads: 8,
        num_hidden_layers: 32,
        vocab_size: 32000,
        max_position_embeddings: 32768,
        rope_theta: 1000000,
        sliding_window: 4096,
      },
      expect: { family: 'mistral', kvHeads: 8, headDim: 128, maxPositions: 32768 },
      rope: { theta: 1000000, rotaryDim: 128 },
      notes: /sliding_window 4096/,
    },
    {
      name: 'qwen2 (eos list, explicit head_dim)',
      cfg: {
        architectures: ['Qwen2ForCausalLM'],
        hidden_size: 896,
        num_attention_heads: 14,
        num_key_value_heads: 2,
        num_hidden_layers: 24,
        vocab_size: 151936,
        max_position_embeddings: 32768,
        rope_theta: 1000000,
        eos_token_id: [151645, 151643],
        head_dim: 64,
        sliding_window: 32768,
        use_sliding_window: false,
      },
      expect: { family: 'qwen2', architecture: 'Qwen2ForCausalLM', kvHeads: 2, headDim: 64, eosTokenId: 151645 },
      rope: { theta: 1000000 },
    },
    {
      name: 'llama3 rope_scaling',
      cfg: {
        ...llama,
        rope_theta: 500000,
        rope_scaling: { rope_type: 'llama3', factor: 8, low_freq_factor: 1, high_freq_factor: 4, original_max_position_embeddings: 8192 },
      },
      expect: {},
      rope: {
        theta: 500000,
        scaling: { type: 'llama3', factor: 8, lowFreqFactor: 1, highFreqFactor: 4, originalMaxPositionEmbeddings: 8192 },
      },
    },
    {
      name: 'linear rope_scaling (old "type" key)',
      cfg: { ...llama, rope_scaling: { type: 'linear', factor: 2 } },
      expect: {},
      rope: { scaling: { type: 'linear', factor: 2 } },
    },
    { name: 'partial rotary', cfg: { ...llama, partial_rotary_factor: 0.5 }, expect: { headDim: 8 }, rope: { rotaryDim: 4 } },
    {
      name: 'model_type only',
      cfg: { ...llama, architectures: undefined, model_type: 'qwen2' },
      expect: { family: 'qwen2', architecture: 'Qwen2ForCausalLM' },
    },
    {
      name: 'interleaved layout recorded by a converter',
      cfg: { ...llama, rope_interleaved: true },
      expect: {},
      rope: { layout: 'interleaved' },
    },
  ];
  for (const c of cases) {
    it(c.name, () => {
      const { spec, notes } = normalizeHfConfig(JSON.parse(JSON.stringify(c.cfg)), 'config.json');
      expect(spec).toMatchObject(c.expect);
      if (c.rope) for (const r of spec.rope) expect(r).toMatchObject(c.rope);
      expect(spec.rope).toHaveLength(spec.layers);
      if (c.notes) expect(notes.join('\n')).toMatch(c.notes);
    });
  }

  const errors: { name: string; cfg: Record<string, unknown>; code: string; message: RegExp }[] = [
    {
      name: 'falcon is unsupported',
      cfg: { architectures: ['FalconForCausalLM'], model_type: 'falcon', hidden_size: 64 },
      code: 'UNSUPPORTED_ARCHITECTURE',
      message: /FalconForCausalLM.*supports LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM, Qwen3ForCausalLM/,
    },
    {
      name: 'no architecture at all',
      cfg: { hidden_size: 8 },
      code: 'UNSUPPORTED_ARCHITECTURE',
      message: /neither "architectures" nor "model_type"/,
    },
    {
      name: 'dynamic NTK scaling refused, saying why',
      cfg: { ...llama, rope_scaling: { rope_type: 'dynamic', factor: 4 } },
      code: 'UNSUPPORTED_ARCHITECTURE',
      message: /"dynamic" \(dynamic NTK\) is not supported.*length of each forward pass/,
    },
    {
      name: 'heads not a multiple of kv heads',
      cfg: { ...llama, num_key_value_heads: 3 },
      code: 'MODEL_INVALID',
      message: /not a multiple/,
    },
    {
      name: 'missing hidden_size',
      cfg: { ...llama, hidden_size: undefined },
      code: 'MODEL_INVALID',
      message: /"hidden_size" must be a positive integer/,
    },
  ];
  for (const c of errors) {
    it(`rejects: ${c.name}`, () => {
      let err: unknown;
      try {
        normalizeHfConfig(JSON.parse(JSON.stringify(c.cfg)), 'config.json');
      } catch (e) {
        err = e;
      }
      expect(err).toBeInstanceOf(KvtcError);
      expect((err as KvtcError).code).toBe(c.code);
      expect((err as KvtcError).message).toMatch(c.message);
      expect((err as KvtcError).fix).toBeTruthy();
    });
  }
});

describe('normalizeGenaiConfig', () => {
  it('reads the decoder section', () => {
    const { spec } = normalizeGenaiConfig({
      model: {
        type: 'qwen2',
        vocab_size: 100,
        context_length: 4096,
        bos_token_id: 5,
        decoder: { head_size: 32, hidden_size: 128, num_attention_heads: 4, num_key_value_heads: 2, num_hidden_layers: 3 },
      },
    });
    expect(spec).toMatchObject({
      family: 'qwen2',
      layers: 3,
      heads: 4,
      kvHeads: 2,
      headDim: 32,
      hidden: 128,
      vocabSize: 100,
      maxPositions: 4096,
      bosTokenId: 5,
    });
  });
  it('rejects a gpt2 genai export', () => {
    expect(() => normalizeGenaiConfig({ model: { type: 'gpt2', decoder: {} } })).toThrow(
      /unsupported architecture genai model type "gpt2"/,
    );
  });
});
