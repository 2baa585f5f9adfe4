// Profile fuzzing (issue 10, "Untrusted profiles"): seeded, in-process mutations of the committed
// profile. Every mutated profile must either be refused by readProfile with a typed KvtcError
// (and fail validate), or read fine and then
//   - when its profile id is the committed one (nothing decoding uses changed), decode the blob
//     of a fixed cache to exactly the committed profile's values;
//   - otherwise (a re-signed edit: a different but well-formed profile), encode and decode the
//     fixed cache to finite values.
// Nothing may throw anything else, hang, or decode to NaN/Inf.
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { KvtcCodec } from '../../src/codec/codec.js';
import { KvtcError } from '../../src/errors.js';
import type { KvCache } from '../../src/model/types.js';
import { codecFromProfile } from '../../src/profile/codec-from-profile.js';
import { profileIdText } from '../../src/profile/id.js';
import { readProfile, type Profile } from '../../src/profile/read.js';
import { validateProfile } from '../../src/profile/validate.js';
import { rng } from '../codec/rng.js';
import {
  buildTensorFile,
  committed,
  editTensor,
  type Json,
  parseTensorFile,
  resign,
  syntheticCache,
  tempDir,
  writeFiles,
} from './helpers.js';

type Outcome = 'refused' | 'same' | 'finite';

interface Mutation {
  desc: string;
  manifest: Json | string | Buffer;
  tensors: Buffer;
  /** The only outcome allowed besides 'refused' ('refused' alone: must be refused). */
  allow: Outcome | 'refused';
}

const base = committed();
const baseText = JSON.stringify(base.manifest, null, 2);
let cache: KvCache;
let blob: Uint8Array;
let reference: KvCache;
let dirCounter = 0;
const root = tempDir('kvtc-fuzz-');
const tally: Record<string, Record<Outcome, number>> = {};

const bitsOf = (a: Float32Array) => Buffer.from(a.buffer, a.byteOffset, a.byteLength);

async function withCodec<T>(profile: Profile, fn: (c: KvtcCodec) => Promise<T>): Promise<T> {
  const codec = await codecFromProfile(profile, { transformThread: false });
  try {
    return await fn(codec);
  } finally {
    await codec.release();
  }
}

function expectFinite(c: KvCache, desc: string): void {
  for (const arrs of [c.keys, c.values]) {
    for (const [l, a] of arrs.entries()) {
      const i = a.findIndex((v) => !Number.isFinite(v));
      expect(i, `${desc}: decoded layer ${l} has ${a[i]} at ${i}`).toBe(-1);
    }
  }
}

/** Runs one mutated profile through readProfile, validate and the codec; returns what happened. */
async function run(mu: Mutation, group: string): Promise<Outcome> {
  const dir = writeFiles(join(root, `m${dirCounter++}`), mu.manifest, mu.tensors);
  let profile: Profile | undefined;
  let error: unknown;
  try {
    profile = await readProfile(dir);
  } catch (e) {
    error = e;
  }
  const v = await validateProfile(dir);
  let outcome: Outcome;
  if (!profile) {
    expect(error, `${mu.desc}: readProfile threw a non-KvtcError: ${String(error)}`).toBeInstanceOf(KvtcError);
    expect(['PROFILE_INVALID', 'PROFILE_VERSION'], mu.desc).toContain((error as KvtcError).code);
    expect(v.ok, `${mu.desc}: readProfile refused it but validate passed it`).toBe(false);
    outcome = 'refused';
  } else {
    expect(v.ok, `${mu.desc}: readProfile accepted it but validate failed ${JSON.stringify(v.checks.filter((c) => !c.ok))}`).toBe(true);
    expect(mu.allow, `${mu.desc}: must be refused, but readProfile accepted it`).not.toBe('refused');
    if (profile.manifest.profile_id === base.manifest.profile_id) {
      // Same id ⇒ same canonical text and tensors ⇒ the committed blob must decode identically.
      expect(profileIdText(profile.manifest), mu.desc).toBe(profileIdText(base.manifest));
      const { cache: out } = await withCodec(profile, (c) => c.decode(blob));
      for (let l = 0; l < reference.layers; l++) {
        expect(bitsOf(out.keys[l]).equals(bitsOf(reference.keys[l])), `${mu.desc}: keys of layer ${l} differ`).toBe(true);
        expect(bitsOf(out.values[l]).equals(bitsOf(reference.values[l])), `${mu.desc}: values of layer ${l} differ`).toBe(true);
      }
      outcome = 'same';
    } else {
      expect(mu.allow, `${mu.desc}: a new profile id, but only an identical decode was allowed`).toBe('finite');
      const out = await withCodec(profile, async (c) => (await c.decode((await c.encode(cache)).blob)).cache);
      expectFinite(out, mu.desc);
      outcome = 'finite';
    }
  }
  tally[group] ??= { refused: 0, same: 0, finite: 0 };
  tally[group][outcome]++;
  // KVTC_FUZZ_LOG=1 lists every mutation with its outcome (and the refusal's first line).
  if (process.env.KVTC_FUZZ_LOG)
    console.log(`[fuzz] ${outcome}: ${mu.desc}${error ? ` — ${(error as Error).message.split('\n')[0].slice(0, 160)}` : ''}`);
  return outcome;
}

