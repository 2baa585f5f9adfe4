import { existsSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { Tokenizer } from '@huggingface/tokenizers';
import { describe, expect, it } from 'vitest';
import { parseLlama2cCheckpoint, permuteRopeRows, type Llama2cCheckpoint } from '../../src/convert/llama2c.js';
import { hfTokenizerConfig, hfTokenizerJson, parseLlama2cTokenizer } from '../../src/convert/llama2c-tokenizer.js';
import { KvtcError } from '../../src/errors.js';
import { DEFAULT_MODEL_DIR } from '../../src/paths.js';
import { llama2cEncode } from './llama2c-encode.js';

const SOURCE = join(DEFAULT_MODEL_DIR, 'source');
const SHARED_LEGACY = '/work/shared/assets/model-stories260k/models/tinystories_260k/checkpoint_legacy.bin';

const v1Bytes = await readFile(join(SOURCE, 'checkpoint_v1.bin'));
const tokBytes = await readFile(join(SOURCE, 'tokenizer.bin'));

/** Serializes a checkpoint in llama2.c's legacy layout (run.c order, zero freq_cis). */
function toLegacy(ck: Llama2cCheckpoint, unshared?: Float32Array): Uint8Array {
  const c = ck.config;
  const header = Int32Array.of(c.dim, c.hiddenDim, c.layers, c.heads, c.kvHeads, unshared ? -c.vocabSize : c.vocabSize, c.seqLen);
  const parts: Float32Array[] = [ck.tokenEmbedding];
  const each = (k: keyof Llama2cCheckpoint['layers'][0]) => ck.layers.forEach((l) => parts.push(l[k]));
  each('rmsAtt');
  each('wq');
  each('wk');
  each('wv');
  each('wo');
  each('rmsFfn');
  each('w1');
  each('w2');
  each('w3');
  parts.push(ck.rmsFinal, new Float32Array(c.seqLen * (c.dim / c.heads)));
  if (unshared) parts.push(unshared);
  const out = new Uint8Array(28 + parts.reduce((n, p) => n + p.byteLength, 0));
  out.set(new Uint8Array(header.buffer), 0);
  let o = 28;
  for (const p of parts) {
    out.set(new Uint8Array(p.buffer, p.byteOffset, p.byteLength), o);
    o += p.byteLength;
  }
  return out;
}

function expectKvtcError(f: () => unknown, code: string, pattern: RegExp): void {
  try {
    f();
  } catch (e) {
    expect(e).toBeInstanceOf(KvtcError);
    expect((e as KvtcError).code).toBe(code);
    expect((e as KvtcError).message).toMatch(pattern);
    expect((e as KvtcError).fix).toBeTruthy();
    return;
  }
  throw new Error('expected a KvtcError');
}

describe('llama2.c checkpoint reader', () => {
  const v1 = parseLlama2cCheckpoint(v1Bytes, 'checkpoint_v1.bin');

  it('reads the v1 header of stories260K', () => {
    expect(v1.config).toEqual({
      dim: 64,
      hiddenDim: 172,
      layers: 5,
      heads: 8,
      kvHeads: 4,
      vocabSize: 512,
      seqLen: 512,
      sharedClassifier: true,
      format: 'v1',
    });
    expect(v1.wcls).toBeUndefined();
    expect(v1.layers[0].wk.length).toBe(32 * 64);
    // RMSNorm gains of a trained model sit around 1, nothing like the embedding's scale.
    expect(v1.rmsFinal[0]).toBeCloseTo(2.458309, 5);
    expect(v1.layers[0].rmsAtt[0]).toBeCloseTo(0.97224295, 6);
  });

  it('reads the legacy layout to the same weights (shared and unshared classifier)', () => {
    const legacy = parseLlama2cCheckpoint(toLegacy(v1));
    expect(legacy.config.format).toBe('legacy');
    expect({ ...legacy, config: undefined }).toEqual({ ...v1, config: undefined });
    const cls = v1.tokenEmbedding.map((x) => -x);
    const unshared = parseLlama2cCheckpoint(toLegacy(v1, cls));
    expect(unshared.config.sharedClassifier).toBe(false);
    expect(unshared.wcls).toEqual(cls);
  });

  it.skipIf(!existsSync(SHARED_LEGACY))('reads the real legacy checkpoint to the same weights as v1', async () => {
    const legacy = parseLlama2cCheckpoint(await readFile(SHARED_LEGACY));
    expect({ ...legacy, config: undefined }).toEqual({ ...v1, config: undefined });
  });

  it('refuses truncated, padded and garbage files with MODEL_INVALID', () => {
    expectKvtcError(() => parseLlama2cCheckpoint(v1Bytes.subarray(0, v1Bytes.length - 100), 'x.bin'), 'MODEL_INVALID', /truncated/);
    expectKvtcError(() => parseLlama2cCheckpoint(Buffer.concat([v1Bytes, Buffer.alloc(4)])), 'MODEL_INVALID', /trailing data/);
    expectKvtcError(() => parseLlama2cCheckpoint(v1Bytes.subarray(0, 100)), 'MODEL_INVALID', /256-byte v1 header/);
    expectKvtcError(() => parseLlama2cCheckpoint(new Uint8Array(10)), 'MODEL_INVALID', /shorter than any llama2.c header/);
    const garbage = new Uint8Array(4096).map((_, i) => (i * 7919) % 251);
    expectKvtcError(() => parseLlama2cCheckpoint(garbage), 'MODEL_INVALID', /not a plausible size|head size|multiple/);
    const v2 = Uint8Array.from(v1Bytes);
    v2[4] = 2;
    expectKvtcError(() => parseLlama2cCheckpoint(v2), 'MODEL_INVALID', /version 2 is not supported/);
  });

  it('permutes q/k rows from interleaved pairs to the half split (transformers permute)', () => {
    // 2 heads of size 4, 1 column: rows [h0: a0 b0 a1 b1 | h1: ...] → [a0 a1 b0 b1 | ...]
    const w = Float32Array.from([0, 1, 2, 3, 10, 11, 12, 13]);
    expect(Array.from(permuteRopeRows(w, 2, 8, 1))).toEqual([0, 2, 1, 3, 10, 12, 11, 13]);
    // Rotating interleaved pair (2i, 2i+1) then permuting == permuting then rotating pair (i, i+half).
    const hs = 8;
    const x = Float32Array.from({ length: 2 * hs * 3 }, (_, i) => Math.sin(i));
    const p = permuteRopeRows(x, 2, 2 * hs, 3);
    for (let h = 0; h < 2; h++)
      for (let i = 0; i < hs / 2; i++)
        for (let c = 0; c < 3; c++) {
          expect(p[(h * hs + i) * 3 + c]).toBe(x[(h * hs + 2 * i) * 3 + c]);
          expect(p[(h * hs + hs / 2 + i) * 3 + c]).toBe(x[(h * hs + 2 * i + 1) * 3 + c]);
        }
  });
});

describe('llama2.c tokenizer.bin → tokenizer.json', () => {
  const vocab = parseLlama2cTokenizer(tokBytes, 'tokenizer.bin', 512);
  const tok = new Tokenizer(hfTokenizerJson(vocab), hfTokenizerConfig({ modelMaxLength: 512 }));
  const sentences = [
    'Once upon a time',
    'Once upon a time, there was a little girl named Lily. She loved to play outside.',
    'The cat sat on the mat.\nThe dog barked at the big red ball!',
    'Tom and Sue went to the park. "Look!" said Tom. They were very happy.',
    'Café, naïve — 3.14 × 2 😀',
    '  two leading spaces and   three inside',
  ];

  it('restores sentencepiece pieces', () => {
    expect(vocab.pieces.slice(0, 4)).toEqual(['<unk>', '<s>', '</s>', '<0x00>']);
    expect(vocab.pieces[259]).toBe('▁t');
    expect(vocab.pieces[265]).toBe('▁the');
  });

  it.each(sentences)('encodes like llama2.c run.c encode: %j', (text) => {
    const ids = tok.encode(text).ids;
    expect(ids).toEqual(llama2cEncode(vocab.pieces, vocab.scores, text));
    expect(tok.decode(ids, { skip_special_tokens: true })).toBe(text);
  });

  it('"Once upon a time" is the known id sequence with BOS', () => {
    expect(tok.encode('Once upon a time').ids).toEqual([1, 403, 407, 261, 378]);
  });

  it('refuses truncated or mismatched tokenizer.bin with TOKENIZER_MISSING', () => {
    expectKvtcError(() => parseLlama2cTokenizer(tokBytes.subarray(0, 3000), 't.bin', 512), 'TOKENIZER_MISSING', /truncated|corrupt|holds/);
    expectKvtcError(() => parseLlama2cTokenizer(tokBytes, 't.bin', 32000), 'TOKENIZER_MISSING', /vocab_size 32000/);
    expectKvtcError(
      () => parseLlama2cTokenizer(new Uint8Array(v1Bytes.subarray(0, 5000)), 't.bin'),
      'TOKENIZER_MISSING',
      /not plausible|corrupt|truncated/,
    );
  });
});
