import { mkdtemp, readFile, readdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Tokenizer } from '@huggingface/tokenizers';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { convertLlama2c } from '../../src/convert/convert-llama2c.js';
import { parseLlama2cCheckpoint } from '../../src/convert/llama2c.js';
import { memoryIO } from '../../src/cli/io.js';
import convertCommand from '../../src/cli/commands/convert-llama2c.js';
import { KvtcError } from '../../src/errors.js';
import { createSession, type ort } from '../../src/onnx/session.js';
import { DEFAULT_MODEL_DIR } from '../../src/paths.js';
import { referenceForward } from './reference-forward.js';
import { argmax, emptyPast, logitsAt, maxAbsDiff, step, type CacheShape } from './run-llama.js';

const SOURCE = join(DEFAULT_MODEL_DIR, 'source');
const SHAPE: CacheShape = { layers: 5, kvHeads: 4, headDim: 8, kvDtype: 'float32' };
const PROMPT = 'Once upon a time, there was a little girl named Lily. She loved to play in the park with her dog.';

let session: ort.InferenceSession;
let tok: Tokenizer;
let ids: number[];
let tmp: string;

beforeAll(async () => {
  session = await createSession(join(DEFAULT_MODEL_DIR, 'onnx', 'model.onnx'));
  const read = async (f: string) => JSON.parse(await readFile(join(DEFAULT_MODEL_DIR, f), 'utf8'));
  tok = new Tokenizer(await read('tokenizer.json'), await read('tokenizer_config.json'));
  ids = tok.encode(PROMPT).ids;
  tmp = await mkdtemp(join(tmpdir(), 'kvtc-convert-'));
});
afterAll(async () => {
  await session?.release();
  await rm(tmp, { recursive: true, force: true });
});

describe('bundled stories260K ONNX model', () => {
  it('has the Optimum decoder-with-past interface', () => {
    expect(session.inputNames.slice(0, 5)).toEqual([
      'input_ids',
      'attention_mask',
      'position_ids',
      'past_key_values.0.key',
      'past_key_values.0.value',
    ]);
    expect(session.outputNames.slice(0, 3)).toEqual(['logits', 'present.0.key', 'present.0.value']);
    expect(session.outputNames).toHaveLength(11);
  });

  it('matches an independent llama2.c forward pass (interleaved RoPE, raw weights) within 1e-4', async () => {
    const ck = parseLlama2cCheckpoint(await readFile(join(SOURCE, 'checkpoint_v1.bin')));
    const ref = referenceForward(ck, ids);
    const r = await step(session, SHAPE, [ids], emptyPast(SHAPE));
    let diff = 0;
    ids.forEach((_, t) => (diff = Math.max(diff, maxAbsDiff(logitsAt(r, ids.length, 0, t), ref[t]))));
    expect(ids.length).toBeGreaterThan(20);
    expect(diff).toBeLessThanOrEqual(1e-4);
    // The logits are not trivially small: a 1e-4 match is meaningful.
    expect(Math.max(...ref[ids.length - 1].map(Math.abs))).toBeGreaterThan(5);
  });

  it('cached decoding equals full recompute; chunked prefill equals one prefill', async () => {
    const n = ids.length - 1;
    const full = await step(session, SHAPE, [ids], emptyPast(SHAPE));
    const prefill = await step(session, SHAPE, [ids.slice(0, n)], emptyPast(SHAPE));
    const next = await step(session, SHAPE, [[ids[n]]], prefill.present);
    expect(maxAbsDiff(logitsAt(next, 1, 0, 0), logitsAt(full, ids.length, 0, n))).toBeLessThan(1e-5);

    let past = emptyPast(SHAPE);
    let chunked: Awaited<ReturnType<typeof step>> | undefined;
    const logits: Float32Array[] = [];
    for (const [a, b] of [
      [0, 7],
      [7, 11],
      [11, ids.length],
    ]) {
      chunked = await step(session, SHAPE, [ids.slice(a, b)], past);
      for (let t = 0; t < b - a; t++) logits.push(logitsAt(chunked, b - a, 0, t));
      past = chunked.present;
    }
    logits.forEach((row, t) => expect(maxAbsDiff(row, logitsAt(full, ids.length, 0, t))).toBeLessThan(1e-5));
    chunked!.presentF32.forEach((kv, i) => expect(maxAbsDiff(kv, full.presentF32[i])).toBeLessThan(1e-5));
    expect(chunked!.present['past_key_values.4.key'].dims).toEqual([1, 4, ids.length, 8]);
  });

  it('masks left padding: a padded batch row equals the same prompt alone', async () => {
    const short = tok.encode('The dog ran to the park.').ids;
    const pad = ids.length - short.length;
    const padded = [...Array(pad).fill(0), ...short];
    const mask = [ids.map(() => 1), [...Array(pad).fill(0), ...short.map(() => 1)]];
    const positions = [ids.map((_, i) => i), [...Array(pad).fill(0), ...short.map((_, i) => i)]];
    const batch = await step(session, SHAPE, [ids, padded], emptyPast(SHAPE, 2), { mask, positions });
    const alone = await step(session, SHAPE, [short], emptyPast(SHAPE));
    for (let t = 0; t < short.length; t++) {
      expect(maxAbsDiff(logitsAt(batch, ids.length, 1, pad + t), logitsAt(alone, short.length, 0, t))).toBeLessThan(1e-4);
    }
  });

  it('greedy generation from "Once upon a time" is TinyStories English, consistent with the reference', async () => {
    const prompt = tok.encode('Once upon a time').ids;
    let r = await step(session, SHAPE, [prompt], emptyPast(SHAPE));
    const out: number[] = [];
    for (let i = 0; i < 40; i++) {
      const seq = r.logits.length / r.vocab;
      const next = argmax(logitsAt(r, seq, 0, seq - 1));
      out.push(next);
      r = await step(session, SHAPE, [[next]], r.present);
    }
    const text = tok.decode([...prompt, ...out], { skip_special_tokens: true });
    expect(text.startsWith('Once upon a time')).toBe(true);
    const words = text.toLowerCase().match(/[a-z]+/g) ?? [];
    expect(words.length).toBeGreaterThan(20);
    const common = ['the', 'a', 'was', 'she', 'he', 'to', 'and', 'named', 'there', 'day', 'one', 'little', 'play'];
    expect(words.filter((w) => common.includes(w)).length).toBeGreaterThanOrEqual(5);
    // Greedy choices agree with the independent forward pass at every generated position.
    const ck = parseLlama2cCheckpoint(await readFile(join(SOURCE, 'checkpoint_v1.bin')));
    const ref = referenceForward(ck, [...prompt, ...out.slice(0, -1)]);
    out.forEach((id, i) => expect(argmax(ref[prompt.length - 1 + i])).toBe(id));
  });
});