// ---------------------------------------------------------------------------------------------
// Mutation generators (deterministic)

type Path = (string | number)[];

function paths(v: Json, at: Path = [], out: Path[] = []): Path[] {
  out.push(at);
  if (Array.isArray(v)) v.forEach((x, i) => paths(x, [...at, i], out));
  else if (v && typeof v === 'object') for (const k of Object.keys(v)) paths(v[k], [...at, k], out);
  return out;
}

function getAt(v: Json, p: Path): Json {
  return p.reduce((o, k) => o[k], v);
}

function setAt(v: Json, p: Path, x: Json): void {
  if (p.length === 0) throw new Error('root');
  getAt(v, p.slice(0, -1))[p[p.length - 1]] = x;
}

function deleteAt(v: Json, p: Path): void {
  const parent = getAt(v, p.slice(0, -1));
  if (Array.isArray(parent)) parent.splice(p[p.length - 1] as number, 1);
  else delete parent[p[p.length - 1]];
}

const ENUMS: Record<string, string[]> = {
  family: ['llama', 'mistral', 'qwen2'],
  kv_dtype: ['float32', 'float16'],
  layout: ['half', 'interleaved'],
  entropy: ['deflate-rle', 'deflate-huffman', 'deflate-default', 'stored'],
  kind: ['key', 'value'],
  type: ['int2', 'int4', 'int8', 'fp8'],
  mode: ['static', 'dynamic'],
};

/** Raw JSON tokens that JSON.stringify cannot write, substituted into the text. */
const RAW = ['1e400', '-1e400', '1e308', '-0', '9007199254740993', '0.1e1', '8.0'];

