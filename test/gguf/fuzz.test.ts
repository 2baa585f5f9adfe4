/**
 * GGUF fuzzing (issue 19: a GGUF is untrusted input). Two small valid files built by the test
 * writer (v3 at the default alignment with a vocabulary, scores and 7 tensor types; v2 at
 * alignment 64 with BF16 and an IQ2_XXS tensor kvtc cannot dequantize) are mutated by a seeded,
 * deterministic PRNG: bit flips and byte edits (mostly in the header), truncation, appended junk,
 * and aimed edits of the fields an attacker controls: tensor/key counts, string lengths, array
 * counts, value types, n_dims, dims, ggml types, tensor offsets (huge, misaligned, overlapping)
 * and general.alignment. Every mutated file must either be refused with a typed KvtcError
 * (GGUF_INVALID or GGUF_UNSUPPORTED, with a fix and the file's path) or parse, and then every
 * tensor must read as `elements` floats or be refused the same way. Nothing else may escape (no
 * RangeError, no TypeError), and ArrayBuffer memory stays bounded (sampled after each file).
 */
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { isKvtcError } from '../../src/errors.js';
import { openGguf, readTensor } from '../../src/gguf/read.js';
import { rng } from '../codec/rng.js';
import { m, tensorBytes, writeGguf, type Layout, type TensorSpec } from './write-gguf.js';

const MUTATIONS = 2500;
const SEED = 0x67677566; // "gguf"

