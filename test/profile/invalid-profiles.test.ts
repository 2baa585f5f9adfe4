// The invalid profiles a fuzzer found `kvtc validate` accepting (issue 10, "Untrusted profiles"),
// and their relatives, as a table: readProfile (which decode, encode and evaluate use) refuses
// each with a typed PROFILE_INVALID naming the problem, and validate fails the named check.
// Edits to manifest fields decoding uses are re-signed (profile id, sha256 and bytes recomputed)
// unless the row is about the signature itself, so the specific check is what catches them.
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { KvtcError } from '../../src/errors.js';
import { DEFAULT_MODEL_DIR } from '../../src/paths.js';
import { readProfile } from '../../src/profile/read.js';
import { validateProfile } from '../../src/profile/validate.js';
import { kvtc } from '../model/helpers.js';
import {
  buildTensorFile,
  committed,
  editTensor,
  type Json,
  parseTensorFile,
  PROFILE,
  resign,
  TENSORS,
  tempDir,
  writeFiles,
} from './helpers.js';

/** A profile from the committed one: `manifest` edits the manifest, `tensors` the tensor bytes; re-signed unless `sign` is false. */
function make(opts: {
  manifest?: (m: Json) => void;
  tensors?: (t: Buffer) => Buffer;
  sign?: boolean;
  raw?: (text: string) => string;
}): string {
  const c = committed();
  const m = structuredClone(c.manifest);
  opts.manifest?.(m);
  const t = opts.tensors ? opts.tensors(Buffer.from(c.tensors)) : c.tensors;
  const signed = opts.sign === false ? m : resign(m, t);
  const text = JSON.stringify(signed, null, 2);
  return writeFiles(join(tempDir(), 'p'), opts.raw ? opts.raw(text) : text, t);
}

/** Rewrites the tensor file's header (the data is kept unless `data` is given). */
function rewriteHeader(t: Buffer, edit: (h: Record<string, Json>) => void, data?: (d: Buffer) => Buffer): Buffer {
  const f = parseTensorFile(t);
  edit(f.header);
  return buildTensorFile(f.header, data ? data(Buffer.from(f.data)) : f.data);
}

interface Case {
  name: string;
  dir: () => string;
  check: string;
  message: RegExp;
  code?: string;
}

