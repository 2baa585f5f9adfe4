/**
 * kvtc convert-gguf on synthetic llama GGUFs (test/convert/gguf-llama-fixture.ts): the converted
 * model computes what the same Hugging Face-layout weights give through the graph builder directly
 * (so the tensor mapping and the q/k un-permutation are right), config.json and the tokenizer files
 * say what the metadata says, and every broken or unsupported file is refused with its own error.
 * The real model against transformers: test/gguf/smollm2.test.ts.
 */
import { existsSync } from 'node:fs';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import convertGgufCommand from '../../src/cli/commands/convert-gguf.js';
import { memoryIO } from '../../src/cli/io.js';
import { convertGguf, SUPPORTED_GGUF_ARCHITECTURES } from '../../src/convert/gguf/convert.js';
import { permuteRopeRows, unpermuteRopeRows } from '../../src/convert/gguf/llama.js';
import { writeLlamaModelDir } from '../../src/convert/model-dir.js';
import { KvtcError } from '../../src/errors.js';
import { loadTokenizer } from '../../src/model/tokenizer.js';
import { createSession } from '../../src/onnx/session.js';
import { uniformModelRope } from '../../src/rope/types.js';
import { m, type Meta, type TensorSpec } from '../gguf/write-gguf.js';
import { llamaGguf, SHAPE, type FixtureOptions } from './gguf-llama-fixture.js';
import { emptyPast, maxAbsDiff, step } from './run-llama.js';

let tmp: string;
beforeAll(async () => {
  tmp = await mkdtemp(join(tmpdir(), 'kvtc-gguf-llama-'));
});
afterAll(async () => {
  await rm(tmp, { recursive: true, force: true });
});

let n = 0;
async function ggufFile(opts: FixtureOptions = {}) {
  const f = llamaGguf(opts);
  const path = join(tmp, `m${n++}.gguf`);
  await writeFile(path, f.bytes);
  return { ...f, path };
}

async function refusal(opts: FixtureOptions): Promise<KvtcError> {
  const { path } = await ggufFile(opts);
  const out = join(tmp, `refused${n}`);
  const e = await convertGguf({ file: path, out }).catch((x: unknown) => x);
  expect(e).toBeInstanceOf(KvtcError);
  expect(existsSync(join(out, 'onnx', 'model.onnx')), 'nothing written').toBe(false);
  return e as KvtcError;
}

const dropTensor = (name: string) => (_: Map<string, Meta>, t: TensorSpec[]) => {
  t.splice(
    t.findIndex((x) => x.name === name),
    1,
  );
};

describe('q/k row permutation', () => {
  it("unpermuteRopeRows undoes llama.cpp's permute and moves GGUF row 2i+j of a head to HF row j*d/2+i", () => {
    const heads = 3;
    const d = 8;
    const cols = 2;
    const w = Float32Array.from({ length: heads * d * cols }, (_, i) => i);
    const p = permuteRopeRows(w, heads, d, cols);
    expect(Array.from(unpermuteRopeRows(p, heads, d, cols))).toEqual(Array.from(w));
    // Head 1, pair i = 2, j = 1: GGUF row 8 + 5 is HF row 8 + 4 + 2.
    expect(p[(8 + 5) * cols]).toBe(w[(8 + 6) * cols]);
  });
});