/** One random edit of the value at `p` (numbers, strings, arrays, objects; removed and added keys). */
function mutateAt(m: Json, p: Path, uniform: () => number): { desc: string; raw?: string } {
  const v = getAt(m, p);
  const name = p.join('.') || '(root)';
  const pick = <T>(xs: T[]): T => xs[Math.floor(uniform() * xs.length)];
  if (p.length > 0 && uniform() < 0.12) {
    deleteAt(m, p);
    return { desc: `delete ${name}` };
  }
  if (typeof v === 'number') {
    const ops: [string, () => Json][] = [
      ['+1', () => v + 1],
      ['-1', () => v - 1],
      ['×2', () => v * 2],
      ['0', () => 0],
      ['negated', () => -v],
      ['+0.5', () => v + 0.5],
      ['1e9', () => 1e9],
      ['as string', () => String(v)],
      ['null', () => null],
      ['true', () => true],
      ['[]', () => [v]],
    ];
    if (uniform() < 0.15) {
      const raw = pick(RAW);
      setAt(m, p, '__RAW__');
      return { desc: `${name} = ${raw} (raw)`, raw };
    }
    const [d, f] = pick(ops);
    setAt(m, p, f());
    return { desc: `${name} ${d}` };
  }
  if (typeof v === 'string') {
    const key = String(p[p.length - 1]);
    const alts = (ENUMS[key] ?? []).filter((x) => x !== v);
    const ops: [string, () => Json][] = [
      ['""', () => ''],
      ['+x', () => `${v}x`],
      ['upper', () => v.toUpperCase()],
      ['5', () => 5],
      ['null', () => null],
      ['first char flipped', () => (v ? String.fromCharCode(v.charCodeAt(0) ^ 1) + v.slice(1) : 'a')],
    ];
    if (alts.length) ops.push(['other enum value', () => pick(alts)], ['other enum value', () => pick(alts)]);
    const [d, f] = pick(ops);
    const x = f();
    setAt(m, p, x);
    return { desc: `${name} ${d} (${JSON.stringify(x)})` };
  }
  if (Array.isArray(v)) {
    const ops: [string, () => Json][] = [
      ['drop last', () => v.slice(0, -1)],
      ['duplicate first', () => (v.length ? [v[0], ...v] : [0])],
      ['reversed', () => [...v].reverse()],
      ['emptied', () => []],
      ['append 0', () => [...v, 0]],
      ['as object', () => ({})],
      ['swap first two', () => (v.length > 1 ? [v[1], v[0], ...v.slice(2)] : v)],
    ];
    const [d, f] = pick(ops);
    if (p.length === 0) return { desc: 'noop' };
    setAt(m, p, structuredClone(f()));
    return { desc: `${name} ${d}` };
  }
  if (v && typeof v === 'object') {
    const keys = Object.keys(v);
    const ops: [string, () => void][] = [
      ['extra key', () => (v.extra_key = 1)],
      ['remove a key', () => keys.length && delete v[pick(keys)]],
      ['as array', () => p.length && setAt(m, p, [])],
      ['null', () => p.length && setAt(m, p, null)],
    ];
    const [d, f] = pick(ops);
    f();
    return { desc: `${name} ${d}` };
  }
  setAt(m, p, 0);
  return { desc: `${name} (${JSON.stringify(v)}) = 0` };
}

function manifestMutation(seed: number, opts: { resign: boolean; within?: (p: Path) => boolean }): Mutation {
  const { uniform } = rng(seed);
  const m = structuredClone(base.manifest);
  const all = paths(m).filter((p) => p.length > 0 && (!opts.within || opts.within(p)));
  const p = all[Math.floor(uniform() * all.length)];
  const { desc, raw } = mutateAt(m, p, uniform);
  let manifest: Json = m;
  if (opts.resign) {
    try {
      manifest = resign(m, base.tensors);
    } catch {
      // Too broken to compute an id for: keep the committed one.
    }
  }
  const text = JSON.stringify(manifest, null, 2);
  return {
    desc: `${opts.resign ? 'resigned ' : ''}manifest #${seed}: ${desc}`,
    manifest: raw ? text.replace('"__RAW__"', raw) : text,
    tensors: base.tensors,
    allow: opts.resign ? 'finite' : 'same',
  };
}

/** Text-level manifest edits JSON.stringify cannot produce. */
function textMutations(): Mutation[] {
  const t = baseText;
  const cases: [string, string | Buffer][] = [
    ['duplicated key (sink)', t.replace('"sink": 4,', '"sink": 4, "sink": 5,')],
    ['duplicated key (same value)', t.replace('"sink": 4,', '"sink": 4, "sink": 4,')],
    ['truncated', t.slice(0, t.length >> 1)],
    ['trailing garbage', `${t}garbage`],
    ['UTF-8 BOM', `\ufeff${t}`],
    ['deeply nested', `${'['.repeat(100_000)}${']'.repeat(100_000)}`],
    ['empty', ''],
    ['not an object', '[1, 2, 3]'],
    ['invalid UTF-8', Buffer.concat([Buffer.from([0xff, 0xfe]), Buffer.from(t)])],
    ['CRLF line endings', t.replace(/\n/g, '\r\n')],
    ['minified', JSON.stringify(base.manifest)],
  ];
  // Formatting changes nothing: 'same' is allowed; a duplicated key (JSON readers disagree on which counts) and bytes that are not UTF-8 are refused.
  return cases.map(([d, text]) => ({
    desc: `text: ${d}`,
    manifest: text,
    tensors: base.tensors,
    allow: /duplicated|invalid UTF-8/.test(d) ? ('refused' as const) : ('same' as const),
  }));
}