describe('convert-llama2c', () => {
  it('regenerates the shipped directory byte for byte', async () => {
    const out = join(tmp, 'regen');
    const r = await convertLlama2c({
      checkpoint: join(SOURCE, 'checkpoint_v1.bin'),
      tokenizer: join(SOURCE, 'tokenizer.bin'),
      out,
      name: 'stories260k',
    });
    expect(r.parameters).toBe(260_032);
    for (const f of ['config.json', 'generation_config.json', 'tokenizer.json', 'tokenizer_config.json', 'onnx/model.onnx']) {
      expect(Buffer.compare(await readFile(join(out, f)), await readFile(join(DEFAULT_MODEL_DIR, f))), f).toBe(0);
    }
  });

  // The command module directly: vitest cannot follow program.ts's variable dynamic import.
  it('the command prints what it wrote, refuses an existing --out, and --force keeps source/', async () => {
    const out = join(tmp, 'cli');
    const opts = {
      checkpoint: join(SOURCE, 'checkpoint_v1.bin'),
      tokenizer: join(SOURCE, 'tokenizer.bin'),
      out,
      name: 'stories260k',
      force: false,
    };
    const io = memoryIO();
    await convertCommand(opts, io);
    expect(io.stdout.join('\n')).toMatch(/onnx\/model\.onnx\s+1,0\d\d,\d\d\d bytes/);
    const refused = await convertCommand(opts, memoryIO()).catch((e: unknown) => e);
    expect(refused).toBeInstanceOf(KvtcError);
    expect((refused as KvtcError).code).toBe('OUTPUT_EXISTS');
    expect((refused as KvtcError).fix).toMatch(/--force/);
    await convertLlama2c({ ...opts, out: join(out, 'source'), force: true });
    await convertCommand({ ...opts, force: true }, memoryIO());
    expect(await readdir(join(out, 'source'))).toContain('config.json');
    expect(
      Buffer.compare(await readFile(join(out, 'onnx', 'model.onnx')), await readFile(join(DEFAULT_MODEL_DIR, 'onnx', 'model.onnx'))),
    ).toBe(0);
  });

  it('a corrupt checkpoint is a MODEL_INVALID error with a fix, and nothing is written', async () => {
    const bad = join(tmp, 'bad.bin');
    await writeFile(bad, (await readFile(join(SOURCE, 'checkpoint_v1.bin'))).subarray(0, 500_000));
    const err = await convertLlama2c({ checkpoint: bad, tokenizer: join(SOURCE, 'tokenizer.bin'), out: join(tmp, 'never') }).catch(
      (e: unknown) => e,
    );
    expect(err).toBeInstanceOf(KvtcError);
    expect((err as KvtcError).code).toBe('MODEL_INVALID');
    expect((err as KvtcError).message).toMatch(/truncated/);
    expect((err as KvtcError).fix).toBeTruthy();
    expect(await readdir(tmp)).not.toContain('never');
  });
});
