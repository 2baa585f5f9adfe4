/**
 * Synthetic llama GGUFs for the converter tests: seeded HF-layout weights written the way llama.cpp's
 * convert_hf_to_gguf.py writes them (q/k rows permuted for GGML's RoPE, ggml dims = PyTorch shape
 * reversed, F32 data), with a small byte-level BPE vocabulary. `edit` lets a test break one thing.
 */
import { permuteRopeRows } from '../../src/convert/gguf/llama.js';
import { bytesToUnicode } from '../../src/convert/gguf/tokenizer-bpe.js';
import type { LlamaWeights } from '../../src/convert/llama-graph.js';
import { randomLlamaWeights } from '../../src/convert/random-llama.js';
import { mulberry32 } from '../../src/random.js';
import { m, writeGguf, type Meta, type TensorSpec } from '../gguf/write-gguf.js';

export const SHAPE = { layers: 2, hidden: 32, heads: 4, kvHeads: 2, headDim: 8, intermediate: 48 };

/** Three control tokens, the 256 byte symbols, merged tokens, a user-defined token and a token outside the byte alphabet. */
export function tinyVocab(): { tokens: string[]; types: number[]; merges: string[] } {
  const controls = ['<|endoftext|>', '<|im_start|>', '<|im_end|>'];
  const merged = ['Ġt', 'he', 'Ġthe', 'in', 'Ġin', 'æĹ'];
  const tokens = [...controls, ...bytesToUnicode(), ...merged, '<think>', '日'];
  const types = tokens.map((_, i) => (i < 3 ? 3 : tokens[i] === '<think>' ? 4 : 1));
  // '日' is stored as the character (llama.cpp writes some tokens unspelled); its bytes are æ Ĺ ¥.
  const merges = ['Ġ t', 'h e', 'Ġt he', 'i n', 'Ġ in', 'æ Ĺ', 'æĹ ¥'];
  return { tokens, types, merges };
}

export interface FixtureOptions {
  seed?: number;
  untied?: boolean;
  /** Changes metadata / tensors before writing. */
  edit?: (meta: Map<string, Meta>, tensors: TensorSpec[]) => void;
}

export interface LlamaGgufFixture {
  bytes: Uint8Array;
  /** The weights in Hugging Face layout (what the conversion must give back). */
  weights: LlamaWeights;
  vocab: number;
}

const f32 = (a: Float32Array) => new Uint8Array(a.buffer.slice(a.byteOffset, a.byteOffset + a.byteLength));

export function llamaGguf(opts: FixtureOptions = {}): LlamaGgufFixture {
  const s = SHAPE;
  const { tokens, types, merges } = tinyVocab();
  const vocab = tokens.length;
  const weights = randomLlamaWeights(mulberry32(opts.seed ?? 7), { ...s, vocab, std: 0.3, untied: opts.untied });
  // Norm weights away from 1, so swapping attn_norm and ffn_norm would show.
  const rand = mulberry32(99);
  for (const l of weights.layers)
    for (const n of [l.inputNorm, l.postAttentionNorm]) for (let i = 0; i < n.length; i++) n[i] = 0.5 + rand();
  for (let i = 0; i < weights.finalNorm.length; i++) weights.finalNorm[i] = 0.5 + rand();

  const meta = new Map<string, Meta>([
    ['general.architecture', m.str('llama')],
    ['general.name', m.str('tiny')],
    ['llama.block_count', m.u32(s.layers)],
    ['llama.context_length', m.u32(256)],
    ['llama.embedding_length', m.u32(s.hidden)],
    ['llama.feed_forward_length', m.u32(s.intermediate)],
    ['llama.attention.head_count', m.u32(s.heads)],
    ['llama.attention.head_count_kv', m.u32(s.kvHeads)],
    ['llama.rope.freq_base', m.f32(500000)],
    ['llama.attention.layer_norm_rms_epsilon', m.f32(1e-5)],
    ['llama.vocab_size', m.u32(vocab)],
    ['llama.rope.dimension_count', m.u32(s.headDim)],
    ['tokenizer.ggml.model', m.str('gpt2')],
    ['tokenizer.ggml.pre', m.str('smollm')],
    ['tokenizer.ggml.tokens', m.arr('STRING', tokens)],
    ['tokenizer.ggml.token_type', m.arr('INT32', types)],
    ['tokenizer.ggml.merges', m.arr('STRING', merges)],
    ['tokenizer.ggml.bos_token_id', m.u32(1)],
    ['tokenizer.ggml.eos_token_id', m.u32(2)],
    ['tokenizer.ggml.unknown_token_id', m.u32(0)],
    ['tokenizer.ggml.padding_token_id', m.u32(2)],
    ['tokenizer.ggml.add_bos_token', m.bool(false)],
    [
      'tokenizer.chat_template',
      m.str("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n'}}{% endfor %}"),
    ],
  ]);
  const t = (name: string, torchShape: number[], data: Float32Array): TensorSpec => ({
    name,
    ne: [...torchShape].reverse(),
    type: 'F32',
    data: f32(data),
  });
  const { hidden: H, heads, kvHeads: KV, headDim: D, intermediate: I } = s;
  const tensors: TensorSpec[] = [t('token_embd.weight', [vocab, H], weights.embedTokens)];
  weights.layers.forEach((l, i) => {
    const p = `blk.${i}`;
    tensors.push(
      t(`${p}.attn_norm.weight`, [H], l.inputNorm),
      t(`${p}.attn_q.weight`, [heads * D, H], permuteRopeRows(l.qProj, heads, D, H)),
      t(`${p}.attn_k.weight`, [KV * D, H], permuteRopeRows(l.kProj, KV, D, H)),
      t(`${p}.attn_v.weight`, [KV * D, H], l.vProj),
      t(`${p}.attn_output.weight`, [H, heads * D], l.oProj),
      t(`${p}.ffn_norm.weight`, [H], l.postAttentionNorm),
      t(`${p}.ffn_gate.weight`, [I, H], l.gateProj),
      t(`${p}.ffn_up.weight`, [I, H], l.upProj),
      t(`${p}.ffn_down.weight`, [H, I], l.downProj),
    );
  });
  tensors.push(t('output_norm.weight', [H], weights.finalNorm));
  if (weights.lmHead) tensors.push(t('output.weight', [vocab, H], weights.lmHead));
  opts.edit?.(meta, tensors);
  return { bytes: writeGguf({ metadata: [...meta], tensors }).bytes, weights, vocab };
}