describe('convert-gguf on a synthetic llama GGUF', () => {
  it('gives the logits and KV of the same HF weights through the graph builder, for tied and untied heads', async () => {
    for (const untied of [false, true]) {
      const f = await ggufFile({ untied });
      const out = join(tmp, `conv-${untied}`);
      const r = await convertGguf({ file: f.path, out, name: 'tiny' });
      expect(r.architecture).toBe('llama');
      expect(r.converted.spec).toMatchObject({
        layers: 2,
        hidden: 32,
        heads: 4,
        kvHeads: 2,
        headDim: 8,
        vocabSize: f.vocab,
        maxPositions: 256,
        bosTokenId: 1,
        eosTokenId: 2,
      });
      const ref = join(tmp, `ref-${untied}`);
      await writeLlamaModelDir(ref, {
        weights: f.weights,
        spec: {
          layers: SHAPE.layers,
          heads: SHAPE.heads,
          kvHeads: SHAPE.kvHeads,
          headDim: SHAPE.headDim,
          hidden: SHAPE.hidden,
          vocabSize: f.vocab,
          kvDtype: 'float32',
          rope: uniformModelRope({ theta: 500000, rotaryDim: SHAPE.headDim, layout: 'half' }, SHAPE.layers),
          maxPositions: 256,
        },
        rmsNormEps: 1e-5,
        tokenizerJson: {},
        tokenizerConfig: {},
        name: 'tiny',
      });
      const shape = { layers: SHAPE.layers, kvHeads: SHAPE.kvHeads, headDim: SHAPE.headDim, kvDtype: 'float32' as const };
      const ids = [[1, 70, 250, 3, 12, 200, 263, 9, 44, 101]];
      const a = await createSession(join(out, 'onnx', 'model.onnx'));
      const b = await createSession(join(ref, 'onnx', 'model.onnx'));
      try {
        const ra = await step(a, shape, ids, emptyPast(shape));
        const rb = await step(b, shape, ids, emptyPast(shape));
        // Same weights, same graph: equal to rounding. A wrong permutation or a transposed weight moves logits by O(1).
        expect(maxAbsDiff(ra.logits, rb.logits)).toBeLessThan(1e-5);
        ra.presentF32.forEach((t, i) => expect(maxAbsDiff(t, rb.presentF32[i]), `present ${i}`).toBeLessThan(1e-5));
        let spread = 0;
        for (const v of rb.logits) spread = Math.max(spread, Math.abs(v));
        expect(spread, 'the logits are not trivially small').toBeGreaterThan(0.5);
      } finally {
        await a.release();
        await b.release();
      }
      const config = JSON.parse(await readFile(join(out, 'config.json'), 'utf8'));
      expect(config).toMatchObject({
        architectures: ['LlamaForCausalLM'],
        model_type: 'llama',
        hidden_size: 32,
        intermediate_size: 48,
        num_hidden_layers: 2,
        num_attention_heads: 4,
        num_key_value_heads: 2,
        head_dim: 8,
        rope_theta: 500000,
        rms_norm_eps: 1e-5,
        max_position_embeddings: 256,
        vocab_size: f.vocab,
        tie_word_embeddings: !untied,
        bos_token_id: 1,
        eos_token_id: 2,
        pad_token_id: 2,
      });
      expect(JSON.parse(await readFile(join(out, 'generation_config.json'), 'utf8'))).toEqual({
        _from_model_config: true,
        bos_token_id: 1,
        eos_token_id: 2,
        pad_token_id: 2,
      });
    }
  });

  it('writes a tokenizer that keeps control and user-defined tokens whole, respells tokens outside the byte alphabet, and follows tokenizer_config', async () => {
    const f = await ggufFile();
    const out = join(tmp, 'tok');
    await convertGguf({ file: f.path, out });
    const tok = await loadTokenizer(out);
    const cfg = JSON.parse(await readFile(join(out, 'tokenizer_config.json'), 'utf8'));
    expect(cfg).toMatchObject({
      add_bos_token: false,
      bos_token: '<|im_start|>',
      eos_token: '<|im_end|>',
      unk_token: '<|endoftext|>',
      pad_token: '<|im_end|>',
      model_max_length: 256,
      tokenizer_class: 'GPT2Tokenizer',
    });
    expect(cfg.chat_template).toContain('<|im_start|>');
    expect(tok.addsBos).toBe(false);
    expect(tok.bosTokenId).toBe(1);
    expect(tok.eosTokenId).toBe(2);
    // Ids: controls 0-2, byte symbols 3-258 (byte b is 3 + b), merged Ġt he Ġthe in Ġin æĹ 259-264, <think> 265, 日 266.
    const text = '<|im_start|> the in the日<think>x<|im_end|>';
    const ids = tok.encode(text);
    expect(ids).toEqual([1, 261, 263, 261, 266, 265, 3 + 'x'.charCodeAt(0), 2]);
    expect(tok.decode(ids, { skipSpecial: false })).toBe(text);
    // smollm splits digits one by one (no merges join them here anyway).
    expect(tok.encode('12').length).toBe(2);
  });

  it('the command prints what it wrote; an existing --out is refused without --force', async () => {
    const f = await ggufFile();
    const out = join(tmp, 'cli');
    const io = memoryIO();
    await convertGgufCommand({ _: [f.path], out, force: false, json: false }, io);
    const text = io.stdout.join('\n');
    expect(text).toMatch(/GGUF llama → LlamaForCausalLM/);
    expect(text).toMatch(/2 layers, hidden 32, 4 heads \/ 2 KV heads, head_dim 8/);
    expect(text).toMatch(/onnx\/model\.onnx\s+[\d,]+ bytes/);
    const again = await convertGgufCommand({ _: [f.path], out, force: false, json: false }, memoryIO()).catch((e: unknown) => e);
    expect((again as KvtcError).code).toBe('OUTPUT_EXISTS');
    const json = memoryIO();
    await convertGgufCommand({ _: [f.path], out, force: true, json: true }, json);
    expect(JSON.parse(json.stdout.join('\n'))).toMatchObject({ architecture: 'llama', model_type: 'llama', spec: { layers: 2 } });
  });
});

