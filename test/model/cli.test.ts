import { existsSync, mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { GraphBuilder } from '../../src/onnx/builder.js';
import { cudaProviderPath } from '../../src/onnx/session.js';
import { readKvCache } from '../../src/model/kv-io.js';
import { FIXTURE, fixtureCopy, kvtc, tempDir } from './helpers.js';

const text = (content: string | Buffer) => {
  const p = join(tempDir(), 'prompt.txt');
  writeFileSync(p, content);
  return p;
};

describe('kvtc capture / generate on the genai fp16 fixture', () => {
  it('capture writes an fp16 safetensors cache and prints the numbers', async () => {
    const out = join(tempDir(), 'kv.safetensors');
    const r = await kvtc(
      'capture',
      '--model',
      FIXTURE,
      '--text',
      text('Once upon a time, there was a little girl. '.repeat(20)),
      '--out',
      out,
      '--chunk',
      '64',
    );
    // stderr carries only progress lines (plain, since it is not a terminal); stdout the result.
    expect(r.stderr).toMatch(/^(\[kvtc\] [^\n]*(\n|$))*$/);
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(/Captured \d+ tokens of KV from tiny-llama-fp16 \(2 layers × 1 KV heads × head_dim 16, float16\)/);
    expect(r.stdout).toMatch(/tokens\/s/);
    const { cache, metadata } = await readKvCache(out);
    expect(cache).toMatchObject({ layers: 2, kvHeads: 1, headDim: 16, dtype: 'float16' });
    expect(metadata).toMatchObject({ model: 'tiny-llama-fp16', producer: 'kvtc', dtype: 'float16' });

    // refuses to overwrite without --force, and leaves the file alone
    const before = readFileSync(out);
    const again = await kvtc('capture', '--model', FIXTURE, '--text', text('Hello'), '--out', out);
    expect(again.code).toBe(1);
    expect(again.stderr).toMatch(/OUTPUT_EXISTS.*already exists[\s\S]*--force/);
    expect(readFileSync(out).equals(before)).toBe(true);

    const forced = await kvtc('capture', '--model', FIXTURE, '--text', text('Hello'), '--out', out, '--force', '--json');
    expect(forced.code).toBe(0);
    expect(JSON.parse(forced.stdout)).toMatchObject({ tokens: 2, layers: 2, kv_heads: 1, head_dim: 16, dtype: 'float16' });
  });

  it('capture --max-tokens truncates', async () => {
    const out = join(tempDir(), 'kv.safetensors');
    const r = await kvtc(
      'capture',
      '--model',
      FIXTURE,
      '--text',
      text('one two three four five six seven eight nine ten'),
      '--out',
      out,
      '--max-tokens',
      '5',
      '--json',
    );
    expect(r.code).toBe(0);
    expect(JSON.parse(r.stdout).tokens).toBe(5);
  });

  it('generate stops at --max-new-tokens, and greedy decoding is a prefix of a longer run', async () => {
    const gen = async (n: number) => {
      const r = await kvtc('generate', '--model', FIXTURE, '--prompt', 'Once upon a time', '--max-new-tokens', String(n), '--json');
      expect(r.code, r.stderr).toBe(0);
      return JSON.parse(r.stdout);
    };
    // The fixture's random weights never produce EOS in the first 12 greedy tokens, so the length limit is what stops it.
    const short = await gen(5);
    expect(short.stop_reason).toBe('length');
    expect(short.ids).toHaveLength(5);
    expect(short.continuation.length).toBeGreaterThan(0);
    const long = await gen(12);
    expect(long.stop_reason).toBe('length');
    expect(long.ids).toHaveLength(12);
    expect(long.ids.slice(0, 5)).toEqual(short.ids);
    expect((await gen(0)).ids).toEqual([]);
  });
});

describe('bad input: non-zero exit, a message naming the problem, no output file', () => {
  const good = text('Once upon a time');
  const cases: { name: string; setup: () => { model?: string; text?: string; extra?: string[] }; code: number; message: RegExp }[] = [
    {
      name: 'missing model directory',
      setup: () => ({ model: join(tempDir(), 'nope') }),
      code: 1,
      message: /MODEL_NOT_FOUND.*nope does not exist/,
    },
    {
      name: 'directory without a config',
      setup: () => ({ model: tempDir() }),
      code: 1,
      message: /MODEL_INVALID.*neither config\.json nor genai_config\.json/,
    },
    {
      name: 'missing tokenizer',
      setup: () => {
        const m = fixtureCopy();
        rmSync(join(m, 'tokenizer.json'));
        return { model: m };
      },
      code: 1,
      message: /TOKENIZER_MISSING.*no tokenizer\.json/,
    },
    {
      name: 'corrupt ONNX',
      setup: () => {
        const m = fixtureCopy();
        writeFileSync(join(m, 'model.onnx'), Buffer.from('this is not an ONNX file \x00\xff\xfe garbage '.repeat(50), 'latin1'));
        return { model: m };
      },
      code: 1,
      message: /MODEL_INVALID.*model\.onnx/,
    },
    {
      name: 'missing external data',
      setup: () => {
        const m = fixtureCopy();
        rmSync(join(m, 'model.onnx.data'));
        return { model: m };
      },
      code: 1,
      message: /MODEL_INVALID.*model\.onnx\.data, which is missing/,
    },
    {
      name: 'unsupported architecture',
      setup: () => {
        const m = tempDir();
        writeFileSync(join(m, 'config.json'), JSON.stringify({ architectures: ['BertForMaskedLM'], model_type: 'bert' }));
        mkdirSync(join(m, 'onnx'));
        writeFileSync(join(m, 'onnx', 'model.onnx'), 'x');
        return { model: m };
      },
      code: 1,
      message: /UNSUPPORTED_ARCHITECTURE.*BertForMaskedLM.*LlamaForCausalLM/,
    },
    {
      name: 'a graph without present.* KV outputs',
      setup: () => {
        const m = tempDir();
        writeFileSync(
          join(m, 'config.json'),
          JSON.stringify({
            architectures: ['LlamaForCausalLM'],
            hidden_size: 8,
            num_attention_heads: 2,
            num_hidden_layers: 1,
            vocab_size: 4,
          }),
        );
        const g = new GraphBuilder('no-kv');
        const ids = g.input('input_ids', 'int64', ['batch', 'seq']);
        const emb = g.constant('embed', new Float32Array(16), [4, 4]);
        g.output(g.op('Gather', [emb, ids]), 'logits', 'float32', ['batch', 'seq', 4]);
        mkdirSync(join(m, 'onnx'));
        writeFileSync(join(m, 'onnx', 'model.onnx'), g.toModel());
        return { model: m };
      },
      code: 1,
      message: /MODEL_INVALID.*lacks KV cache inputs\/outputs: present\.0\.key[\s\S]*text-generation-with-past/,
    },
    { name: 'empty text', setup: () => ({ text: text('') }), code: 1, message: /DATA_INVALID.*prompt\.txt: is empty/ },
    {
      name: 'non-UTF-8 text',
      setup: () => ({ text: text(Buffer.from([0x48, 0x69, 0x20, 0xff, 0x21])) }),
      code: 1,
      message: /DATA_INVALID.*not valid UTF-8 \(byte 0xff at offset 3\)/,
    },
    {
      name: 'missing text file',
      setup: () => ({ text: join(tempDir(), 'none.txt') }),
      code: 1,
      message: /DATA_INVALID.*none\.txt: no such file/,
    },
    {
      name: 'bad --max-tokens',
      setup: () => ({ extra: ['--max-tokens', 'lots'] }),
      code: 2,
      message: /--max-tokens "lots": must be a whole number ≥ 1/,
    },
    {
      name: 'too many tokens for the model',
      setup: () => ({ text: text('word '.repeat(2100)) }),
      code: 1,
      message: /DATA_INVALID.*more than the model's 2048 positions[\s\S]*--max-tokens/,
    },
  ];
  if (!existsSync(cudaProviderPath())) {
    cases.push({
      name: '--device cuda without the CUDA provider',
      setup: () => ({ extra: ['--device', 'cuda'] }),
      code: 1,
      message: /DEVICE_UNAVAILABLE[\s\S]*ONNXRUNTIME_NODE_INSTALL=cuda12/,
    });
  }
  for (const c of cases) {
    it(c.name, async () => {
      const s = c.setup();
      const out = join(tempDir(), 'kv.safetensors');
      const r = await kvtc('capture', '--model', s.model ?? FIXTURE, '--text', s.text ?? good, '--out', out, ...(s.extra ?? []));
      expect(r.code).toBe(c.code);
      expect(r.stderr).toMatch(c.message);
      if (c.code === 1) expect(r.stderr).toMatch(/fix: /);
      expect(existsSync(out)).toBe(false);
    });
  }

  it('generate --device cuda fails the same way', async () => {
    if (existsSync(cudaProviderPath())) return;
    const r = await kvtc('generate', '--model', FIXTURE, '--prompt', 'hi', '--device', 'cuda');
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/DEVICE_UNAVAILABLE[\s\S]*ONNXRUNTIME_NODE_INSTALL=cuda12/);
  });
});