const dir = mkdtempSync(join(tmpdir(), 'kvtc-gguf-fuzz-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

const fixture = JSON.parse(readFileSync(new URL('../fixtures/gguf/quants.json', import.meta.url), 'utf8')) as {
  types: Record<string, { bytes: string }>;
};
/** The first `ne` elements' worth of a fixture type's bytes (real scales, real packed values). */
function data(type: string, ne: number[]): Uint8Array {
  const b = new Uint8Array(Buffer.from(fixture.types[type].bytes, 'base64'));
  return b.slice(0, tensorBytes(type, ne));
}
const t = (name: string, type: string, ne: number[]): TensorSpec => ({ name, type, ne, data: data(type, ne) });

interface Base {
  name: string;
  bytes: Uint8Array;
  layout: Layout;
}
const bases: Base[] = [
  {
    name: 'v3',
    ...writeGguf({
      metadata: [
        ['general.architecture', m.str('llama')],
        ['llama.block_count', m.u32(2)],
        ['llama.attention.layer_norm_rms_epsilon', m.f32(1e-5)],
        [
          'tokenizer.ggml.tokens',
          m.arr(
            'STRING',
            Array.from({ length: 40 }, (_, i) => `t${i}`),
          ),
        ],
        [
          'tokenizer.ggml.scores',
          m.arr(
            'FLOAT32',
            Array.from({ length: 40 }, (_, i) => -i),
          ),
        ],
        [
          'tokenizer.ggml.token_type',
          m.arr(
            'INT32',
            Array.from({ length: 40 }, () => 1),
          ),
        ],
        ['tokenizer.ggml.add_bos_token', m.bool(true)],
        ['general.size', m.u64(123n)],
      ],
      tensors: [
        t('norm', 'F32', [8]),
        t('emb', 'F16', [4, 2]),
        t('q8', 'Q8_0', [32, 2]),
        t('q4k', 'Q4_K', [256]),
        t('q6k', 'Q6_K', [256]),
        t('q41', 'Q4_1', [32]),
        t('q50', 'Q5_0', [32, 2]),
      ],
    }),
  },
  {
    name: 'v2-align64',
    ...writeGguf({
      version: 2,
      alignment: 64,
      metadata: [
        ['general.architecture', m.str('gemma3')],
        ['gemma3.attention.sliding_window', m.u32(512)],
      ],
      tensors: [
        t('bf', 'BF16', [16]),
        { name: 'iq', type: 'IQ2_XXS', ne: [256], data: new Uint8Array(66).fill(7) },
        t('q3k', 'Q3_K', [256, 2]),
      ],
    }),
  },
];

type Rand = ReturnType<typeof rng>;
const int = (r: Rand, n: number) => Math.floor(r.uniform() * n);
const pick = <T>(r: Rand, xs: readonly T[]): T => xs[int(r, xs.length)];

function interesting(r: Rand, cur: bigint, size: number): bigint {
  const c = [
    0n,
    1n,
    cur - 1n,
    cur + 1n,
    cur * 2n,
    cur + 32n,
    2n ** 31n,
    2n ** 32n - 1n,
    2n ** 32n,
    2n ** 53n,
    2n ** 63n,
    2n ** 64n - 1n,
    BigInt(size),
    BigInt(size) - 1n,
    BigInt(int(r, size * 2)),
  ];
  const v = pick(r, c);
  return v < 0n ? 0n : v % 2n ** 64n;
}
function setU64(b: Uint8Array, at: number, v: bigint): void {
  new DataView(b.buffer, b.byteOffset).setBigUint64(at, v, true);
}
function setU32(b: Uint8Array, at: number, v: number): void {
  new DataView(b.buffer, b.byteOffset).setUint32(at, v >>> 0, true);
}
const getU64 = (b: Uint8Array, at: number) => new DataView(b.buffer, b.byteOffset).getBigUint64(at, true);

const mutators: Record<string, (r: Rand, base: Base) => { bytes: Uint8Array; what: string }> = {
  bitFlips(r, { bytes, layout }) {
    const out = bytes.slice();
    const k = 1 + int(r, 4);
    for (let i = 0; i < k; i++) {
      const p = r.uniform() < 0.8 ? int(r, layout.dataStart) : int(r, out.length);
      out[p] ^= 1 << int(r, 8);
    }
    return { bytes: out, what: `${k} bit flips` };
  },
  byteEdits(r, { bytes, layout }) {
    const out = bytes.slice();
    const k = 1 + int(r, 4);
    for (let i = 0; i < k; i++)
      out[r.uniform() < 0.8 ? int(r, layout.dataStart) : int(r, out.length)] = pick(r, [0, 0xff, 0x7f, 0x80, int(r, 256)]);
    return { bytes: out, what: `${k} byte edits` };
  },
  truncate(r, { bytes }) {
    const n = r.uniform() < 0.3 ? int(r, 64) : int(r, bytes.length);
    return { bytes: bytes.slice(0, n), what: `truncated to ${n}` };
  },
  appendJunk(r, { bytes }) {
    const junk = Uint8Array.from({ length: 1 + int(r, 64) }, () => int(r, 256));
    const out = new Uint8Array(bytes.length + junk.length);
    out.set(bytes);
    out.set(junk, bytes.length);
    return { bytes: out, what: `${junk.length} junk bytes appended` };
  },
  counts(r, { bytes, layout }) {
    const out = bytes.slice();
    const at = r.uniform() < 0.5 ? layout.tensorCount : layout.keyCount;
    const v = interesting(r, getU64(out, at), out.length);
    setU64(out, at, v);
    return { bytes: out, what: `${at === layout.tensorCount ? 'tensor' : 'key'} count → ${v}` };
  },
  lengths(r, { bytes, layout }) {
    const out = bytes.slice();
    const fields = [
      ...layout.keys.map((k) => k.lengthAt),
      ...layout.tensors.map((x) => x.nameLengthAt),
      ...layout.keys.flatMap((k) => (k.arrayCountAt === undefined ? [] : [k.arrayCountAt])),
    ];
    const at = pick(r, fields);
    const v = interesting(r, getU64(out, at), out.length);
    setU64(out, at, v);
    return { bytes: out, what: `length/count at ${at} → ${v}` };
  },
  valueTypes(r, { bytes, layout }) {
    const out = bytes.slice();
    const k = pick(r, layout.keys);
    const at = k.itemTypeAt !== undefined && r.uniform() < 0.5 ? k.itemTypeAt : k.typeAt;
    const v = r.uniform() < 0.8 ? int(r, 14) : pick(r, [0xffffffff, 2 ** 31, 255]);
    setU32(out, at, v);
    return { bytes: out, what: `value type of "${k.key}" (at ${at}) → ${v}` };
  },
  nDims(r, { bytes, layout }) {
    const out = bytes.slice();
    const x = pick(r, layout.tensors);
    const v = pick(r, [0, 1, 2, 3, 4, 5, 8, 0xffffffff, 2 ** 31]);
    setU32(out, x.nDimsAt, v);
    return { bytes: out, what: `n_dims of "${x.name}" → ${v}` };
  },
  dims(r, { bytes, layout }) {
    const out = bytes.slice();
    const x = pick(r, layout.tensors);
    const at = pick(r, x.dimsAt);
    const v = interesting(r, getU64(out, at), out.length);
    setU64(out, at, v);
    return { bytes: out, what: `a dim of "${x.name}" → ${v}` };
  },
  ggmlTypes(r, { bytes, layout }) {
    const out = bytes.slice();
    const x = pick(r, layout.tensors);
    const v = r.uniform() < 0.8 ? int(r, 45) : pick(r, [0xffffffff, 2 ** 31, 1000]);
    setU32(out, x.typeAt, v);
    return { bytes: out, what: `type of "${x.name}" → ${v}` };
  },
  offsets(r, { bytes, layout }) {
    const out = bytes.slice();
    const x = pick(r, layout.tensors);
    const cur = getU64(out, x.offsetAt);
    const other = getU64(out, pick(r, layout.tensors).offsetAt);
    const v = pick(r, [
      other,
      other + 32n,
      cur + 1n,
      cur + 16n,
      cur + 64n,
      BigInt(out.length),
      2n ** 63n,
      2n ** 64n - 1n,
      interesting(r, cur, out.length),
    ]);
    setU64(out, x.offsetAt, v);
    return { bytes: out, what: `offset of "${x.name}" ${cur} → ${v}` };
  },
  alignment(r, { bytes, layout }) {
    const out = bytes.slice();
    const k = layout.keys.find((x) => x.key === 'general.alignment');
    if (!k) return { bytes: out, what: 'no alignment key' };
    const v = pick(r, [0, 1, 2, 8, 16, 32, 48, 128, 4096, 2 ** 24, 2 ** 25, 0xffffffff]);
    setU32(out, k.typeAt + 4, v);
    return { bytes: out, what: `general.alignment → ${v}` };
  },
};

describe('GGUF fuzzing: every mutated file is refused with a typed error or reads as specified', () => {
  it(`${MUTATIONS} seeded mutations of 2 valid files`, async () => {
    const r = rng(SEED);
    const names = Object.keys(mutators);
    const tally: Record<string, { refused: number; parsed: number }> = {};
    const codes = new Set<string>();
    const baseline = process.memoryUsage().arrayBuffers;
    let peak = 0;
    let tensorsRead = 0;
    const check = (e: unknown, label: string, path: string) => {
      if (!isKvtcError(e)) throw new Error(`${label}: threw a non-KvtcError: ${(e as Error)?.stack ?? e}`);
      if (e.code !== 'GGUF_INVALID' && e.code !== 'GGUF_UNSUPPORTED') throw new Error(`${label}: ${e.code} (${e.message})`);
      if (!e.fix || !e.message.startsWith(path)) throw new Error(`${label}: error without a fix or the file's path: ${e.message}`);
      codes.add(e.code);
    };
    for (let i = 0; i < MUTATIONS; i++) {
      const base = bases[i % bases.length];
      const name = names[int(r, names.length)];
      const mut = mutators[name](r, base);
      const label = `#${i} ${base.name} ${name}: ${mut.what}`;
      const path = join(dir, `m${i % 8}.gguf`);
      writeFileSync(path, mut.bytes);
      const tl = (tally[name] ??= { refused: 0, parsed: 0 });
      let file;
      try {
        file = await openGguf(path);
        tl.parsed++;
      } catch (e) {
        check(e, label, path);
        tl.refused++;
      }
      for (const info of file?.tensors ?? []) {
        try {
          const x = await readTensor(file!, info.name);
          if (x.length !== info.elements)
            throw new Error(`${label}: tensor "${info.name}" read ${x.length} floats, expected ${info.elements}`);
          tensorsRead++;
        } catch (e) {
          check(e, `${label} (reading "${info.name}")`, path);
        }
      }
      peak = Math.max(peak, process.memoryUsage().arrayBuffers - baseline);
    }
    if (process.env.KVTC_FUZZ_TALLY) console.log(JSON.stringify(tally), peak, tensorsRead);
    // Bounded memory: each file is a few KB; the header window is 1 MiB.
    expect(peak).toBeLessThan(64 << 20);
    expect(codes).toEqual(new Set(['GGUF_INVALID', 'GGUF_UNSUPPORTED']));
    // Every aimed mutator was refused at least sometimes; junk after the data section is no error (GGUF has no length field).
    for (const n of names) if (n !== 'appendJunk') expect(tally[n]?.refused, n).toBeGreaterThan(0);
    expect(tally.appendJunk.refused).toBe(0);
    // Mutations that leave a valid file (benign bit flips, tensor data edits) still parse and read.
    expect(tally.bitFlips.parsed + tally.byteEdits.parsed).toBeGreaterThan(0);
    expect(tensorsRead).toBeGreaterThan(1000);
  });
});
