/**
 * Which ONNX graph of a model directory kvtc runs: the default rule (chooseOnnx) on the layouts
 * exports come in, and --onnx (resolveOnnxOption), bad values included. Graph files here are
 * placeholders: choosing reads names only (loading them is test/model/model-variants.test.ts).
 */
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { exitCodeFor } from '../../src/cli/exit-codes.js';
import { KvtcError } from '../../src/errors.js';
import { findModelFiles, listOnnxFiles, modelDirFromOption, modelNameFor, resolveOnnxOption } from '../../src/model/model-files.js';
import { tempDir } from './helpers.js';

/** A model directory with config.json and the given files (paths relative to it). */
function modelDir(files: string[], config = 'config.json'): string {
  const d = join(tempDir('kvtc-onnx-choice-'), 'my-model');
  mkdirSync(d, { recursive: true });
  writeFileSync(join(d, config), '{}');
  for (const f of files) {
    mkdirSync(join(d, f, '..'), { recursive: true });
    writeFileSync(join(d, f), 'placeholder');
  }
  return d;
}

async function pick(files: string[]) {
  const dir = modelDir(files);
  const notes: string[] = [];
  const f = await findModelFiles(dir, notes);
  return { rel: f.onnx.slice(dir.length + 1), choice: f.choice, notes, dir };
}

function thrown(fn: () => unknown): KvtcError {
  try {
    fn();
  } catch (e) {
    expect(e).toBeInstanceOf(KvtcError);
    return e as KvtcError;
  }
  throw new Error('expected a KvtcError');
}

async function rejected(p: Promise<unknown>): Promise<KvtcError> {
  try {
    await p;
  } catch (e) {
    expect(e).toBeInstanceOf(KvtcError);
    return e as KvtcError;
  }
  throw new Error('expected a KvtcError');
}

// A transformers.js repository (onnx-community/*-ONNX) as it is downloaded.
const TRANSFORMERS_JS = [
  'onnx/model.onnx',
  'onnx/model_bnb4.onnx',
  'onnx/model_fp16.onnx',
  'onnx/model_int8.onnx',
  'onnx/model_q4.onnx',
  'onnx/model_q4f16.onnx',
  'onnx/model_quantized.onnx',
  'onnx/model_uint8.onnx',
];

