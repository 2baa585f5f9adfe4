// Each family's config.json, in the transformers 4.x form (rope_theta / rope_scaling and family
// keys) and the 5.x form (rope_parameters, one dict per layer type where the family has several),
// read into one RoPE description per layer. Expected values are written here from the
// transformers configuration/modeling files named in each case (not from kvtc's code).
import { describe, expect, it } from 'vitest';
import { KvtcError } from '../../src/errors.js';
import { normalizeHfConfig } from '../../src/model/config.js';
import type { LayerRope } from '../../src/rope/types.js';

type Json = Record<string, unknown>;

const base = (arch: string, type: string, o: Json = {}): Json => ({
  architectures: [arch],
  model_type: type,
  hidden_size: 256,
  num_attention_heads: 8,
  num_key_value_heads: 2,
  num_hidden_layers: 4,
  vocab_size: 1000,
  max_position_embeddings: 4096,
  ...o,
});

function read(cfg: Json) {
  return normalizeHfConfig(JSON.parse(JSON.stringify(cfg)), 'config.json');
}

function refused(cfg: Json): KvtcError {
  try {
    read(cfg);
  } catch (e) {
    expect(e).toBeInstanceOf(KvtcError);
    return e as KvtcError;
  }
  throw new Error('not refused');
}

const plain = (theta: number, rotaryDim: number): LayerRope => ({ theta, rotaryDim, layout: 'half' });

