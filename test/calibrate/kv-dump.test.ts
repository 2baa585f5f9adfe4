import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { calibrate, type CalibrateResult } from '../../src/calibrate/calibrate.js';
import { calibrateKv, type KvCalibrateResult } from '../../src/calibrate/calibrate-kv.js';
import { canonicalJson, openKvDump, readDumpSequence } from '../../src/calibrate/kv-dump.js';
import { readCalibrationTokens } from '../../src/calibrate/sequences.js';
import { sha256 } from '../../src/io/hash.js';
import { loadModel } from '../../src/model/load.js';
import { ModelRunner } from '../../src/model/runner.js';
import type { KvCache } from '../../src/model/types.js';
import { DEFAULT_CALIBRATION_DIR, DEFAULT_MODEL_DIR } from '../../src/paths.js';
import { readProfile } from '../../src/profile/read.js';
import { kvtc, tempDir } from '../model/helpers.js';
import { writeDump, type DumpModelInfo, type DumpSeq } from './kv-dump-helpers.js';

const TEXT = join(DEFAULT_CALIBRATION_DIR, 'inaugural-1797-Adams.txt');
const SETTINGS = {
  ratios: [8],
  tokens: 2048,
  heldout: 1024,
  report: 1024,
  sink: 4,
  window: 128,
  grouping: 'layer' as const,
  chunk: 256,
  seed: 0,
};

/**
 * The dump holds exactly the sequences calibrate cuts from the same text (BOS + 511 tokens, in
 * stream order), captured by kvtc's runner: the same seeded shuffle then gives both paths the
 * same fit, tuning and report sequences.
 */
async function captureDump(dir: string): Promise<{ model: DumpModelInfo; seqs: DumpSeq[] }> {
  const m = await loadModel(DEFAULT_MODEL_DIR);
  try {
    const data = await readCalibrationTokens([TEXT], m.tokenizer, {
      fitTokens: SETTINGS.tokens,
      heldoutTokens: SETTINGS.heldout,
      reportTokens: SETTINGS.report,
    });
    const seqLen = Math.min(m.spec.maxPositions, 512);
    const body = seqLen - 1;
    const runner = new ModelRunner(m);
    const seqs: DumpSeq[] = [];
    for (let at = 0; at + body <= data.tokens.length; at += body) {
      const ids = [m.tokenizer.bosTokenId!, ...data.tokens.slice(at, at + body)];
      seqs.push({ cache: (await runner.prefill(ids, { chunk: SETTINGS.chunk })).cache, ids });
    }
    const s = m.spec;
    const model: DumpModelInfo = {
      layers: s.layers,
      heads: s.heads,
      kvHeads: s.kvHeads,
      headDim: s.headDim,
      maxPositions: s.maxPositions,
      rope: s.rope,
    };
    writeDump(dir, model, seqs);
    return { model, seqs };
  } finally {
    await m.session.release();
  }
}