describe('convert-gguf refusals', () => {
  it('an architecture it does not convert, naming it and the supported ones', async () => {
    const e = await refusal({ edit: (meta) => meta.set('general.architecture', m.str('qwen2')) });
    expect(e.code).toBe('UNSUPPORTED_ARCHITECTURE');
    expect(e.message).toMatch(/"qwen2" is not supported; kvtc converts: llama/);
    expect(e.context?.supported).toEqual(SUPPORTED_GGUF_ARCHITECTURES);
  });

  it('a missing tensor, named', async () => {
    const e = await refusal({ edit: dropTensor('blk.1.ffn_up.weight') });
    expect(e.code).toBe('GGUF_INVALID');
    expect(e.message).toMatch(/tensor blk\.1\.ffn_up\.weight is missing/);
  });

  it('a tensor whose shape contradicts the metadata, with both shapes', async () => {
    const e = await refusal({ edit: (meta) => meta.set('llama.attention.head_count_kv', m.u32(1)) });
    expect(e.code).toBe('GGUF_INVALID');
    expect(e.message).toMatch(/tensor blk\.0\.attn_k\.weight has ggml dims \[32, 16\], expected \[32, 8\]/);
  });

  it('a tensor a Llama does not have (a bias), instead of dropping it', async () => {
    const e = await refusal({ edit: (_, t) => t.push({ name: 'blk.0.attn_q.bias', ne: [32], type: 'F32', data: new Uint8Array(128) }) });
    expect(e.code).toBe('UNSUPPORTED_ARCHITECTURE');
    expect(e.message).toMatch(/blk\.0\.attn_q\.bias/);
  });

  it('a SentencePiece tokenizer, a pre-tokenizer it does not know, and missing merges', async () => {
    const spm = await refusal({ edit: (meta) => meta.set('tokenizer.ggml.model', m.str('llama')) });
    expect(spm.code).toBe('UNSUPPORTED_ARCHITECTURE');
    expect(spm.message).toMatch(/tokenizer model "llama" is not supported .*byte-level BPE \("gpt2"\)/);
    const pre = await refusal({ edit: (meta) => meta.set('tokenizer.ggml.pre', m.str('qwen2')) });
    expect(pre.code).toBe('UNSUPPORTED_ARCHITECTURE');
    expect(pre.message).toMatch(/pre-tokenizer "qwen2" .* kvtc knows: default, gpt2, smollm, llama3/);
    const merges = await refusal({ edit: (meta) => meta.delete('tokenizer.ggml.merges') });
    expect(merges.code).toBe('GGUF_INVALID');
    expect(merges.message).toMatch(/merges is missing/);
  });

  it('metadata that is missing, mistyped or out of range', async () => {
    const missing = await refusal({ edit: (meta) => meta.delete('llama.block_count') });
    expect(missing.message).toMatch(/llama\.block_count is missing/);
    const typed = await refusal({ edit: (meta) => meta.set('llama.embedding_length', m.str('32')) });
    expect(typed.message).toMatch(/llama\.embedding_length should be a number, it is string/);
    const bos = await refusal({ edit: (meta) => meta.set('tokenizer.ggml.bos_token_id', m.u32(100000)) });
    expect(bos.message).toMatch(/bos_token_id = 100000 is not a token id/);
    for (const e of [missing, typed, bos]) expect(e.code).toBe('GGUF_INVALID');
  });

  it('RoPE it does not rebuild (yarn, Llama 3.1 rope_freqs)', async () => {
    const yarn = await refusal({
      edit: (meta) => {
        meta.set('llama.rope.scaling.type', m.str('yarn'));
        meta.set('llama.rope.scaling.factor', m.f32(4));
      },
    });
    expect(yarn.code).toBe('UNSUPPORTED_ARCHITECTURE');
    expect(yarn.message).toMatch(/RoPE scaling "yarn"/);
    const freqs = await refusal({ edit: (_, t) => t.push({ name: 'rope_freqs.weight', ne: [4], type: 'F32', data: new Uint8Array(16) }) });
    expect(freqs.message).toMatch(/rope_freqs/);
  });

  it('a model too big for one ONNX file, from its metadata alone', async () => {
    // The metadata claims 100,000 layers and there are no tensors: the refusal comes first.
    const e = await refusal({
      edit: (meta, t) => {
        meta.set('llama.block_count', m.u32(100_000));
        t.length = 0;
      },
    });
    expect(e.code).toBe('GGUF_UNSUPPORTED');
    expect(e.message).toMatch(/GB as float32, more than one ONNX file holds/);
  });

  it('a tensor type without a dequantizer, before reading any weight', async () => {
    // IQ2_XXS: one 256-element block of 66 bytes; the type check comes before the tensor-name check.
    const e = await refusal({
      edit: (_, t) => {
        t.push({ name: 'blk.0.ffn_extra.weight', ne: [256], type: 'IQ2_XXS', data: new Uint8Array(66) });
      },
    });
    expect(e.code).toBe('GGUF_UNSUPPORTED');
    expect(e.message).toMatch(/IQ2_XXS.*kvtc cannot dequantize/);
  });
});