/**
 * Issue 22's tighter reader, seeded: in a random manifest string, bytes that are not UTF-8; a
 * random key of a random object repeated (same or another value); each informational number set
 * to a value kvtc cannot produce. Each must be refused — except 0 for a relative error, a value
 * kvtc can write (a lossless layer), which may decode as the committed profile does.
 */
function strictnessMutations(seed: number): Mutation[] {
  const { uniform } = rng(seed);
  const int = (n: number) => Math.floor(uniform() * n);
  const out: Mutation[] = [];
  const text = Buffer.from(baseText);
  // Invalid UTF-8: a lone continuation, an overlong form, a surrogate, past U+10FFFF, 0xff, a cut sequence.
  const bad = [
    [0x80],
    [0xc0, 0xaf],
    [0xe0, 0x80, 0xaf],
    [0xed, 0xa0, 0x80],
    [0xf4, 0x90, 0x80, 0x80],
    [0xff],
    [0xe2, 0x82],
    [0xf8, 0x88, 0x80, 0x80, 0x80],
  ];
  const strings = [...baseText.matchAll(/: "([^"\\]+)"/g)].map((m) => Buffer.byteLength(baseText.slice(0, m.index! + 3)));
  for (let k = 0; k < 24; k++) {
    const at = strings[int(strings.length)] + int(3);
    const seq = Buffer.from(bad[k % bad.length]);
    out.push({
      desc: `strict: bytes ${seq.toString('hex')} inside a manifest string at byte ${at}`,
      manifest: Buffer.concat([text.subarray(0, at), seq, text.subarray(at)]),
      tensors: base.tensors,
      allow: 'refused',
    });
  }
  // Duplicate keys: repeat a random member of a random object, before or after itself.
  const objects = paths(base.manifest).filter((p) => {
    const v = getAt(base.manifest, p);
    return v && typeof v === 'object' && !Array.isArray(v) && Object.keys(v).length > 0;
  });
  for (let k = 0; k < 24; k++) {
    const p = objects[int(objects.length)];
    const keys = Object.keys(getAt(base.manifest, p));
    const key = keys[int(keys.length)];
    const m = structuredClone(base.manifest);
    const obj = getAt(m, p);
    const value = k % 2 ? obj[key] : 12345;
    // A marker key, renamed in the text to `key`: JSON.stringify cannot write a duplicate itself.
    const rebuilt: Json = {};
    const before = uniform() < 0.5;
    for (const name of keys) {
      if (name === key && before) rebuilt['__DUP__'] = value;
      rebuilt[name] = obj[name];
      if (name === key && !before) rebuilt['__DUP__'] = value;
    }
    if (p.length) setAt(m, p, rebuilt);
    const t = JSON.stringify(p.length ? m : rebuilt, null, 2).replace('"__DUP__"', JSON.stringify(key));
    out.push({
      desc: `strict: key ${[...p, key].join('.')} repeated ${before ? 'before' : 'after'} itself (${k % 2 ? 'same' : 'another'} value)`,
      manifest: t,
      tensors: base.tensors,
      allow: 'refused',
    });
  }
  // Informational numbers: every numeric leaf of measured and calibration, and settings' and the model's informational ones.
  const informational = paths(base.manifest).filter(
    (p) =>
      typeof getAt(base.manifest, p) === 'number' &&
      (p[0] === 'measured' ||
        p[0] === 'calibration' ||
        (p[0] === 'settings' && ['ratio_target', 'tokens', 'heldout', 'report', 'chunk', 'granule'].includes(String(p[1]))) ||
        (p[0] === 'model' && p[1] === 'heads')),
  );
  const values: [string, string][] = [
    ['negative', '-1'],
    ['0', '0'],
    ['2^53', '9007199254740992'],
    ['1e308', '1e308'],
    ['"NaN" (a string)', '"NaN"'],
    ['-0.5', '-0.5'],
  ];
  for (let k = 0; k < 60; k++) {
    const p = informational[int(informational.length)];
    const [name, raw] = values[int(values.length)];
    const m = structuredClone(base.manifest);
    setAt(m, p, '__RAW__');
    const relError = p[0] === 'measured' && !['context_tokens', 'ratio_compressed', 'ratio_blob'].includes(String(p[1]));
    out.push({
      desc: `strict: ${p.join('.')} = ${name}`,
      manifest: JSON.stringify(m, null, 2).replace('"__RAW__"', raw),
      tensors: base.tensors,
      allow: relError && raw === '0' ? 'same' : 'refused',
    });
  }
  return out;
}

