// Cross-language check of docs/profile-format.md: the blob written by kvtc's TypeScript encoder
// is decoded by an independent Python + NumPy reader (scripts/kvtc_reference_decoder.py, written
// from the spec alone) and must match kvtc's own decode.
import { spawnSync } from 'node:child_process';
import { cpSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { crc32, inflateRawSync } from 'node:zlib';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadModel } from '../../src/model/load.js';
import { ModelRunner } from '../../src/model/runner.js';
import type { KvCache } from '../../src/model/types.js';
import { DEFAULT_MODEL_DIR, DEFAULT_PROFILES_DIR, WIKITEXT_TEST } from '../../src/paths.js';
import { codecFromProfile } from '../../src/profile/codec-from-profile.js';
import { computeProfileId, profileIdText } from '../../src/profile/id.js';
import { readProfile } from '../../src/profile/read.js';
import { createHash } from 'node:crypto';

const PROFILE = `${DEFAULT_PROFILES_DIR}/stories260k`;
const SCRIPT = join(dirname(fileURLToPath(import.meta.url)), '../../scripts/kvtc_reference_decoder.py');
const TOLERANCE = 1e-4;
const FIXTURES_V3 = join(dirname(fileURLToPath(import.meta.url)), '../../python/tests/fixtures');

type Codec = Awaited<ReturnType<typeof codecFromProfile>>;

let codec: Codec;
let cache: KvCache;
let dir: string;

/** Minimal .npz reader: a zip (stored or deflated members, found through the central directory) of .npy files. */
function readNpz(buf: Buffer): Map<string, { shape: number[]; data: Float32Array | BigInt64Array | Uint8Array }> {
  let eocd = -1;
  for (let i = buf.length - 22; i >= Math.max(0, buf.length - 22 - 65_535); i--) {
    if (buf.readUInt32LE(i) === 0x06054b50) {
      eocd = i;
      break;
    }
  }
  if (eocd < 0) throw new Error('npz: no end-of-central-directory record');
  const entries = buf.readUInt16LE(eocd + 10);
  let p = buf.readUInt32LE(eocd + 16);
  const out = new Map<string, { shape: number[]; data: Float32Array | BigInt64Array | Uint8Array }>();
  for (let e = 0; e < entries; e++) {
    if (buf.readUInt32LE(p) !== 0x02014b50) throw new Error('npz: bad central directory entry');
    const method = buf.readUInt16LE(p + 10);
    const csize = buf.readUInt32LE(p + 20);
    const nameLen = buf.readUInt16LE(p + 28);
    const extraLen = buf.readUInt16LE(p + 30);
    const commentLen = buf.readUInt16LE(p + 32);
    const local = buf.readUInt32LE(p + 42);
    const name = buf.subarray(p + 46, p + 46 + nameLen).toString('utf8');
    p += 46 + nameLen + extraLen + commentLen;
    if (csize === 0xffffffff || local === 0xffffffff) throw new Error('npz: zip64 members not supported');
    const dataStart = local + 30 + buf.readUInt16LE(local + 26) + buf.readUInt16LE(local + 28);
    const stored = buf.subarray(dataStart, dataStart + csize);
    const npy = method === 0 ? stored : method === 8 ? inflateRawSync(stored) : null;
    if (!npy) throw new Error(`npz: member ${name} uses zip method ${method}`);
    out.set(name.replace(/\.npy$/, ''), parseNpy(Buffer.from(npy)));
  }
  return out;
}

