/**
 * --onnx and model directories as exports ship them, through the CLI as a user runs it: a
 * transformers.js layout (onnx/model.onnx, model_q4.onnx, model_quantized.onnx), an Optimum
 * merged decoder, and a directory of quantized variants only; graphs made from the bundled
 * stories260K by test/model/graph-variants.ts, run by real ONNX Runtime sessions.
 */
import { cpSync, mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { readKvCache } from '../../src/model/kv-io.js';
import { DEFAULT_MODEL_DIR } from '../../src/paths.js';
import { mergeDecoder, quantizeMatMulInt8, quantizeMatMulNBits } from './graph-variants.js';
import { kvtc, tempDir } from './helpers.js';

function variantDir(name: string, graphs: Record<string, Uint8Array>): string {
  const d = join(tempDir('kvtc-onnx-cli-'), name);
  cpSync(DEFAULT_MODEL_DIR, d, { recursive: true });
  rmSync(join(d, 'onnx'), { recursive: true });
  mkdirSync(join(d, 'onnx'));
  for (const [f, b] of Object.entries(graphs)) writeFileSync(join(d, 'onnx', f), b);
  return d;
}

let tjs: string;
let merged: string;
let quantizedOnly: string;
let textFile: string;

beforeAll(() => {
  const f = readFileSync(join(DEFAULT_MODEL_DIR, 'onnx', 'model.onnx'));
  const q4 = quantizeMatMulNBits(f).bytes;
  const q8 = quantizeMatMulInt8(f).bytes;
  tjs = variantDir('tjs-model', { 'model.onnx': f, 'model_q4.onnx': q4, 'model_quantized.onnx': q8 });
  merged = variantDir('merged-model', { 'decoder_model_merged.onnx': mergeDecoder(f), 'decoder_with_past_model.onnx': f });
  quantizedOnly = variantDir('quantized-model', { 'model_q4.onnx': q4, 'model_quantized.onnx': q8 });
  textFile = join(tempDir(), 'story.txt');
  writeFileSync(
    textFile,
    'Once upon a time, there was a little girl named Lily. She loved to play outside in the park with her friends. '.repeat(6),
  );
});

describe('kvtc inspect --model DIR [--onnx]', () => {
  it('says which graph it took and how to take another', async () => {
    const r = await kvtc('inspect', '--model', tjs);
    expect(r.code).toBe(0);
    expect(r.stdout).toContain('graph   onnx/model.onnx (chosen by default; --onnx FILE runs another graph of the directory)');
    expect(r.stdout).toContain(
      'note: using onnx/model.onnx (unquantized) of 3 ONNX graphs; also present: onnx/model_q4.onnx, onnx/model_quantized.onnx. Pass --onnx <file> (e.g. --onnx onnx/model_q4.onnx) to run another',
    );
  });

  it("--onnx takes a file name or a dtype; the reading (fingerprint, notes) is that graph's", async () => {
    const byDefault = JSON.parse((await kvtc('inspect', '--model', tjs, '--json')).stdout);
    const r = await kvtc('inspect', '--model', tjs, '--onnx', 'model_q4.onnx', '--json');
    expect(r.code).toBe(0);
    const j = JSON.parse(r.stdout);
    expect(j.files).toMatchObject({ onnx: join(tjs, 'onnx', 'model_q4.onnx'), onnx_choice: 'option' });
    // the name carries the variant, so default profile directories and caches keep quantizations apart
    expect(byDefault.model).toBe('tjs-model');
    expect(j.model).toBe('tjs-model-q4');
    expect(j.fingerprint.id).not.toBe(byDefault.fingerprint.id);
    expect(j.fingerprint.onnx.file).toBe('model_q4.onnx');
    expect(j.notes.join('\n')).toContain('onnx/model_q4.onnx has quantized weights (MatMulNBits ×35');
    expect(JSON.parse((await kvtc('inspect', '--model', tjs, '--onnx', 'q4', '--json')).stdout).fingerprint.id).toBe(j.fingerprint.id);
    expect(JSON.parse((await kvtc('inspect', '--model', join(tjs, 'onnx', 'model_q4.onnx'), '--json')).stdout).fingerprint.id).toBe(
      j.fingerprint.id,
    );
  });

  it('a merged decoder is read as one', async () => {
    const r = await kvtc('inspect', '--model', merged);
    expect(r.code).toBe(0);
    expect(r.stdout).toContain('graph   onnx/decoder_model_merged.onnx (chosen by default');
    expect(r.stdout).toContain(
      'note: onnx/decoder_model_merged.onnx is an Optimum merged decoder: kvtc feeds use_cache_branch false on the first pass',
    );
  });

  it('bad input: a missing --onnx file (exit 1, the graphs listed), --onnx without --model (exit 2), quantized variants only (exit 2, choose)', async () => {
    const missing = await kvtc('inspect', '--model', tjs, '--onnx', 'model_fp16.onnx');
    expect(missing.code).toBe(1);
    expect(missing.stderr).toContain(
      `error [MODEL_NOT_FOUND]: --onnx model_fp16.onnx: no such file in ${tjs} or ${join(tjs, 'onnx')}; the model directory holds onnx/model.onnx (unquantized), onnx/model_q4.onnx (4-bit quantized weights), onnx/model_quantized.onnx (8-bit quantized weights).`,
    );
    expect(missing.stderr).toMatch(
      /fix: Pass --onnx with one of the graphs in .*: onnx\/model\.onnx, onnx\/model_q4\.onnx, onnx\/model_quantized\.onnx/,
    );
    const noModel = await kvtc('inspect', '--onnx', 'q4');
    expect(noModel.code).toBe(2);
    expect(noModel.stderr).toContain('--onnx "q4": needs --model: it names a graph of the model directory');
    const ambiguous = await kvtc('generate', '--model', quantizedOnly, '--prompt', 'Once');
    expect(ambiguous.code).toBe(2);
    expect(ambiguous.stderr).toContain(
      `error [USAGE]: ${quantizedOnly} holds several ONNX graphs and none is the obvious one to run: onnx/model_q4.onnx (4-bit quantized weights), onnx/model_quantized.onnx (8-bit quantized weights).`,
    );
    expect(
      (await kvtc('generate', '--model', quantizedOnly, '--onnx', 'quantized', '--prompt', 'Once', '--max-new-tokens', '2')).code,
    ).toBe(0);
  });
});

describe('every command that runs a model takes the graph chosen', () => {
  it("generate: the merged decoder and the q4 graph tell the bundled model's story", async () => {
    const want = JSON.parse(
      (await kvtc('generate', '--prompt', 'Once upon a time', '--max-new-tokens', '16', '--json')).stdout,
    ).continuation;
    expect(want).toMatch(/^, there was a little girl named Lily/);
    const m = await kvtc('generate', '--model', merged, '--prompt', 'Once upon a time', '--max-new-tokens', '16', '--json');
    expect(m.code).toBe(0);
    expect(JSON.parse(m.stdout).continuation).toBe(want);
    const q = await kvtc('generate', '--model', tjs, '--onnx', 'q4', '--prompt', 'Once upon a time', '--max-new-tokens', '16', '--json');
    expect(q.code).toBe(0);
    expect(JSON.parse(q.stdout).continuation).toMatch(/^, there was a little girl named Lily/);
  });

  it('capture: the cache and its fingerprint come from the --onnx graph', async () => {
    const out = join(tempDir(), 'kv-q8.safetensors');
    const r = await kvtc('capture', '--model', tjs, '--onnx', 'quantized', '--text', textFile, '--out', out, '--json', '--quiet');
    expect(r.code).toBe(0);
    const q8 = JSON.parse((await kvtc('inspect', '--model', tjs, '--onnx', 'quantized', '--json')).stdout).fingerprint.id;
    expect(JSON.parse(r.stdout).fingerprint).toBe(q8);
    const { cache, metadata } = await readKvCache(out);
    expect(metadata).toMatchObject({ fingerprint: q8 });
    expect(cache).toMatchObject({ layers: 5, kvHeads: 4, headDim: 8, dtype: 'float32' });
    expect(cache.keys.every((k) => k.every(Number.isFinite))).toBe(true);
  });

  it('calibrate → validate → evaluate on the q4 graph; the profile is tied to that graph', async () => {
    const prof = join(tempDir(), 'q4-profile');
    const c = await kvtc(
      'calibrate',
      '--model',
      tjs,
      '--onnx',
      'q4',
      '--tokens',
      '256',
      '--heldout',
      '128',
      '--report-tokens',
      '128',
      '--grouping',
      'all',
      '--ratio',
      '8',
      '--out',
      prof,
      '--json',
      '--quiet',
    );
    expect(c.stderr).toBe('');
    expect(c.code).toBe(0);
    expect((await kvtc('validate', prof, '--model', tjs, '--onnx', 'q4')).code).toBe(0);
    const other = await kvtc('validate', prof, '--model', tjs);
    expect(other.code).toBe(1);
    expect(other.stdout).toMatch(
      /✗ model: .*the ONNX graph differs: the profile was calibrated on onnx\/model_q4\.onnx, this is onnx\/model\.onnx/,
    );
    expect(other.stdout + other.stderr).toMatch(/--onnx onnx\/model_q4\.onnx/);
    expect(JSON.parse(c.stdout).model).toBe('tjs-model-q4');
    const e = await kvtc(
      'evaluate',
      '--model',
      tjs,
      '--onnx',
      'q4',
      '--profile',
      prof,
      '--subjects',
      'high_school_geography',
      '--limit',
      '2',
      '--perplexity-tokens',
      '0',
      '--long-context',
      '0',
      '--codec',
      'kvtc',
      '--json',
      '--quiet',
    );
    expect(e.code).toBe(0);
    const j = JSON.parse(e.stdout);
    expect(j.n).toBe(2);
    expect(j.profile.dir).toBe(prof);
  });

  it('evaluate runs the merged decoder', async () => {
    const e = await kvtc(
      'evaluate',
      '--model',
      merged,
      '--subjects',
      'high_school_geography',
      '--limit',
      '2',
      '--perplexity-tokens',
      '0',
      '--long-context',
      '0',
      '--codec',
      'int8',
      '--json',
      '--quiet',
    );
    expect(e.stderr).toBe('');
    expect(e.code).toBe(0);
    expect(JSON.parse(e.stdout).n).toBe(2);
  });
});