/** Targeted edits of every field decoding uses, id not re-derived: each must be refused. */
function decodeFieldMutations(): Mutation[] {
  const edits: [string, (m: Json) => void][] = [
    ['plans[0].layers = [7]', (m) => (m.plans[0].layers = [7])],
    ['rotary_dim 7', (m) => (m.model.rope.rotary_dim = 7)],
    ['rotary_dim 16', (m) => (m.model.rope.rotary_dim = 16)],
    ['rotary_dim 6', (m) => (m.model.rope.rotary_dim = 6)],
    ['theta 20000', (m) => (m.model.rope.theta = 20000)],
    ['layout interleaved', (m) => (m.model.rope.layout = 'interleaved')],
    ['linear scaling', (m) => (m.model.rope.scaling = { type: 'linear', factor: 2 })],
    ['sink 5', (m) => (m.settings.sink = 5)],
    ['window 64', (m) => (m.settings.window = 64)],
    ['entropy stored', (m) => (m.settings.entropy = 'stored')],
    ['kv_dtype float16', (m) => (m.model.kv_dtype = 'float16')],
    ['plans 0 and 1 swapped', (m) => ([m.plans[0], m.plans[1]] = [m.plans[1], m.plans[0]])],
    [
      'plans 0 and 2 swapped and renumbered',
      (m) => (([m.plans[0], m.plans[2]] = [m.plans[2], m.plans[0]]), (m.plans[0].index = 0), (m.plans[2].index = 2)),
    ],
    ['tensor names of plans 1 and 3 swapped', (m) => ([m.plans[1].tensors, m.plans[3].tensors] = [m.plans[3].tensors, m.plans[1].tensors])],
    ['plans[1].index 0', (m) => (m.plans[1].index = 0)],
    ['bits_per_token +1', (m) => (m.plans[0].bits_per_token += 1)],
    ['budget_bits +1', (m) => (m.plans[0].budget_bits += 1)],
    [
      'group type int2 → int4 with bits fixed',
      (m) => ((m.plans[3].groups[0].type = 'int4'), (m.plans[3].bits_per_token = m.plans[3].budget_bits = 52)),
    ],
    [
      'group mode dynamic with bits fixed',
      (m) => ((m.plans[3].groups[0].mode = 'dynamic'), (m.plans[3].bits_per_token = m.plans[3].budget_bits = 58)),
    ],
    ['tensors.bytes +1', (m) => (m.tensors.bytes += 1)],
    ['tensors.sha256 changed', (m) => (m.tensors.sha256 = `0${m.tensors.sha256.slice(1)}`)],
    ['profile_id changed', (m) => (m.profile_id = '0123456789abcdef')],
    ['old-rule profile_id', (m) => (m.profile_id = m.tensors.sha256.slice(0, 16))],
    ['model.layers 4', (m) => (m.model.layers = 4)],
    ['model.head_dim 4', (m) => (m.model.head_dim = 4)],
  ];
  return edits.map(([d, f]) => {
    const m = structuredClone(base.manifest);
    f(m);
    return { desc: `decode field: ${d}`, manifest: m, tensors: base.tensors, allow: 'refused' as const };
  });
}