function parseNpy(b: Buffer): { shape: number[]; data: Float32Array | BigInt64Array | Uint8Array } {
  if (b.readUInt8(0) !== 0x93 || b.subarray(1, 6).toString('latin1') !== 'NUMPY') throw new Error('npy: bad magic');
  const major = b.readUInt8(6);
  const hlen = major === 1 ? b.readUInt16LE(8) : b.readUInt32LE(8);
  const hstart = major === 1 ? 10 : 12;
  const header = b.subarray(hstart, hstart + hlen).toString('latin1');
  const descr = /'descr':\s*'([^']+)'/.exec(header)?.[1];
  if (/'fortran_order':\s*True/.test(header)) throw new Error('npy: fortran order');
  const shapeText = /'shape':\s*\(([^)]*)\)/.exec(header)?.[1] ?? '';
  const shape = shapeText
    .split(',')
    .map((s) => s.trim())
    .filter((s) => s.length > 0)
    .map(Number);
  const count = shape.reduce((a, s) => a * s, 1);
  const body = b.subarray(hstart + hlen);
  const copy = new Uint8Array(body); // aligned copy
  switch (descr) {
    case '<f4':
      return { shape, data: new Float32Array(copy.buffer, 0, count) };
    case '<i8':
      return { shape, data: new BigInt64Array(copy.buffer, 0, count) };
    case '|u1':
      return { shape, data: new Uint8Array(copy.buffer, 0, count) };
    default:
      throw new Error(`npy: dtype ${descr}`);
  }
}

function runPython(
  blob: Uint8Array,
  name: string,
  profileDir = PROFILE,
): { status: number | null; stdout: string; stderr: string; npz?: string } {
  const blobPath = join(dir, `${name}.kvtc`);
  const npz = join(dir, `${name}.npz`);
  writeFileSync(blobPath, blob);
  const r = spawnSync('python3', [SCRIPT, profileDir, blobPath, npz], { encoding: 'utf8' });
  if (r.error) throw new Error(`could not run python3: ${r.error.message}`);
  return { status: r.status, stdout: r.stdout, stderr: r.stderr, npz };
}

/** A safetensors file of F32 tensors (kvtc decode's output), with its metadata. */
function readSafetensorsF32(buf: Buffer): {
  metadata: Record<string, string>;
  tensors: Map<string, { shape: number[]; data: Float32Array }>;
} {
  const n = Number(buf.readBigUInt64LE(0));
  const header = JSON.parse(buf.subarray(8, 8 + n).toString('utf8'));
  const tensors = new Map<string, { shape: number[]; data: Float32Array }>();
  for (const [name, info] of Object.entries(header) as [string, { dtype: string; shape: number[]; data_offsets: number[] }][]) {
    if (name === '__metadata__') continue;
    if (info.dtype !== 'F32') throw new Error(`safetensors: ${name} is ${info.dtype}`);
    const [b, e] = info.data_offsets;
    const copy = new Uint8Array(buf.subarray(8 + n + b, 8 + n + e)); // aligned copy
    tensors.set(name, { shape: info.shape, data: new Float32Array(copy.buffer, 0, (e - b) / 4) });
  }
  return { metadata: header.__metadata__ ?? {}, tensors };
}

/** Tokens of [t0, t1) of a [kvHeads, tokens, headDim] tensor, max |a − b|. */
function maxDiff(a: Float32Array, b: Float32Array, kvHeads: number, tokens: number, headDim: number, t0: number, t1: number): number {
  let m = 0;
  for (let h = 0; h < kvHeads; h++) {
    for (let i = (h * tokens + t0) * headDim; i < (h * tokens + t1) * headDim; i++) {
      const d = Math.abs(a[i] - b[i]);
      if (!(d <= m)) m = d; // NaN propagates
    }
  }
  return m;
}

function sliceTokens(c: KvCache, tokens: number, startPosition: number): KvCache {
  const cut = (x: Float32Array): Float32Array => {
    const y = new Float32Array(c.kvHeads * tokens * c.headDim);
    for (let h = 0; h < c.kvHeads; h++) {
      y.set(x.subarray(h * c.tokens * c.headDim, (h * c.tokens + tokens) * c.headDim), h * tokens * c.headDim);
    }
    return y;
  };
  return { ...c, tokens, startPosition, keys: c.keys.map(cut), values: c.values.map(cut) };
}

