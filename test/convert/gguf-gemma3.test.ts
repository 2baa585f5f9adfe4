/**
 * kvtc convert-gguf on synthetic Gemma 3 text GGUFs: seeded Hugging Face-layout weights written the
 * way llama.cpp's convert_hf_to_gguf.py writes them (every *norm.weight stored as 1 + w, no q/k
 * permutation, F32), with a small SentencePiece vocabulary. The converted ONNX model must compute
 * what an independent float64 forward pass written from transformers' modeling_gemma3.py computes
 * on the original weights (scaled embeddings, x·(1 + w) norms, sandwich norms, q/k norms, GELU-tanh,
 * query_pre_attn_scalar, per-layer RoPE bases, sliding-window masking), keep every token in every
 * layer's cache, and kvtc must read the config.json it writes back as the same per-layer RoPE.
 * The real model against transformers: test/gguf/gemma3.test.ts.
 */
import { existsSync } from 'node:fs';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { convertGguf } from '../../src/convert/gguf/convert.js';
import { generateMerges, respellSpaces } from '../../src/convert/gguf/tokenizer-spm.js';
import { KvtcError } from '../../src/errors.js';
import { normalizeHfConfig } from '../../src/model/config.js';
import { loadTokenizer } from '../../src/model/tokenizer.js';
import { createSession, type ort } from '../../src/onnx/session.js';
import { mulberry32 } from '../../src/random.js';
import { m, type Meta, type TensorSpec, writeGguf } from '../gguf/write-gguf.js';
import { emptyPast, logitsAt, maxAbsDiff, step, type CacheShape } from './run-llama.js';

// Gemma-shaped: head_dim (16) is not hidden / heads (12), one KV head, layer 5 global (every 6th).
const S = { layers: 6, hidden: 24, heads: 2, kvHeads: 1, headDim: 16, intermediate: 40, window: 4, eps: 1e-6, theta: 1e6, localTheta: 1e4 };
const SHAPE: CacheShape = { layers: S.layers, kvHeads: S.kvHeads, headDim: S.headDim, kvDtype: 'float32' };

/** Gemma-style SentencePiece vocabulary: controls, a user-defined newline, a space-only token (llama.cpp spelling), byte tokens, merged pieces. */
function tinyVocab(): { tokens: string[]; types: number[] } {
  const entries: [string, number][] = [
    ['<pad>', 3],
    ['<eos>', 3],
    ['<bos>', 3],
    ['<unk>', 3],
    ['<mask>', 3],
    ['<start_of_turn>', 3],
    ['\n', 4],
    ['  ', 4],
    ...Array.from({ length: 256 }, (_, b) => [`<0x${b.toString(16).toUpperCase().padStart(2, '0')}>`, 6] as [string, number]),
    ...['▁', 't', 'h', 'e', 'c', 'a', '▁t', 'he', 'at', '▁c', '▁the', '▁cat'].map((t) => [t, 1] as [string, number]),
  ];
  return { tokens: entries.map(([t]) => t), types: entries.map(([, ty]) => ty) };
}

interface Gemma3Weights {
  embed: Float32Array; // [vocab, hidden]
  finalNorm: Float32Array; // HF parameter w (the norm computes x·(1 + w))
  layers: Record<
    'inputNorm' | 'postAttnNorm' | 'preFfNorm' | 'postFfNorm' | 'qNorm' | 'kNorm' | 'q' | 'k' | 'v' | 'o' | 'gate' | 'up' | 'down',
    Float32Array
  >[];
}

function randomWeights(vocab: number, seed: number): Gemma3Weights {
  const r = mulberry32(seed);
  const rnd = (n: number, std: number) => Float32Array.from({ length: n }, () => (r() * 2 - 1) * std * Math.sqrt(3));
  const { hidden: H, heads, kvHeads: KV, headDim: D, intermediate: I } = S;
  return {
    embed: rnd(vocab * H, 0.5),
    finalNorm: rnd(H, 0.5),
    layers: Array.from({ length: S.layers }, () => ({
      inputNorm: rnd(H, 0.5),
      postAttnNorm: rnd(H, 0.5),
      preFfNorm: rnd(H, 0.5),
      postFfNorm: rnd(H, 0.5),
      qNorm: rnd(D, 0.5),
      kNorm: rnd(D, 0.5),
      q: rnd(heads * D * H, 0.3),
      k: rnd(KV * D * H, 0.3),
      v: rnd(KV * D * H, 0.3),
      o: rnd(H * heads * D, 0.3),
      gate: rnd(I * H, 0.3),
      up: rnd(I * H, 0.3),
      down: rnd(H * I, 0.3),
    })),
  };
}