/** Well-formed edits of the fields decoding uses, id re-derived: different profiles that must decode to finite values. */
function validDecodeFieldEdits(): Mutation[] {
  const edits: [string, (m: Json) => void][] = [
    ['sink 5', (m) => (m.settings.sink = 5)],
    ['sink 0', (m) => (m.settings.sink = 0)],
    ['window 64', (m) => (m.settings.window = 64)],
    ['window 0 and sink 0', (m) => ((m.settings.window = 0), (m.settings.sink = 0))],
    // (the measured contexts must still have compressed tokens: the 'figures' check)
    ['sink 1000 (every token raw)', (m) => ((m.settings.sink = 1000), (m.measured.context_tokens = 2048))],
    ['entropy stored', (m) => (m.settings.entropy = 'stored')],
    ['entropy deflate-huffman', (m) => (m.settings.entropy = 'deflate-huffman')],
    ['theta 500000', (m) => (m.model.rope.theta = 500000)],
    ['layout interleaved', (m) => (m.model.rope.layout = 'interleaved')],
    ['rotary_dim 2 (partial rotary)', (m) => (m.model.rope.rotary_dim = 2)],
    ['linear scaling ×4', (m) => (m.model.rope.scaling = { type: 'linear', factor: 4 })],
    [
      'llama3 scaling',
      (m) =>
        (m.model.rope.scaling = {
          type: 'llama3',
          factor: 8,
          low_freq_factor: 1,
          high_freq_factor: 4,
          original_max_position_embeddings: 64,
        }),
    ],
    ['kv_dtype float16', (m) => (m.model.kv_dtype = 'float16')],
    ['budget_bits +1', (m) => (m.plans[0].budget_bits += 1)],
    [
      'plans 0 and 2 swapped and renumbered',
      (m) => (([m.plans[0], m.plans[2]] = [m.plans[2], m.plans[0]]), (m.plans[0].index = 0), (m.plans[2].index = 2)),
    ],
    [
      'tensor names of plans 3 and 5 swapped (same shapes)',
      (m) => ([m.plans[3].tensors, m.plans[5].tensors] = [m.plans[5].tensors, m.plans[3].tensors]),
    ],
    [
      'group int2 → fp8 static, bits fixed',
      (m) => ((m.plans[3].groups[0].type = 'fp8'), (m.plans[3].bits_per_token = m.plans[3].budget_bits = 104)),
    ],
    [
      'group int2 → int8 dynamic, bits fixed',
      (m) => (
        (m.plans[3].groups[0].type = 'int8'),
        (m.plans[3].groups[0].mode = 'dynamic'),
        (m.plans[3].bits_per_token = m.plans[3].budget_bits = 136)
      ),
    ],
    [
      'first group dropped (a gap), bits fixed',
      (m) => ((m.plans[0].groups = m.plans[0].groups.slice(1)), (m.plans[0].bits_per_token = 14)),
    ],
  ];
  return edits.map(([d, f]) => {
    const m = structuredClone(base.manifest);
    f(m);
    return { desc: `valid decode-field edit: ${d}`, manifest: resign(m, base.tensors), tensors: base.tensors, allow: 'finite' as const };
  });
}

/** Header length, truncation, junk, bit flips — the manifest left as it is: each must be refused. */
function rawTensorMutations(count: number, seed: number): Mutation[] {
  const { uniform } = rng(seed);
  const out: Mutation[] = [];
  const t = base.tensors;
  const n = Number(t.readBigUInt64LE(0));
  for (let k = 0; k < count; k++) {
    const u = Buffer.from(t);
    let desc: string;
    let bytes: Buffer = u;
    switch (k % 5) {
      case 0: {
        const at = Math.floor(uniform() * u.length);
        u[at] ^= 1 << Math.floor(uniform() * 8);
        desc = `bit flip at ${at}`;
        break;
      }
      case 1: {
        const len = Math.floor(uniform() * t.length);
        bytes = u.subarray(0, len);
        desc = `truncated to ${len}`;
        break;
      }
      case 2: {
        const junk = Buffer.alloc(1 + Math.floor(uniform() * 64), 0x20);
        bytes = Buffer.concat([u, junk]);
        desc = `${junk.length} junk bytes appended`;
        break;
      }
      case 3: {
        const d = [-8, -1, 1, 8, 16][Math.floor(uniform() * 5)];
        u.writeBigUInt64LE(BigInt(n + d));
        desc = `header length ${n} → ${n + d}`;
        break;
      }
      default: {
        const at = 8 + Math.floor(uniform() * n);
        u[at] ^= 1 << Math.floor(uniform() * 8);
        desc = `bit flip in the header at ${at}`;
      }
    }
    out.push({ desc: `raw tensors #${k}: ${desc}`, manifest: base.manifest, tensors: bytes, allow: 'refused' });
  }
  return out;
}