describe('calibrate --kv on a dump of the bundled model', () => {
  let dump: string;
  let seqs: DumpSeq[];
  let fromModel: CalibrateResult;
  let fromDump: KvCalibrateResult;
  let outDump: string;
  beforeAll(async () => {
    const root = tempDir('kvtc-kvdump-');
    dump = join(root, 'dump');
    ({ seqs } = await captureDump(dump));
    fromModel = await calibrate({ modelDir: DEFAULT_MODEL_DIR, data: [TEXT], ...SETTINGS, out: join(root, 'model-profile') });
    outDump = join(root, 'dump-profile');
    fromDump = await calibrateKv({ kv: dump, ...SETTINGS, out: outDump });
  }, 120_000);

  it('reads each sequence back as the cache that was captured, ids included', async () => {
    const d = await openKvDump(dump);
    expect(d.model.spec.layers).toBe(5);
    expect(d.sequences.length).toBe(seqs.length);
    const r = await readDumpSequence(d, d.sequences[3]);
    const want: KvCache = seqs[3].cache;
    expect(r.cache.tokens).toBe(want.tokens);
    for (let l = 0; l < 5; l++) {
      expect(r.cache.keys[l]).toEqual(want.keys[l]);
      expect(r.cache.values[l]).toEqual(want.values[l]);
    }
    expect(r.ids).toEqual(seqs[3].ids);
  });

  it('splits the dump as calibrate splits the text, and measures the same errors', () => {
    expect(fromDump.tokens).toBe(fromModel.tokens);
    expect(fromDump.heldout_tokens).toBe(fromModel.heldout_tokens);
    expect(fromDump.report_tokens).toBe(fromModel.report_tokens);
    const a = fromModel.profiles[0];
    const b = fromDump.profiles[0];
    // Same caches (same runner, same machine), same split, same pipeline: equal up to float rounding.
    for (let l = 0; l < 5; l++) {
      expect(b.rel_error.key_per_layer[l]).toBeCloseTo(a.rel_error.key_per_layer[l], 5);
      expect(b.rel_error.value_per_layer[l]).toBeCloseTo(a.rel_error.value_per_layer[l], 5);
    }
    expect(Math.abs(b.ratio_compressed / a.ratio_compressed - 1)).toBeLessThan(1e-3);
    expect(Math.abs(b.ratio_compressed / 8 - 1)).toBeLessThan(0.1);
    // The RoPE data check ran on the dump's keys (they come with input_ids).
    expect(fromDump.rope_check.checked).toBe(true);
  });

  it('writes a format-3 profile with the dump fingerprint and the split it used', async () => {
    const p = await readProfile(outDump);
    const m = p.manifest;
    expect(m.format_version).toBe(3);
    expect(m.model.fingerprint.source).toBe('kv-dump');
    expect(m.model.fingerprint.onnx_sha256).toBeUndefined();
    const manifest = JSON.parse(readFileSync(join(dump, 'kvtc-dump.json'), 'utf8'));
    const { name: _n, ...modelNoName } = manifest.model;
    expect(m.model.fingerprint.spec_sha256).toBe(sha256(canonicalJson(modelNoName)));
    expect(m.model.fingerprint.id).toBe(sha256(`kv-dump:${m.model.fingerprint.spec_sha256}\n`).slice(0, 16));
    // Whole model, every layer cached: no cache_layers or shard.
    expect(m.model.cache_layers).toBeUndefined();
    expect(m.shard).toBeUndefined();
    const names = m.calibration.sources.map((s) => s.name);
    const split = fromDump.ranks[0].split;
    expect(names).toEqual([
      ...split.fit.map((f) => `fit:${f}`),
      ...split.tuning.map((f) => `tuning:${f}`),
      ...split.report.map((f) => `report:${f}`),
    ]);
    const first = m.calibration.sources[0];
    expect(first.sha256).toBe(sha256(readFileSync(join(dump, split.fit[0]))));
    expect(m.calibration.tokens_fit).toBe(fromDump.tokens);
    expect(m.settings.seed).toBe(0);
    // The plans equal the model path's (same data): the same bits per token.
    expect(fromDump.profiles[0].bits_per_token).toBe(fromModel.profiles[0].bits_per_token);
  });

  it('the CLI: --kv with --json, and a re-run keeps the identical profile', async () => {
    const r = await kvtc(
      'calibrate',
      '--kv',
      dump,
      '--out',
      outDump,
      '--ratio',
      '8',
      '--tokens',
      '2048',
      '--tuning-tokens',
      '1024',
      '--report-tokens',
      '1024',
      '--sink',
      '4',
      '--window',
      '128',
      '--grouping',
      'layer',
      '--json',
      '--quiet',
    );
    expect(r.code, r.stderr).toBe(0);
    const j = JSON.parse(r.stdout);
    expect(j.kv).toBe(dump);
    expect(j.profiles[0].unchanged).toBe(true);
    expect(j.profiles[0].profile_id).toBe(fromDump.profiles[0].profile_id);
    expect(j.ranks[0].split.fit.length).toBe(4);
  });

  it('a BF16 dump is read as float32 (kv_dtype float32)', async () => {
    const root = tempDir('kvtc-kvdump-bf16-');
    const d = await openKvDump(dump);
    const model: DumpModelInfo = { layers: 5, heads: 8, kvHeads: 4, headDim: 8, maxPositions: 512, rope: d.model.spec.rope };
    writeDump(join(root, 'bf16'), model, seqs, { dtype: 'bfloat16' });
    const b = await openKvDump(join(root, 'bf16'));
    expect(b.model.spec.kvDtype).toBe('float32');
    const r = await readDumpSequence(b, b.sequences[0]);
    // bfloat16 keeps 8 bits of mantissa: within 2^-8 relative of the float32 capture.
    const k = seqs[0].cache.keys[2];
    for (let i = 0; i < k.length; i += 97)
      expect(Math.abs(r.cache.keys[2][i] - k[i])).toBeLessThanOrEqual(Math.abs(k[i]) * 2 ** -8 + 1e-30);
    // The fingerprint follows the model description, dtype included.
    expect(b.model.fingerprint.id).not.toBe(d.model.fingerprint.id);
  });

  it('two-level, the dump parks its held-out caches on disk as calibrate does: the same figures, nothing left behind', async () => {
    const spillRoot = tempDir('kvtc-kvdump-spill-');
    const before = process.env.KVTC_SPILL_DIR;
    process.env.KVTC_SPILL_DIR = spillRoot;
    try {
      const root = tempDir('kvtc-kvdump-two-');
      const two = { ...SETTINGS, grouping: 'all' as const, covarianceBudget: 1 };
      const m = await calibrate({ modelDir: DEFAULT_MODEL_DIR, data: [TEXT], ...two, out: join(root, 'model') });
      const d = await calibrateKv({ kv: dump, ...two, out: join(root, 'dump') });
      expect(m.groupings_sketched).toEqual(['all']);
      expect(d.groupings_sketched).toEqual(['all']);
      expect(d.memory_estimate!.peak).toBeGreaterThan(0);
      expect(d.memory_estimate!.peak).toBe(Math.max(d.memory_estimate!.capture, d.memory_estimate!.fit, d.memory_estimate!.report));
      const a = m.profiles[0];
      const b = d.profiles[0];
      for (let l = 0; l < 5; l++) {
        expect(b.rel_error.key_per_layer[l]).toBeCloseTo(a.rel_error.key_per_layer[l], 5);
        expect(b.rel_error.value_per_layer[l]).toBeCloseTo(a.rel_error.value_per_layer[l], 5);
      }
      expect(Math.abs(b.ratio_compressed / a.ratio_compressed - 1)).toBeLessThan(1e-3);
      expect(readdirSync(spillRoot)).toEqual([]);
    } finally {
      if (before === undefined) delete process.env.KVTC_SPILL_DIR;
      else process.env.KVTC_SPILL_DIR = before;
    }
  });

  it('refuses a --memory budget too small before reading any file, writing nothing', async () => {
    const out = join(tempDir('kvtc-kvdump-mem-'), 'p');
    const stages: string[] = [];
    await expect(
      calibrateKv({ kv: dump, ...SETTINGS, out, memory: 2 ** 20, onProgress: (e) => stages.push(e.stage) }),
    ).rejects.toMatchObject({ code: 'USAGE', message: expect.stringMatching(/more than the --memory budget of 0\.00 GiB/) });
    expect(stages).toEqual(['reading the KV dump']);
    expect(existsSync(out)).toBe(false);
  });

  it('refuses an output holding a profile of another model without --force', async () => {
    const root = tempDir('kvtc-kvdump-other-');
    const other = join(root, 'dump');
    // The same caches under another model description (more positions): another fingerprint.
    const d = await openKvDump(dump);
    writeDump(other, { layers: 5, heads: 8, kvHeads: 4, headDim: 8, maxPositions: 1024, rope: d.model.spec.rope }, seqs.slice(0, 8));
    const r = await kvtc('calibrate', '--kv', other, '--out', outDump, '--ratio', '8', '--quiet');
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/already holds a kvtc profile of another model/);
    expect(existsSync(join(outDump, 'kvtc-profile.json'))).toBe(true);
  });
});