async function compare(c: KvCache, name: string, withCodec: Codec = codec, profileDir = PROFILE): Promise<void> {
  const { blob } = await withCodec.encode(c);
  const { cache: ts } = await withCodec.decode(blob);
  const r = runPython(blob, name, profileDir);
  expect(r.status, `python decoder failed: ${r.stderr}`).toBe(0);
  const arrays = readNpz(readFileSync(r.npz!));
  const view = new DataView(blob.buffer, blob.byteOffset, blob.byteLength);
  const sink = view.getUint32(32, true);
  const window = view.getUint32(36, true);
  const T = c.tokens;
  expect(Number((arrays.get('tokens')!.data as BigInt64Array)[0])).toBe(T);
  expect(Number((arrays.get('start_position')!.data as BigInt64Array)[0])).toBe(c.startPosition);
  let worstCompressed = 0;
  let worstRaw = 0;
  for (let l = 0; l < c.layers; l++) {
    for (const [kind, tsArr] of [
      ['key', ts.keys[l]],
      ['value', ts.values[l]],
    ] as const) {
      const py = arrays.get(`${kind}_${l}`)!;
      expect(py.shape).toEqual([c.kvHeads, T, c.headDim]);
      const pyArr = py.data as Float32Array;
      const compressed = maxDiff(pyArr, tsArr, c.kvHeads, T, c.headDim, sink, T - window);
      const raw = Math.max(
        maxDiff(pyArr, tsArr, c.kvHeads, T, c.headDim, 0, sink),
        maxDiff(pyArr, tsArr, c.kvHeads, T, c.headDim, T - window, T),
      );
      worstCompressed = Math.max(worstCompressed, compressed);
      worstRaw = Math.max(worstRaw, raw);
      expect(compressed, `${name}: layer ${l} ${kind}s, compressed tokens [${sink}, ${T - window})`).toBeLessThanOrEqual(TOLERANCE);
      expect(raw, `${name}: layer ${l} ${kind}s, raw (sink/window) tokens`).toBeLessThanOrEqual(TOLERANCE);
    }
  }
  console.log(
    `[python-decoder] ${name}: T=${T} start=${c.startPosition} sink=${sink} window=${window} blob=${blob.length} B; ` +
      `max |python − typescript| compressed ${worstCompressed.toExponential(3)}, raw ${worstRaw.toExponential(3)}`,
  );
}

beforeAll(async () => {
  const probe = spawnSync('python3', ['-c', 'import numpy'], { encoding: 'utf8' });
  if (probe.error || probe.status !== 0) {
    throw new Error(
      `the Python reference decoder test needs python3 with NumPy (python3 -c "import numpy" failed: ${probe.error?.message ?? probe.stderr.trim()})`,
    );
  }
  dir = mkdtempSync(join(tmpdir(), 'kvtc-pyref-'));
  codec = await codecFromProfile(await readProfile(PROFILE));
  const model = await loadModel(DEFAULT_MODEL_DIR);
  const text = readFileSync(WIKITEXT_TEST, 'utf8').slice(0, 20_000);
  cache = (await new ModelRunner(model).capture(text, { maxTokens: 512 })).cache;
});

afterAll(() => {
  if (dir) rmSync(dir, { recursive: true, force: true });
});