/** Tensor-file edits with sha256, bytes and profile id re-derived, so they pass the hash gate. */
function signedTensorMutations(count: number, seed: number): Mutation[] {
  const { uniform, normal } = rng(seed);
  const t = base.tensors;
  const f = parseTensorFile(t);
  const names = Object.keys(f.header).filter((x) => x !== '__metadata__');
  const n = f.dataStart - 8;
  const pick = <T>(xs: T[]): T => xs[Math.floor(uniform() * xs.length)];
  const out: Mutation[] = [];
  for (let k = 0; k < count; k++) {
    let bytes: Buffer;
    let desc: string;
    const name = pick(names);
    switch (k % 12) {
      case 0: {
        const at = f.dataStart + Math.floor(uniform() * f.data.length);
        bytes = Buffer.from(t);
        bytes[at] ^= 1 << Math.floor(uniform() * 8);
        desc = `data bit flip at ${at}`;
        break;
      }
      case 1: {
        const at = 8 + Math.floor(uniform() * n);
        bytes = Buffer.from(t);
        bytes[at] ^= 1 << Math.floor(uniform() * 8);
        desc = `header bit flip at ${at} (${JSON.stringify(String.fromCharCode(t[at]))})`;
        break;
      }
      case 2: {
        const special = pick([Number.NaN, Number.POSITIVE_INFINITY, Number.NEGATIVE_INFINITY, 1e30, -3.4e38, 1e13]);
        bytes = editTensor(t, name, (v) => (v[Math.floor(uniform() * v.length)] = special));
        desc = `${name}[random] = ${special}`;
        break;
      }
      case 3: {
        const s = pick([1.01, 2, 0.5, 1 + 1e-3, -1]);
        bytes = editTensor(t, name, (v) => v.forEach((x, i) => (v[i] = x * s)));
        desc = `${name} scaled by ${s}`;
        break;
      }
      case 4: {
        const d = normal() * 0.1;
        bytes = editTensor(t, name, (v) => (v[Math.floor(uniform() * v.length)] += d));
        desc = `${name}[random] += ${d.toFixed(3)}`;
        break;
      }
      case 5: {
        const basis = pick(names.filter((x) => x.endsWith('.basis')));
        bytes = editTensor(t, basis, (v, shape) => {
          const [p, r] = shape;
          const a = Math.floor(uniform() * r);
          const b = (a + 1) % r;
          for (let i = 0; i < p; i++) [v[i * r + a], v[i * r + b]] = [v[i * r + b], v[i * r + a]];
        });
        desc = `${basis}: two columns swapped (still orthonormal)`;
        break;
      }
      case 6: {
        const len = 8 + Math.floor(uniform() * (t.length - 8));
        bytes = t.subarray(0, len);
        desc = `truncated to ${len}`;
        break;
      }
      case 7: {
        bytes = Buffer.concat([t, Buffer.alloc(1 + Math.floor(uniform() * 16))]);
        desc = `${bytes.length - t.length} junk bytes appended`;
        break;
      }
      case 8: {
        const d = pick([-8, -1, 1, 7, 8, 16]);
        bytes = Buffer.from(t);
        bytes.writeBigUInt64LE(BigInt(n + d));
        desc = `header length ${n} → ${n + d}`;
        break;
      }
      case 9: {
        const h = structuredClone(f.header);
        const op = pick(['extra tensor', 'drop tensor', 'F16', 'shape', 'offsets +4', 'extra field', 'rename', 'metadata number']);
        let data: Buffer = Buffer.from(f.data);
        switch (op) {
          case 'extra tensor':
            h.zz_extra = { dtype: 'F32', shape: [1], data_offsets: [data.length, data.length + 4] };
            data = Buffer.concat([data, Buffer.alloc(4)]);
            break;
          case 'drop tensor':
            delete h[name];
            break;
          case 'F16':
            h[name].dtype = 'F16';
            break;
          case 'shape':
            h[name].shape = [...h[name].shape, 1].reverse();
            break;
          case 'offsets +4':
            h[name].data_offsets = h[name].data_offsets.map((x: number) => x + 4);
            break;
          case 'extra field':
            h[name].extra = 1;
            break;
          case 'rename':
            h[`${name}x`] = h[name];
            delete h[name];
            break;
          default:
            h.__metadata__ = { ...h.__metadata__, n: 1 };
        }
        bytes = buildTensorFile(h, data);
        desc = `header rewritten: ${op} (${name})`;
        break;
      }
      case 10: {
        const lo = pick(names.filter((x) => x.endsWith('.lo')));
        bytes = editTensor(t, lo, (v) => (v[0] = 1e6));
        desc = `${lo}[0] = 1e6 (lo > hi)`;
        break;
      }
      default: {
        const h = structuredClone(f.header);
        h.__metadata__ = { ...h.__metadata__, note: 'x'.repeat(Math.floor(uniform() * 20)) };
        bytes = buildTensorFile(h, f.data);
        desc = 'metadata string added (harmless)';
      }
    }
    out.push({ desc: `signed tensors #${k}: ${desc}`, manifest: resign(base.manifest, bytes), tensors: bytes, allow: 'finite' });
  }
  return out;
}