describe('families (config.json → RoPE per layer)', () => {
  it('Qwen3 (configuration_qwen3.py: explicit head_dim 128 ≠ hidden / heads), 4.x and 5.x', () => {
    const c = { hidden_size: 1024, num_attention_heads: 16, num_key_value_heads: 8, head_dim: 128, num_hidden_layers: 3 };
    for (const cfg of [
      base('Qwen3ForCausalLM', 'qwen3', { ...c, rope_theta: 1e6, rope_scaling: null }),
      base('Qwen3ForCausalLM', 'qwen3', { ...c, rope_parameters: { rope_type: 'default', rope_theta: 1e6 } }),
    ]) {
      const { spec } = read(cfg);
      expect(spec).toMatchObject({ family: 'qwen3', headDim: 128, kvHeads: 8, layers: 3 });
      expect(spec.rope).toEqual([plain(1e6, 128), plain(1e6, 128), plain(1e6, 128)]);
    }
  });

  it('Qwen3-MoE with YaRN (×4 over 32768): attention factor 0.1·ln 4 + 1 (get_mscale), ramp over the original context', () => {
    const c = {
      hidden_size: 2048,
      num_attention_heads: 32,
      num_key_value_heads: 4,
      head_dim: 128,
      num_hidden_layers: 2,
      max_position_embeddings: 131072,
    };
    const y = { rope_type: 'yarn', factor: 4.0, original_max_position_embeddings: 32768 };
    for (const cfg of [
      base('Qwen3MoeForCausalLM', 'qwen3_moe', { ...c, rope_theta: 1e6, rope_scaling: y }),
      base('Qwen3MoeForCausalLM', 'qwen3_moe', { ...c, rope_parameters: { ...y, rope_theta: 1e6 } }),
    ]) {
      const { spec, notes } = read(cfg);
      expect(spec.rope[0]).toEqual({
        theta: 1e6,
        rotaryDim: 128,
        layout: 'half',
        attentionFactor: 0.1 * Math.log(4) + 1,
        scaling: { type: 'yarn', factor: 4, originalMaxPositionEmbeddings: 32768, betaFast: 32, betaSlow: 1, truncate: true },
      });
      expect(notes.join('\n')).not.toMatch(/is not max_position_embeddings/); // 131072 / 32768 = 4
    }
  });

  it('YaRN: mscale / mscale_all_dim give get_mscale(f, m) / get_mscale(f, m_all); attention_factor given wins; truncate false kept', () => {
    const f = 40;
    const { spec } = read(
      base('LlamaForCausalLM', 'llama', {
        rope_theta: 10000,
        rope_scaling: {
          rope_type: 'yarn',
          factor: f,
          original_max_position_embeddings: 4096,
          mscale: 0.707,
          mscale_all_dim: 1.0,
          beta_fast: 16,
          beta_slow: 2,
          truncate: false,
        },
      }),
    );
    expect(spec.rope[0]!.attentionFactor).toBeCloseTo((0.1 * 0.707 * Math.log(f) + 1) / (0.1 * 1.0 * Math.log(f) + 1), 14);
    expect(spec.rope[0]!.scaling).toEqual({
      type: 'yarn',
      factor: 40,
      originalMaxPositionEmbeddings: 4096,
      betaFast: 16,
      betaSlow: 2,
      truncate: false,
    });
    const g = read(
      base('LlamaForCausalLM', 'llama', {
        rope_theta: 10000,
        rope_scaling: { rope_type: 'yarn', factor: 2, original_max_position_embeddings: 2048, attention_factor: 1.5 },
      }),
    );
    expect(g.spec.rope[0]!.attentionFactor).toBe(1.5);
    // factor absent: max_position_embeddings / original (transformers 5)
    const h = read(
      base('LlamaForCausalLM', 'llama', {
        rope_theta: 10000,
        max_position_embeddings: 8192,
        rope_scaling: { rope_type: 'yarn', original_max_position_embeddings: 2048 },
      }),
    );
    expect(h.spec.rope[0]!.scaling).toMatchObject({ factor: 4 });
    // a factor that is not max / original is used as given, with a note (4.x releases differed)
    const k = read(
      base('LlamaForCausalLM', 'llama', {
        rope_theta: 10000,
        max_position_embeddings: 4096,
        rope_scaling: { rope_type: 'yarn', factor: 4, original_max_position_embeddings: 4096 },
      }),
    );
    expect(k.spec.rope[0]!.scaling).toMatchObject({ factor: 4 });
    expect(k.notes.join('\n')).toMatch(/yarn factor 4 is not max_position_embeddings/);
  });

  it('Gemma 2 (configuration_gemma2.py: head_dim 256, one RoPE on sliding and global layers)', () => {
    const c = {
      hidden_size: 2304,
      num_attention_heads: 8,
      num_key_value_heads: 4,
      head_dim: 256,
      num_hidden_layers: 4,
      sliding_window: 4096,
    };
    for (const cfg of [
      base('Gemma2ForCausalLM', 'gemma2', { ...c, rope_theta: 10000 }),
      base('Gemma2ForCausalLM', 'gemma2', {
        ...c,
        layer_types: ['sliding_attention', 'full_attention', 'sliding_attention', 'full_attention'],
        rope_parameters: { rope_type: 'default', rope_theta: 10000 },
      }),
    ]) {
      const { spec } = read(cfg);
      expect(spec.headDim).toBe(256);
      expect(spec.rope).toEqual(Array(4).fill(plain(10000, 256)));
    }
  });

  describe('Gemma 3 text (configuration_gemma3.py: local base on sliding layers, global base + scaling on full ones)', () => {
    const c = {
      hidden_size: 2560,
      num_attention_heads: 8,
      num_key_value_heads: 4,
      head_dim: 256,
      num_hidden_layers: 12,
      sliding_window: 1024,
    };
    const full = { theta: 1e6, rotaryDim: 256, layout: 'half', scaling: { type: 'linear', factor: 8 } };
    const local = plain(10000, 256);
    // sliding iff (i + 1) % 6 != 0: full on layers 5 and 11
    const want = Array.from({ length: 12 }, (_, i) => ((i + 1) % 6 ? local : full));
    it('4.x: rope_theta + rope_scaling (global), rope_local_base_freq (local), sliding_window_pattern 6', () => {
      const { spec } = read(
        base('Gemma3ForCausalLM', 'gemma3_text', {
          ...c,
          rope_theta: 1e6,
          rope_local_base_freq: 10000,
          rope_scaling: { rope_type: 'linear', factor: 8.0 },
          sliding_window_pattern: 6,
        }),
      );
      expect(spec.rope).toEqual(want);
    });
    it('4.x without the pattern: the default 6', () => {
      const { spec } = read(
        base('Gemma3ForCausalLM', 'gemma3_text', {
          ...c,
          rope_theta: 1e6,
          rope_local_base_freq: 10000,
          rope_scaling: { rope_type: 'linear', factor: 8.0 },
        }),
      );
      expect(spec.rope).toEqual(want);
    });
    it('5.x: rope_parameters per layer type, layer_types', () => {
      const layer_types = want.map((r) => (r === full ? 'full_attention' : 'sliding_attention'));
      const { spec } = read(
        base('Gemma3ForCausalLM', 'gemma3_text', {
          ...c,
          layer_types,
          rope_parameters: {
            full_attention: { rope_type: 'linear', factor: 8.0, rope_theta: 1e6 },
            sliding_attention: { rope_type: 'default', rope_theta: 10000 },
          },
        }),
      );
      expect(spec.rope).toEqual(want);
    });
    it('the multimodal wrapper is refused with the text model named', () => {
      expect(refused({ architectures: ['Gemma3ForConditionalGeneration'], model_type: 'gemma3' }).message).toMatch(/Gemma3ForCausalLM/);
    });
  });

  describe('Phi-3 / Phi-4-mini (configuration_phi3.py: partial_rotary_factor, longrope with original_max_position_embeddings)', () => {
    // Phi-4-mini: hidden 3072, 24 heads of 128, partial 0.75 → 96 rotated dims, 48 factors
    const c = {
      hidden_size: 3072,
      num_attention_heads: 24,
      num_key_value_heads: 8,
      num_hidden_layers: 2,
      max_position_embeddings: 131072,
      original_max_position_embeddings: 4096,
    };
    const short = Array.from({ length: 48 }, (_, i) => 1 + i / 100);
    const long = Array.from({ length: 48 }, (_, i) => 1 + i);
    // _compute_longrope_parameters: factor = 131072 / 4096 = 32, attention = sqrt(1 + ln 32 / ln 4096)
    const af = Math.sqrt(1 + Math.log(32) / Math.log(4096));
    const want = {
      theta: 10000,
      rotaryDim: 96,
      layout: 'half',
      attentionFactor: af,
      scaling: { type: 'longrope', shortFactor: short, longFactor: long, originalMaxPositionEmbeddings: 4096 },
    };
    it('4.x', () => {
      const { spec, notes } = read(
        base('Phi3ForCausalLM', 'phi3', {
          ...c,
          partial_rotary_factor: 0.75,
          rope_theta: 10000,
          rope_scaling: { type: 'longrope', short_factor: short, long_factor: long },
        }),
      );
      expect(spec.rope[0]).toEqual(want);
      expect(spec.rope[1]).toEqual(want);
      expect(af).toBeCloseTo(1.1902380714238083, 12);
      expect(notes.join('\n')).toMatch(/short factors when the cache .* at most 4096 positions/);
    });
    it('5.x (partial_rotary_factor inside rope_parameters)', () => {
      const { spec } = read(
        base('Phi3ForCausalLM', 'phi3', {
          ...c,
          rope_parameters: {
            rope_type: 'longrope',
            rope_theta: 10000,
            partial_rotary_factor: 0.75,
            short_factor: short,
            long_factor: long,
          },
        }),
      );
      expect(spec.rope[0]).toEqual(want);
    });
    it('the legacy "su" name is LongRoPE; wrong factor counts are refused', () => {
      expect(
        read(
          base('Phi3ForCausalLM', 'phi3', {
            ...c,
            partial_rotary_factor: 0.75,
            rope_theta: 10000,
            rope_scaling: { type: 'su', short_factor: short, long_factor: long },
          }),
        ).spec.rope[0],
      ).toEqual(want);
      const e = refused(
        base('Phi3ForCausalLM', 'phi3', {
          ...c,
          partial_rotary_factor: 0.75,
          rope_theta: 10000,
          rope_scaling: { type: 'longrope', short_factor: short.slice(1), long_factor: long },
        }),
      );
      expect(e.code).toBe('MODEL_INVALID');
      expect(e.message).toMatch(/short_factor must be 48 positive numbers/);
    });
  });

  it('SmolLM3 (configuration_smollm3.py: no_rope_layers 1 = RoPE; default a NoPE layer every no_rope_layer_interval)', () => {
    const c = { num_hidden_layers: 8, rope_theta: 2e6 };
    const r = plain(2e6, 32);
    expect(read(base('SmolLM3ForCausalLM', 'smollm3', c)).spec.rope).toEqual([r, r, r, null, r, r, r, null]);
    expect(read(base('SmolLM3ForCausalLM', 'smollm3', { ...c, no_rope_layer_interval: 2 })).spec.rope).toEqual([
      r,
      null,
      r,
      null,
      r,
      null,
      r,
      null,
    ]);
    const explicit = read(base('SmolLM3ForCausalLM', 'smollm3', { ...c, no_rope_layers: [1, 0, 0, 1, 1, 1, 1, 0] }));
    expect(explicit.spec.rope).toEqual([r, null, null, r, r, r, r, null]);
    expect(explicit.notes.join('\n')).toMatch(/layers 1, 2, 7 apply no RoPE/);
    expect(
      read(base('SmolLM3ForCausalLM', 'smollm3', { num_hidden_layers: 8, rope_parameters: { rope_type: 'default', rope_theta: 2e6 } })).spec
        .rope,
    ).toEqual([r, r, r, null, r, r, r, null]);
  });

  for (const [arch, type, theta] of [
    ['Olmo2ForCausalLM', 'olmo2', 500000],
    ['GraniteForCausalLM', 'granite', 10000],
    ['MixtralForCausalLM', 'mixtral', 1e6],
    ['MistralForCausalLM', 'mistral', 1e6],
  ] as const) {
    it(`${arch}: one plain RoPE on every layer, 4.x and 5.x`, () => {
      for (const cfg of [
        base(arch, type, { rope_theta: theta }),
        base(arch, type, { rope_parameters: { rope_type: 'default', rope_theta: theta } }),
      ]) {
        const { spec } = read(cfg);
        expect(spec.family).toBe(type);
        expect(spec.rope).toEqual(Array(4).fill(plain(theta, 32)));
      }
    });
  }

  it('GPT-NeoX / Pythia (configuration_gpt_neox.py: rotary_pct → partial rotary, rotary_emb_base → theta; multi-head)', () => {
    const c = { hidden_size: 512, num_attention_heads: 8, num_hidden_layers: 2, num_key_value_heads: undefined };
    const four = read(base('GPTNeoXForCausalLM', 'gpt_neox', { ...c, rotary_pct: 0.25, rotary_emb_base: 10000 }));
    expect(four.spec).toMatchObject({ kvHeads: 8, headDim: 64 });
    expect(four.spec.rope).toEqual([plain(10000, 16), plain(10000, 16)]);
    const five = read(
      base('GPTNeoXForCausalLM', 'gpt_neox', {
        ...c,
        rope_parameters: { rope_type: 'default', rope_theta: 10000, partial_rotary_factor: 0.25 },
      }),
    );
    expect(five.spec.rope).toEqual([plain(10000, 16), plain(10000, 16)]);
    // rotary_pct absent: GPT-NeoX's default 0.25
    const dflt = read(base('GPTNeoXForCausalLM', 'gpt_neox', { ...c, rotary_emb_base: 10000 }));
    expect(dflt.spec.rope[0]).toEqual(plain(10000, 16));
    expect(dflt.notes.join('\n')).toMatch(/rotary_pct not set/);
  });

  it('GPT-2 (modeling_gpt2.py: learned wpe, no rotary): no RoPE on any layer, its own size keys', () => {
    const { spec, notes } = read({
      architectures: ['GPT2LMHeadModel'],
      model_type: 'gpt2',
      n_embd: 768,
      n_head: 12,
      n_layer: 3,
      n_positions: 1024,
      vocab_size: 50257,
    });
    expect(spec).toMatchObject({ family: 'gpt2', hidden: 768, heads: 12, kvHeads: 12, headDim: 64, layers: 3, maxPositions: 1024 });
    expect(spec.rope).toEqual([null, null, null]);
    expect(notes.join('\n')).toMatch(/learned absolute position embeddings/);
  });

  it('Llama 3.1 in the 5.x form (rope_parameters with llama3)', () => {
    const p = {
      rope_type: 'llama3',
      rope_theta: 500000,
      factor: 8,
      low_freq_factor: 1,
      high_freq_factor: 4,
      original_max_position_embeddings: 8192,
    };
    expect(read(base('LlamaForCausalLM', 'llama', { rope_parameters: p })).spec.rope[0]).toEqual({
      theta: 500000,
      rotaryDim: 32,
      layout: 'half',
      scaling: { type: 'llama3', factor: 8, lowFreqFactor: 1, highFreqFactor: 4, originalMaxPositionEmbeddings: 8192 },
    });
  });

  describe('refused, saying why', () => {
    it('dynamic NTK', () => {
      const e = refused(base('LlamaForCausalLM', 'llama', { rope_theta: 10000, rope_scaling: { rope_type: 'dynamic', factor: 2 } }));
      expect(e.code).toBe('UNSUPPORTED_ARCHITECTURE');
      expect(e.message).toMatch(/_compute_dynamic_ntk_parameters.*length of each forward pass/);
    });
    it('an unknown rope type (mrope)', () => {
      expect(
        refused(base('Qwen2ForCausalLM', 'qwen2', { rope_theta: 10000, rope_scaling: { type: 'mrope', mrope_section: [16, 24, 24] } }))
          .message,
      ).toMatch(/rope type "mrope" is not supported; kvtc recomputes default, linear, llama3, yarn, longrope exactly/);
    });
    it('DeepSeek-V2/V3 multi-head latent attention', () => {
      for (const cfg of [
        { architectures: ['DeepseekV3ForCausalLM'], model_type: 'deepseek_v3', kv_lora_rank: 512 },
        { model_type: 'deepseek_v2', kv_lora_rank: 512 },
      ]) {
        const e = refused(cfg);
        expect(e.code).toBe('UNSUPPORTED_ARCHITECTURE');
        expect(e.message).toMatch(/multi-head latent attention \(kv_lora_rank 512\).*latent/);
      }
    });
    it('Llama 4 (chunked attention with RoPE mixed with NoPE layers)', () => {
      const e = refused({
        architectures: ['Llama4ForConditionalGeneration'],
        model_type: 'llama4',
        text_config: { attention_chunk_size: 8192 },
      });
      expect(e.message).toMatch(/chunked-attention layers \(RoPE, attention_chunk_size 8192\) with global NoPE layers/);
    });
    it('a per-layer-type dict missing for a layer', () => {
      const e = refused(
        base('Gemma3ForCausalLM', 'gemma3_text', {
          head_dim: 32,
          layer_types: ['sliding_attention', 'chunked_attention', 'sliding_attention', 'full_attention'],
          rope_parameters: {
            full_attention: { rope_type: 'default', rope_theta: 1e6 },
            sliding_attention: { rope_type: 'default', rope_theta: 1e4 },
          },
        }),
      );
      expect(e.message).toMatch(/layer 1 has layer type "chunked_attention", which has no RoPE parameters/);
    });
    it('an odd partial rotary dim', () => {
      expect(refused(base('LlamaForCausalLM', 'llama', { rope_theta: 10000, partial_rotary_factor: 0.3 })).message).toMatch(
        /rotary dim 9 for head_dim 32/,
      );
    });
  });
});