describe('the default graph of a model directory', () => {
  it('transformers.js layout: the unquantized onnx/model.onnx, not the first name alphabetically (model_bnb4), with a note naming the others and --onnx', async () => {
    const r = await pick(TRANSFORMERS_JS);
    expect(r.rel).toBe('onnx/model.onnx');
    expect(r.choice).toBe('default');
    expect(r.notes).toHaveLength(1);
    expect(r.notes[0]).toMatch(
      /^using onnx\/model\.onnx \(unquantized\) of 8 ONNX graphs; also present: onnx\/model_bnb4\.onnx, onnx\/model_fp16\.onnx, .*onnx\/model_uint8\.onnx\. Pass --onnx <file>/,
    );
  });

  it('no unquantized graph: fp16 before the quantized variants, said so', async () => {
    const r = await pick(['onnx/model_fp16.onnx', 'onnx/model_q4.onnx', 'onnx/model_quantized.onnx']);
    expect(r.rel).toBe('onnx/model_fp16.onnx');
    expect(r.notes[0]).toMatch(/^using onnx\/model_fp16\.onnx \(fp16 weights, the highest precision present\) of 3 ONNX graphs/);
  });

  it('several quantizations and nothing better: a usage error listing them, with --onnx in the fix', async () => {
    const dir = modelDir(['onnx/model_q4.onnx', 'onnx/model_quantized.onnx', 'onnx/model_q4f16.onnx']);
    const e = await rejected(findModelFiles(dir));
    expect(e.code).toBe('USAGE');
    expect(exitCodeFor(e)).toBe(2);
    expect(e.message).toContain(
      'holds several ONNX graphs and none is the obvious one to run: onnx/model_q4.onnx (4-bit quantized weights), onnx/model_q4f16.onnx (4-bit quantized weights, fp16 activations), onnx/model_quantized.onnx (8-bit quantized weights)',
    );
    expect(e.fix).toMatch(
      /^Pass --onnx with one of the graphs in .*: onnx\/model_q4\.onnx, onnx\/model_q4f16\.onnx, onnx\/model_quantized\.onnx/,
    );
    expect(e.context).toMatchObject({ candidates: ['onnx/model_q4.onnx', 'onnx/model_q4f16.onnx', 'onnx/model_quantized.onnx'] });
  });

  it('one quantized graph alone is taken, without a choice to explain', async () => {
    const r = await pick(['onnx/model_q4.onnx']);
    expect(r.rel).toBe('onnx/model_q4.onnx');
    expect(r.notes).toEqual([]);
  });

  it('older Optimum export: the merged decoder, before the with-past half and never decoder_model.onnx (no past inputs)', async () => {
    const r = await pick(['decoder_model.onnx', 'decoder_model_merged.onnx', 'decoder_with_past_model.onnx']);
    expect(r.rel).toBe('decoder_model_merged.onnx');
    expect(r.notes[0]).toMatch(
      /^using decoder_model_merged\.onnx \(unquantized\) of 3 ONNX graphs; also present: decoder_model\.onnx, decoder_with_past_model\.onnx/,
    );
    expect((await pick(['decoder_model.onnx', 'decoder_with_past_model.onnx'])).rel).toBe('decoder_with_past_model.onnx');
  });

  it('a merged decoder beside its quantized copy (decoder_model_merged_quantized.onnx): the float one', async () => {
    expect((await pick(['onnx/decoder_model_merged_quantized.onnx', 'onnx/decoder_model_merged.onnx'])).rel).toBe(
      'onnx/decoder_model_merged.onnx',
    );
    expect((await pick(['onnx/decoder_model_merged_fp16.onnx', 'onnx/decoder_model_merged_quantized.onnx'])).rel).toBe(
      'onnx/decoder_model_merged_fp16.onnx',
    );
  });

  it('model.onnx before decoder_model_merged.onnx; onnx/ before the directory itself (Optimum root export beside a transformers.js copy)', async () => {
    expect((await pick(['onnx/decoder_model_merged.onnx', 'onnx/model.onnx'])).rel).toBe('onnx/model.onnx');
    expect((await pick(['model.onnx', 'onnx/model.onnx'])).rel).toBe('onnx/model.onnx');
    expect((await pick(['model.onnx'])).rel).toBe('model.onnx');
  });

  it('multimodal transformers.js export: the text decoder, not the vision encoder or the embedding graph', async () => {
    expect((await pick(['onnx/embed_tokens.onnx', 'onnx/vision_encoder.onnx', 'onnx/decoder_model_merged.onnx'])).rel).toBe(
      'onnx/decoder_model_merged.onnx',
    );
  });

  it('one graph with another name is used (said so); two such graphs are a usage error', async () => {
    const r = await pick(['llama.onnx']);
    expect(r.rel).toBe('llama.onnx');
    expect(r.notes).toEqual([
      'llama.onnx is not named like a decoder exported with its KV cache (model.onnx, decoder_model_merged.onnx); using it as the only graph present',
    ]);
    const e = await rejected(findModelFiles(modelDir(['a.onnx', 'b.onnx'])));
    expect(e.code).toBe('USAGE');
    expect(e.message).toContain('a.onnx (not a decoder-with-KV file name), b.onnx (not a decoder-with-KV file name)');
  });

  it('no graph at all: MODEL_INVALID saying where it looked', async () => {
    const e = await rejected(findModelFiles(modelDir(['onnx/model.onnx_data'])));
    expect(e.code).toBe('MODEL_INVALID');
    expect(e.message).toMatch(/has config\.json but no ONNX graph \(looked for onnx\/\*\.onnx and \*\.onnx\)/);
  });

  it('lists .onnx files only (external weights and other files are not graphs)', () => {
    const dir = modelDir([
      'onnx/model.onnx',
      'onnx/model.onnx_data',
      'onnx/model_fp16.onnx',
      'onnx/model_fp16.onnx_data',
      'tokenizer.json',
    ]);
    expect(listOnnxFiles(dir).map((c) => [c.rel, c.base, c.variant, c.precision])).toEqual([
      ['onnx/model.onnx', 'model', '', 0],
      ['onnx/model_fp16.onnx', 'model', 'fp16', 1],
    ]);
  });
});