const f32 = (a: Float32Array) => new Uint8Array(a.buffer.slice(a.byteOffset, a.byteOffset + a.byteLength));
/** llama.cpp's Gemma3Model.modify_tensors: norm weights + 1. */
const plusOne = (w: Float32Array) => Float32Array.from(w, (v) => v + 1);

function gemma3Gguf(w: Gemma3Weights, edit?: (meta: Map<string, Meta>, tensors: TensorSpec[]) => void): Uint8Array {
  const { tokens, types } = tinyVocab();
  const meta = new Map<string, Meta>([
    ['general.architecture', m.str('gemma3')],
    ['general.name', m.str('tiny gemma')],
    ['gemma3.context_length', m.u32(512)],
    ['gemma3.embedding_length', m.u32(S.hidden)],
    ['gemma3.block_count', m.u32(S.layers)],
    ['gemma3.feed_forward_length', m.u32(S.intermediate)],
    ['gemma3.attention.head_count', m.u32(S.heads)],
    ['gemma3.attention.head_count_kv', m.u32(S.kvHeads)],
    ['gemma3.attention.key_length', m.u32(S.headDim)],
    ['gemma3.attention.value_length', m.u32(S.headDim)],
    ['gemma3.attention.layer_norm_rms_epsilon', m.f32(S.eps)],
    ['gemma3.rope.freq_base', m.f32(S.theta)],
    ['gemma3.attention.sliding_window', m.u32(S.window)],
    ['tokenizer.ggml.model', m.str('llama')],
    ['tokenizer.ggml.pre', m.str('default')],
    ['tokenizer.ggml.tokens', m.arr('STRING', tokens)],
    [
      'tokenizer.ggml.scores',
      m.arr(
        'FLOAT32',
        tokens.map((_, i) => -i),
      ),
    ],
    ['tokenizer.ggml.token_type', m.arr('INT32', types)],
    ['tokenizer.ggml.bos_token_id', m.u32(2)],
    ['tokenizer.ggml.eos_token_id', m.u32(1)],
    ['tokenizer.ggml.unknown_token_id', m.u32(3)],
    ['tokenizer.ggml.padding_token_id', m.u32(0)],
    ['tokenizer.ggml.add_bos_token', m.bool(true)],
    ['tokenizer.ggml.add_eos_token', m.bool(false)],
    ['tokenizer.ggml.add_space_prefix', m.bool(false)],
  ]);
  const V = tokens.length;
  const { hidden: H, heads, kvHeads: KV, headDim: D, intermediate: I } = S;
  const t = (name: string, torchShape: number[], data: Float32Array): TensorSpec => ({
    name,
    ne: [...torchShape].reverse(),
    type: 'F32',
    data: f32(data),
  });
  const tensors: TensorSpec[] = [t('token_embd.weight', [V, H], w.embed), t('output_norm.weight', [H], plusOne(w.finalNorm))];
  w.layers.forEach((l, i) => {
    const p = `blk.${i}`;
    tensors.push(
      t(`${p}.attn_norm.weight`, [H], plusOne(l.inputNorm)),
      t(`${p}.attn_q.weight`, [heads * D, H], l.q),
      t(`${p}.attn_k.weight`, [KV * D, H], l.k),
      t(`${p}.attn_v.weight`, [KV * D, H], l.v),
      t(`${p}.attn_output.weight`, [H, heads * D], l.o),
      t(`${p}.attn_q_norm.weight`, [D], plusOne(l.qNorm)),
      t(`${p}.attn_k_norm.weight`, [D], plusOne(l.kNorm)),
      t(`${p}.post_attention_norm.weight`, [H], plusOne(l.postAttnNorm)),
      t(`${p}.ffn_norm.weight`, [H], plusOne(l.preFfNorm)),
      t(`${p}.ffn_gate.weight`, [I, H], l.gate),
      t(`${p}.ffn_up.weight`, [I, H], l.up),
      t(`${p}.ffn_down.weight`, [H, I], l.down),
      t(`${p}.post_ffw_norm.weight`, [H], plusOne(l.postFfNorm)),
    );
  });
  edit?.(meta, tensors);
  return writeGguf({ metadata: [...meta], tensors }).bytes;
}

