import { spawnSync } from 'node:child_process';
import { existsSync, readFileSync, rmSync, truncateSync, writeFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { openKvDump, readDumpSequence } from '../../src/calibrate/kv-dump.js';
import { parseShards } from '../../src/calibrate/kv-shards.js';
import { exitCodeFor } from '../../src/cli/exit-codes.js';
import { KvtcError } from '../../src/errors.js';
import type { KvCache } from '../../src/model/types.js';
import { rng } from '../codec/rng.js';
import { kvtc, tempDir } from '../model/helpers.js';
import { dumpManifest, i64, seqFileName, sequenceFile, writeDump, type DumpModelInfo, type DumpSeq } from './kv-dump-helpers.js';
import { parseSafetensors, serializeSafetensors } from '../../src/io/safetensors.js';
import { codecFromProfile } from '../../src/profile/codec-from-profile.js';
import { readProfile } from '../../src/profile/read.js';

const MODEL: DumpModelInfo = {
  layers: 2,
  heads: 4,
  kvHeads: 2,
  headDim: 8,
  maxPositions: 4096,
  rope: [
    { theta: 10000, rotaryDim: 8, layout: 'half' },
    { theta: 10000, rotaryDim: 8, layout: 'half' },
  ],
};

function seq(tokens: number, start: number, seed: number): DumpSeq {
  const { normal } = rng(seed);
  const a = () => Float32Array.from({ length: 2 * tokens * 8 }, normal);
  const cache: KvCache = {
    layers: 2,
    kvHeads: 2,
    headDim: 8,
    tokens,
    dtype: 'float32',
    keys: [a(), a()],
    values: [a(), a()],
    startPosition: start,
  };
  // No input_ids: random keys are no model's, so the RoPE data check must not run on them.
  return { cache };
}

/** A small valid dump: 6 sequences of 300 tokens. */
function makeDump(): { dir: string; seqs: DumpSeq[] } {
  const dir = join(tempDir('kvtc-kvdump-bad-'), 'dump');
  const seqs = Array.from({ length: 6 }, (_, i) => seq(300, i === 5 ? 100 : 0, i + 1));
  writeDump(dir, MODEL, seqs);
  return { dir, seqs };
}

function editManifest(dir: string, edit: (m: Record<string, any>) => void): void {
  const p = join(dir, 'kvtc-dump.json');
  const m = JSON.parse(readFileSync(p, 'utf8'));
  edit(m);
  writeFileSync(p, JSON.stringify(m));
}

/** Rewrites one sequence file with its tensors edited. */
function editFile(dir: string, i: number, edit: (t: Map<string, any>, meta: Record<string, string>) => void): void {
  const p = join(dir, seqFileName(i));
  const f = parseSafetensors(new Uint8Array(readFileSync(p)));
  const tensors = new Map([...f.tensors].map(([k, v]) => [k, { ...v, data: v.data.slice() }]));
  const meta = { ...f.metadata };
  edit(tensors, meta);
  writeFileSync(p, serializeSafetensors(tensors, meta));
}

async function failure(f: () => Promise<unknown>): Promise<KvtcError> {
  try {
    await f();
  } catch (e) {
    if (e instanceof KvtcError) return e;
    throw e;
  }
  throw new Error('expected a KvtcError');
}

async function readAll(dir: string): Promise<void> {
  const d = await openKvDump(dir);
  for (const s of d.sequences) await readDumpSequence(d, s);
}

/** calibrate --kv options: ratio 8, sink 4, window 16, and these token counts and grouping. */
function calArgs(tokens: number, tuning: number, report: number, grouping: string): string[] {
  return [
    '--ratio',
    '8',
    '--tokens',
    `${tokens}`,
    '--tuning-tokens',
    `${tuning}`,
    '--report-tokens',
    `${report}`,
    '--sink',
    '4',
    '--window',
    '16',
    '--grouping',
    grouping,
  ];
}

const CAL = [...calArgs(512, 256, 256, 'layer'), '--quiet'];

/**
 * A dump of 2 layers × `kvHeads` KV heads × 128 (all-layer bases of 256·kvHeads features): `n`
 * sequences of 300 tokens, Gaussian features scaled by `scale` (of the feature's index in a layer).
 */
function wideDump(kvHeads: number, n: number, seed: number, scale: (feature: number) => number): string {
  const model: DumpModelInfo = {
    ...MODEL,
    kvHeads,
    headDim: 128,
    rope: MODEL.rope.map(() => ({ theta: 10000, rotaryDim: 128, layout: 'half' as const })),
  };
  const dir = join(tempDir('kvtc-kvdump-wide-'), 'dump');
  const { normal } = rng(seed);
  const s = Float32Array.from({ length: kvHeads * 128 }, (_, f) => scale(f));
  const seqs: DumpSeq[] = Array.from({ length: n }, () => {
    // [kvHeads, tokens, 128]: head h's feature d is h·128 + d.
    const a = () =>
      Float32Array.from({ length: kvHeads * 300 * 128 }, (_, i) => s[Math.floor(i / (300 * 128)) * 128 + (i % 128)] * normal());
    return {
      cache: { layers: 2, kvHeads, headDim: 128, tokens: 300, dtype: 'float32', keys: [a(), a()], values: [a(), a()], startPosition: 0 },
    };
  });
  writeDump(dir, model, seqs);
  return dir;
}

describe('bad KV dumps: each a named error with its exit code', () => {
  it('the valid dump reads', async () => {
    const { dir } = makeDump();
    await readAll(dir);
  });

  const cases: { name: string; make: (dir: string) => void; code: string; message: RegExp }[] = [
    {
      name: 'a missing sequence file',
      make: (d) => rmSync(join(d, seqFileName(2))),
      code: 'KV_INVALID',
      message: /seq-000002\.safetensors: missing: .*sequences\[2\]/,
    },
    {
      name: 'a tensor of the wrong shape',
      make: (d) =>
        editFile(d, 1, (t) => t.set('present.1.value', { dtype: 'F32', shape: [1, 2, 300, 4], data: new Uint8Array(2 * 300 * 4 * 4) })),
      code: 'KV_INVALID',
      message: /seq-000001\.safetensors: tensor present\.1\.value: shape \[1, 2, 300, 4\], expected \[1, 2, 300, 8\]/,
    },
    {
      name: 'a NaN',
      make: (d) =>
        editFile(d, 3, (t) => {
          const e = t.get('present.0.key');
          new DataView(e.data.buffer, e.data.byteOffset).setFloat32(4 * (8 * 300 + 8 * 5 + 2), NaN, true);
        }),
      code: 'KV_INVALID',
      message: /seq-000003\.safetensors: tensor present\.0\.key: value NaN at head 1, token 5, dim 2/,
    },
    {
      name: 'positions with a gap',
      make: (d) => editFile(d, 0, (t) => t.set('positions', i64(Array.from({ length: 300 }, (_, i) => (i < 100 ? i : i + 1))))),
      code: 'KV_INVALID',
      message: /seq-000000\.safetensors: tensor positions: token 100 is at position 101, expected 100/,
    },
    {
      name: 'positions that do not start at start_position',
      make: (d) => editManifest(d, (m) => (m.sequences[5].start_position = 0)),
      code: 'KV_INVALID',
      message: /seq-000005\.safetensors: tensor positions: token 0 is at position 100, expected 0/,
    },
    {
      name: 'an inv_freq kvtc does not compute from the description',
      make: (d) => editManifest(d, (m) => (m.model.rope[1].inv_freq[2] *= 1.001)),
      code: 'ROPE_MISMATCH',
      message: /model\.rope\[1\] \(model layer 1\) describes RoPE whose inverse frequency 2/,
    },
    {
      name: 'a theta that does not give the inv_freq',
      make: (d) => editManifest(d, (m) => (m.model.rope[0].theta = 500000)),
      code: 'ROPE_MISMATCH',
      message: /model layer 0/,
    },
    {
      name: 'an unknown field',
      make: (d) => editManifest(d, (m) => (m.model.rope_thta = 1)),
      code: 'KV_INVALID',
      message: /kvtc-dump\.json: model: unknown field rope_thta/,
    },
    {
      name: 'a repeated key',
      make: (d) =>
        writeFileSync(
          join(d, 'kvtc-dump.json'),
          readFileSync(join(d, 'kvtc-dump.json'), 'utf8').replace(
            '"format": "kvtc-kv-dump",',
            '"format": "kvtc-kv-dump", "format": "kvtc-kv-dump",',
          ),
        ),
      code: 'KV_INVALID',
      message: /repeats the key format/,
    },
    {
      name: 'a truncated safetensors file',
      make: (d) => truncateSync(join(d, seqFileName(4)), statSync(join(d, seqFileName(4))).size - 100),
      code: 'SAFETENSORS_INVALID',
      message: /seq-000004\.safetensors: tensor "[a-z_.0-9]+" data_offsets .* fall outside/,
    },
    {
      name: 'an extra tensor',
      make: (d) => editFile(d, 2, (t) => t.set('present.7.key', { dtype: 'F32', shape: [1], data: new Uint8Array(4) })),
      code: 'KV_INVALID',
      message: /seq-000002\.safetensors: unexpected tensor present\.7\.key/,
    },
    {
      name: 'the wrong dtype',
      make: (d) => editManifest(d, (m) => (m.model.dtype = 'float16')),
      code: 'KV_INVALID',
      message: /tensor present\.0\.key: dtype F32, but model\.dtype float16 needs F16/,
    },
    {
      name: 'a token count the file does not have',
      make: (d) => editManifest(d, (m) => (m.sequences[0].tokens = 299)),
      code: 'KV_INVALID',
      message: /seq-000000\.safetensors: tensor present\.0\.key: shape \[1, 2, 300, 8\], expected \[1, 2, 299, 8\]/,
    },
    {
      name: 'file metadata that disagrees with the manifest',
      make: (d) => editFile(d, 5, (_t, meta) => (meta.start_position = '0')),
      code: 'KV_INVALID',
      message: /seq-000005\.safetensors: __metadata__ start_position is "0", but kvtc-dump\.json says 100/,
    },
    {
      name: 'input_ids that are not I64',
      make: (d) => editFile(d, 1, (t) => t.set('input_ids', { dtype: 'I32', shape: [300], data: new Uint8Array(1200) })),
      code: 'KV_INVALID',
      message: /seq-000001\.safetensors: tensor input_ids: dtype I32, expected I64/,
    },
    {
      name: 'a file name with a path',
      make: (d) => editManifest(d, (m) => (m.sequences[0].file = '../x.safetensors')),
      code: 'KV_INVALID',
      message: /sequences\[0\]\.file: must be a file name in the dump directory/,
    },
    {
      name: 'a sequence past max_positions',
      make: (d) => editManifest(d, (m) => (m.model.max_positions = 350)),
      code: 'KV_INVALID',
      message: /sequences\[5\] \(seq-000005\.safetensors\) ends at position 400, past model\.max_positions 350/,
    },
  ];

  for (const c of cases) {
    it(`${c.name}: ${c.code}, exit 1`, async () => {
      const { dir } = makeDump();
      c.make(dir);
      const e = await failure(() => readAll(dir));
      expect(e.code).toBe(c.code);
      expect(e.message).toMatch(c.message);
      expect(e.fix).toBeTruthy();
      expect(exitCodeFor(e)).toBe(1);
    });
  }

  it('through the CLI: a missing file stops calibration before anything is written (exit 1)', async () => {
    const { dir } = makeDump();
    rmSync(join(dir, seqFileName(4)));
    const out = join(tempDir('kvtc-kvdump-out-'), 'p');
    const r = await kvtc('calibrate', '--kv', dir, '--out', out, ...CAL);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/seq-000004\.safetensors: missing/);
    expect(r.stderr).toMatch(/Copy the whole dump directory/);
  });

  it('through the CLI: an Infinity stops calibration with nothing written (exit 1)', async () => {
    const { dir } = makeDump();
    for (let i = 0; i < 6; i++)
      editFile(dir, i, (t) => {
        const e = t.get('present.1.value');
        new DataView(e.data.buffer, e.data.byteOffset).setFloat32(0, Infinity, true);
      });
    const out = join(tempDir('kvtc-kvdump-out-'), 'p');
    const r = await kvtc('calibrate', '--kv', dir, '--out', out, ...CAL);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/tensor present\.1\.value: value Infinity at head 0, token 0, dim 0/);
    expect(() => statSync(out)).toThrow();
  });

  it('the valid dump calibrates through the CLI (exit 0); without input_ids the RoPE data check says why it did not run', async () => {
    const { dir } = makeDump();
    const out = join(tempDir('kvtc-kvdump-out-'), 'p');
    const r = await kvtc('calibrate', '--kv', dir, '--out', out, ...CAL, '--json');
    expect(r.code, r.stderr).toBe(0);
    const j = JSON.parse(r.stdout);
    expect(j.ranks[0].split.tuning.length).toBe(1);
    expect(j.ranks[0].split.report.length).toBe(1);
    expect(j.ranks[0].split.fit.length).toBe(2);
    expect(j.rope_check.checked).toBe(false);
    expect(j.rope_check.reason).toMatch(/no input_ids/);
  });

  it('--tokens below the widest basis: the fit runs on what was asked for and warns (stderr and --json) that the basis is underdetermined', async () => {
    // 2 layers × 2 KV heads × 128: the all-layer bases have 512 features; one 300-token fit sequence gives 296 vectors past the sink.
    const dir = wideDump(2, 4, 5, () => 1);
    const args = calArgs(256, 256, 256, 'all');
    const out = join(tempDir('kvtc-kvdump-out-'), 'p');
    let r = await kvtc('calibrate', '--kv', dir, '--out', out, ...args, '--quiet');
    expect(r.code, r.stderr).toBe(0);
    expect(r.stderr).toMatch(
      /warning: the all-layer key and value bases have 512 features but the fit has 296 feature vectors: at most 295 of their components carry fit variance.*at least 1,024 tokens \(dump more sequences/,
    );
    r = await kvtc('calibrate', '--kv', dir, '--out', out, ...args, '--json', '--force');
    expect(r.code, r.stderr).toBe(0);
    const j = JSON.parse(r.stdout);
    expect(j.tokens).toBe(300);
    expect(j.warnings).toHaveLength(1);
    expect(j.warnings[0]).toMatch(/512 features but the fit has 296 feature vectors/);
    // 512 features: under the external eigensolver's size, so auto never asked Python.
    expect(j.eigensolver).toMatch(/^builtin/);
  });

  it.runIf(spawnSync('python3', ['-c', 'import numpy'], { stdio: 'ignore' }).status === 0)(
    '--eigensolver numpy fits bases of 1,024 features in Python, says so, and measures what kvtc’s own solver does',
    async () => {
      // 2 layers × 4 KV heads × 128, features of decaying scale (distinct variances): all-layer bases of 1,024.
      const dir = wideDump(4, 12, 11, (f) => (f + 1) ** -0.7);
      const args = [...calArgs(2400, 600, 300, 'all'), '--json', '--quiet'];
      const run = async (solver: string) => {
        const r = await kvtc('calibrate', '--kv', dir, '--out', join(tempDir('kvtc-kvdump-out-'), 'p'), ...args, '--eigensolver', solver);
        expect(r.code, r.stderr).toBe(0);
        return JSON.parse(r.stdout);
      };
      const np = await run('numpy');
      const own = await run('builtin');
      expect(np.eigensolver).toMatch(/^numpy \d.* \(LAPACK dsyevd\)$/);
      expect(own.eigensolver).toMatch(/^builtin/);
      // The same subspaces up to rounding and sampling: the same figures within 2%.
      expect(Math.abs(np.ratio_compressed / own.ratio_compressed - 1)).toBeLessThan(0.02);
      expect(Math.abs(np.rel_error.key / own.rel_error.key - 1)).toBeLessThan(0.02);
      expect(Math.abs(np.rel_error.value / own.rel_error.value - 1)).toBeLessThan(0.02);
      // A Python without NumPy, asked for by name: an error before any work, nothing written.
      const out = join(tempDir('kvtc-kvdump-out-'), 'q');
      process.env.KVTC_PYTHON = '/nonexistent/python3';
      let bad: Awaited<ReturnType<typeof kvtc>>;
      try {
        bad = await kvtc('calibrate', '--kv', dir, '--out', out, ...args, '--eigensolver', 'numpy');
      } finally {
        delete process.env.KVTC_PYTHON;
      }
      expect(bad.code).toBe(1);
      expect(JSON.parse(bad.stdout).error).toMatchObject({
        code: 'DEVICE_UNAVAILABLE',
        message: expect.stringMatching(/--eigensolver numpy: \/nonexistent\/python3 could not be run/),
      });
      expect(existsSync(out)).toBe(false);
    },
    120_000,
  );

  it('usage errors exit 2: --kv with --model or --data, --shards without --kv or malformed', async () => {
    const { dir } = makeDump();
    let r = await kvtc('calibrate', '--kv', dir, '--model', dir, '--quiet');
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/--kv cannot be combined with --model/);
    r = await kvtc('calibrate', '--kv', dir, '--data', dir, '--quiet');
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/--kv cannot be combined with --data/);
    r = await kvtc('calibrate', '--shards', 'tp=2', '--quiet');
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/--shards applies only to --kv/);
    r = await kvtc('calibrate', '--kv', dir, '--shards', 'tp=2,dp=2', '--quiet');
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/--shards "tp=2,dp=2" is not of the form tp=T,pp=P/);
    r = await kvtc('calibrate', '--kv', dir, '--shards', 'tp=3', '--quiet');
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/tp=3 does not divide the model's 2 KV heads/);
    expect(parseShards('pp=3')).toEqual({ tp: 1, pp: 3 });
  });

  it('a directory without a dump, and too few tokens, are input errors (exit 1)', async () => {
    const empty = tempDir('kvtc-kvdump-empty-');
    let r = await kvtc('calibrate', '--kv', empty, '--quiet');
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/holds neither kvtc-dump\.json nor tp_<t>_pp_<p>\/ rank dumps/);
    const { dir } = makeDump();
    r = await kvtc('calibrate', '--kv', dir, ...CAL.filter((x) => x !== '--quiet'), '--tuning-tokens', '1500', '--quiet');
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/NOT_ENOUGH_TOKENS|left to fit/);
  });

  it('an MLA latent cache of a hybrid model (value_head_dim ≠ head_dim, cache layers 0 and 2 of 3) calibrates to a format-3 profile that decodes it', async () => {
    const dir = join(tempDir('kvtc-kvdump-mla-'), 'dump');
    // A latent of rank ~4 in 16 dims (one subspace for every sequence), so PCA has something to find.
    const basis = Float32Array.from({ length: 4 * 16 }, rng(99).normal);
    const seqs: DumpSeq[] = Array.from({ length: 6 }, (_, i) => {
      const { normal } = rng(100 + i);
      const latent = () => {
        const out = new Float32Array(300 * 16);
        for (let t = 0; t < 300; t++) {
          const z = [normal(), normal(), normal(), normal()];
          for (let d = 0; d < 16; d++) out[t * 16 + d] = z.reduce((a, zk, k) => a + zk * basis[k * 16 + d], 0) + 0.01 * normal();
        }
        return out;
      };
      const key = () => Float32Array.from({ length: 300 * 8 }, normal);
      return {
        cache: {
          layers: 2,
          kvHeads: 1,
          headDim: 8,
          valueDim: 16,
          tokens: 300,
          dtype: 'float32',
          keys: [key(), key()],
          values: [latent(), latent()],
          startPosition: 0,
        },
      };
    });
    const model: DumpModelInfo = {
      layers: 3,
      heads: 4,
      kvHeads: 1,
      headDim: 8,
      maxPositions: 4096,
      rope: [MODEL.rope[0], null, MODEL.rope[0]],
    };
    writeDump(dir, model, seqs, { fileLayers: [0, 2] });
    editManifest(dir, (m) => {
      m.model.family = 'deepseek_v3';
      m.model.architecture = 'DeepseekV3ForCausalLM';
      m.model.cache = 'mla-latent';
      m.model.value_head_dim = 16;
      m.model.cache_layers = [0, 2];
      m.model.layer_kinds = ['full_attention', 'linear_attention', 'full_attention'];
    });
    const out = join(tempDir('kvtc-kvdump-out-'), 'p');
    const r = await kvtc('calibrate', '--kv', dir, '--out', out, ...CAL, '--json');
    expect(r.code, r.stderr).toBe(0);
    const profile = await readProfile(out);
    const md = profile.manifest.model;
    expect(profile.manifest.format_version).toBe(3);
    expect([md.family, md.cache, md.value_head_dim, md.kv_heads, md.layers, md.model_layers, md.cache_layers]).toEqual([
      'deepseek_v3',
      'mla-latent',
      16,
      1,
      2,
      3,
      [0, 2],
    ]);
    // The profile's codec takes the dump's cache as it is and gives back the latent closely.
    const codec = await codecFromProfile(profile);
    const d = await openKvDump(dir);
    const j = JSON.parse(r.stdout);
    const report = d.sequences.find((q) => q.file === j.ranks[0].split.report[0])!;
    const x = (await readDumpSequence(d, report)).cache;
    const y = (await codec.decode((await codec.encode(x)).blob)).cache;
    await codec.release();
    expect(y.valueDim).toBe(16);
    const err = (a: Float32Array, b: Float32Array) =>
      Math.sqrt(a.reduce((s, v, i) => s + (v - b[i]) ** 2, 0) / b.reduce((s, v) => s + v * v, 0));
    // The report sequence's error is the one the profile measured, up to how measure and the codec differ.
    const measured = j.profiles[0].rel_error.value_per_layer[1] as number;
    expect(measured).toBeLessThan(0.1);
    expect(err(y.values[1].subarray(4 * 16, 284 * 16), x.values[1].subarray(4 * 16, 284 * 16))).toBeLessThan(2 * measured + 0.02);
  });

  it('the manifest the helper writes is what docs/kv-dumps.md §2 lists', () => {
    const m = dumpManifest(MODEL, [seq(10, 0, 1)]);
    expect(Object.keys(m).sort()).toEqual(['format', 'format_version', 'model', 'producer', 'sequences']);
    expect(Object.keys(m.model as object).sort()).toEqual(
      [
        'architecture',
        'cache',
        'cache_layers',
        'dtype',
        'family',
        'head_dim',
        'heads',
        'kv_heads',
        'layer_kinds',
        'layers',
        'max_positions',
        'name',
        'rope',
      ].sort(),
    );
    expect(sequenceFile(seq(10, 0, 1), [0, 1]).byteLength).toBeGreaterThan(0);
  });
});