describe('independent Python reference decoder (docs/profile-format.md)', () => {
  it('decodes a 512-token WikiText-2 blob like kvtc does', async () => {
    expect(cache.tokens).toBe(512);
    await compare(cache, 'wikitext-512');
  });

  it('decodes a blob whose raw section is float32 (a sink value beyond fp16, header flag bit 1)', async () => {
    const big = { ...cache, keys: cache.keys.map((a) => a.slice()), values: cache.values.map((a) => a.slice()) };
    big.values[0][1] = 1e6; // token 0's value, head 0, dim 1: raw, and beyond fp16
    const { blob } = await codec.encode(big);
    expect(new DataView(blob.buffer, blob.byteOffset).getUint16(6, true) & 2).toBe(2);
    await compare(big, 'raw-float32');
  });

  it('decodes a blob with start_position > 0 (RoPE positions offset)', async () => {
    // 470 tokens from 37: within the model's 512 positions (model.max_positions; encode refuses more)
    await compare(sliceTokens(cache, 470, 37), 'start-37');
  });

  it.each([
    [141, 5, 'few compressed tokens'],
    [133, 0, 'one compressed token'],
    [132, 0, 'T = sink + window: no compressed tokens'],
    [100, 3, 'T < sink + window: every token raw'],
  ])('decodes a short blob of %i tokens from position %i (%s)', async (tokens, start) => {
    await compare(sliceTokens(cache, tokens, start), `short-${tokens}`);
  });

  it('decodes int8/fp8 and dynamic groups (bundled profile with its plans re-grouped)', async () => {
    // The bundled profile only uses static int2/int4; same tensors, other group layouts.
    const alt = join(dir, 'alt-profile');
    cpSync(PROFILE, alt, { recursive: true });
    const manifestPath = join(alt, 'kvtc-profile.json');
    const manifest = JSON.parse(readFileSync(manifestPath, 'utf8'));
    const bits: Record<string, number> = { int2: 2, int4: 4, int8: 8, fp8: 8 };
    const layouts: [string, string][][] = [
      [
        ['int8', 'dynamic'],
        ['fp8', 'static'],
        ['int2', 'static'],
      ],
      [
        ['fp8', 'dynamic'],
        ['int4', 'dynamic'],
        ['int2', 'dynamic'],
      ],
      [
        ['int4', 'static'],
        ['fp8', 'dynamic'],
        ['int8', 'static'],
      ],
    ];
    for (const plan of manifest.plans) {
      const r: number = plan.rank;
      const layout = layouts[plan.index % layouts.length];
      const cuts = [0, Math.max(1, Math.floor(r / 4)), Math.max(2, Math.floor(r / 2)), r];
      plan.groups = layout.map(([type, mode], g) => ({ start: cuts[g], end: cuts[g + 1], type, mode }));
      if (plan.index % 2 === 1) plan.groups[1].start += 1; // leave one component dropped
      plan.bits_per_token = plan.groups.reduce(
        (a: number, g: { start: number; end: number; type: string; mode: string }) =>
          a + (g.end - g.start) * bits[g.type] + (g.mode === 'dynamic' ? 32 : 0),
        0,
      );
      plan.budget_bits = plan.bits_per_token;
    }
    manifest.profile_id = computeProfileId(manifest); // the groups are fields decoding uses: re-derive the id
    writeFileSync(manifestPath, `${JSON.stringify(manifest, null, 2)}\n`);
    const altCodec = await codecFromProfile(await readProfile(alt));
    await compare(cache, 'regrouped-512', altCodec, alt);
    await compare({ ...sliceTokens(cache, 200, 11) }, 'regrouped-200', altCodec, alt);
  });

  it('computes the same canonical profile-id text as kvtc (with and without RoPE scaling, odd reals)', () => {
    const manifest = JSON.parse(readFileSync(join(PROFILE, 'kvtc-profile.json'), 'utf8'));
    const variants = [
      manifest,
      {
        ...manifest,
        model: {
          ...manifest.model,
          rope: {
            theta: 500000.5,
            rotary_dim: 6,
            layout: 'interleaved',
            scaling: { type: 'llama3', factor: 8, low_freq_factor: 1, high_freq_factor: 4, original_max_position_embeddings: 8192 },
          },
        },
      },
      {
        ...manifest,
        model: { ...manifest.model, rope: { theta: 1e-7, rotary_dim: 8, layout: 'half', scaling: { type: 'linear', factor: 0.1 } } },
      },
    ];
    for (const [i, m] of variants.entries()) {
      const file = join(dir, `id-${i}.json`);
      writeFileSync(file, JSON.stringify(m));
      const code =
        'import json, sys; sys.path.insert(0, sys.argv[1]); import kvtc_reference_decoder as k; sys.stdout.write(k.profile_id_text(json.load(open(sys.argv[2]))))';
      const r = spawnSync('python3', ['-c', code, dirname(SCRIPT), file], { encoding: 'utf8' });
      expect(r.status, r.stderr).toBe(0);
      expect(r.stdout).toBe(profileIdText(m));
    }
    expect(computeProfileId(manifest)).toBe(manifest.profile_id);
  });

  it('refuses a profile whose decode fields were edited (stale profile id) or whose tensor file has trailing bytes', async () => {
    const { blob } = await codec.encode(sliceTokens(cache, 160, 0));
    const edited = join(dir, 'edited-profile');
    cpSync(PROFILE, edited, { recursive: true });
    const mf = join(edited, 'kvtc-profile.json');
    const m = JSON.parse(readFileSync(mf, 'utf8'));
    writeFileSync(mf, JSON.stringify({ ...m, settings: { ...m.settings, sink: 5 } }));
    const r1 = runPython(blob, 'edited', edited);
    expect(r1.status).not.toBe(0);
    expect(r1.stderr).toMatch(/profile_id/);

    const junk = join(dir, 'junk-profile');
    cpSync(PROFILE, junk, { recursive: true });
    const tf = join(junk, 'kvtc-profile.safetensors');
    const t = Buffer.concat([readFileSync(tf), Buffer.from('junk')]);
    writeFileSync(tf, t);
    const mj = JSON.parse(readFileSync(join(junk, 'kvtc-profile.json'), 'utf8'));
    mj.tensors = { ...mj.tensors, sha256: createHash('sha256').update(t).digest('hex'), bytes: t.length };
    mj.profile_id = computeProfileId(mj);
    writeFileSync(join(junk, 'kvtc-profile.json'), JSON.stringify(mj));
    const r2 = runPython(blob, 'junk', junk);
    expect(r2.status).not.toBe(0);
    expect(r2.stderr).toMatch(/trailing/);
    await expect(readProfile(junk)).rejects.toMatchObject({ code: 'PROFILE_INVALID', message: expect.stringContaining('trailing') });
  });

  it("refuses, as kvtc does, a manifest with a repeated key and a blob past the model's positions (issue 22)", async () => {
    const { blob } = await codec.encode(sliceTokens(cache, 160, 0));
    const dup = join(dir, 'dup-profile');
    cpSync(PROFILE, dup, { recursive: true });
    const mf = join(dup, 'kvtc-profile.json');
    writeFileSync(mf, readFileSync(mf, 'utf8').replace('"window": 128,', '"window": 128, "window": 128,'));
    const r1 = runPython(blob, 'dup', dup);
    expect(r1.status).not.toBe(0);
    expect(r1.stderr).toMatch(/'window' appears twice/);
    await expect(readProfile(dup)).rejects.toMatchObject({
      code: 'PROFILE_INVALID',
      message: expect.stringContaining('settings.window twice'),
    });
    const far = new Uint8Array(blob);
    const dv = new DataView(far.buffer, far.byteOffset, far.byteLength);
    dv.setUint32(20, 4.29e9, true);
    dv.setUint32(far.length - 4, crc32(far.subarray(0, far.length - 4)) >>> 0, true);
    const r2 = runPython(far, 'far');
    expect(r2.status).not.toBe(0);
    expect(r2.stderr).toMatch(/start_position 4290000000 \+ 160 tokens runs past the model's 512 positions/);
    await expect(codec.decode(far)).rejects.toMatchObject({
      code: 'BLOB_INVALID',
      message: expect.stringContaining('the model has 512 positions'),
    });
  });

  // Format 3 (§2.4): the committed Node-made fixtures of python/tests/fixtures (README.md there): an MLA-like latent
  // cache (values 24 wide, keys 8) of model layers 0, 1, 3 of 4, and a tp/pp shard (model layers 3–4, KV heads 2–3).
  it.each([
    ['profile-v3-mla', 'v3-mla'],
    ['profile-v3-shard', 'v3-shard'],
  ])('decodes the format 3 fixture %s / %s.kvtc like kvtc, with the same profile id', (profileName, blobName) => {
    const profileDir = join(FIXTURES_V3, profileName);
    const manifest = JSON.parse(readFileSync(join(profileDir, 'kvtc-profile.json'), 'utf8'));
    expect(manifest.format_version).toBe(3);
    const code =
      'import json, sys; sys.path.insert(0, sys.argv[1]); import kvtc_reference_decoder as k; m = json.load(open(sys.argv[2])); ' +
      'sys.stdout.write(k.profile_id(m) + "\\n" + k.profile_id_text(m))';
    const id = spawnSync('python3', ['-c', code, dirname(SCRIPT), join(profileDir, 'kvtc-profile.json')], { encoding: 'utf8' });
    expect(id.status, id.stderr).toBe(0);
    const [pyId, ...textLines] = id.stdout.split('\n');
    expect(pyId).toBe(manifest.profile_id);
    expect(textLines.join('\n')).toBe(profileIdText(manifest));

    const r = runPython(readFileSync(join(FIXTURES_V3, `${blobName}.kvtc`)), blobName, profileDir);
    expect(r.status, `python decoder failed: ${r.stderr}`).toBe(0);
    const py = readNpz(readFileSync(r.npz!));
    const ts = readSafetensorsF32(readFileSync(join(FIXTURES_V3, `${blobName}.decoded.safetensors`)));
    const { layers, kv_heads: kvHeads, head_dim: headDim } = manifest.model;
    const valueHeadDim: number = manifest.model.value_head_dim ?? headDim;
    const tokens = Number((py.get('tokens')!.data as BigInt64Array)[0]);
    expect(String(tokens)).toBe(ts.metadata.tokens);
    expect(String((py.get('start_position')!.data as BigInt64Array)[0])).toBe(ts.metadata.start_position);
    expect(ts.metadata.profile_id).toBe(manifest.profile_id);
    let worst = 0;
    for (let l = 0; l < layers; l++) {
      for (const [kind, width] of [
        ['key', headDim],
        ['value', valueHeadDim],
      ] as const) {
        const a = py.get(`${kind}_${l}`)!;
        const b = ts.tensors.get(`present.${l}.${kind}`)!;
        expect(a.shape).toEqual([kvHeads, tokens, width]);
        expect(b.shape).toEqual([1, kvHeads, tokens, width]);
        const d = maxDiff(a.data as Float32Array, b.data, kvHeads, tokens, width, 0, tokens);
        worst = Math.max(worst, d);
        expect(d, `${blobName}: layer ${l} ${kind}s`).toBeLessThanOrEqual(TOLERANCE);
      }
    }
    console.log(`[python-decoder] ${blobName}: T=${tokens}; max |python − kvtc decode| ${worst.toExponential(3)}`);
  });

  it('refuses, as kvtc does, format 3 fields that break §2.4 (id re-derived, so only the field rule fails)', async () => {
    const src = join(FIXTURES_V3, 'profile-v3-mla');
    const blob = readFileSync(join(FIXTURES_V3, 'v3-mla.kvtc'));
    const cases: [string, (m: any) => void, RegExp][] = [
      ['v3-in-v2', (m) => (m.format_version = 2), /format 3 field, but format_version is 2/],
      ['unsorted', (m) => (m.model.cache_layers = [0, 3, 1]), /model\.cache_layers\[2\]/],
      ['past-model', (m) => (m.model.cache_layers = [0, 1, 4]), /model\.cache_layers\[2\]/],
      ['no-model-layers', (m) => delete m.model.model_layers, /present together/],
      ['shard-heads-count', (m) => (m.shard = { tp_rank: 0, tp_size: 1, pp_rank: 0, pp_size: 1, kv_heads: [0, 1] }), /shard\.kv_heads/],
      ['fingerprint', (m) => (m.model.fingerprint.id = '0000000000000000'), /kv-dump id/],
      ['onnx-and-dump', (m) => (m.model.fingerprint.onnx_sha256 = '0'.repeat(64)), /onnx_sha256 must be absent/],
    ];
    for (const [name, edit, message] of cases) {
      const d = join(dir, `v3-${name}`);
      cpSync(src, d, { recursive: true });
      const mf = join(d, 'kvtc-profile.json');
      const m = JSON.parse(readFileSync(mf, 'utf8'));
      edit(m);
      m.profile_id = computeProfileId(m);
      writeFileSync(mf, JSON.stringify(m));
      const r = runPython(blob, `v3-${name}`, d);
      expect(r.status, `${name}: the reference decoder accepted it`).not.toBe(0);
      expect(r.stderr, name).toMatch(message);
      await expect(readProfile(d), `${name}: kvtc accepted it`).rejects.toMatchObject({ code: 'PROFILE_INVALID' });
    }
  });

  it('rejects a blob with one flipped byte, naming the checksum', async () => {
    const { blob } = await codec.encode(cache);
    const bad = new Uint8Array(blob);
    bad[Math.floor(bad.length / 2)] ^= 0x10;
    const r = runPython(bad, 'flipped');
    expect(r.status).not.toBe(0);
    expect(r.stderr).toMatch(/checksum/i);
  });
});