/**
 * Gemma3ForCausalLM's forward (transformers models/gemma3/modeling_gemma3.py) in float64 on the
 * HF weights: logits [seq][vocab] and the post-RoPE keys [layer][pos][kvHeads*headDim].
 */
function referenceForward(w: Gemma3Weights, ids: number[], window = S.window): { logits: Float64Array[]; keys: Float64Array[][] } {
  const { hidden: H, heads, kvHeads: KV, headDim: D, intermediate: I } = S;
  const V = w.embed.length / H;
  const matvec = (m: Float32Array, x: Float64Array, rows: number, cols: number) =>
    Float64Array.from({ length: rows }, (_, r) => {
      let s = 0;
      for (let c = 0; c < cols; c++) s += m[r * cols + c] * x[c];
      return s;
    });
  const rms = (x: Float64Array, wt: Float32Array) => {
    const ms = x.reduce((a, v) => a + v * v, 0) / x.length;
    return x.map((v, i) => (v / Math.sqrt(ms + S.eps)) * (1 + wt[i]));
  };
  const gelu = (x: number) => 0.5 * x * (1 + Math.tanh(Math.sqrt(2 / Math.PI) * (x + 0.044715 * x ** 3)));
  const global = (l: number) => (l + 1) % 6 === 0;
  const rope = (v: Float64Array, pos: number, theta: number) => {
    const out = new Float64Array(D);
    for (let i = 0; i < D / 2; i++) {
      const a = pos * Math.fround(1 / theta ** ((2 * i) / D));
      out[i] = v[i] * Math.cos(a) - v[i + D / 2] * Math.sin(a);
      out[i + D / 2] = v[i + D / 2] * Math.cos(a) + v[i] * Math.sin(a);
    }
    return out;
  };
  const kCache = w.layers.map(() => [] as Float64Array[]);
  const vCache = w.layers.map(() => [] as Float64Array[]);
  const logits: Float64Array[] = [];
  ids.forEach((tok, pos) => {
    let x = Float64Array.from(w.embed.subarray(tok * H, (tok + 1) * H), (v) => v * Math.fround(Math.sqrt(H)));
    w.layers.forEach((L, l) => {
      const theta = global(l) ? S.theta : S.localTheta;
      const h = rms(x, L.inputNorm);
      const q = matvec(L.q, h, heads * D, H);
      const k = matvec(L.k, h, KV * D, H);
      const v = matvec(L.v, h, KV * D, H);
      const qh = Array.from({ length: heads }, (_, j) => rope(rms(q.slice(j * D, (j + 1) * D), L.qNorm), pos, theta));
      const kRot = new Float64Array(KV * D);
      for (let j = 0; j < KV; j++) kRot.set(rope(rms(k.slice(j * D, (j + 1) * D), L.kNorm), pos, theta), j * D);
      kCache[l].push(kRot);
      vCache[l].push(v);
      const ctx = new Float64Array(heads * D);
      for (let j = 0; j < heads; j++) {
        const kv = Math.floor(j / (heads / KV)) * D;
        const visible = kCache[l].map((_, t) => t).filter((t) => global(l) || pos - t < window);
        const scores = visible.map((t) => qh[j].reduce((s, qv, d) => s + qv * kCache[l][t][kv + d], 0) * 16 ** -0.5);
        const mx = Math.max(...scores);
        const e = scores.map((s) => Math.exp(s - mx));
        const z = e.reduce((a, b) => a + b, 0);
        visible.forEach((t, n) => {
          for (let d = 0; d < D; d++) ctx[j * D + d] += (e[n] / z) * vCache[l][t][kv + d];
        });
      }
      x = x.map((xv, i) => xv + rms(matvec(L.o, ctx, H, heads * D), L.postAttnNorm)[i]);
      const h2 = rms(x, L.preFfNorm);
      const g = matvec(L.gate, h2, I, H);
      const u = matvec(L.up, h2, I, H);
      const mlp = rms(
        matvec(
          L.down,
          g.map((gv, i) => gelu(gv) * u[i]),
          H,
          I,
        ),
        L.postFfNorm,
      );
      x = x.map((xv, i) => xv + mlp[i]);
    });
    logits.push(matvec(w.embed, rms(x, w.finalNorm), V, H)); // tied, unscaled
  });
  return { logits, keys: kCache };
}

