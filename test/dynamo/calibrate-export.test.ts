/**
 * End to end on the bundled model: a dynamo calibration (small: blocks of 4 tokens, 2048 fit and
 * 1024 held-out tokens), `kvtc export --format dynamo`, and the acceptance check — the exported
 * files alone, loaded as the Dynamo side would and run through the emulated kernels, reproduce
 * the error and ratio kvtc reported for that profile. Then bad input: typed errors.
 */
import { copyFileSync, existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import calibrateCommand from '../../src/cli/commands/calibrate.js';
import calibrateDynamoCommand from '../../src/cli/commands/calibrate-dynamo.js';
import exportCommand from '../../src/cli/commands/export.js';
import { memoryIO } from '../../src/cli/io.js';
import { fullBlocks, gatherBlockRows } from '../../src/dynamo/blocks.js';
import { selectSequences, sequenceLength } from '../../src/dynamo/calibrate-dynamo.js';
import { dynamoCodec } from '../../src/dynamo/dynamo-codec.js';
import { exportDynamo, loadDynamoExport } from '../../src/dynamo/export.js';
import { compressedSize, kvtcCompress, kvtcDecompress } from '../../src/dynamo/kernels.js';
import { readDynamoProfile } from '../../src/dynamo/profile.js';
import { EXPORT_CONFIG_FILE, EXPORT_TENSORS_FILE } from '../../src/dynamo/schema.js';
import { isKvtcError, type KvtcError } from '../../src/errors.js';
import { loadModel } from '../../src/model/load.js';
import { ModelRunner } from '../../src/model/runner.js';
import type { KvCache } from '../../src/model/types.js';
import { DEFAULT_CALIBRATION_DIR, DEFAULT_MODEL_DIR, DEFAULT_PROFILES_DIR } from '../../src/paths.js';
import { kvtc, tempDir } from '../model/helpers.js';

const B = 4;
const SETTINGS = { tokens: 2048, heldout: 1024, seed: 0 };

async function rejects(p: Promise<unknown> | (() => unknown), code: string, match?: RegExp): Promise<KvtcError> {
  try {
    await (typeof p === 'function' ? p() : p);
  } catch (e) {
    expect(isKvtcError(e), String(e)).toBe(true);
    expect((e as KvtcError).code, (e as Error).message).toBe(code);
    if (match) expect((e as Error).message).toMatch(match);
    return e as KvtcError;
  }
  throw new Error(`expected a ${code} error`);
}

describe('dynamo calibration of the bundled model, export, and the exported files through the emulated kernels', () => {
  let root: string;
  let profileDir: string;
  let exportDir: string;
  let reported: {
    ratio_rows: number;
    ratio_calls: number;
    rel_error: { key_per_layer: number[]; value_per_layer: number[] };
    bytes_per_block: number;
  };
  let held: KvCache[];

  beforeAll(async () => {
    root = tempDir('kvtc-dynamo-');
    profileDir = join(root, 'profile');
    exportDir = join(root, 'export');
    const io = memoryIO();
    await calibrateDynamoCommand(
      {
        target: 'dynamo',
        model: 'the bundled stories260K',
        ratio: ['8'],
        tokens: String(SETTINGS.tokens),
        tuningTokens: String(SETTINGS.heldout),
        blockTokens: String(B),
        chunk: '256',
        seed: '0',
        device: 'cpu',
        out: profileDir,
        json: true,
        quiet: true,
      },
      io,
    );
    const out = JSON.parse(io.stdout.join('\n'));
    expect(out.target).toBe('dynamo');
    expect(out.block_tokens).toBe(B);
    reported = out.profiles[0];
    // the held-out caches the calibration measured on: same text selection, split and prefill
    const model = await loadModel(DEFAULT_MODEL_DIR);
    try {
      const { split } = await selectSequences(model.tokenizer, [DEFAULT_CALIBRATION_DIR], {
        seqLen: sequenceLength(model.spec.maxPositions, B),
        ...SETTINGS,
        blockTokens: B,
      });
      const runner = new ModelRunner(model);
      held = [];
      for (const ids of split.heldout) held.push((await runner.prefill(ids, { chunk: 256 })).cache);
    } finally {
      await model.session.release();
    }
  });

  it('writes a validated dynamo profile whose ratio is on target', async () => {
    const p = await readDynamoProfile(profileDir);
    expect(p.manifest.block).toEqual({ tokens_per_block: B, layout: 'NHD', features: 4 * 8 * B, fp8_path: 'sm89' });
    expect(p.bases).toHaveLength(10);
    expect(reported.ratio_rows).toBeGreaterThanOrEqual(8);
    expect(reported.ratio_rows).toBeLessThan(8 * 1.03);
    for (const b of p.bases) {
      expect(b.bytes_per_block).toBeLessThanOrEqual(b.budget_bytes);
      expect(b.budget_bytes).toBe(Math.floor((2 * b.features) / 8));
    }
  });

  it('kvtc export --format dynamo writes safetensors + ranges JSON (kernel field names) + README with a loading snippet', async () => {
    const r = await kvtc('export', '--format', 'dynamo', profileDir, '--out', exportDir, '--json');
    expect(r.code, r.stderr).toBe(0);
    expect(JSON.parse(r.stdout).configs).toBe(10);
    const doc = JSON.parse(readFileSync(join(exportDir, EXPORT_CONFIG_FILE), 'utf8'));
    expect(Object.keys(doc.configs[0].ranges[0]).sort()).toEqual(['end_idx', 'int_bits', 'quant_type', 'start_idx']);
    expect(doc.configs[0].ranges.every((x: { quant_type: string }) => ['Fp8', 'IntX'].includes(x.quant_type))).toBe(true);
    expect(doc.features).toBe(doc.num_kv_heads * doc.head_dim * doc.tokens_per_block);
    const readme = readFileSync(join(exportDir, 'README.md'), 'utf8');
    expect(readme).toContain('KvtcConfig::new(');
    expect(readme).toContain('KvtcTypeRange {');
    // exporting again without --force is refused, with it replaced
    expect((await kvtc('export', '--format', 'dynamo', profileDir, '--out', exportDir)).code).toBe(1);
    expect((await kvtc('export', '--format', 'dynamo', profileDir, '--out', exportDir, '--force')).code).toBe(0);
  });

  it('ACCEPTANCE: the export, run through the emulated kernels, reproduces the error and ratio kvtc reported', async () => {
    const { doc, setup } = await loadDynamoExport(exportDir, { tokensPerBlock: B });
    const L = doc.model.layers;
    const num = { key: new Float64Array(L), value: new Float64Array(L) };
    const den = { key: new Float64Array(L), value: new Float64Array(L) };
    let fp16 = 0;
    let rows = 0;
    let calls = 0;
    for (const cache of held) {
      const { first, count } = fullBlocks(cache, B);
      expect(count * B).toBe(cache.tokens);
      for (const b of setup.bases) {
        const x = gatherBlockRows(cache, b.kind, b.layer, setup.shape, first, count);
        const buf = kvtcCompress(x, b.config, count, setup.fp8Path);
        expect(buf.byteLength).toBe(compressedSize(b.config.ranges, count));
        const y = kvtcDecompress(buf, b.config, count, 'f32');
        for (let i = 0; i < x.length; i++) {
          num[b.kind][b.layer] += (y[i] - x[i]) ** 2;
          den[b.kind][b.layer] += x[i] ** 2;
        }
        fp16 += x.length * 2;
        calls += buf.byteLength;
        rows += buf.byteLength - 40 * b.config.ranges.length;
      }
    }
    for (const k of ['key', 'value'] as const) {
      const got = Array.from(num[k], (v, l) => Math.sqrt(v / den[k][l]));
      const want = k === 'key' ? reported.rel_error.key_per_layer : reported.rel_error.value_per_layer;
      const inManifest = k === 'key' ? doc.measured.rel_error.key : doc.measured.rel_error.value;
      for (let l = 0; l < L; l++) {
        expect(got[l]).toBeCloseTo(want[l], 12);
        expect(Math.abs(got[l] / inManifest[l] - 1)).toBeLessThan(1e-5); // 6 significant digits
      }
    }
    expect(fp16 / rows).toBeCloseTo(reported.ratio_rows, 12);
    expect(fp16 / calls).toBeCloseTo(reported.ratio_calls, 12);
  });

  it('kvtc evaluate --dynamo-profile scores the emulated kernels next to kvtc, paired, with their compressed share', async () => {
    const { kvtc } = await import('../model/helpers.js');
    const r = await kvtc(
      'evaluate',
      '--dynamo-profile',
      profileDir,
      '--subjects',
      'anatomy',
      '--limit',
      '3',
      '--long-context',
      '0',
      '--perplexity-tokens',
      '0',
      '--json',
      '--quiet',
    );
    expect(r.code, r.stderr).toBe(0);
    const doc = JSON.parse(r.stdout);
    expect(doc.settings.codecs.map((c: { name: string }) => c.name)).toEqual(['kvtc', 'dynamo', 'fp16', 'int8', 'int4', 'kivi2']);
    expect(doc.codecs.dynamo.n).toBe(3);
    expect(doc.codecs.dynamo.compressed_share).toBeGreaterThan(0.9); // Dynamo protects no sink or window
    const missing = await kvtc('evaluate', '--codec', 'dynamo', '--subjects', 'anatomy', '--limit', '1', '--quiet');
    expect(missing.code).toBe(2);
    expect(missing.stderr).toMatch(/--dynamo-profile/);
  });

  it('kvtc bench --dynamo-profile adds a measured "dynamo" ratio/error row next to kvtc\'s codec on the same cache', async () => {
    const { runBench } = await import('../../src/bench/run.js');
    const r = await runBench({
      modelDir: DEFAULT_MODEL_DIR,
      dynamoProfile: profileDir,
      tokens: 512,
      repeats: 1,
      contexts: [256],
      quick: true,
      device: 'cpu',
    });
    const rows = r.models[0].codecs;
    expect(rows.map((c) => c.name)).toEqual(['kvtc', 'dynamo', 'fp16', 'int8', 'int4', 'kivi2']);
    const d = rows[1];
    expect(d.ratio).toBeGreaterThan(4);
    expect(d.relError.key).toBeGreaterThan(0);
    expect(d.relError.key).toBeLessThan(1);
  });

  it("dynamoCodec (the evaluate/bench adapter) runs the same emulation and counts the kernels' bytes", async () => {
    const codec = dynamoCodec(await readDynamoProfile(profileDir));
    expect(codec.name).toBe('dynamo');
    // a cache with a partial last block (2 tokens short of whole blocks): those 2 tokens stay exact
    const T0 = held[0].tokens;
    const cut = (a: Float32Array) => {
      const out = new Float32Array(4 * (T0 - 2) * 8);
      for (let h = 0; h < 4; h++) out.set(a.subarray(h * T0 * 8, (h * T0 + T0 - 2) * 8), h * (T0 - 2) * 8);
      return out;
    };
    const partial: KvCache = { ...held[0], tokens: T0 - 2, keys: held[0].keys.map(cut), values: held[0].values.map(cut) };
    const rec = await codec.apply(partial);
    expect(rec.compressedTokens).toBe(Math.floor(partial.tokens / B) * B);
    const tail = partial.tokens - rec.compressedTokens;
    expect(tail).toBe(2);
    const T = partial.tokens;
    for (let h = 0; h < 4; h++) {
      for (let t = T - tail; t < T; t++) {
        for (let d = 0; d < 8; d++) expect(rec.cache.keys[0][(h * T + t) * 8 + d]).toBe(partial.keys[0][(h * T + t) * 8 + d]);
      }
    }
    expect(rec.bytes).toBe(rec.compressedBytes + tail * 5 * 2 * 4 * 8 * 2);
    expect(rec.cache.keys[0]).not.toBe(partial.keys[0]); // a copy, the input untouched
    await codec.release();
  });

  describe('bad input gives typed errors', () => {
    it('missing export, missing or corrupt files', async () => {
      await rejects(loadDynamoExport(join(root, 'nope')), 'PROFILE_INVALID', /does not exist/);
      const d = join(root, 'bad1');
      mkdirSync(d);
      await rejects(loadDynamoExport(d), 'PROFILE_INVALID', /no dynamo-kvtc\.json/);
      writeFileSync(join(d, EXPORT_CONFIG_FILE), '{"format": "kvtc-dynamo-export", ');
      await rejects(loadDynamoExport(d), 'PROFILE_INVALID', /not valid JSON/);
      writeFileSync(join(d, EXPORT_CONFIG_FILE), readFileSync(join(exportDir, EXPORT_CONFIG_FILE)));
      await rejects(loadDynamoExport(d), 'PROFILE_INVALID', /missing/);
      const st = readFileSync(join(exportDir, EXPORT_TENSORS_FILE));
      writeFileSync(join(d, EXPORT_TENSORS_FILE), st.subarray(0, st.length - 10));
      await rejects(loadDynamoExport(d), 'PROFILE_INVALID', /truncated/);
      const flipped = Buffer.from(st);
      flipped[flipped.length - 3] ^= 0x40;
      writeFileSync(join(d, EXPORT_TENSORS_FILE), flipped);
      await rejects(loadDynamoExport(d), 'PROFILE_INVALID', /sha256/);
    });

    it('wrong block size: a mismatching export, and a tampered tokens_per_block', async () => {
      await rejects(loadDynamoExport(exportDir, { tokensPerBlock: 16 }), 'PROFILE_MISMATCH', /tokens_per_block 4, expected 16/);
      const d = join(root, 'bad2');
      mkdirSync(d);
      copyFileSync(join(exportDir, EXPORT_TENSORS_FILE), join(d, EXPORT_TENSORS_FILE));
      const doc = JSON.parse(readFileSync(join(exportDir, EXPORT_CONFIG_FILE), 'utf8'));
      writeFileSync(join(d, EXPORT_CONFIG_FILE), JSON.stringify({ ...doc, tokens_per_block: 16 }));
      await rejects(loadDynamoExport(d), 'PROFILE_INVALID', /tokens_per_block/);
      // an IntX range whose width the kernels cannot pack
      const c0 = doc.configs.findIndex((c: { ranges: { quant_type: string }[] }) => c.ranges.some((r) => r.quant_type === 'IntX'));
      const bad = structuredClone(doc);
      const ri = bad.configs[c0].ranges.findIndex((r: { quant_type: string }) => r.quant_type === 'IntX');
      bad.configs[c0].ranges[ri].int_bits = 3;
      writeFileSync(join(d, EXPORT_CONFIG_FILE), JSON.stringify(bad));
      await rejects(loadDynamoExport(d), 'PROFILE_INVALID', /int_bits/);
      // absurd sizes are refused by the schema before anything is allocated
      writeFileSync(join(d, EXPORT_CONFIG_FILE), JSON.stringify({ ...doc, features: 2 ** 40 }));
      await rejects(loadDynamoExport(d), 'PROFILE_INVALID', /schema/);
    });

    it('a cache of another shape through the codec; a kvtc profile given to export', async () => {
      const codec = dynamoCodec(await readDynamoProfile(profileDir));
      const other: KvCache = { ...held[0], kvHeads: 2, keys: [], values: [] };
      await rejects(codec.apply(other), 'PROFILE_MISMATCH');
      await rejects(exportDynamo(join(DEFAULT_PROFILES_DIR, 'stories260k'), join(root, 'x')), 'PROFILE_INVALID', /kvtc profile/);
      await rejects(exportDynamo(join(root, 'no-such-profile'), join(root, 'x')), 'PROFILE_INVALID', /does not exist/);
    });

    it('a corrupt dynamo profile is refused at read time', async () => {
      const d = join(root, 'bad-profile');
      mkdirSync(d);
      for (const f of ['kvtc-dynamo.json', 'kvtc-dynamo.safetensors']) copyFileSync(join(profileDir, f), join(d, f));
      const m = JSON.parse(readFileSync(join(d, 'kvtc-dynamo.json'), 'utf8'));
      writeFileSync(join(d, 'kvtc-dynamo.json'), JSON.stringify({ ...m, block: { ...m.block, features: 999 } }));
      await rejects(readDynamoProfile(d), 'PROFILE_INVALID', /features/);
      writeFileSync(join(d, 'kvtc-dynamo.json'), JSON.stringify({ ...m, format_version: 99 }));
      await rejects(readDynamoProfile(d), 'PROFILE_VERSION');
      writeFileSync(join(d, 'kvtc-dynamo.json'), JSON.stringify({ ...m, bases: m.bases.slice(1) }));
      await rejects(readDynamoProfile(d), 'PROFILE_INVALID');
    });

    it('CLI options: --format, --block-tokens, kvtc-only flags, --target', async () => {
      const io = memoryIO();
      await rejects(
        exportCommand({ _: [profileDir], format: 'onnx', out: join(root, 'y'), _command: 'export' }, io),
        'USAGE',
        /--format "onnx": must be one of: dynamo/,
      );
      await rejects(exportCommand({ _: [], format: 'dynamo', out: join(root, 'y') }, io), 'USAGE');
      await rejects(
        calibrateDynamoCommand({ target: 'dynamo', model: 'the bundled stories260K', blockTokens: '0', out: join(root, 'z') }, io),
        'USAGE',
        /--block-tokens "0"/,
      );
      await rejects(
        calibrateDynamoCommand({ target: 'dynamo', model: 'the bundled stories260K', sink: '0', out: join(root, 'z') }, io),
        'USAGE',
        /--sink "0" does not apply/,
      );
      // Options are named as the user typed them (kebab-case), and kvtc-only defaults pass (commander fills them in).
      await rejects(
        calibrateDynamoCommand({ target: 'dynamo', model: 'the bundled stories260K', reportTokens: '512', out: join(root, 'z') }, io),
        'USAGE',
        /--report-tokens "512" does not apply/,
      );
      // Options of the kvtc target alone, which have no default to pass, are refused whatever their value.
      await rejects(
        calibrateDynamoCommand({ target: 'dynamo', model: 'the bundled stories260K', eigensolver: 'numpy', out: join(root, 'z') }, io),
        'USAGE',
        /--eigensolver applies only to --target kvtc/,
      );
      await rejects(
        calibrateDynamoCommand({ target: 'dynamo', model: 'the bundled stories260K', twoLevelRank: '4096', out: join(root, 'z') }, io),
        'USAGE',
        /--two-level-rank applies only to --target kvtc/,
      );
      await rejects(
        calibrateCommand({ model: 'the bundled stories260K', eigensolver: 'lapack', out: join(root, 'z') }, io),
        'USAGE',
        /--eigensolver .*must be one of: auto, builtin, numpy, torch/,
      );
      // The kvtc target refuses the dynamo-only flags; the CLI declaration routes --target dynamo
      // to the dynamo command (only it knows --block-tokens "0" is out of range).
      await rejects(
        calibrateCommand({ target: 'kvtc', model: 'the bundled stories260K', blockTokens: '16', out: join(root, 'z') }, io),
        'USAGE',
        /--block-tokens applies only to --target dynamo/,
      );
      await rejects(
        calibrateCommand({ target: 'kvtc', model: 'the bundled stories260K', fp8Cast: 'sm80', out: join(root, 'z') }, io),
        'USAGE',
        /--fp8-cast applies only to --target dynamo/,
      );
      const routed = await kvtc('calibrate', '--target', 'dynamo', '--block-tokens', '0', '--out', join(root, 'z'), '--json');
      expect(routed.code).toBe(2);
      expect(JSON.parse(routed.stdout).error.message).toMatch(/--block-tokens "0"/);
      const kvtcTarget = await kvtc('calibrate', '--block-tokens', '16', '--out', join(root, 'z'), '--json');
      expect(kvtcTarget.code).toBe(2);
      expect(JSON.parse(kvtcTarget.stdout).error.message).toMatch(/--block-tokens applies only to --target dynamo/);
      const other = await kvtc('calibrate', '--target', 'tensorrt', '--json');
      expect(other.code).toBe(2);
      expect(JSON.parse(other.stdout).error.message).toMatch(/Allowed choices are kvtc, dynamo/);
      expect(existsSync(join(root, 'z'))).toBe(false);
    });

    it('kvtc export --json: usage errors and failures are one JSON error document', async () => {
      const u = await kvtc('export', '--bogus', '--json');
      expect(u.code).toBe(2);
      expect(JSON.parse(u.stdout).error.code).toBe('USAGE');
      const f = await kvtc('export', '--format', 'dynamo', join(root, 'nothing-here'), '--out', join(root, 'v'), '--json');
      expect(f.code).toBe(1);
      expect(JSON.parse(f.stdout).error.code).toBe('PROFILE_INVALID');
      const g = await kvtc('export', '--format', 'tensorrt', profileDir, '--out', join(root, 'v'), '--json');
      expect(g.code).toBe(2);
      expect(JSON.parse(g.stdout).error.message).toMatch(/must be one of: dynamo/);
    });

    it("a block longer than the model's context", async () => {
      const io = memoryIO();
      await rejects(
        calibrateDynamoCommand({ target: 'dynamo', model: 'the bundled stories260K', blockTokens: '1024', out: join(root, 'w') }, io),
        'USAGE',
        /longer than the model's context/,
      );
    });
  });
});

describe('kvtc calibrate --target dynamo from the command line', () => {
  it("runs with commander's defaults for the kvtc-only options (grouping auto, report tokens) filled in", async () => {
    const { kvtc, tempDir } = await import('../model/helpers.js');
    const out = join(tempDir('kvtc-dyn-cli-'), 'p');
    const r = await kvtc('calibrate', '--target', 'dynamo', '--tokens', '2048', '--heldout', '512', '--out', out, '--json', '--quiet');
    expect(r.code, r.stderr).toBe(0);
    expect(JSON.parse(r.stdout).target).toBe('dynamo');
    expect(existsSync(out)).toBe(true);
  }, 120_000);
});