// ---------------------------------------------------------------------------------------------

beforeAll(async () => {
  cache = syntheticCache(156, 7, 11);
  const p = await readProfile(writeFiles(join(root, 'base'), baseText, base.tensors));
  await withCodec(p, async (c) => {
    blob = (await c.encode(cache)).blob;
    reference = (await c.decode(blob)).cache;
  });
  expectFinite(reference, 'reference');
});

afterAll(() => {
  console.log(`[profile-fuzz] outcomes: ${JSON.stringify(tally)}`);
});

describe('profile fuzzing (seeded, in-process)', () => {
  it('manifest edits of every kind, id not re-derived: refused, or (nothing decoding uses changed) an identical decode', async () => {
    const muts = [...Array.from({ length: 170 }, (_, i) => manifestMutation(1000 + i, { resign: false })), ...textMutations()];
    for (const mu of muts) await run(mu, 'manifest');
    expect(tally.manifest.refused).toBeGreaterThan(40);
    expect(tally.manifest.same).toBeGreaterThan(10);
  });

  it('strict UTF-8, unique keys and informational ranges (issue 22): invalid bytes, repeated keys and impossible figures all refused', async () => {
    const muts = strictnessMutations(2200);
    for (const mu of muts) {
      const outcome = await run(mu, 'strictness');
      if (mu.allow === 'refused') expect(outcome, mu.desc).toBe('refused');
    }
    expect(tally.strictness.refused).toBeGreaterThan(100);
  });

  it('edits of the fields decoding uses, id not re-derived: all refused', async () => {
    for (const mu of decodeFieldMutations()) expect(await run(mu, 'decode fields')).toBe('refused');
  });

  it('edits of the fields decoding uses, id re-derived: refused, or a well-formed profile that decodes to finite values', async () => {
    const within = (p: Path) =>
      p[0] === 'plans' ||
      (p[0] === 'model' && ['layers', 'kv_heads', 'head_dim', 'kv_dtype', 'rope'].includes(String(p[1]))) ||
      (p[0] === 'settings' && ['sink', 'window', 'entropy'].includes(String(p[1])));
    for (let i = 0; i < 70; i++) await run(manifestMutation(5000 + i, { resign: true, within }), 'resigned manifest');
    expect(tally['resigned manifest'].refused).toBeGreaterThan(20);
    for (const mu of validDecodeFieldEdits()) expect(await run(mu, 'valid decode-field edits'), mu.desc).toBe('finite');
  });

  it('tensor-file bit flips, truncation, junk and header lengths, manifest as it is: all refused', async () => {
    for (const mu of rawTensorMutations(45, 77)) expect(await run(mu, 'raw tensors')).toBe('refused');
  });

  it('tensor-file edits with sha256 and profile id re-derived (past the hash gate): refused, or finite decodes', async () => {
    for (const mu of signedTensorMutations(110, 99)) await run(mu, 'signed tensors');
    expect(tally['signed tensors'].refused).toBeGreaterThan(40);
    expect(tally['signed tensors'].finite).toBeGreaterThan(10);
  });

  it('ran at least 300 mutated profiles', () => {
    const total = Object.values(tally).reduce((a, t) => a + t.refused + t.same + t.finite, 0);
    expect(total).toBeGreaterThanOrEqual(300);
  });
});