let tmp: string;
let n = 0;
beforeAll(async () => void (tmp = await mkdtemp(join(tmpdir(), 'kvtc-gguf-gemma3-'))));
afterAll(async () => rm(tmp, { recursive: true, force: true }));

async function ggufFile(edit?: (meta: Map<string, Meta>, tensors: TensorSpec[]) => void, seed = 3) {
  const w = randomWeights(tinyVocab().tokens.length, seed);
  const path = join(tmp, `g${n++}.gguf`);
  await writeFile(path, gemma3Gguf(w, edit));
  return { path, w };
}

async function refusal(edit: (meta: Map<string, Meta>, tensors: TensorSpec[]) => void): Promise<KvtcError> {
  const { path } = await ggufFile(edit);
  const out = join(tmp, `refused${n}`);
  const e = await convertGguf({ file: path, out }).catch((x: unknown) => x);
  expect(e).toBeInstanceOf(KvtcError);
  expect(existsSync(join(out, 'onnx', 'model.onnx')), 'nothing written').toBe(false);
  return e as KvtcError;
}

describe('convert-gguf on a synthetic Gemma 3 GGUF', () => {
  let dir: string;
  let w: Gemma3Weights;
  let session: ort.InferenceSession;
  // 14 ids (merged pieces, the user-defined "\n", a byte, a control token): longer than the 4-token window.
  const ids = [2, 272, 273, 6, 271, 8, 271, 270, 273, 6, 272, 273, 271, 5];

  beforeAll(async () => {
    const f = await ggufFile();
    w = f.w;
    dir = join(tmp, 'model');
    const r = await convertGguf({ file: f.path, out: dir });
    expect(r.architecture).toBe('gemma3');
    session = await createSession(join(dir, 'onnx', 'model.onnx'));
  });
  afterAll(async () => session?.release());

  it('computes what modeling_gemma3.py computes on the original weights, at positions past the window, and keeps every token cached', async () => {
    const ref = referenceForward(w, ids);
    const r = await step(session, SHAPE, [ids], emptyPast(SHAPE));
    let diff = 0;
    ids.forEach((_, t) => (diff = Math.max(diff, maxAbsDiff(logitsAt(r, ids.length, 0, t), ref.logits[t]))));
    expect(diff).toBeLessThan(2e-4);
    // The comparison can tell the window apart: the same model attending globally everywhere differs past it.
    expect(Math.max(...ref.logits[ids.length - 1].map(Math.abs))).toBeGreaterThan(1);
    for (let l = 0; l < S.layers; l++) {
      const key = r.presentF32[2 * l]; // [1, KV, T, D]
      expect(key.length).toBe(S.kvHeads * ids.length * S.headDim);
      const keys = Float64Array.from({ length: ids.length * S.headDim }, (_, i) => ref.keys[l][Math.floor(i / S.headDim)][i % S.headDim]);
      expect(maxAbsDiff(key, keys), `layer ${l} keys`).toBeLessThan(1e-4);
    }
  });

  it('the window matters: without it the reference differs from the converted model past the window', async () => {
    const lifted = referenceForward(w, ids, Number.MAX_SAFE_INTEGER);
    const r = await step(session, SHAPE, [ids], emptyPast(SHAPE));
    expect(maxAbsDiff(logitsAt(r, ids.length, 0, S.window - 1), lifted.logits[S.window - 1])).toBeLessThan(2e-4);
    expect(maxAbsDiff(logitsAt(r, ids.length, 0, ids.length - 1), lifted.logits[ids.length - 1])).toBeGreaterThan(1e-2);
  });

  it('cached chunked decoding equals one pass (the window spans the chunk boundary)', async () => {
    const full = await step(session, SHAPE, [ids], emptyPast(SHAPE));
    let past = emptyPast(SHAPE);
    const rows: Float32Array[] = [];
    for (const [a, b] of [
      [0, 3],
      [3, 4],
      [4, 9],
      [9, ids.length],
    ]) {
      const r = await step(session, SHAPE, [ids.slice(a, b)], past);
      for (let t = 0; t < b - a; t++) rows.push(logitsAt(r, b - a, 0, t));
      past = r.present;
    }
    rows.forEach((row, t) => expect(maxAbsDiff(row, logitsAt(full, ids.length, 0, t)), `position ${t}`).toBeLessThan(1e-5));
    expect(past['past_key_values.0.key'].dims).toEqual([1, 1, ids.length, S.headDim]);
  });

  it('writes config.json as transformers writes Gemma3ForCausalLM, and kvtc reads its per-layer RoPE back', async () => {
    const cfg = JSON.parse(await readFile(join(dir, 'config.json'), 'utf8'));
    expect(cfg).toMatchObject({
      architectures: ['Gemma3ForCausalLM'],
      model_type: 'gemma3_text',
      head_dim: 16,
      hidden_size: 24,
      num_attention_heads: 2,
      num_key_value_heads: 1,
      num_hidden_layers: 6,
      intermediate_size: 40,
      hidden_activation: 'gelu_pytorch_tanh',
      query_pre_attn_scalar: 16,
      sliding_window: 4,
      rope_theta: 1000000,
      rope_local_base_freq: 10000,
      rope_scaling: null,
      rms_norm_eps: 1e-6,
      final_logit_softcapping: null,
      attn_logit_softcapping: null,
      tie_word_embeddings: true,
      bos_token_id: 2,
      eos_token_id: 1,
      pad_token_id: 0,
      vocab_size: tinyVocab().tokens.length,
    });
    expect(cfg.layer_types).toEqual([
      'sliding_attention',
      'sliding_attention',
      'sliding_attention',
      'sliding_attention',
      'sliding_attention',
      'full_attention',
    ]);
    const nc = normalizeHfConfig(cfg).spec;
    expect(nc.rope.map((r) => r?.theta)).toEqual([1e4, 1e4, 1e4, 1e4, 1e4, 1e6]);
    expect(nc.rope.every((r) => r?.layout === 'half' && r.rotaryDim === 16 && !r.scaling)).toBe(true);
    const gen = JSON.parse(await readFile(join(dir, 'generation_config.json'), 'utf8'));
    expect(gen).toMatchObject({ bos_token_id: 2, eos_token_id: 1, pad_token_id: 0 });
  });

  it('writes a GemmaTokenizer: no prefix space, space-only tokens respelled, user-defined and control tokens whole, byte fallback, BOS added', async () => {
    const tok = await loadTokenizer(dir);
    const { tokens } = tinyVocab();
    const id = (t: string) => tokens.indexOf(t);
    expect(tok.encode('the cat')).toEqual([2, id('t'), id('he'), id('▁cat')]);
    // "  " is stored with real spaces and becomes the BPE piece "▁▁" ("  x" → ▁▁ + byte fallback for x).
    expect(tok.encode('  x')).toEqual([2, id('  '), id('<0x78>')]);
    expect(tok.encode('a\n<start_of_turn>the')).toEqual([2, id('a'), id('\n'), id('<start_of_turn>'), id('t'), id('he')]);
    expect(tok.decode(tok.encode(' the cat\n'), { skipSpecial: true })).toBe(' the cat\n');
    const tc = JSON.parse(await readFile(join(dir, 'tokenizer_config.json'), 'utf8'));
    expect(tc).toMatchObject({
      add_bos_token: true,
      add_eos_token: false,
      bos_token: '<bos>',
      eos_token: '<eos>',
      unk_token: '<unk>',
      pad_token: '<pad>',
      mask_token: '<mask>',
      tokenizer_class: 'GemmaTokenizer',
    });
    const tj = JSON.parse(await readFile(join(dir, 'tokenizer.json'), 'utf8'));
    expect(tj.model.vocab['▁▁']).toBe(id('  '));
    expect(tj.added_tokens.filter((a: { special: boolean }) => !a.special).map((a: { content: string }) => a.content)).toEqual(['\n']);
  });
});

