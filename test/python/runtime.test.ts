// The Python runtime (python/, package `kvtc`) against kvtc's Node codec. The package is installed
// offline into a temporary --target directory (pip install --no-build-isolation --no-deps), and
// test/python/driver.py runs the installed copy over every case:
//   (1) the integer codes Python reads from a Node blob are the ones Node wrote, code for code;
//   (2) Python's decode is within 1e-5 of `kvtc decode` (the Node CLI, in-process);
//   (3) Python's encode gives the blob Node's encode gives (byte for byte for deflate-rle,
//       deflate-huffman and stored; the same inflated sections for deflate-default, whose DEFLATE
//       bytes depend on the zlib build), and Node decodes it;
//   (4) `python -m kvtc decode` writes the tensors `kvtc decode` writes (names, shapes, dtype).
// On the bundled stories260k profile (real captured caches) and on profiles written here that cover
// every group type and mode, dropped components, zero static ranges, multi-layer and rank-0 plans,
// partial/interleaved RoPE with llama3 and linear scaling, float16 caches, start positions and
// caches shorter than sink + window.
import { spawnSync } from 'node:child_process';
import { cpSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { basename, dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { crc32, inflateRawSync } from 'node:zlib';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { KvtcCodec } from '../../src/codec/codec.js';
import { gatherFeatures } from '../../src/fit/features.js';
import { scatterFeatures } from '../fit/features-reference.js';
import { projectCoefficients } from '../fit/fit-reference.js';
import { packedLength, unpackCodes } from '../../src/codec/pack.js';
import { decodePlanCodes } from '../../src/codec/payload.js';
import type { StoredType } from '../../src/codec/quant.js';
import { fitStaticRange } from '../../src/fit/static-range.js';
import { TYPE_BITS, type BasisPlan, type QuantGroup } from '../../src/codec/types.js';
import { floatToHalf } from '../../src/io/fp16.js';
import { parseSafetensors, type TensorEntry } from '../../src/io/safetensors.js';
import { parseKvCache, serializeKvCache } from '../../src/model/kv-io.js';
import { loadModel } from '../../src/model/load.js';
import { ModelRunner } from '../../src/model/runner.js';
import type { KvCache, RopeSpec } from '../../src/model/types.js';
import { DEFAULT_MODEL_DIR, DEFAULT_PROFILES_DIR, WIKITEXT_TEST } from '../../src/paths.js';
import { codecFromProfile } from '../../src/profile/codec-from-profile.js';
import { readProfile, type Profile } from '../../src/profile/read.js';
import { writeProfile, type ManifestDraft } from '../../src/profile/write.js';
import type { Manifest } from '../../src/profile/schema.js';
import { randomOrthogonal, rng } from '../codec/rng.js';
import { kvtc } from '../model/helpers.js';

const HERE = dirname(fileURLToPath(import.meta.url));
const PACKAGE_SRC = join(HERE, '..', '..', 'python');
const DRIVER = join(HERE, 'driver.py');
const BUNDLED = join(DEFAULT_PROFILES_DIR, 'stories260k');
const PY = process.env.KVTC_TEST_PYTHON ?? 'python3';
const TOLERANCE = 1e-5;

const probe = spawnSync(PY, ['-c', 'import sys, numpy; print(sys.version.split()[0], numpy.__version__)'], { encoding: 'utf8' });
const HAVE_PYTHON = !probe.error && probe.status === 0;
// A missing python3 or NumPy is a set-up error: the suite fails saying what to install, never skips.
const MISSING_PYTHON = `the Python runtime tests need ${PY} with NumPy (${probe.error?.message ?? probe.stderr?.trim()}); install the test dependencies with \`${PY} -m pip install -r python/requirements-test.txt\` or set KVTC_TEST_PYTHON to a Python that has them`;

interface Case {
  name: string;
  profileDir: string;
  profile: Profile;
  cache: KvCache;
  kv: string;
  nodeBlob: Uint8Array;
  nodeBlobPath: string;
  prefix: string;
}

interface PyCase {
  prefix: string;
  header: { tokens: number; start_position: number; sink: number; window: number; dtype: string; profile_id: string; sections: number };
  seconds: { decode: number; encode: number };
}

interface PyError {
  name: string;
  raised: boolean;
  code?: string;
  message?: string;
  fix?: string;
}

interface PyResult {
  kvtc_file: string;
  version: string;
  numpy: string;
  torch: boolean;
  cases: PyCase[];
  errors: PyError[];
}

let dir: string;
let site: string;
let pyEnv: NodeJS.ProcessEnv;
const cases: Case[] = [];
let py: PyResult;
const codecs = new Map<string, KvtcCodec>();

function python(args: string[], opts: { cwd?: string } = {}) {
  const r = spawnSync(PY, args, { encoding: 'utf8', env: pyEnv, cwd: opts.cwd ?? dir, maxBuffer: 64 * 1024 * 1024 });
  if (r.error) throw new Error(`could not run ${PY}: ${r.error.message}`);
  return r;
}

// ------------------------------------------------------------------------------------------------
// Profiles and caches

function sliceTokens(c: KvCache, tokens: number, startPosition: number): KvCache {
  const cut = (x: Float32Array): Float32Array => {
    const y = new Float32Array(c.kvHeads * tokens * c.headDim);
    for (let h = 0; h < c.kvHeads; h++) y.set(x.subarray(h * c.tokens * c.headDim, (h * c.tokens + tokens) * c.headDim), h * tokens * c.headDim);
    return y;
  };
  return { ...c, tokens, startPosition, keys: c.keys.map(cut), values: c.values.map(cut) };
}

/** The same cache as float16 (values rounded to fp16, as a float16 model would hold them). */
function asFloat16(c: KvCache): KvCache {
  const r = (x: Float32Array) => Float32Array.from(x, (v) => halfValue(floatToHalf(v)));
  return { ...c, dtype: 'float16', keys: c.keys.map(r), values: c.values.map(r) };
}

function halfValue(h: number): number {
  const s = h & 0x8000 ? -1 : 1;
  const e = (h >>> 10) & 0x1f;
  const m = h & 0x3ff;
  return e === 0 ? s * m * 2 ** -24 : e === 31 ? (m ? NaN : s * Infinity) : s * (1 + m / 1024) * 2 ** (e - 15);
}

function groups(spans: [number, number, QuantGroup['type'], QuantGroup['mode']][]): QuantGroup[] {
  return spans.map(([start, end, type, mode]) => ({ start, end, type, mode }));
}

/** A plan with a random orthonormal basis (lo/hi fitted later on a cache). */
function syntheticPlan(kind: 'key' | 'value', layers: number[], kvHeads: number, headDim: number, rank: number, gs: QuantGroup[], seed: number): BasisPlan {
  const p = layers.length * kvHeads * headDim;
  const Q = randomOrthogonal(p, seed);
  const basis = new Float32Array(p * rank);
  for (let i = 0; i < p; i++) for (let j = 0; j < rank; j++) basis[i * rank + j] = Q[i * p + j];
  const { normal } = rng(seed + 1);
  const mean = Float32Array.from({ length: p }, () => 0.3 * normal());
  const variances = Float32Array.from({ length: rank }, (_, j) => (2 / (1 + 0.3 * j)) ** 2);
  return { kind, layers, dim: p, rank, mean, basis, variances, groups: gs, lo: new Float32Array(rank), hi: new Float32Array(rank) };
}

/** A cache whose features are mean + basis·(decaying Gaussian coefficients) + noise, keys rotated at their positions. */
function syntheticCache(layers: number, kvHeads: number, headDim: number, rope: RopeSpec, plans: BasisPlan[], tokens: number, startPosition: number, seed: number): KvCache {
  const size = kvHeads * tokens * headDim;
  const cache: KvCache = {
    layers, kvHeads, headDim, tokens, dtype: 'float32', startPosition,
    keys: Array.from({ length: layers }, () => new Float32Array(size)),
    values: Array.from({ length: layers }, () => new Float32Array(size)),
  };
  const { normal } = rng(seed);
  for (const plan of plans) {
    const { dim: p, rank: r } = plan;
    const X = new Float32Array(tokens * p);
    const acc = new Float64Array(p);
    for (let t = 0; t < tokens; t++) {
      for (let i = 0; i < p; i++) acc[i] = plan.mean[i] + 0.02 * normal();
      for (let j = 0; j < r; j++) {
        const c = (2 / (1 + 0.3 * j)) * normal();
        for (let i = 0; i < p; i++) acc[i] += c * plan.basis[i * r + j];
      }
      X.set(acc, t * p);
    }
    scatterFeatures(X, cache, { kind: plan.kind, layers: plan.layers }, rope, 0, tokens);
  }
  return cache;
}

/** Static ranges fitted on the cache for every static group; `zero` components get lo = hi (scale 0). */
function fitRanges(plan: BasisPlan, cache: KvCache, rope: RopeSpec, zero: number[] = []): BasisPlan {
  if (plan.rank === 0) return plan;
  const X = gatherFeatures(cache, { kind: plan.kind, layers: plan.layers }, rope, 0, cache.tokens);
  const C = projectCoefficients(X, plan.mean, plan.basis, plan.rank);
  const n = cache.tokens;
  const lo = new Float32Array(plan.rank);
  const hi = new Float32Array(plan.rank);
  for (const g of plan.groups) {
    if (g.mode !== 'static' || g.type === 'none') continue;
    for (let c = g.start; c < g.end; c++) {
      const col = Float64Array.from({ length: n }, (_, t) => C[t * plan.rank + c]);
      const f = fitStaticRange(col, g.type as StoredType);
      lo[c] = f.lo;
      hi[c] = zero.includes(c) ? f.lo : f.hi;
    }
  }
  return { ...plan, lo, hi };
}

function manifestRope(r: RopeSpec): Manifest['model']['rope'] {
  return {
    theta: r.theta,
    rotary_dim: r.rotaryDim,
    layout: r.layout,
    ...(r.scaling
      ? {
          scaling: {
            type: r.scaling.type,
            factor: r.scaling.factor,
            ...(r.scaling.lowFreqFactor !== undefined ? { low_freq_factor: r.scaling.lowFreqFactor } : {}),
            ...(r.scaling.highFreqFactor !== undefined ? { high_freq_factor: r.scaling.highFreqFactor } : {}),
            ...(r.scaling.originalMaxPositionEmbeddings !== undefined ? { original_max_position_embeddings: r.scaling.originalMaxPositionEmbeddings } : {}),
          },
        }
      : {}),
  };
}

/** A profile directory written by kvtc's own writer, from the bundled manifest with model/settings replaced. */
async function writeTestProfile(
  out: string,
  base: Manifest,
  o: { name: string; layers: number; kvHeads: number; headDim: number; rope: RopeSpec; sink: number; window: number; entropy: Manifest['settings']['entropy'] },
  plans: BasisPlan[],
): Promise<string> {
  const { profile_id: _id, tensors: _t, plans: _p, ...rest } = base;
  const draft: ManifestDraft = {
    ...rest,
    // These synthetic profiles give one RoPE for every layer, in format 1's form (format 2's
    // per-layer groups have their own test, rope-v2.test.ts); readers take both.
    format_version: 1,
    // synthetic models with a context of 4096 (the bundled model's 512 would refuse the caches at position 1000)
    model: { ...base.model, name: o.name, layers: o.layers, heads: 2 * o.kvHeads, kv_heads: o.kvHeads, head_dim: o.headDim, rope: manifestRope(o.rope), max_positions: 4096 },
    settings: { ...base.settings, sink: o.sink, window: o.window, entropy: o.entropy },
    measured: { ...base.measured, rel_error: { key: Array(o.layers).fill(0.1), value: Array(o.layers).fill(0.1), key_mean: 0.1, value_mean: 0.1 } },
  };
  await writeProfile(out, draft, plans);
  return out;
}

async function codecFor(profileDir: string, profile: Profile): Promise<KvtcCodec> {
  let c = codecs.get(profileDir);
  if (!c) {
    c = await codecFromProfile(profile);
    codecs.set(profileDir, c);
  }
  return c;
}

async function addCase(name: string, profileDir: string, profile: Profile, cache: KvCache): Promise<void> {
  const prefix = join(dir, 'cases', name);
  const kv = `${prefix}.kv.safetensors`;
  writeFileSync(kv, serializeKvCache(cache, { model: profile.manifest.model.name, fingerprint: profile.manifest.model.fingerprint.id }));
  const { blob } = await (await codecFor(profileDir, profile)).encode(cache);
  const nodeBlobPath = `${prefix}.node.kvtc`;
  writeFileSync(nodeBlobPath, blob);
  cases.push({ name, profileDir, profile, cache, kv, nodeBlob: blob, nodeBlobPath, prefix });
}

// ------------------------------------------------------------------------------------------------
// Codes and comparisons

interface GroupCodes {
  group: QuantGroup;
  codes: Uint8Array; // [w, n] component-major
  offsets?: Uint16Array;
  scales?: Uint16Array;
}

const HEADER_BYTES = 48;

interface Container {
  header: { flags: number; profileId: string; tokens: number; startPosition: number; layers: number; kvHeads: number; headDim: number; sink: number; window: number };
  sections: { kind: number; codec: number; plan: number; data: Uint8Array }[];
}

/** The blob container (docs/profile-format.md §6) read here, independently of kvtc's parser: header, table, inflated sections. */
function container(blob: Uint8Array): Container {
  const dv = new DataView(blob.buffer, blob.byteOffset, blob.byteLength);
  expect(Buffer.from(blob.subarray(0, 4)).toString('latin1')).toBe('KVTC');
  expect(dv.getUint32(blob.length - 4, true)).toBe(crc32(blob.subarray(0, blob.length - 4)) >>> 0);
  const header = {
    flags: dv.getUint16(6, true), profileId: Buffer.from(blob.subarray(8, 16)).toString('hex'), tokens: dv.getUint32(16, true), startPosition: dv.getUint32(20, true),
    layers: dv.getUint16(24, true), kvHeads: dv.getUint16(26, true), headDim: dv.getUint16(28, true), sink: dv.getUint32(32, true), window: dv.getUint32(36, true),
  };
  const count = dv.getUint16(30, true);
  let at = HEADER_BYTES + 12 * count;
  const sections = [];
  for (let i = 0; i < count; i++) {
    const t = HEADER_BYTES + 12 * i;
    const codec = dv.getUint8(t + 1);
    const stored = blob.subarray(at, at + dv.getUint32(t + 4, true));
    at += stored.length;
    const data = codec === 1 ? new Uint8Array(inflateRawSync(stored)) : stored;
    expect(data.length).toBe(dv.getUint32(t + 8, true));
    sections.push({ kind: dv.getUint8(t), codec, plan: dv.getUint16(t + 2, true), data });
  }
  expect(at).toBe(blob.length - 4);
  return { header, sections };
}

const u16 = (b: Uint8Array, at: number, n: number): Uint16Array => Uint16Array.from({ length: n }, (_, t) => b[at + 2 * t] | (b[at + 2 * t + 1] << 8));

/** The codes of every plan section of a blob, unpacked with kvtc's Node code (unpackCodes; decodePlanCodes for the static int ones). */
function nodeCodes(blob: Uint8Array, profile: Profile): Map<number, GroupCodes[]> {
  const { header, sections } = container(blob);
  const n = header.tokens - header.sink - header.window;
  const out = new Map<number, GroupCodes[]>();
  for (const s of sections) {
    if (s.kind !== 1) continue;
    const plan = profile.plans[s.plan];
    let at = 0;
    const gs: GroupCodes[] = plan.groups.map((g) => {
      const count = n * (g.end - g.start);
      const bits = TYPE_BITS[g.type];
      const codes = unpackCodes(s.data, at, count, bits, new Uint8Array(count));
      at += packedLength(count, bits);
      return { group: g, codes };
    });
    for (const g of gs) {
      if (g.group.mode !== 'dynamic') continue;
      g.offsets = u16(s.data, at, n);
      g.scales = u16(s.data, at + 2 * n, n);
      at += 4 * n;
    }
    expect(at).toBe(s.data.byteLength);
    // kvtc's own decoder path hands the static int codes to its graphs: they must be these.
    const affine = gs.filter((g) => g.group.mode === 'static' && g.group.type !== 'fp8');
    const joined = new Uint8Array(affine.reduce((a, g) => a + g.codes.length, 0));
    let o = 0;
    for (const g of affine) {
      joined.set(g.codes, o);
      o += g.codes.length;
    }
    expect(Buffer.from(decodePlanCodes(s.data, n, plan).codes).equals(Buffer.from(joined))).toBe(true);
    out.set(s.plan, gs);
  }
  return out;
}

/** The codes Python's kvtc.debug.plan_codes wrote (driver.py's dump_codes). */
function pythonCodes(path: string, profile: Profile): Map<number, GroupCodes[]> {
  const st = parseSafetensors(new Uint8Array(readFileSync(path)), path);
  const bytes = (e: TensorEntry | undefined) => (e ? new Uint8Array(e.data) : undefined);
  const out = new Map<number, GroupCodes[]>();
  profile.plans.forEach((plan, i) => {
    if (!st.tensors.has(`plan.${i}.group.0.codes`)) return;
    out.set(
      i,
      plan.groups.map((group, g) => {
        const codes = st.tensors.get(`plan.${i}.group.${g}.codes`)!;
        expect(codes.dtype).toBe('U8');
        const off = bytes(st.tensors.get(`plan.${i}.group.${g}.offsets`));
        const sc = bytes(st.tensors.get(`plan.${i}.group.${g}.scales`));
        return {
          group,
          codes: new Uint8Array(codes.data),
          offsets: off && new Uint16Array(off.buffer, off.byteOffset, off.byteLength / 2).slice(),
          scales: sc && new Uint16Array(sc.buffer, sc.byteOffset, sc.byteLength / 2).slice(),
        };
      }),
    );
  });
  return out;
}

/** Position of an fp8 code in value order (sign-magnitude), so that neighbouring values differ by 1. */
const fp8Rank = (c: number) => (c & 0x80 ? -(c & 0x7f) : c);

interface CodeDiff {
  codes: number;
  mismatched: number;
  worstStep: number;
  halves: number;
  mismatchedHalves: number;
  /** `${kind}:${layer}:${token}` of every token whose codes (or fp16 offset/scale) differ. */
  tokens: Set<string>;
}

function compareCodes(a: Map<number, GroupCodes[]>, b: Map<number, GroupCodes[]>, profile: Profile, sink: number, n: number): CodeDiff {
  expect([...a.keys()]).toEqual([...b.keys()]);
  const d: CodeDiff = { codes: 0, mismatched: 0, worstStep: 0, halves: 0, mismatchedHalves: 0, tokens: new Set() };
  const mark = (plan: BasisPlan, t: number) => {
    for (const l of plan.layers) d.tokens.add(`${plan.kind}:${l}:${sink + t}`);
  };
  for (const [i, ga] of a) {
    const gb = b.get(i)!;
    const plan = profile.plans[i];
    expect(gb.length).toBe(ga.length);
    ga.forEach((x, g) => {
      const y = gb[g];
      expect(y.codes.length).toBe(x.codes.length);
      d.codes += x.codes.length;
      for (let k = 0; k < x.codes.length; k++) {
        if (x.codes[k] === y.codes[k]) continue;
        d.mismatched++;
        const step = x.group.type === 'fp8' ? Math.abs(fp8Rank(x.codes[k]) - fp8Rank(y.codes[k])) : Math.abs(x.codes[k] - y.codes[k]);
        d.worstStep = Math.max(d.worstStep, step);
        mark(plan, k % n);
      }
      expect(Boolean(y.offsets)).toBe(Boolean(x.offsets));
      if (x.offsets && y.offsets && x.scales && y.scales) {
        for (let t = 0; t < n; t++) {
          d.halves += 2;
          if (x.offsets[t] !== y.offsets[t] || x.scales[t] !== y.scales[t]) {
            d.mismatchedHalves += (x.offsets[t] !== y.offsets[t] ? 1 : 0) + (x.scales[t] !== y.scales[t] ? 1 : 0);
            mark(plan, t);
          }
        }
      }
    });
  }
  return d;
}

interface ValueDiff {
  worst: number;
  /** Values further apart than the tolerance that are adjacent fp16 numbers (float16 caches only). */
  fp16Neighbours: number;
  values: number;
}

/** max |a − b| over two caches, skipping the `skip` tokens; float16 caches may differ by one fp16 step. */
function compareCaches(a: KvCache, b: KvCache, skip: Set<string> = new Set()): ValueDiff {
  expect([b.layers, b.kvHeads, b.tokens, b.headDim, b.dtype]).toEqual([a.layers, a.kvHeads, a.tokens, a.headDim, a.dtype]);
  const d: ValueDiff = { worst: 0, fp16Neighbours: 0, values: 0 };
  const { kvHeads, tokens, headDim } = a;
  for (let l = 0; l < a.layers; l++) {
    for (const [kind, x, y] of [['key', a.keys[l], b.keys[l]], ['value', a.values[l], b.values[l]]] as const) {
      for (let t = 0; t < tokens; t++) {
        if (skip.has(`${kind}:${l}:${t}`)) continue;
        for (let h = 0; h < kvHeads; h++) {
          for (let i = (h * tokens + t) * headDim, e = i + headDim; i < e; i++) {
            d.values++;
            const diff = Math.abs(x[i] - y[i]);
            if (diff <= TOLERANCE) {
              if (diff > d.worst) d.worst = diff;
              continue;
            }
            if (a.dtype === 'float16' && Math.abs(floatToHalf(x[i]) - floatToHalf(y[i])) === 1 && Math.sign(x[i]) === Math.sign(y[i])) {
              d.fp16Neighbours++;
              continue;
            }
            if (!(diff <= d.worst)) d.worst = diff; // NaN propagates
          }
        }
      }
    }
  }
  return d;
}

function readCache(path: string): KvCache {
  return parseKvCache(new Uint8Array(readFileSync(path)), path).cache;
}

// ------------------------------------------------------------------------------------------------

beforeAll(async () => {
  if (!HAVE_PYTHON) throw new Error(MISSING_PYTHON);
  dir = mkdtempSync(join(tmpdir(), 'kvtc-pyrt-'));
  mkdirSync(join(dir, 'cases'));
  // Install a copy of python/ (so the work tree gets no build output) into a --target dir, offline.
  const pkg = join(dir, 'pkg');
  cpSync(PACKAGE_SRC, pkg, { recursive: true, filter: (src) => !/(__pycache__|\.egg-info|[\\/]build)$/.test(src) });
  site = join(dir, 'site');
  const pip = spawnSync(PY, ['-m', 'pip', 'install', '--no-build-isolation', '--no-deps', '--no-index', '--disable-pip-version-check', '--no-cache-dir', '--quiet', '--target', site, pkg], {
    encoding: 'utf8',
    env: { ...process.env, PIP_NO_INPUT: '1' },
  });
  if (pip.error || pip.status !== 0) throw new Error(`pip install --no-build-isolation --no-deps ./python failed:\n${pip.stdout}\n${pip.stderr}`);
  pyEnv = { ...process.env, PYTHONPATH: site, PYTHONNOUSERSITE: '1', PYTHONDONTWRITEBYTECODE: '1' };

  // --- the bundled profile on real caches (held-out WikiText-2 text)
  const bundled = await readProfile(BUNDLED);
  const model = await loadModel(DEFAULT_MODEL_DIR);
  const text = readFileSync(WIKITEXT_TEST, 'utf8').slice(0, 20_000);
  const real = (await new ModelRunner(model).capture(text, { maxTokens: 512 })).cache;
  await addCase('stories-512', BUNDLED, bundled, real);
  // 400 tokens from position 37 stay within the model's 512 positions (decode refuses positions past model.max_positions)
  await addCase('stories-start37', BUNDLED, bundled, sliceTokens(real, 400, 37));
  await addCase('stories-fp16', BUNDLED, bundled, asFloat16(sliceTokens(real, 300, 5)));
  await addCase('stories-141', BUNDLED, bundled, sliceTokens(real, 141, 5)); // n = 9
  await addCase('stories-133', BUNDLED, bundled, sliceTokens(real, 133, 0)); // n = 1
  await addCase('stories-132', BUNDLED, bundled, sliceTokens(real, 132, 0)); // T = sink + window
  await addCase('stories-100', BUNDLED, bundled, sliceTokens(real, 100, 3)); // every token raw
  // a sink value fp16 cannot hold: a float32 cache's raw tokens are then stored as float32 (flag bit 1)
  const big = sliceTokens(real, 200, 0);
  big.keys[2][1] = 70000;
  big.values[4][(3 * 200 + 199) * 8 + 7] = -1e6;
  await addCase('stories-raw-f32', BUNDLED, bundled, big);

  // --- the bundled bases regrouped into int8/fp8/dynamic layouts, stored sections
  const layouts: [QuantGroup['type'], QuantGroup['mode']][][] = [
    [['int8', 'dynamic'], ['fp8', 'static'], ['int2', 'static']],
    [['fp8', 'dynamic'], ['int4', 'dynamic'], ['int2', 'dynamic']],
    [['int4', 'static'], ['fp8', 'dynamic'], ['int8', 'static']],
  ];
  const regrouped = bundled.plans.map((plan, i): BasisPlan => {
    const r = plan.rank;
    const cuts = [0, Math.max(1, Math.floor(r / 4)), Math.max(2, Math.floor(r / 2)), r];
    const gs = layouts[i % 3].map(([type, mode], g) => ({ start: cuts[g], end: cuts[g + 1], type, mode }));
    if (i % 2 === 1) gs[1].start += 1; // one component dropped
    return { ...plan, groups: gs, budgetBits: undefined };
  });
  const regroupedDir = await writeTestProfile(join(dir, 'regrouped'), bundled.manifest, {
    name: 'stories260k-regrouped', layers: 5, kvHeads: 4, headDim: 8, rope: { theta: 10000, rotaryDim: 8, layout: 'half' }, sink: 4, window: 128, entropy: 'stored',
  }, regrouped);
  const rg = await readProfile(regroupedDir);
  await addCase('regrouped-512', regroupedDir, rg, real);
  await addCase('regrouped-fp16', regroupedDir, rg, asFloat16(sliceTokens(real, 200, 11)));

  // --- synthetic A: 3 layers × 2 KV heads × 32, partial interleaved RoPE with llama3 scaling,
  // a 3-layer key basis (p = 192: two K blocks in kvtc's float32 Gemm) with all eight type × mode combinations and a dropped component, a value
  // basis over layers [2, 0], a rank-0 plan, DEFLATE Huffman-only.
  const ropeA: RopeSpec = { theta: 10000, rotaryDim: 12, layout: 'interleaved', scaling: { type: 'llama3', factor: 8, lowFreqFactor: 1, highFreqFactor: 4, originalMaxPositionEmbeddings: 1024 } };
  let plansA = [
    syntheticPlan('key', [0, 1, 2], 2, 32, 40, groups([
      [0, 3, 'int8', 'dynamic'], [3, 6, 'fp8', 'static'], [7, 10, 'int4', 'dynamic'], [10, 14, 'int2', 'static'],
      [14, 18, 'fp8', 'dynamic'], [18, 24, 'int4', 'static'], [24, 30, 'int2', 'dynamic'], [30, 40, 'int8', 'static'],
    ]), 11),
    syntheticPlan('value', [2, 0], 2, 32, 24, groups([[0, 4, 'fp8', 'dynamic'], [4, 8, 'int8', 'static'], [8, 12, 'int2', 'dynamic'], [12, 16, 'int4', 'static'], [18, 24, 'fp8', 'static']]), 12),
    syntheticPlan('value', [1], 2, 32, 0, [], 13),
  ];
  const calA = syntheticCache(3, 2, 32, ropeA, plansA, 400, 1000, 21);
  plansA = plansA.map((p, i) => fitRanges(p, calA, ropeA, i === 0 ? [4, 11] : [13]));
  const dirA = await writeTestProfile(join(dir, 'synthetic-a'), bundled.manifest, { name: 'synthetic-a', layers: 3, kvHeads: 2, headDim: 32, rope: ropeA, sink: 4, window: 16, entropy: 'deflate-huffman' }, plansA);
  const pa = await readProfile(dirA);
  const cacheA = syntheticCache(3, 2, 32, ropeA, plansA, 300, 1000, 22);
  await addCase('synthetic-a-300', dirA, pa, cacheA);
  await addCase('synthetic-a-fp16', dirA, pa, asFloat16(syntheticCache(3, 2, 32, ropeA, plansA, 120, 7, 23)));
  await addCase('synthetic-a-21', dirA, pa, sliceTokens(cacheA, 21, 0)); // n = 1
  await addCase('synthetic-a-15', dirA, pa, sliceTokens(cacheA, 15, 2)); // every token raw

  // --- synthetic B: 2 × 3 × 8, full half RoPE with linear scaling, no sink or window, a full-rank
  // basis, DEFLATE level 6 (the one coder whose bytes depend on the zlib build).
  const ropeB: RopeSpec = { theta: 1e6, rotaryDim: 8, layout: 'half', scaling: { type: 'linear', factor: 4 } };
  let plansB = [
    syntheticPlan('key', [1], 3, 8, 24, groups([[0, 8, 'fp8', 'static'], [8, 16, 'int4', 'static'], [16, 24, 'int2', 'static']]), 31),
    syntheticPlan('value', [0, 1], 3, 8, 20, groups([[0, 10, 'int8', 'dynamic'], [12, 20, 'int2', 'static']]), 32),
    syntheticPlan('key', [0], 3, 8, 6, groups([[0, 6, 'int4', 'dynamic']]), 33),
  ];
  const calB = syntheticCache(2, 3, 8, ropeB, plansB, 256, 0, 41);
  plansB = plansB.map((p) => fitRanges(p, calB, ropeB));
  const dirB = await writeTestProfile(join(dir, 'synthetic-b'), bundled.manifest, { name: 'synthetic-b', layers: 2, kvHeads: 3, headDim: 8, rope: ropeB, sink: 0, window: 0, entropy: 'deflate-default' }, plansB);
  const pb = await readProfile(dirB);
  await addCase('synthetic-b-64', dirB, pb, syntheticCache(2, 3, 8, ropeB, plansB, 64, 5, 42));

  // --- blobs and profiles Python must refuse
  const bad = join(dir, 'bad');
  mkdirSync(bad);
  const stories = cases[0];
  const flipped = stories.nodeBlob.slice();
  flipped[Math.floor(flipped.length / 2)] ^= 0x10;
  writeFileSync(join(bad, 'flipped.kvtc'), flipped);
  writeFileSync(join(bad, 'truncated.kvtc'), stories.nodeBlob.subarray(0, stories.nodeBlob.length - 100));
  const withCrc = (b: Uint8Array) => {
    new DataView(b.buffer, b.byteOffset, b.byteLength).setUint32(b.length - 4, crc32(b.subarray(0, b.length - 4)) >>> 0, true);
    return b;
  };
  const huge = stories.nodeBlob.slice();
  new DataView(huge.buffer).setUint32(16, 0xffffffff, true); // tokens = 2^32 − 1, CRC recomputed
  writeFileSync(join(bad, 'huge-tokens.kvtc'), withCrc(huge));
  const many = stories.nodeBlob.slice();
  // one token fewer than encoded: within the model's context, but the plan sections hold another count
  new DataView(many.buffer).setUint32(16, new DataView(many.buffer).getUint32(16, true) - 1, true);
  writeFileSync(join(bad, 'many-tokens.kvtc'), withCrc(many));
  const far = stories.nodeBlob.slice();
  new DataView(far.buffer).setUint32(20, 4.29e9, true); // start_position 4.29e9: past the model's 512 positions (issue 22)
  writeFileSync(join(bad, 'far-position.kvtc'), withCrc(far));
  const patched = (name: string, edit: (b: Uint8Array, dv: DataView) => void) => {
    const b = stories.nodeBlob.slice();
    edit(b, new DataView(b.buffer));
    writeFileSync(join(bad, name), withCrc(b));
  };
  patched('flags.kvtc', (_b, dv) => dv.setUint16(6, 4, true));
  patched('reserved.kvtc', (b) => (b[44] = 1));
  patched('sink.kvtc', (_b, dv) => dv.setUint32(32, 3, true));
  patched('order.kvtc', (b) => {
    // swap the table entries of plans 0 and 1 (sections 1 and 2)
    const e1 = b.slice(HEADER_BYTES + 12, HEADER_BYTES + 24);
    b.copyWithin(HEADER_BYTES + 12, HEADER_BYTES + 24, HEADER_BYTES + 36);
    b.set(e1, HEADER_BYTES + 24);
  });
  const sized = stories.nodeBlob.slice();
  new DataView(sized.buffer).setUint32(HEADER_BYTES + 12 + 8, 0x7fffffff, true); // section 1 claims 2 GiB decoded
  writeFileSync(join(bad, 'huge-section.kvtc'), withCrc(sized));
  const badProfile = (name: string, edit: (manifest: Record<string, unknown>, tensors: Buffer) => void) => {
    const d = join(bad, name);
    cpSync(BUNDLED, d, { recursive: true });
    const manifest = JSON.parse(readFileSync(join(d, 'kvtc-profile.json'), 'utf8'));
    const tensors = readFileSync(join(d, 'kvtc-profile.safetensors'));
    edit(manifest, tensors);
    writeFileSync(join(d, 'kvtc-profile.json'), JSON.stringify(manifest, null, 2));
    writeFileSync(join(d, 'kvtc-profile.safetensors'), tensors);
    return d;
  };
  const v2 = badProfile('v2', (m) => {
    m.format_version = 4;
    m.producer = { name: 'kvtc', version: '9.0.0' };
  });
  const hacked = badProfile('hacked', (_m, t) => {
    t[t.length - 3] ^= 1;
  });
  const renamed = badProfile('renamed', (m) => {
    m.profile_id = '0123456789abcdef';
  });
  const nanPlans = bundled.plans.map((p, i) => (i === 1 ? { ...p, mean: Float32Array.from(p.mean, (v, k) => (k === 5 ? NaN : v)) } : p));
  const nanDir = await writeTestProfile(join(bad, 'nan'), bundled.manifest, { name: 'nan', layers: 5, kvHeads: 4, headDim: 8, rope: { theta: 10000, rotaryDim: 8, layout: 'half' }, sink: 4, window: 128, entropy: 'deflate-rle' }, nanPlans);

  const errors = [
    { name: 'version', op: 'read_profile', profile: v2 },
    { name: 'hash', op: 'read_profile', profile: hacked },
    { name: 'profile-id', op: 'read_profile', profile: renamed },
    { name: 'nan-tensor', op: 'read_profile', profile: nanDir },
    { name: 'missing', op: 'read_profile', profile: join(bad, 'nope') },
    { name: 'flipped', op: 'decode', profile: BUNDLED, blob: join(bad, 'flipped.kvtc') },
    { name: 'truncated', op: 'decode', profile: BUNDLED, blob: join(bad, 'truncated.kvtc') },
    { name: 'huge-tokens', op: 'decode', profile: BUNDLED, blob: join(bad, 'huge-tokens.kvtc') },
    { name: 'many-tokens', op: 'decode', profile: BUNDLED, blob: join(bad, 'many-tokens.kvtc') },
    { name: 'far-position', op: 'decode', profile: BUNDLED, blob: join(bad, 'far-position.kvtc') },
    { name: 'huge-section', op: 'decode', profile: BUNDLED, blob: join(bad, 'huge-section.kvtc') },
    { name: 'flags', op: 'decode', profile: BUNDLED, blob: join(bad, 'flags.kvtc') },
    { name: 'reserved', op: 'decode', profile: BUNDLED, blob: join(bad, 'reserved.kvtc') },
    { name: 'sink', op: 'decode', profile: BUNDLED, blob: join(bad, 'sink.kvtc') },
    { name: 'order', op: 'decode', profile: BUNDLED, blob: join(bad, 'order.kvtc') },
    { name: 'encode-outlier', op: 'encode_outlier', profile: BUNDLED, kv: stories.kv },
    { name: 'small-limit', op: 'decode', profile: BUNDLED, blob: stories.nodeBlobPath, max_output_bytes: 1000 },
    { name: 'foreign', op: 'decode', profile: dirA, blob: stories.nodeBlobPath },
    { name: 'encode-nan', op: 'encode_nan', profile: BUNDLED, kv: stories.kv },
    { name: 'encode-layers', op: 'encode_layers', profile: BUNDLED, kv: stories.kv },
    { name: 'cuda', op: 'decode_cuda', profile: BUNDLED, blob: stories.nodeBlobPath },
  ];
  const jobs = join(dir, 'jobs.json');
  writeFileSync(jobs, JSON.stringify({ cases: cases.map((c) => ({ profile: c.profileDir, kv: c.kv, node_blob: c.nodeBlobPath, prefix: c.prefix })), errors }));
  const r = python([DRIVER, jobs]);
  if (r.status !== 0) throw new Error(`driver.py failed (exit ${r.status}):\n${r.stderr}`);
  py = JSON.parse(r.stdout);
});

afterAll(async () => {
  for (const c of codecs.values()) await c.release();
  if (dir) rmSync(dir, { recursive: true, force: true });
});

describe('Python runtime (python/, package kvtc) against the Node codec', () => {
  it('installs offline (pip --no-build-isolation --no-deps) into a temporary --target dir and runs from there', () => {
    expect(py.kvtc_file.startsWith(site), `kvtc imported from ${py.kvtc_file}, not from ${site}`).toBe(true);
    const pyproject = readFileSync(join(PACKAGE_SRC, 'pyproject.toml'), 'utf8');
    expect(pyproject).toContain(`version = "${py.version}"`);
    expect(py.cases.length).toBe(cases.length);
    console.log(`[python-runtime] kvtc ${py.version} on NumPy ${py.numpy} (torch ${py.torch ? 'present' : 'absent'}), ${cases.length} cases`);
  });

  it('(1) reads every blob code for code as kvtc wrote it (plan_codes = the codes in the Node blob)', () => {
    let total = 0;
    for (const c of cases) {
      const res = py.cases.find((p) => p.prefix === c.prefix)!;
      const h = res.header;
      expect(h.tokens).toBe(c.cache.tokens);
      expect(h.start_position).toBe(c.cache.startPosition);
      expect(h.dtype).toBe(c.cache.dtype);
      expect(h.profile_id).toBe(c.profile.manifest.profile_id.slice(0, 16));
      const n = h.tokens - h.sink - h.window;
      const d = compareCodes(nodeCodes(c.nodeBlob, c.profile), pythonCodes(`${c.prefix}.node-codes.safetensors`, c.profile), c.profile, h.sink, n);
      expect(d.mismatched, `${c.name}: codes`).toBe(0);
      expect(d.mismatchedHalves, `${c.name}: dynamic offsets/scales`).toBe(0);
      total += d.codes;
    }
    expect(total).toBeGreaterThan(50_000);
    console.log(`[python-runtime] (1) ${total} codes read identically from ${cases.length} Node blobs`);
  });

  it('(2) decodes every blob within 1e-5 of `kvtc decode` (float16 caches: or the neighbouring fp16 value)', async () => {
    const lines: string[] = [];
    for (const c of cases) {
      const out = `${c.prefix}.node-decode.safetensors`;
      const r = await kvtc('decode', '--profile', c.profileDir, '--in', c.nodeBlobPath, '--out', out);
      expect(r.code, r.stderr).toBe(0);
      const node = readCache(out);
      const pyc = readCache(`${c.prefix}.py-decode.safetensors`);
      expect(pyc.dtype).toBe(c.cache.dtype);
      const d = compareCaches(node, pyc);
      expect(d.worst, `${c.name}: max |python − kvtc decode|`).toBeLessThanOrEqual(TOLERANCE);
      expect(d.fp16Neighbours, `${c.name}: fp16 values one step apart`).toBeLessThanOrEqual(Math.max(4, d.values * 1e-3));
      lines.push(`${c.name} ${d.worst.toExponential(2)}${d.fp16Neighbours ? ` (+${d.fp16Neighbours} fp16 neighbours)` : ''}`);
    }
    console.log(`[python-runtime] (2) max |python − kvtc decode|: ${lines.join(', ')}`);
  });

  it('(3) encodes blobs kvtc decodes: the same codes but at float32 rounding boundaries, and with bit_exact=True byte-identical to kvtc encode', async () => {
    const lines: string[] = [];
    for (const c of cases) {
      const pyBlob = new Uint8Array(readFileSync(`${c.prefix}.py.kvtc`));
      const nodeParsed = container(c.nodeBlob);
      const pyParsed = container(pyBlob);
      expect(pyParsed.header).toEqual(nodeParsed.header);
      const { sink, window, tokens } = nodeParsed.header;
      const d = compareCodes(nodeCodes(c.nodeBlob, c.profile), nodeCodes(pyBlob, c.profile), c.profile, sink, tokens - sink - window);
      // kvtc evaluates the static int case in float32 in its encode graph (docs/profile-format.md §5): a
      // coefficient within float32 rounding of a half-way point may get the neighbouring code there.
      if (d.mismatched || d.mismatchedHalves) console.log(`[python-runtime] ${c.name}: ${d.mismatched}/${d.codes} codes and ${d.mismatchedHalves}/${d.halves} fp16 offsets/scales differ (worst step ${d.worstStep}) in ${d.tokens.size} tokens: ${[...d.tokens].slice(0, 12).join(' ')}`);
      expect(d.worstStep, `${c.name}: code step`).toBeLessThanOrEqual(1);
      expect(d.mismatched, `${c.name}: codes that differ`).toBeLessThanOrEqual(Math.max(2, d.codes * 1e-4));
      expect(d.mismatchedHalves, `${c.name}: fp16 offsets/scales that differ`).toBeLessThanOrEqual(Math.max(2, d.halves * 5e-3));
      const identical = Buffer.from(pyBlob).equals(Buffer.from(c.nodeBlob));
      const sameSections = pyParsed.sections.every((s, i) => s.kind === nodeParsed.sections[i].kind && s.plan === nodeParsed.sections[i].plan && Buffer.from(s.data).equals(Buffer.from(nodeParsed.sections[i].data)));
      expect(pyParsed.sections.length).toBe(nodeParsed.sections.length);
      if (d.mismatched === 0 && d.mismatchedHalves === 0) {
        expect(sameSections, `${c.name}: inflated sections`).toBe(true);
        if (c.profile.manifest.settings.entropy !== 'deflate-default') expect(identical, `${c.name}: blob bytes`).toBe(true);
      }
      // kvtc decodes the Python blob; away from differing codes it equals kvtc's decode of its own blob.
      const codec = await codecFor(c.profileDir, c.profile);
      const fromPy = (await codec.decode(pyBlob)).cache;
      const fromNode = (await codec.decode(c.nodeBlob)).cache;
      const v = compareCaches(fromNode, fromPy, d.tokens);
      expect(v.worst, `${c.name}: kvtc decode of the Python blob vs of the Node blob`).toBeLessThanOrEqual(TOLERANCE);
      expect(v.fp16Neighbours).toBe(0);
      // bit_exact=True sums in kvtc's float32 order: the blob kvtc wrote, byte for byte (deflate-default: section for section).
      const exact = new Uint8Array(readFileSync(`${c.prefix}.py-exact.kvtc`));
      const exactParsed = container(exact);
      expect(exactParsed.sections.map((s) => Buffer.from(s.data).toString('base64')), `${c.name}: bit_exact sections`).toEqual(nodeParsed.sections.map((s) => Buffer.from(s.data).toString('base64')));
      if (c.profile.manifest.settings.entropy !== 'deflate-default') expect(Buffer.from(exact).equals(Buffer.from(c.nodeBlob)), `${c.name}: bit_exact blob bytes`).toBe(true);
      lines.push(`${c.name}: ${identical ? 'identical bytes' : sameSections ? 'same sections' : `${d.mismatched}/${d.codes} codes, ${d.mismatchedHalves}/${d.halves} fp16 offsets/scales differ`}`);
    }
    console.log(`[python-runtime] (3) python encode vs kvtc encode: ${lines.join('; ')}`);
  });

  it('(4) `python -m kvtc decode` writes the tensors `kvtc decode` writes; `python -m kvtc encode` the blob kvtc encode writes', async () => {
    for (const c of [cases.find((x) => x.name === 'stories-512')!, cases.find((x) => x.name === 'synthetic-a-fp16')!]) {
      const pyOut = `${c.prefix}.py-cli.safetensors`;
      const r = python(['-m', 'kvtc', 'decode', '--profile', c.profileDir, '--in', c.nodeBlobPath, '--out', pyOut, '--json']);
      expect(r.status, r.stderr).toBe(0);
      const j = JSON.parse(r.stdout);
      expect(j.tokens).toBe(c.cache.tokens);
      const nodeOut = `${c.prefix}.node-cli.safetensors`;
      expect((await kvtc('decode', '--profile', c.profileDir, '--in', c.nodeBlobPath, '--out', nodeOut)).code).toBe(0);
      const a = parseSafetensors(new Uint8Array(readFileSync(nodeOut)));
      const b = parseSafetensors(new Uint8Array(readFileSync(pyOut)));
      const layout = (f: typeof a) => [...f.tensors.entries()].map(([name, t]) => [name, t.dtype, t.shape.join('x')]);
      expect(layout(b)).toEqual(layout(a));
      expect(b.metadata.start_position).toBe(a.metadata.start_position);
      expect(b.metadata.dtype).toBe(a.metadata.dtype);
      expect(b.metadata.profile_id).toBe(a.metadata.profile_id);
      expect(compareCaches(readCache(nodeOut), readCache(pyOut)).worst).toBeLessThanOrEqual(TOLERANCE);
      // Refuses to overwrite without --force, with kvtc's error document.
      const again = python(['-m', 'kvtc', 'decode', '--profile', c.profileDir, '--in', c.nodeBlobPath, '--out', pyOut, '--json']);
      expect(again.status).toBe(1);
      expect(JSON.parse(again.stdout).error.code).toBe('OUTPUT_EXISTS');

      const blobOut = `${c.prefix}.py-cli.kvtc`;
      const e = python(['-m', 'kvtc', 'encode', '--profile', c.profileDir, '--kv', c.kv, '--out', blobOut]);
      expect(e.status, e.stderr).toBe(0);
      expect(Buffer.from(readFileSync(blobOut)).equals(Buffer.from(readFileSync(`${c.prefix}.py.kvtc`)))).toBe(true);
    }
    const bad = python(['-m', 'kvtc', 'decode', '--profile', BUNDLED, '--in', join(dir, 'bad', 'flipped.kvtc'), '--out', join(dir, 'x.safetensors'), '--json']);
    expect(bad.status).toBe(1);
    expect(JSON.parse(bad.stdout).error).toMatchObject({ code: 'BLOB_INVALID', message: expect.stringContaining('checksum') });
    expect(bad.stderr).toMatch(/^error \[BLOB_INVALID\]: .*checksum[^\n]*\n {2}fix: /);
    const usage = python(['-m', 'kvtc', 'decode', '--profile', BUNDLED, '--json']);
    expect(usage.status).toBe(2);
    expect(JSON.parse(usage.stdout).error.code).toBe('USAGE');
  });

  it('refuses bad profiles and blobs with KvtcError codes, messages and fixes, before allocating', () => {
    const err = (name: string) => py.errors.find((e) => e.name === name)!;
    const expectError = (name: string, code: string, message: RegExp) => {
      const e = err(name);
      expect(e.raised, `${name} raised nothing`).toBe(true);
      expect(e.code, `${name}: ${e.message}`).toBe(code);
      expect(e.message).toMatch(message);
      expect(e.fix, `${name} has no fix`).toBeTruthy();
    };
    expectError('version', 'PROFILE_VERSION', /format version 4; this kvtc Python package reads versions 1, 2 and 3/);
    expect(err('version').fix).toMatch(/kvtc 9\.0\.0/);
    expectError('hash', 'PROFILE_INVALID', /sha256/);
    expectError('profile-id', 'PROFILE_INVALID', /profile_id/);
    expectError('nan-tensor', 'PROFILE_INVALID', /plan 1 mean\[5\] \(tensor plan\.1\.mean\) = nan/);
    expectError('missing', 'PROFILE_INVALID', /does not exist/);
    expectError('flipped', 'BLOB_INVALID', /checksum/);
    expectError('truncated', 'BLOB_INVALID', /checksum|runs past/);
    expectError('huge-tokens', 'BLOB_INVALID', /4294967295 tokens; a kvtc blob holds at most 16777216/);
    expectError('many-tokens', 'BLOB_INVALID', /section 1 \(plan 0's section\) declares \d+ decoded bytes; this profile needs \d+/);
    expectError('far-position', 'BLOB_INVALID', /header start_position 4290000000 \+ \d+ tokens puts its last token at position \d+, but the model has 512 positions \(0–511, the profile's model\.max_positions\)/);
    expectError('flags', 'BLOB_INVALID', /flags 0x0004 set unknown bits/);
    expectError('reserved', 'BLOB_INVALID', /reserved header byte 44/);
    expectError('sink', 'BLOB_INVALID', /sink 3 and window 128/);
    expectError('order', 'BLOB_INVALID', /section 1 .*must be plan 0's section/);
    expectError('encode-outlier', 'KV_OUT_OF_RANGE', /far outside the range the profile was calibrated on/);
    expectError('huge-section', 'BLOB_INVALID', /declares 2147483647 decoded bytes/);
    expectError('small-limit', 'BLOB_INVALID', /max_output_bytes=1000/);
    expectError('foreign', 'BLOB_MISMATCH', /encoded with profile/);
    expectError('encode-nan', 'KV_INVALID', /is nan; a KV cache holds finite values/);
    expectError('encode-layers', 'PROFILE_MISMATCH', /4 layers, but the profile is for 5/);
    if (!py.torch) expectError('cuda', 'DEVICE_UNAVAILABLE', /needs PyTorch/);
    else expect(['DEVICE_UNAVAILABLE', undefined]).toContain(err('cuda').code);
  });

  it('reports its timings', () => {
    const t = py.cases.reduce((a, c) => ({ decode: a.decode + c.seconds.decode, encode: a.encode + c.seconds.encode }), { decode: 0, encode: 0 });
    console.log(`[python-runtime] python decode ${(t.decode * 1000).toFixed(1)} ms, encode ${(t.encode * 1000).toFixed(1)} ms over ${py.cases.length} cases (${basename(dir)})`);
    expect(t.decode).toBeGreaterThan(0);
  });
});
