/**
 * The model fingerprint (src/model/fingerprint.ts): what it covers (the architecture fields kvtc
 * reads, the ONNX graph bytes, a sampled hash of the external weights), what it ignores (how
 * config.json is written, fields that do not decide the cache), and its version-2 fields.
 */
import { createHash } from 'node:crypto';
import { cpSync, openSync, readFileSync, writeFileSync, writeSync, closeSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { fingerprintModel, sampledSha256, sha256File } from '../../src/model/fingerprint.js';
import { describeModel } from '../../src/model/load.js';
import { DEFAULT_MODEL_DIR, DEFAULT_PROFILES_DIR } from '../../src/paths.js';
import { FIXTURE, tempDir } from './helpers.js';

const sha = (s: string | Buffer) => createHash('sha256').update(s).digest('hex');

/** A copy of the bundled model whose config.json is rewritten by `edit` (text in, text out). */
function storiesCopy(edit?: (text: string) => string): string {
  const dir = join(tempDir('kvtc-fingerprint-'), 'stories260k');
  cpSync(DEFAULT_MODEL_DIR, dir, { recursive: true });
  if (edit) writeFileSync(join(dir, 'config.json'), edit(readFileSync(join(dir, 'config.json'), 'utf8')));
  return dir;
}

const reshape = (edit: (cfg: Record<string, unknown>) => Record<string, unknown>, indent?: number) => (text: string) =>
  JSON.stringify(edit(JSON.parse(text)), null, indent);

/** XORs one byte of `file` at `at`. */
function flipByte(file: string, at: number): void {
  const bytes = readFileSync(file);
  const fd = openSync(file, 'r+');
  writeSync(fd, Buffer.from([bytes[at] ^ 0xff]), 0, 1, at);
  closeSync(fd);
}

describe('model fingerprint', () => {
  it('of the bundled model is the one the committed profile records (a changed recipe would orphan every profile)', async () => {
    const d = await describeModel(DEFAULT_MODEL_DIR);
    const manifest = JSON.parse(readFileSync(join(DEFAULT_PROFILES_DIR, 'stories260k', 'kvtc-profile.json'), 'utf8'));
    expect(d.fingerprint.id).toBe('9699b3e4089e0884');
    expect({ id: d.fingerprint.id, spec_sha256: d.fingerprint.specSha256, onnx_sha256: d.fingerprint.onnx.sha256 }).toEqual(
      manifest.model.fingerprint,
    );
  });

  it('version 2 fields: id and sha256 from the spec, graph and weights lines; the spec hash is of the canonical architecture JSON', async () => {
    const fp = (await describeModel(FIXTURE)).fingerprint;
    const onnx = join(FIXTURE, 'model.onnx');
    const data = join(FIXTURE, 'model.onnx.data');
    expect(fp.specSha256).toBe(sha(JSON.stringify(fp.architecture)));
    expect(fp.onnx).toEqual({ file: 'model.onnx', sha256: sha(readFileSync(onnx)), bytes: readFileSync(onnx).length });
    expect(fp.weights).toEqual({ file: 'model.onnx.data', bytes: 2130080, sampleSha256: (await sampledSha256(data)).sampleSha256 });
    const lines = `kvtc-model-fingerprint 2\nspec:${fp.specSha256}\nonnx:${fp.onnx.sha256}\nweights:${fp.weights!.bytes}:${fp.weights!.sampleSha256}\n`;
    expect(fp.sha256).toBe(sha(lines));
    expect(fp.id).toBe(fp.sha256.slice(0, 16));
    expect(fp.id).toMatch(/^[0-9a-f]{16}$/);
    // The genai fixture (genai_config.json): the architecture kvtc reads, with the KV dtype the graph declares.
    expect(fp.architecture).toEqual({
      architecture: 'LlamaForCausalLM',
      family: 'llama',
      layers: 2,
      heads: 1,
      kv_heads: 1,
      head_dim: 16,
      hidden: 16,
      vocab_size: 32000,
      kv_dtype: 'float16',
      rope: { theta: 10000, rotary_dim: 16, layout: 'half', scaling: null },
    });
    // A graph without external weights has no weights line and no weights field.
    const bundled = (await describeModel(DEFAULT_MODEL_DIR)).fingerprint;
    expect(bundled.weights).toBeUndefined();
    expect(bundled.sha256).toBe(sha(`kvtc-model-fingerprint 2\nspec:${bundled.specSha256}\nonnx:${bundled.onnx.sha256}\n`));
  });

  it('is the same after re-saving config.json with other whitespace and key order, or a field kvtc does not read changed', async () => {
    const base = (await describeModel(DEFAULT_MODEL_DIR)).fingerprint;
    const resaved = storiesCopy(reshape((cfg) => Object.fromEntries(Object.entries(cfg).reverse()), 4));
    const oneLine = storiesCopy(reshape((cfg) => cfg));
    const unread = storiesCopy(
      reshape((cfg) => ({ ...cfg, transformers_version: '4.99.0', torch_dtype: 'bfloat16', _name_or_path: 'elsewhere/stories' })),
    );
    for (const dir of [resaved, oneLine, unread]) {
      const fp = (await describeModel(dir)).fingerprint;
      expect(fp.id, dir).toBe(base.id);
      expect(fp.sha256).toBe(base.sha256);
    }
  });

  it('changes with an architecture field kvtc reads, and only the spec line moves', async () => {
    const base = (await describeModel(DEFAULT_MODEL_DIR)).fingerprint;
    const fp = (await describeModel(storiesCopy(reshape((cfg) => ({ ...cfg, rope_theta: 500000 }))))).fingerprint;
    expect(fp.architecture.rope.theta).toBe(500000);
    expect(fp.id).not.toBe(base.id);
    expect(fp.specSha256).not.toBe(base.specSha256);
    expect(fp.onnx).toEqual(base.onnx);
    // RoPE scaling is part of it, and the order of its keys in config.json is not.
    const llama3 = { rope_type: 'llama3', factor: 8, low_freq_factor: 1, high_freq_factor: 4, original_max_position_embeddings: 128 };
    const scaled = (await describeModel(storiesCopy(reshape((cfg) => ({ ...cfg, rope_scaling: llama3 }))))).fingerprint;
    const reordered = (
      await describeModel(
        storiesCopy(reshape((cfg) => ({ ...cfg, rope_scaling: Object.fromEntries(Object.entries(llama3).reverse()) }), 2)),
      )
    ).fingerprint;
    expect(scaled.id).not.toBe(base.id);
    expect(reordered.id).toBe(scaled.id);
  });

  it('changes with the ONNX bytes (same architecture) and with a sampled weight byte', async () => {
    const base = (await describeModel(DEFAULT_MODEL_DIR)).fingerprint;
    const dir = storiesCopy();
    const onnx = join(dir, 'onnx', 'model.onnx');
    writeFileSync(onnx, Buffer.concat([readFileSync(onnx), Buffer.from([0x0a, 0x00])])); // an extra empty field: the same graph to ORT, other bytes
    const g = (await describeModel(dir)).fingerprint;
    expect(g.specSha256).toBe(base.specSha256);
    expect(g.onnx.sha256).not.toBe(base.onnx.sha256);
    expect(g.onnx.bytes).toBe(base.onnx.bytes + 2);
    expect(g.id).not.toBe(base.id);

    const fixture = (await describeModel(FIXTURE)).fingerprint;
    const copy = join(tempDir('kvtc-fingerprint-'), 'tiny');
    cpSync(FIXTURE, copy, { recursive: true });
    flipByte(join(copy, 'model.onnx.data'), 1000); // inside the first window
    const w = (await describeModel(copy)).fingerprint;
    expect(w.onnx).toEqual(fixture.onnx);
    expect(w.weights!.sampleSha256).not.toBe(fixture.weights!.sampleSha256);
    expect(w.id).not.toBe(fixture.id);
  });

  it('samples large weights: 34 windows of 64 KiB and the size; a byte between windows is not read', async () => {
    const dir = tempDir('kvtc-fingerprint-');
    const file = join(dir, 'weights.bin');
    const bytes = 64 << 20; // 64 MiB: windows at 0, the end and 32 evenly spaced, about 2 MiB apart
    const buf = Buffer.alloc(bytes);
    for (let i = 0; i < bytes; i += 4096) buf[i] = (i >>> 12) & 0xff;
    writeFileSync(file, buf);
    const s0 = await sampledSha256(file);
    expect(s0.bytes).toBe(bytes);
    // The hash is over the size and each window with its offset, in order.
    const h = createHash('sha256').update(`bytes:${bytes}\n`);
    const offsets = new Set([0, bytes - 65536]);
    for (let i = 1; i <= 32; i++) offsets.add(Math.floor((bytes * i) / 33) - 32768);
    for (const at of [...offsets].sort((a, b) => a - b)) h.update(`@${at}\n`).update(buf.subarray(at, at + 65536));
    expect(s0.sampleSha256).toBe(h.digest('hex'));
    // 1 MiB in lies between the first window [0, 64 KiB) and the second (about 1.94 MiB − 32 KiB).
    flipByte(file, 1 << 20);
    expect((await sampledSha256(file)).sampleSha256).toBe(s0.sampleSha256);
    flipByte(file, Math.floor(bytes / 33)); // the centre of the second window
    expect((await sampledSha256(file)).sampleSha256).not.toBe(s0.sampleSha256);
    // A file smaller than one window is hashed whole.
    const small = join(dir, 'small.bin');
    writeFileSync(small, 'abc');
    expect((await sampledSha256(small)).sampleSha256).toBe(sha('bytes:3\n@0\nabc'));
    expect(await sha256File(small)).toBe(sha('abc'));
  });

  it('fingerprintModel on explicit files agrees with describeModel', async () => {
    const d = await describeModel(FIXTURE);
    const fp = await fingerprintModel({ spec: d.spec, onnx: join(FIXTURE, 'model.onnx'), externalData: join(FIXTURE, 'model.onnx.data') });
    expect(fp).toEqual(d.fingerprint);
  });
});