describe('SentencePiece merges as transformers rebuilds them', () => {
  it("rank merges by the merged token's position, longer left part first, every split into two vocabulary tokens", () => {
    const tokens = ['a', 'b', 'c', 'bc', 'ab', 'abc', 'x😀', 'x', '😀'];
    const vocab = new Map(tokens.map((t, i) => [t, i]));
    // generate_merges(vocab, {t: -index}): sorted by (score, len(l), len(r)) descending.
    expect(generateMerges(tokens, vocab, (t) => -vocab.get(t)!)).toEqual([
      ['b', 'c'],
      ['a', 'b'],
      ['ab', 'c'],
      ['a', 'bc'],
      ['x', '😀'],
    ]);
  });

  it("respells tokens of spaces only, as Python's str.strip() sees whitespace", () => {
    expect(respellSpaces('   ')).toBe('▁▁▁');
    expect(respellSpaces(' \t')).toBe('▁▁');
    expect(respellSpaces('\t\t')).toBe('\t\t');
    expect(respellSpaces(' a')).toBe(' a');
    expect(respellSpaces('\u00a0 ')).toBe('▁▁');
  });
});

describe('convert-gguf Gemma 3 refusals', () => {
  it('a vision tower or any tensor Gemma 3 text does not have, named', async () => {
    const e = await refusal((_, t) => t.push({ name: 'v.blk.0.attn_q.weight', ne: [4], type: 'F32', data: new Uint8Array(16) }));
    expect(e.code).toBe('UNSUPPORTED_ARCHITECTURE');
    expect(e.message).toMatch(/tensors a Gemma 3 text model does not have: v\.blk\.0\.attn_q\.weight/);
  });

  it('a missing post-feedforward norm, named', async () => {
    const e = await refusal(
      (_, t) =>
        void t.splice(
          t.findIndex((x) => x.name === 'blk.2.post_ffw_norm.weight'),
          1,
        ),
    );
    expect(e.message).toMatch(/tensor blk\.2\.post_ffw_norm\.weight is missing/);
  });

  it("a missing head_dim (Gemma's is not hidden / heads)", async () => {
    const e = await refusal((meta) => meta.delete('gemma3.attention.key_length'));
    expect(e.message).toMatch(/gemma3\.attention\.key_length is missing/);
  });

  it('soft-capping and RoPE scaling it does not build', async () => {
    const cap = await refusal((meta) => meta.set('gemma3.final_logit_softcapping', m.f32(30)));
    expect(cap.code).toBe('UNSUPPORTED_ARCHITECTURE');
    expect(cap.message).toMatch(/final_logit_softcapping is set/);
    const yarn = await refusal((meta) => {
      meta.set('gemma3.rope.scaling.type', m.str('yarn'));
      meta.set('gemma3.rope.scaling.factor', m.f32(8));
    });
    expect(yarn.message).toMatch(/RoPE scaling "yarn" is not supported for Gemma 3/);
  });

  it('a byte-level BPE vocabulary, or merges in a SentencePiece one', async () => {
    const bpe = await refusal((meta) => meta.set('tokenizer.ggml.model', m.str('gpt2')));
    expect(bpe.code).toBe('UNSUPPORTED_ARCHITECTURE');
    expect(bpe.message).toMatch(/tokenizer model "gpt2" is not supported for the gemma3 architecture/);
    const merges = await refusal((meta) => meta.set('tokenizer.ggml.merges', m.arr('STRING', ['▁ t'])));
    expect(merges.message).toMatch(/tokenizer\.ggml\.merges is not supported/);
  });

  it('a per-layer sliding pattern of the wrong length', async () => {
    const e = await refusal((meta) => meta.set('gemma3.attention.sliding_window_pattern', m.arr('BOOL', [true, false])));
    expect(e.message).toMatch(/sliding_window_pattern must hold one boolean per layer \(6\), got 2 values/);
  });
});

describe('the Gemma 3 sliding pattern from the file', () => {
  it('a per-layer boolean pattern (true = sliding) decides the layer types and RoPE bases', async () => {
    const pattern = [true, false, true, true, false, true];
    const { path } = await ggufFile((meta) => meta.set('gemma3.attention.sliding_window_pattern', m.arr('BOOL', pattern)));
    const out = join(tmp, 'pattern');
    await convertGguf({ file: path, out });
    const cfg = JSON.parse(await readFile(join(out, 'config.json'), 'utf8'));
    expect(cfg.layer_types).toEqual(pattern.map((s) => (s ? 'sliding_attention' : 'full_attention')));
    expect(normalizeHfConfig(cfg).spec.rope.map((r) => r?.theta)).toEqual(pattern.map((s) => (s ? 1e4 : 1e6)));
  });
});