describe('--onnx', () => {
  const dir = modelDir([...TRANSFORMERS_JS, 'onnx/model_q4.onnx_data', 'onnx/sub/x.onnx']);

  it('a file name is looked up in the model directory, then its onnx/ folder; a relative path from either; an absolute path as is', () => {
    expect(resolveOnnxOption(dir, 'model_q4.onnx')).toBe(join(dir, 'onnx/model_q4.onnx'));
    expect(resolveOnnxOption(dir, 'onnx/model_fp16.onnx')).toBe(join(dir, 'onnx/model_fp16.onnx'));
    expect(resolveOnnxOption(dir, 'sub/x.onnx')).toBe(join(dir, 'onnx/sub/x.onnx'));
    expect(resolveOnnxOption(dir, join(dir, 'onnx/model_int8.onnx'))).toBe(join(dir, 'onnx/model_int8.onnx'));
  });

  it('a transformers.js dtype names its variant (fp32 is the unquantized graph)', () => {
    expect(resolveOnnxOption(dir, 'q4')).toBe(join(dir, 'onnx/model_q4.onnx'));
    expect(resolveOnnxOption(dir, 'Q4F16')).toBe(join(dir, 'onnx/model_q4f16.onnx'));
    expect(resolveOnnxOption(dir, 'fp32')).toBe(join(dir, 'onnx/model.onnx'));
    expect(resolveOnnxOption(dir, 'quantized')).toBe(join(dir, 'onnx/model_quantized.onnx'));
  });

  it('a missing file is MODEL_NOT_FOUND listing the graphs the directory holds', () => {
    const e = thrown(() => resolveOnnxOption(dir, 'model_q8.onnx'));
    expect(e.code).toBe('MODEL_NOT_FOUND');
    expect(e.message).toBe(
      `--onnx model_q8.onnx: no such file in ${dir} or ${join(dir, 'onnx')}; the model directory holds onnx/model.onnx (unquantized), onnx/model_bnb4.onnx (4-bit bitsandbytes weights), onnx/model_fp16.onnx (fp16 weights), onnx/model_int8.onnx (int8 quantized weights), onnx/model_q4.onnx (4-bit quantized weights), onnx/model_q4f16.onnx (4-bit quantized weights, fp16 activations), onnx/model_quantized.onnx (8-bit quantized weights), onnx/model_uint8.onnx (uint8 quantized weights).`,
    );
    expect(e.fix).toMatch(/^Pass --onnx with one of the graphs in .*, e\.g\. --onnx onnx\/model\.onnx\.$/);
    expect(thrown(() => resolveOnnxOption(dir, 'int3')).code).toBe('MODEL_NOT_FOUND');
  });

  it('a directory, or the external weights file, is refused with what to pass instead', () => {
    const d = thrown(() => resolveOnnxOption(dir, 'sub'));
    expect(d.code).toBe('MODEL_NOT_FOUND');
    expect(d.message).toContain(`${join(dir, 'onnx/sub')} is a directory, not an ONNX file`);
    const w = thrown(() => resolveOnnxOption(dir, 'model_q4.onnx_data'));
    expect(w.code).toBe('USAGE');
    expect(w.message).toBe('--onnx model_q4.onnx_data is an external weights file, not an ONNX graph.');
    expect(w.fix).toContain('--onnx model_q4.onnx');
  });

  it('with --model: modelDirFromOption returns the chosen graph, and findModelFiles takes it with the config above onnx/', async () => {
    const loc = modelDirFromOption(dir, 'fp16');
    expect(loc).toBe(join(dir, 'onnx/model_fp16.onnx'));
    const notes: string[] = [];
    const f = await findModelFiles(loc, notes);
    expect(f).toMatchObject({ format: 'optimum', dir, config: join(dir, 'config.json'), onnx: loc, choice: 'option' });
    expect(notes).toEqual([]);
    // the same through the option of findModelFiles, and a .onnx path given as the model
    expect((await findModelFiles(dir, [], { onnx: 'model_fp16.onnx' })).onnx).toBe(loc);
    expect((await findModelFiles(join(dir, 'onnx/model_int8.onnx'))).dir).toBe(dir);
    // a missing model directory is reported as such, not as a missing graph
    expect(thrown(() => modelDirFromOption(join(dir, 'nope'), 'model.onnx')).message).toMatch(/^model directory .*nope does not exist\.$/);
  });

  it('the model name carries the variant of the graph run (default profile directories and caches keep quantizations apart)', () => {
    expect(modelNameFor(dir, join(dir, 'onnx/model.onnx'))).toBe('my-model');
    expect(modelNameFor(dir, join(dir, 'onnx/model_q4.onnx'))).toBe('my-model-q4');
    expect(modelNameFor(dir, join(dir, 'onnx/model_fp16.onnx'))).toBe('my-model-fp16');
    expect(modelNameFor(dir, join(dir, 'onnx/decoder_model_merged.onnx'))).toBe('my-model');
    expect(modelNameFor(dir, join(dir, 'onnx/decoder_model_merged_quantized.onnx'))).toBe('my-model-quantized');
    expect(modelNameFor(dir, join(dir, 'onnx/sub/x.onnx'))).toBe('my-model');
  });

  it('a graph outside any export directory is refused: kvtc needs its config', async () => {
    const lone = join(tempDir('kvtc-onnx-lone-'), 'a', 'b', 'model.onnx');
    mkdirSync(join(lone, '..'), { recursive: true });
    writeFileSync(lone, 'placeholder');
    const e = await rejected(findModelFiles(lone));
    expect(e.code).toBe('MODEL_INVALID');
    expect(e.message).toMatch(/neither its folder nor the one above holds config\.json or genai_config\.json/);
  });

  it('onnxruntime-genai export: --onnx replaces the decoder genai_config.json names, with a note', async () => {
    const g = modelDir(['model.onnx', 'model-int4.onnx'], 'genai_config.json');
    writeFileSync(join(g, 'genai_config.json'), JSON.stringify({ model: { decoder: { filename: 'model.onnx' } } }));
    const notes: string[] = [];
    const f = await findModelFiles(g, notes, { onnx: 'model-int4.onnx' });
    expect(f).toMatchObject({ format: 'genai', onnx: join(g, 'model-int4.onnx'), choice: 'option' });
    expect(notes).toEqual(['using model-int4.onnx (--onnx) instead of model.onnx, the decoder genai_config.json names']);
    expect((await findModelFiles(g)).choice).toBe('genai_config');
  });
});