const CASES: Case[] = [
  // --- the plans
  {
    name: 'plans[0].layers = [7] (an out-of-range layer)',
    dir: () => make({ manifest: (m) => (m.plans[0].layers = [7]) }),
    check: 'plans',
    message: /plans\[0\]\.layers\[0\] = 7 is not a layer of the model/,
  },
  {
    name: 'a layer covered twice for one kind',
    dir: () => make({ manifest: (m) => (m.plans[2].layers = [0]) }),
    check: 'plans',
    message: /key layer 0 is already covered/,
  },
  {
    name: 'plans[1].index = 0 (index ≠ position)',
    dir: () => make({ manifest: (m) => (m.plans[1].index = 0) }),
    check: 'plans',
    message: /plans\[1\]\.index is 0/,
  },
  {
    name: 'plans 0 and 1 swapped (their indexes now ≠ positions)',
    dir: () => make({ manifest: (m) => ([m.plans[0], m.plans[1]] = [m.plans[1], m.plans[0]]) }),
    check: 'plans',
    message: /plans\[0\]\.index is 1/,
  },
  {
    name: 'a plan dim that is not len(layers)·kv_heads·head_dim',
    dir: () => make({ manifest: (m) => (m.plans[3].dim = 64) }),
    check: 'plans',
    message: /plans\[3\]\.dim is 64/,
  },
  {
    name: 'rank > dim',
    dir: () => make({ manifest: (m) => (m.plans[0].rank = 33) }),
    check: 'plans',
    message: /rank 33 exceeds its dim 32/,
  },
  {
    name: 'bits_per_token not what the groups use',
    dir: () => make({ manifest: (m) => (m.plans[0].bits_per_token += 1) }),
    check: 'bits per token',
    message: /plans\[0\]\.bits_per_token is 27, but its groups use 26/,
  },
  {
    name: 'bits over the budget',
    dir: () => make({ manifest: (m) => (m.plans[4].budget_bits = 20) }),
    check: 'bit budget',
    message: /plans\[4\] uses 26 bits per token, over its budget_bits 20/,
  },
  {
    name: 'overlapping groups',
    dir: () => make({ manifest: (m) => (m.plans[0].groups[1].start = 2) }),
    check: 'groups',
    message: /plans\[0\]\.groups\[1\] starts at 2/,
  },
  {
    name: 'a group past the rank',
    dir: () => make({ manifest: (m) => (m.plans[0].groups[1].end = 11) }),
    check: 'groups',
    message: /ends at 11, past the rank 10/,
  },
  {
    name: 'groups that stop before the rank',
    dir: () => make({ manifest: (m) => (m.plans[0].groups[1].end = 9) }),
    check: 'groups',
    message: /last group ends at 9, but the rank is 10/,
  },
  {
    name: 'a head_dim and rotary_dim of 2^40 (nothing may be sized by them)',
    dir: () => make({ manifest: (m) => ((m.model.head_dim = 2 ** 40), (m.model.rope.rotary_dim = 2 ** 40)) }),
    check: 'limits',
    message: /model\.head_dim = 1099511627776 exceeds 65535/,
  },
  {
    name: 'model.layers beyond the blob header (u16)',
    dir: () => make({ manifest: (m) => (m.model.layers = 70000) }),
    check: 'limits',
    message: /model\.layers = 70000 exceeds 65535/,
  },
  // --- RoPE
  {
    name: 'rope.rotary_dim = 7 (odd)',
    dir: () => make({ manifest: (m) => (m.model.rope.rotary_dim = 7) }),
    check: 'rope',
    message: /rotary_dim = 7 is odd/,
  },
  {
    name: 'rope.rotary_dim = 16 (> head_dim)',
    dir: () => make({ manifest: (m) => (m.model.rope.rotary_dim = 16) }),
    check: 'rope',
    message: /rotary_dim = 16 exceeds model\.head_dim 8/,
  },
  {
    name: 'llama3 scaling with high_freq_factor = low_freq_factor (a division by zero)',
    dir: () =>
      make({
        manifest: (m) =>
          (m.model.rope.scaling = {
            type: 'llama3',
            factor: 8,
            low_freq_factor: 2,
            high_freq_factor: 2,
            original_max_position_embeddings: 8192,
          }),
      }),
    check: 'rope',
    message: /high_freq_factor 2 must be greater than low_freq_factor 2/,
  },
  {
    name: 'llama3 scaling without original_max_position_embeddings',
    dir: () => make({ manifest: (m) => (m.model.rope.scaling = { type: 'llama3', factor: 8, low_freq_factor: 1, high_freq_factor: 4 }) }),
    check: 'rope',
    message: /original_max_position_embeddings is missing/,
  },
  // --- the profile id
  {
    name: 'settings.sink edited, profile id not re-derived',
    dir: () => make({ manifest: (m) => (m.settings.sink = 5), sign: false }),
    check: 'profile id',
    message: /does not match .* \(expected [0-9a-f]{16}\)/,
  },
  {
    name: 'a profile_id that matches nothing',
    dir: () => make({ manifest: (m) => (m.profile_id = '0123456789abcdef'), sign: false }),
    check: 'profile id',
    message: /profile_id 0123456789abcdef does not match/,
  },
  {
    name: 'an id by the old rule (the tensor hash alone)',
    dir: () => make({ manifest: (m) => (m.profile_id = m.tensors.sha256.slice(0, 16)), sign: false }),
    check: 'profile id',
    message: /follows the old rule/,
  },
  {
    name: 'plans swapped and renumbered, id not re-derived',
    dir: () =>
      make({
        manifest: (m) => {
          [m.plans[0], m.plans[1]] = [m.plans[1], m.plans[0]];
          m.plans[0].index = 0;
          m.plans[1].index = 1;
        },
        sign: false,
      }),
    check: 'profile id',
    message: /does not match/,
  },
  {
    name: 'settings.entropy edited, id not re-derived',
    dir: () => make({ manifest: (m) => (m.settings.entropy = 'stored'), sign: false }),
    check: 'profile id',
    message: /does not match/,
  },
  {
    name: 'a group type edited (bits kept consistent), id not re-derived',
    dir: () =>
      make({
        manifest: (m) => ((m.plans[0].groups[1].type = 'int4'), (m.plans[0].bits_per_token = m.plans[0].budget_bits = 40)),
        sign: false,
      }),
    check: 'profile id',
    message: /does not match/,
  },
  {
    name: "a tensor name with a space (it would break the profile id's canonical text)",
    dir: () => make({ manifest: (m) => (m.plans[0].tensors.mean = 'plan 0 mean') }),
    check: 'schema',
    message: /plans\.0\.tensors\.mean/,
  },
  // --- the tensor file
  {
    name: 'tensors.bytes wrong',
    dir: () => make({ manifest: (m) => (m.tensors.bytes += 1), sign: false }),
    check: 'tensor file',
    message: /has 21760 bytes, but tensors\.bytes says 21761/,
  },
  {
    name: 'tensor file edited, sha256 not updated',
    dir: () => {
      const d = make({});
      const t = readFileSync(join(d, TENSORS));
      t[t.length - 3] ^= 1;
      writeFileSync(join(d, TENSORS), t);
      return d;
    },
    check: 'tensor file',
    message: /does not match the sha256/,
  },
  {
    name: 'an extra tensor in the safetensors file',
    dir: () =>
      make({
        tensors: (t) =>
          rewriteHeader(
            t,
            (h) =>
              (h.zzz_extra = {
                dtype: 'F32',
                shape: [1],
                data_offsets: [parseTensorFile(t).data.length, parseTensorFile(t).data.length + 4],
              }),
            (d) => Buffer.concat([d, Buffer.alloc(4)]),
          ),
      }),
    check: 'tensor file',
    message: /tensor zzz_extra is not used by any plan/,
  },
  {
    name: 'trailing junk after the tensor data',
    dir: () => make({ tensors: (t) => Buffer.concat([t, Buffer.from('junk')]) }),
    check: 'tensor file',
    message: /4 bytes after the last tensor's data/,
  },
  {
    name: 'a missing tensor',
    dir: () =>
      make({
        tensors: (t) => {
          // Drop plan.9.variances and its bytes, shifting the later offsets.
          const f = parseTensorFile(t);
          const [b, e] = f.header['plan.9.variances'].data_offsets;
          delete f.header['plan.9.variances'];
          for (const v of Object.values(f.header) as Json[])
            if (v.data_offsets && v.data_offsets[0] >= e) v.data_offsets = [v.data_offsets[0] - (e - b), v.data_offsets[1] - (e - b)];
          return buildTensorFile(f.header, Buffer.concat([f.data.subarray(0, b), f.data.subarray(e)]));
        },
      }),
    check: 'tensor file',
    message: /tensor plan\.9\.variances is missing/,
  },
  {
    name: 'the header length 8 short of the padded header (data read 8 bytes early)',
    dir: () =>
      make({
        tensors: (t) => {
          const f = parseTensorFile(t);
          const json = Buffer.from(JSON.stringify(f.header) + ' '.repeat(16));
          const pad = Buffer.from(' '.repeat((8 - (json.length % 8)) % 8));
          const hb = Buffer.concat([json, pad]);
          const len = Buffer.alloc(8);
          len.writeBigUInt64LE(BigInt(hb.length - 8));
          return Buffer.concat([len, hb, f.data]);
        },
      }),
    check: 'tensor file',
    message: /8 bytes after the last tensor's data .*wrong header length/,
  },
  {
    name: 'an off-by-one header length',
    dir: () =>
      make({
        tensors: (t) => {
          const u = Buffer.from(t);
          u.writeBigUInt64LE(u.readBigUInt64LE(0) + 1n);
          return u;
        },
      }),
    check: 'tensor file',
    message: /header length \d+ is not a multiple of 8/,
  },
  {
    name: 'a header length larger than the file',
    dir: () =>
      make({
        tensors: (t) => {
          const u = Buffer.from(t);
          u.writeBigUInt64LE(2n ** 62n);
          return u;
        },
      }),
    check: 'tensor file',
    message: /header length 4611686018427387904 does not fit/,
  },
  {
    name: 'an F16 tensor',
    dir: () => make({ tensors: (t) => rewriteHeader(t, (h) => (h['plan.0.hi'].dtype = 'F16')) }),
    check: 'tensor file',
    message: /plan\.0\.hi has dtype "F16"/,
  },
  {
    name: 'a tensor whose shape differs from its plan',
    dir: () => make({ tensors: (t) => rewriteHeader(t, (h) => (h['plan.0.mean'].shape = [16, 2])) }),
    check: 'tensor file',
    message: /plan\.0\.mean has shape \[16,2\], the plan declares \[32\]/,
  },
  {
    name: 'two tensors sharing bytes (an overlap, and a gap at the end)',
    dir: () => make({ tensors: (t) => rewriteHeader(t, (h) => (h['plan.0.hi'].data_offsets = [...h['plan.0.lo'].data_offsets])) }),
    check: 'tensor file',
    message: /data must be contiguous/,
  },
  // --- the values (tensor bytes edited, everything re-signed)
  {
    name: 'a NaN mean',
    dir: () => make({ tensors: (t) => editTensor(t, 'plan.3.mean', (v) => (v[0] = Number.NaN)) }),
    check: 'finite values',
    message: /plan 3 mean\[0\] \(tensor plan\.3\.mean\) = NaN/,
  },
  {
    name: 'an Inf in a basis',
    dir: () => make({ tensors: (t) => editTensor(t, 'plan.1.basis', (v) => (v[5] = Number.POSITIVE_INFINITY)) }),
    check: 'finite values',
    message: /plan 1 basis\[5\].* = Infinity/,
  },
  {
    name: 'a huge mean (1e30)',
    dir: () => make({ tensors: (t) => editTensor(t, 'plan.2.mean', (v) => (v[3] = 1e30)) }),
    check: 'finite values',
    message: /plan 2 mean\[3\].*beyond ±1e\+12/,
  },
  {
    name: 'an Inf static range',
    dir: () => make({ tensors: (t) => editTensor(t, 'plan.0.hi', (v) => (v[0] = Number.POSITIVE_INFINITY)) }),
    check: 'finite values',
    message: /plan 0 hi\[0\]/,
  },
  {
    name: 'a scaled (non-orthonormal) basis',
    dir: () => make({ tensors: (t) => editTensor(t, 'plan.0.basis', (v) => v.forEach((x, i) => (v[i] = x * 1.01))) }),
    check: 'orthonormal bases',
    message: /plan 0 basis .* is not orthonormal/,
  },
  {
    name: 'one basis entry set to 3',
    dir: () => make({ tensors: (t) => editTensor(t, 'plan.4.basis', (v) => (v[0] = 3)) }),
    check: 'orthonormal bases',
    message: /plan 4 basis/,
  },
  {
    name: 'a static range with lo > hi',
    dir: () => make({ tensors: (t) => editTensor(t, 'plan.0.lo', (v) => (v[1] = 1e6)) }),
    check: 'static ranges',
    message: /plan 0 component 1: lo 1000000 > hi/,
  },
  // --- the manifest itself
  {
    name: 'format_version 4',
    dir: () => make({ manifest: (m) => ((m as { format_version: number }).format_version = 4), sign: false }),
    check: 'schema',
    message: /format version 4/,
    code: 'PROFILE_VERSION',
  },
  {
    name: "format_version 2 with v1's one RoPE object",
    dir: () => make({ manifest: (m) => (m.format_version = 2) }),
    check: 'rope',
    message: /model\.rope is one RoPE object \(format 1\)/,
  },
  // Duplicate keys: JSON.parse keeps the last, Python's json too, other readers the first: refused by path and offset.
  {
    name: 'a manifest with a duplicated key',
    dir: () => make({ raw: (s) => s.replace('"sink": 4,', '"sink": 4, "sink": 5,') }),
    check: 'schema',
    message: /the key settings\.sink twice \(the second at byte offset \d+\)/,
  },
  {
    name: 'a duplicated key with the same value, deep in an array',
    dir: () => make({ raw: (s) => s.replace('"bytes": 8619', '"bytes": 8619, "bytes": 8619') }),
    check: 'schema',
    message: /the key calibration\.sources\[0\]\.bytes twice/,
  },
  {
    name: 'a duplicated key spelled with an escape',
    dir: () => make({ raw: (s) => s.replace('"window": 128,', '"window": 128, "win\\u0064ow": 128,') }),
    check: 'schema',
    message: /the key settings\.window twice/,
  },
  {
    name: 'invalid UTF-8 in a manifest string',
    dir: () => withBytes(make({}), (b) => replaceBytes(b, '"stories260k"', Buffer.from([0x22, 0x73, 0xc3, 0x28, 0x22]))),
    check: 'schema',
    message: /not valid UTF-8 \(byte 0xc3 at offset \d+\)/,
  },
  {
    name: 'a UTF-16 surrogate encoded in UTF-8 (CESU)',
    dir: () => withBytes(make({}), (b) => replaceBytes(b, '"stories260k"', Buffer.from([0x22, 0xed, 0xa0, 0x80, 0x22]))),
    check: 'schema',
    message: /not valid UTF-8 \(byte 0xed/,
  },
  // --- informational figures: ranges (schema) and consistency (figures); kvtc never writes these
  ...(
    [
      ['a negative ratio_compressed', (m) => (m.measured.ratio_compressed = -19.4), /measured\.ratio_compressed/],
      ['ratio_blob 0', (m) => (m.measured.ratio_blob = 0), /measured\.ratio_blob/],
      ['ratio_compressed 1e308', (m) => (m.measured.ratio_compressed = 1e308), /measured\.ratio_compressed/],
      ['context_tokens 0', (m) => (m.measured.context_tokens = 0), /measured\.context_tokens/],
      ['a per-layer relative error of 2^53', (m) => (m.measured.rel_error.key[2] = 2 ** 53), /measured\.rel_error\.key\.2/],
      ['key_mean 1e308', (m) => (m.measured.rel_error.key_mean = 1e308), /measured\.rel_error\.key_mean/],
      ['a negative value_mean', (m) => (m.measured.rel_error.value_mean = -0.5), /measured\.rel_error\.value_mean/],
      ['a relative error "NaN" (a string)', (m) => (m.measured.rel_error.value[0] = 'NaN'), /measured\.rel_error\.value\.0/],
      ['sources[].bytes 0', (m) => (m.calibration.sources[3].bytes = 0), /calibration\.sources\.3\.bytes/],
      ['no sources', (m) => (m.calibration.sources = []), /calibration\.sources/],
      ['tokens_fit 0', (m) => (m.calibration.tokens_fit = 0), /calibration\.tokens_fit/],
      ['sequences 0', (m) => (m.calibration.sequences = 0), /calibration\.sequences/],
      ['an empty producer version', (m) => (m.producer.version = ''), /producer\.version/],
      ['grouping "fast"', (m) => (m.settings.grouping = 'fast'), /settings\.grouping/],
      ['model.max_positions 0', (m) => (m.model.max_positions = 0), /model\.max_positions/],
      ['model.max_positions 2^32 + 1', (m) => (m.model.max_positions = 2 ** 32 + 1), /model\.max_positions/],
    ] as [string, (m: Json) => void, RegExp][]
  ).map(([name, edit, message]): Case => ({
    name: `informational: ${name}`,
    dir: () => make({ manifest: edit }),
    check: 'schema',
    message,
  })),
  // Not re-signed: re-signing would restore tensors.bytes (which profile_id does not cover).
  {
    name: 'informational: tensors.bytes 2^53',
    dir: () => make({ manifest: (m) => (m.tensors.bytes = 2 ** 53), sign: false }),
    check: 'schema',
    message: /tensors\.bytes/,
  },
  {
    name: 'per-layer errors for 4 of 5 layers',
    dir: () => make({ manifest: (m) => m.measured.rel_error.value.pop() }),
    check: 'figures',
    message: /measured\.rel_error\.value has 4 entries; the model has 5 layers/,
  },
  {
    name: 'heads not a multiple of kv_heads',
    dir: () => make({ manifest: (m) => (m.model.heads = 6) }),
    check: 'figures',
    message: /model\.heads 6 is not a multiple of model\.kv_heads 4/,
  },
  {
    name: 'a reversed confidence interval',
    dir: () => make({ manifest: (m) => (m.measured.rel_error.key_mean_ci95 = [0.2, 0.1]) }),
    check: 'figures',
    message: /key_mean_ci95 is \[0\.2, 0\.1\]/,
  },
  {
    name: 'measured contexts no longer than sink + window',
    dir: () => make({ manifest: (m) => (m.measured.context_tokens = 132) }),
    check: 'figures',
    message: /context_tokens 132 leaves no compressed token after sink 4 \+ window 128/,
  },
];

/** Applies `edit` to the bytes of the manifest in `dir`. */
function withBytes(dir: string, edit: (b: Buffer) => Buffer): string {
  const f = join(dir, 'kvtc-profile.json');
  writeFileSync(f, edit(readFileSync(f)));
  return dir;
}

function replaceBytes(b: Buffer, what: string, by: Buffer): Buffer {
  const at = b.indexOf(what);
  if (at < 0) throw new Error(`${what} not in the manifest`);
  return Buffer.concat([b.subarray(0, at), by, b.subarray(at + Buffer.byteLength(what))]);
}

describe('invalid profiles: readProfile refuses each, validate fails the named check', () => {
  it.each(CASES.map((c) => [c.name, c] as const))('%s', async (_name, c) => {
    const dir = c.dir();
    const err = await readProfile(dir).then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(err, 'readProfile accepted it').toBeInstanceOf(KvtcError);
    expect((err as KvtcError).code).toBe(c.code ?? 'PROFILE_INVALID');
    expect((err as KvtcError).message).toMatch(c.message);
    expect((err as KvtcError).fix).toBeTruthy();
    const v = await validateProfile(dir);
    expect(v.ok).toBe(false);
    const check = v.checks.find((x) => x.name === c.check);
    expect(check, `validate has no "${c.check}" check: ${JSON.stringify(v.checks)}`).toBeDefined();
    expect(check!.ok).toBe(false);
    if (c.check !== 'schema') expect(check!.detail).toMatch(c.message);
  });

  it('validate lists every failed check at once, not just the first', async () => {
    const dir = make({
      manifest: (m) => ((m.plans[0].layers = [7]), (m.model.rope.rotary_dim = 7)),
      tensors: (t) => editTensor(t, 'plan.3.mean', (v) => (v[0] = Number.NaN)),
    });
    const v = await validateProfile(dir);
    const failed = v.checks.filter((c) => !c.ok).map((c) => c.name);
    expect(failed).toEqual(expect.arrayContaining(['plans', 'rope']));
    // The plans are inconsistent, so the tensor checks are reported as not checked (failed), not skipped silently.
    expect(v.checks.find((c) => c.name === 'tensor file')).toMatchObject({ ok: false, detail: expect.stringContaining('not checked') });
    const r = await kvtc('validate', dir);
    expect(r.code).toBe(1);
    expect(r.stdout.split('\n').filter((l) => l.startsWith('✗ ')).length).toBeGreaterThanOrEqual(3);
  });
});

describe('validate --model compares the profile with the model (RoPE field by field, shape, KV dtype)', () => {
  const rows: [string, (m: Json) => void, string, RegExp][] = [
    ['rope theta', (m) => (m.model.rope.theta = 20000), 'model rope', /theta: profile 20000, model 10000/],
    [
      'rope rotary_dim (even, ≤ head_dim: valid on its own)',
      (m) => (m.model.rope.rotary_dim = 6),
      'model rope',
      /rotary_dim: profile 6, model 8/,
    ],
    ['rope layout', (m) => (m.model.rope.layout = 'interleaved'), 'model rope', /layout: profile "interleaved", model "half"/],
    ['rope scaling', (m) => (m.model.rope.scaling = { type: 'linear', factor: 2 }), 'model rope', /scaling: profile linear, model none/],
    ['kv dtype', (m) => (m.model.kv_dtype = 'float16'), 'model kv dtype', /profile float16, but the model's cache is float32/],
    ['heads', (m) => (m.model.heads = 4), 'model shape', /model 5×8×4×8, profile 5×4×4×8/],
  ];
  it.each(rows)(
    '%s differing from the model fails the check (re-signed, so the profile alone is valid)',
    async (_n, edit, name, detail) => {
      const dir = make({ manifest: edit });
      expect((await validateProfile(dir)).ok, 'valid without --model').toBe(true);
      const v = await validateProfile(dir, DEFAULT_MODEL_DIR);
      expect(v.ok).toBe(false);
      expect(v.checks.find((c) => c.name === name)).toMatchObject({ ok: false, detail: expect.stringMatching(detail) });
      expect(v.checks.filter((c) => !c.ok).map((c) => c.name)).toEqual([name]);
    },
  );

  it('the CLI exits 1 with PROFILE_MISMATCH naming the check', async () => {
    const dir = make({ manifest: (m) => (m.model.rope.theta = 500000) });
    const r = await kvtc('validate', dir, '--model', DEFAULT_MODEL_DIR);
    expect(r.code).toBe(1);
    expect(r.stdout).toContain('✗ model rope: ');
    expect(r.stderr).toContain('PROFILE_MISMATCH');
  });

  it('the committed profile passes every check against its model', async () => {
    const v = await validateProfile(PROFILE, DEFAULT_MODEL_DIR);
    expect(v.checks.filter((c) => !c.ok)).toEqual([]);
    expect(v.checks.map((c) => c.name)).toEqual([
      'schema',
      'limits',
      'format',
      'plans',
      'groups',
      'bits per token',
      'bit budget',
      'rope',
      'figures',
      'profile id',
      'tensor file',
      'finite values',
      'static ranges',
      'orthonormal bases',
      'model',
      'model shape',
      'model kv dtype',
      'model rope',
      'model positions',
    ]);
  });
});
