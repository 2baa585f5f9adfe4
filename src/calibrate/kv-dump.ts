// Tested by test/calibrate/kv-dump.test.ts and test/calibrate/kv-dump-errors.test.ts.
/**
 * KV dumps (docs/kv-dumps.md): a directory of per-sequence safetensors files and the manifest
 * `kvtc-dump.json` describing the model that produced them, read as kvtc's own ModelSpec and
 * KvCache so that calibration needs no ONNX graph.
 *
 * Everything in a dump is untrusted: the manifest is read strictly (UTF-8, no repeated key, no
 * unknown field, every count bounded before anything is allocated from it), each file's size is
 * bounded by what the manifest says it holds before it is read, and every tensor is checked by
 * name, shape, dtype and value. Each problem is a KvtcError naming the file (and the tensor) and
 * what to do. The manifest's RoPE descriptions are what the profile will record, so each is
 * checked against the inverse frequencies the model actually used (`inv_freq`) with kvtc's own
 * frequency code: a description kvtc would compute differently is refused, naming the layer.
 */
import { stat, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { z } from 'zod';
import { KvtcError, fileError, type ErrorCode } from '../errors.js';
import { halfArrayToFloat } from '../io/fp16.js';
import { sha256 } from '../io/hash.js';
import { DTYPE_BYTES, scanSafetensors, type SafetensorsDtype, type TensorEntry } from '../io/safetensors.js';
import type { KvCache, KvDtype, ModelSpec } from '../model/types.js';
import { RopeScalingSchemaV2 } from '../profile/schema.js';
import { kvDumpFingerprintId } from '../profile/format3.js';
import { ropeScalingFromJson } from '../profile/rope.js';
import { decodeUtf8Strict, findDuplicateKey } from '../profile/strict-json.js';
import { ropeInvFreq } from '../rope/freqs.js';
import type { LayerRope, RopeSpec } from '../rope/types.js';

export const KV_DUMP_MANIFEST = 'kvtc-dump.json';
export const KV_DUMP_FORMAT = 'kvtc-kv-dump';
export const KV_DUMP_FORMAT_VERSION = 1;

/** Bounds on what a dump may declare, checked before anything is allocated from it. */
export const KV_DUMP_LIMITS = {
  maxManifestBytes: 64 * 1024 * 1024,
  /** Model layers, heads, KV heads: a profile holds them as u16 (PROFILE_LIMITS.maxShape). */
  maxShape: 0xffff,
  maxSequences: 1_000_000,
  /** Tokens of one sequence (and start_position + tokens): blobs address positions below 2^31. */
  maxPosition: 2 ** 31 - 1,
  /** One sequence file: Node reads a file into one buffer of at most 2 GiB. */
  maxFileBytes: 2 ** 31 - 1,
  /** The safetensors JSON header: at most base + perTensor × tensors bytes. */
  headerBaseBytes: 64 * 1024,
  headerPerTensorBytes: 512,
  /** |inv_freq − kvtc's| ≤ this × |kvtc's| (float32 buffers round at ~6e-8). */
  invFreqRelTolerance: 1e-6,
} as const;

const DTYPES = { float32: 'F32', float16: 'F16', bfloat16: 'BF16' } as const satisfies Record<string, SafetensorsDtype>;
export type DumpDtype = keyof typeof DTYPES;

const count = (max: number) => z.number().int().min(0).max(max);
const positiveCount = (max: number) => z.number().int().min(1).max(max);
const positive = z.number().positive().finite();

const RopeEntrySchema = z
  .object({
    theta: positive,
    rotary_dim: positiveCount(KV_DUMP_LIMITS.maxShape),
    layout: z.enum(['half', 'interleaved']),
    attention_factor: positive.optional(),
    scaling: RopeScalingSchemaV2.optional(),
    inv_freq: z.array(z.number().finite()).max(KV_DUMP_LIMITS.maxShape),
  })
  .strict();

const ShardSchema = z
  .object({
    tp_rank: count(KV_DUMP_LIMITS.maxShape),
    tp_size: positiveCount(KV_DUMP_LIMITS.maxShape),
    pp_rank: count(KV_DUMP_LIMITS.maxShape),
    pp_size: positiveCount(KV_DUMP_LIMITS.maxShape),
    layers: z.array(count(KV_DUMP_LIMITS.maxShape)).max(KV_DUMP_LIMITS.maxShape),
    kv_heads: z.array(count(KV_DUMP_LIMITS.maxShape)).min(1).max(KV_DUMP_LIMITS.maxShape),
  })
  .strict();

const ManifestSchema = z
  .object({
    format: z.literal(KV_DUMP_FORMAT),
    format_version: z.literal(KV_DUMP_FORMAT_VERSION),
    producer: z.object({ name: z.string().min(1).max(256), version: z.string().max(256) }).strict(),
    model: z
      .object({
        name: z.string().max(4096),
        family: z.string().regex(/^[a-z0-9_]{1,64}$/, 'must be a transformers model_type ([a-z0-9_], at most 64 characters)'),
        architecture: z.string().min(1).max(256),
        layers: positiveCount(KV_DUMP_LIMITS.maxShape),
        heads: positiveCount(KV_DUMP_LIMITS.maxShape),
        kv_heads: positiveCount(KV_DUMP_LIMITS.maxShape),
        head_dim: positiveCount(KV_DUMP_LIMITS.maxShape),
        value_head_dim: positiveCount(KV_DUMP_LIMITS.maxShape).optional(),
        dtype: z.enum(['float32', 'float16', 'bfloat16']),
        max_positions: positiveCount(KV_DUMP_LIMITS.maxPosition),
        cache: z.enum(['gqa', 'mla-latent']),
        layer_kinds: z.array(z.string().min(1).max(64)).max(KV_DUMP_LIMITS.maxShape),
        cache_layers: z.array(count(KV_DUMP_LIMITS.maxShape)).min(1).max(KV_DUMP_LIMITS.maxShape),
        rope: z.array(RopeEntrySchema.nullable()).max(KV_DUMP_LIMITS.maxShape),
      })
      .strict(),
    shard: ShardSchema.optional(),
    sequences: z
      .array(
        z
          .object({
            file: z
              .string()
              .regex(/^[A-Za-z0-9_.-]{1,255}$/, 'must be a file name in the dump directory ([A-Za-z0-9_.-], no path)')
              .refine((f) => f !== '.' && f !== '..', 'must be a file name in the dump directory'),
            tokens: positiveCount(KV_DUMP_LIMITS.maxPosition),
            start_position: count(KV_DUMP_LIMITS.maxPosition),
          })
          .strict(),
      )
      .min(1)
      .max(KV_DUMP_LIMITS.maxSequences),
  })
  .strict();

export type DumpManifest = z.infer<typeof ManifestSchema>;
type RopeEntry = z.infer<typeof RopeEntrySchema>;

export interface DumpSequence {
  /** Index in the manifest's `sequences` (capture order). */
  index: number;
  file: string;
  tokens: number;
  startPosition: number;
}

/** A tensor-parallel / pipeline rank, as the dump's `shard` says (model layer and global head indices). */
export interface DumpShard {
  tpRank: number;
  tpSize: number;
  ppRank: number;
  ppSize: number;
  /** The model layers whose caches this rank holds. */
  layers: number[];
  /** Global KV head index of each head in the files, in file order. */
  kvHeads: number[];
}

/** What a dump says about its model, in kvtc's terms. */
export interface DumpModel {
  /**
   * layers = cache layers in the files, rope indexed by them, kvDtype float32 for F32 and BF16;
   * valueDim, cacheLayout, modelLayers, cacheLayers and shard as the profile records them.
   */
  spec: ModelSpec;
  name: string;
  /** Width of each value head (= head_dim unless the dump says otherwise). */
  valueDim: number;
  cacheLayout: 'gqa' | 'mla-latent';
  /** The model's decoder layers (with or without a cache). */
  modelLayers: number;
  /** Model layer index of each cache layer in the files (profile layer l ↔ model layer cacheLayers[l]). */
  cacheLayers: number[];
  /** All the model's cache layers (for a shard: more than cacheLayers). */
  allCacheLayers: number[];
  shard?: DumpShard;
  /** sha256 of the canonical JSON of the manifest's `model` minus `name`; id = first 16 hex of sha256("kv-dump:" + it + "\n"). */
  fingerprint: { id: string; specSha256: string };
}

export interface KvDump {
  dir: string;
  manifestPath: string;
  manifest: DumpManifest;
  model: DumpModel;
  dtype: DumpDtype;
  sequences: DumpSequence[];
}

const DUMP_FIX =
  'Re-create the dump (`python -m kvtc capture`, `python -m kvtc convert-sglang`) or fix its writer to follow docs/kv-dumps.md.';

function dumpError(file: string, message: string, fix = DUMP_FIX, context: Record<string, unknown> = {}, code: ErrorCode = 'KV_INVALID') {
  return fileError(code, file, message, fix, context);
}

/** Keys sorted at every depth, no whitespace: the same JSON whichever way a writer ordered or indented it. */
export function canonicalJson(v: unknown): string {
  if (Array.isArray(v)) return `[${v.map(canonicalJson).join(',')}]`;
  if (v && typeof v === 'object') {
    const o = v as Record<string, unknown>;
    return `{${Object.keys(o)
      .sort()
      .filter((k) => o[k] !== undefined)
      .map((k) => `${JSON.stringify(k)}:${canonicalJson(o[k])}`)
      .join(',')}}`;
  }
  return JSON.stringify(v);
}

/** The model fingerprint of a dump (issue 20 design): what the profile records in place of an ONNX graph's. */
export function dumpFingerprint(model: DumpManifest['model']): { id: string; specSha256: string } {
  const { name: _name, ...rest } = model;
  const specSha256 = sha256(canonicalJson(rest));
  return { id: kvDumpFingerprintId(specSha256), specSha256 };
}

/**
 * One model layer's RoPE from the manifest, checked: rotary_dim even and ≤ head_dim, and kvtc's
 * frequencies for the description equal to the model's inv_freq within 1e-6 relative (longrope:
 * either factor set, as the buffer holds whichever the last forward pass used).
 */
export function dumpLayerRope(file: string, layer: number, e: RopeEntry, headDim: number): RopeSpec {
  const at = `model.rope[${layer}]`;
  if (e.rotary_dim % 2 !== 0 || e.rotary_dim > headDim)
    throw dumpError(file, `${at}.rotary_dim ${e.rotary_dim} must be even and at most model.head_dim ${headDim}`);
  if (e.inv_freq.length !== e.rotary_dim / 2)
    throw dumpError(file, `${at}.inv_freq has ${e.inv_freq.length} numbers; rotary_dim ${e.rotary_dim} needs ${e.rotary_dim / 2}`);
  if (e.scaling?.type === 'longrope') {
    for (const k of ['short_factor', 'long_factor'] as const)
      if (e.scaling[k].length !== e.rotary_dim / 2)
        throw dumpError(
          file,
          `${at}.scaling.${k} has ${e.scaling[k].length} factors; rotary_dim ${e.rotary_dim} needs ${e.rotary_dim / 2}`,
        );
  }
  const spec: RopeSpec = {
    theta: e.theta,
    rotaryDim: e.rotary_dim,
    layout: e.layout,
    ...(e.scaling ? { scaling: ropeScalingFromJson(e.scaling) } : {}),
    ...(e.attention_factor !== undefined && e.attention_factor !== 1 ? { attentionFactor: e.attention_factor } : {}),
  };
  const lengths = spec.scaling?.type === 'longrope' ? [0, spec.scaling.originalMaxPositionEmbeddings + 1] : [0];
  let worst = { i: 0, rel: Infinity, ours: 0 };
  for (const n of lengths) {
    const ours = ropeInvFreq(spec, n);
    let w = { i: 0, rel: 0, ours: ours[0] };
    for (let i = 0; i < ours.length; i++) {
      const rel = Math.abs(e.inv_freq[i] - ours[i]) / Math.abs(ours[i]);
      if (!(rel <= w.rel)) w = { i, rel, ours: ours[i] };
    }
    if (w.rel < worst.rel) worst = w;
  }
  if (!(worst.rel <= KV_DUMP_LIMITS.invFreqRelTolerance)) {
    throw new KvtcError(
      'ROPE_MISMATCH',
      `${file}: ${at} (model layer ${layer}) describes RoPE whose inverse frequency ${worst.i} kvtc computes as ${worst.ours.toPrecision(9)}, but the model's inv_freq says ${e.inv_freq[worst.i].toPrecision(9)} (relative difference ${worst.rel.toExponential(2)} > ${KV_DUMP_LIMITS.invFreqRelTolerance})`,
      {
        fix: `Describe layer ${layer}'s RoPE as the model computes it (theta, rotary_dim, scaling type and factors as in its config's rope_parameters): kvtc records the description and recomputes the frequencies from it, so they must give the model's inv_freq.`,
        context: { file, layer, pair: worst.i, kvtc: worst.ours, inv_freq: e.inv_freq[worst.i] },
      },
    );
  }
  return spec;
}

async function readManifestText(path: string): Promise<unknown> {
  let size: number;
  try {
    size = (await stat(path)).size;
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    throw new KvtcError(
      'KV_INVALID',
      `${path}: ${code === 'ENOENT' ? 'not found' : `cannot be read (${code})`}: --kv needs a dump directory holding ${KV_DUMP_MANIFEST}`,
      {
        fix: `Point --kv at a directory written by \`python -m kvtc capture\` or \`python -m kvtc convert-sglang\` (or a directory of tp_<t>_pp_<p>/ dumps); docs/kv-dumps.md specifies the layout.`,
        context: { file: path },
        cause: e,
      },
    );
  }
  if (size > KV_DUMP_LIMITS.maxManifestBytes)
    throw dumpError(path, `${size} bytes, more than the ${KV_DUMP_LIMITS.maxManifestBytes} a dump manifest may have`);
  const buf = await readFile(path);
  const dec = decodeUtf8Strict(buf);
  if ('badOffset' in dec) throw dumpError(path, `is not UTF-8 (malformed byte at offset ${dec.badOffset})`);
  let json: unknown;
  try {
    json = JSON.parse(dec.text);
  } catch (e) {
    throw dumpError(path, `is not valid JSON (${(e as Error).message})`);
  }
  const dup = findDuplicateKey(dec.text);
  if (dup) throw dumpError(path, `repeats the key ${dup.path} (byte ${dup.offset}); readers would disagree on its value`);
  return json;
}

function zodProblem(issue: z.core.$ZodIssue): string {
  const path =
    issue.path
      .map((p) => (typeof p === 'number' ? `[${p}]` : `.${String(p)}`))
      .join('')
      .replace(/^\./, '') || '(root)';
  if (issue.code === 'unrecognized_keys')
    return `${path === '(root)' ? '' : `${path}: `}unknown field${issue.keys.length > 1 ? 's' : ''} ${issue.keys.join(', ')} (a misspelt field must not be silently ignored)`;
  return `${path}: ${issue.message}`;
}

/**
 * Reads and checks a dump's manifest (not its sequence files): the schema, the model's geometry,
 * the layers and heads of the shard, and each cache layer's RoPE against its inv_freq.
 */
export async function openKvDump(dir: string): Promise<KvDump> {
  const manifestPath = join(dir, KV_DUMP_MANIFEST);
  const raw = await readManifestText(manifestPath);
  const r = ManifestSchema.safeParse(raw);
  if (!r.success) {
    const first = r.error.issues[0];
    throw dumpError(manifestPath, zodProblem(first), DUMP_FIX, { problems: r.error.issues.slice(0, 20).map(zodProblem) });
  }
  const m = r.data;
  const mm = m.model;
  const bad = (msg: string) => dumpError(manifestPath, msg);
  if (mm.layer_kinds.length !== mm.layers)
    throw bad(`model.layer_kinds has ${mm.layer_kinds.length} entries; model.layers is ${mm.layers}`);
  if (mm.rope.length !== mm.layers)
    throw bad(`model.rope has ${mm.rope.length} entries; model.layers is ${mm.layers} (one per model layer, null for none)`);
  mm.cache_layers.forEach((l, i) => {
    if (l >= mm.layers) throw bad(`model.cache_layers names layer ${l}; the model has ${mm.layers} (0-${mm.layers - 1})`);
    if (i > 0 && l <= mm.cache_layers[i - 1])
      throw bad(`model.cache_layers must be strictly increasing (${mm.cache_layers[i - 1]} then ${l})`);
  });
  if (mm.cache === 'mla-latent' && mm.kv_heads !== 1)
    throw bad(`model.cache is mla-latent, which has one latent "head"; model.kv_heads is ${mm.kv_heads}`);
  if (mm.cache === 'gqa' && !m.shard && mm.heads % mm.kv_heads !== 0)
    throw bad(
      `model.heads ${mm.heads} is not a multiple of model.kv_heads ${mm.kv_heads} (grouped-query attention shares each KV head among the same number of query heads)`,
    );
  let fileLayers = mm.cache_layers;
  let shard: DumpShard | undefined;
  if (m.shard) {
    const s = m.shard;
    if (s.tp_rank >= s.tp_size) throw bad(`shard.tp_rank ${s.tp_rank} must be below shard.tp_size ${s.tp_size}`);
    if (s.pp_rank >= s.pp_size) throw bad(`shard.pp_rank ${s.pp_rank} must be below shard.pp_size ${s.pp_size}`);
    if (s.layers.length === 0)
      throw bad('shard.layers is empty: a rank without cache layers has nothing to calibrate (leave it out of the dump)');
    const cache = new Set(mm.cache_layers);
    s.layers.forEach((l, i) => {
      if (!cache.has(l)) throw bad(`shard.layers names layer ${l}, which is not in model.cache_layers`);
      if (i > 0 && l <= s.layers[i - 1]) throw bad(`shard.layers must be strictly increasing (${s.layers[i - 1]} then ${l})`);
    });
    if (s.kv_heads.length !== mm.kv_heads)
      throw bad(`shard.kv_heads lists ${s.kv_heads.length} heads; model.kv_heads (the heads in this dump's files) is ${mm.kv_heads}`);
    if (new Set(s.kv_heads).size !== s.kv_heads.length)
      throw bad(`shard.kv_heads repeats a head (${s.kv_heads.join(', ')}); each head of a rank's files is a different model head`);
    fileLayers = s.layers;
    shard = { tpRank: s.tp_rank, tpSize: s.tp_size, ppRank: s.pp_rank, ppSize: s.pp_size, layers: [...s.layers], kvHeads: [...s.kv_heads] };
  }
  const rope: LayerRope[] = fileLayers.map((l) => {
    const e = mm.rope[l];
    return e === null ? null : dumpLayerRope(manifestPath, l, e, mm.head_dim);
  });
  if (mm.cache === 'mla-latent')
    for (const [i, r] of rope.entries())
      if (r && r.rotaryDim !== mm.head_dim)
        throw bad(
          `model.rope[${fileLayers[i]}].rotary_dim ${r.rotaryDim} must equal model.head_dim ${mm.head_dim}: an MLA latent cache's key is the RoPE part only (docs/kv-dumps.md §2.1)`,
        );
  const sequences: DumpSequence[] = [];
  const files = new Set<string>();
  m.sequences.forEach((s, i) => {
    if (files.has(s.file)) throw bad(`sequences[${i}].file ${s.file} is listed twice`);
    files.add(s.file);
    if (s.file === KV_DUMP_MANIFEST) throw bad(`sequences[${i}].file names the manifest itself`);
    if (s.start_position + s.tokens > mm.max_positions)
      throw bad(
        `sequences[${i}] (${s.file}) ends at position ${s.start_position + s.tokens}, past model.max_positions ${mm.max_positions}`,
      );
    sequences.push({ index: i, file: s.file, tokens: s.tokens, startPosition: s.start_position });
  });
  const dtype = mm.dtype;
  const spec: ModelSpec = {
    architecture: mm.architecture,
    // Dumps carry any transformers model_type (issue 20 design: format 3's family is a label).
    family: mm.family,
    layers: fileLayers.length,
    heads: mm.heads,
    kvHeads: mm.kv_heads,
    headDim: mm.head_dim,
    // Not in a dump, and nothing downstream of the fit reads them (they belong to ONNX models' fingerprints).
    hidden: 0,
    vocabSize: 0,
    kvDtype: dtype === 'float16' ? 'float16' : 'float32',
    rope,
    maxPositions: mm.max_positions,
    valueDim: mm.value_head_dim ?? mm.head_dim,
    cacheLayout: mm.cache,
    modelLayers: mm.layers,
    cacheLayers: [...fileLayers],
    ...(shard
      ? { shard: { tpRank: shard.tpRank, tpSize: shard.tpSize, ppRank: shard.ppRank, ppSize: shard.ppSize, kvHeads: [...shard.kvHeads] } }
      : {}),
  };
  return {
    dir,
    manifestPath,
    manifest: m,
    dtype,
    sequences,
    model: {
      spec,
      name: mm.name,
      valueDim: mm.value_head_dim ?? mm.head_dim,
      cacheLayout: mm.cache,
      modelLayers: mm.layers,
      cacheLayers: [...fileLayers],
      allCacheLayers: [...mm.cache_layers],
      ...(shard ? { shard } : {}),
      fingerprint: dumpFingerprint(mm),
    },
  };
}

/** Bytes a sequence file may have at most: its tensors, and a header bounded by their count. */
export function maxSequenceFileBytes(dump: KvDump, s: DumpSequence): number {
  const { spec, valueDim } = dump.model;
  const el = DTYPE_BYTES[DTYPES[dump.dtype]];
  const perLayer = spec.kvHeads * s.tokens * (spec.headDim + valueDim) * el;
  const tensors = 2 * spec.layers + 2;
  return 8 + KV_DUMP_LIMITS.headerBaseBytes + KV_DUMP_LIMITS.headerPerTensorBytes * tensors + spec.layers * perLayer + 2 * 8 * s.tokens;
}

/** One sequence of a dump as kvtc's cache, and its token ids when the file has them. */
export interface DumpCache {
  cache: KvCache;
  ids?: number[];
  /** The file as the profile's calibration sources record it. */
  source: { name: string; sha256: string; bytes: number };
}

function toFloat32(t: TensorEntry): Float32Array {
  const n = t.data.byteLength / DTYPE_BYTES[t.dtype];
  const copy = new Uint8Array(t.data.byteLength);
  copy.set(t.data);
  if (t.dtype === 'F32') return new Float32Array(copy.buffer);
  const bits = new Uint16Array(copy.buffer);
  if (t.dtype === 'F16') return halfArrayToFloat(bits);
  // bfloat16 is the top half of a float32: exact in float32.
  const out = new Uint32Array(n);
  for (let i = 0; i < n; i++) out[i] = bits[i] << 16;
  return new Float32Array(out.buffer);
}

function int64s(t: TensorEntry): BigInt64Array {
  const copy = new Uint8Array(t.data.byteLength);
  copy.set(t.data);
  return new BigInt64Array(copy.buffer);
}

/**
 * Reads one sequence file and checks it against the manifest: exactly the tensors
 * present.{l}.key|value of the file's layers (and optional positions, input_ids), their shapes and
 * dtype, positions = start_position + t, token ids in [0, 2^31), metadata tokens/start_position
 * agreeing with the manifest, and every value finite.
 */
export async function readDumpSequence(dump: KvDump, s: DumpSequence): Promise<DumpCache> {
  const path = join(dump.dir, s.file);
  const { spec, valueDim, cacheLayers } = dump.model;
  const max = maxSequenceFileBytes(dump, s);
  if (max > KV_DUMP_LIMITS.maxFileBytes) {
    throw dumpError(
      dump.manifestPath,
      `sequences[${s.index}] (${s.file}) holds ${s.tokens} tokens, ${max} bytes of KV: more than one file may hold (${KV_DUMP_LIMITS.maxFileBytes} bytes)`,
      'Dump shorter sequences (several files per prompt, each with its start_position).',
    );
  }
  let size: number;
  try {
    size = (await stat(path)).size;
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    throw dumpError(
      path,
      code === 'ENOENT' ? `missing: ${KV_DUMP_MANIFEST} lists it as sequences[${s.index}]` : `cannot be read (${code})`,
      `Copy the whole dump directory (every file its ${KV_DUMP_MANIFEST} lists), or re-create the dump.`,
      { sequence: s.index },
    );
  }
  if (size > max)
    throw dumpError(
      path,
      `${size} bytes, more than the ${max} that ${s.tokens} tokens of ${spec.layers} layers × ${spec.kvHeads} KV heads can take: not the file the manifest describes`,
    );
  const buf = await readFile(path);
  const u8 = new Uint8Array(buf.buffer, buf.byteOffset, buf.byteLength);
  const f = scanSafetensors(u8, (m) => {
    throw new KvtcError('SAFETENSORS_INVALID', `${path}: ${m}`, {
      fix: 'The file is truncated or is not a safetensors file: copy it again or re-create the dump.',
      context: { file: path },
    });
  })!;
  const bad = (tensor: string, msg: string) => dumpError(path, `tensor ${tensor}: ${msg}`, DUMP_FIX, { tensor });
  const want = DTYPES[dump.dtype];
  const expected = new Set<string>();
  for (const l of cacheLayers) expected.add(`present.${l}.key`).add(`present.${l}.value`);
  for (const name of f.tensors.keys()) {
    if (!expected.has(name) && name !== 'positions' && name !== 'input_ids') {
      throw dumpError(
        path,
        `unexpected tensor ${name}: the dump's files hold present.{l}.key|value of layers ${cacheLayers.join(', ')}${dump.model.shard ? ' (shard.layers)' : ' (model.cache_layers)'}, positions and input_ids`,
        DUMP_FIX,
        { tensor: name },
      );
    }
  }
  const T = s.tokens;
  const sameShape = (a: number[], b: number[]) => a.length === b.length && a.every((x, i) => x === b[i]);
  const layer = (name: string, dim: number): Float32Array => {
    const t = f.tensors.get(name);
    if (!t) throw dumpError(path, `tensor ${name} is missing`, DUMP_FIX, { tensor: name });
    if (t.dtype !== want) throw bad(name, `dtype ${t.dtype}, but model.dtype ${dump.dtype} needs ${want}`);
    const shape = [1, spec.kvHeads, T, dim];
    if (!sameShape(t.shape, shape))
      throw bad(
        name,
        `shape [${t.shape.join(', ')}], expected [${shape.join(', ')}] ([1, kv_heads, tokens, ${dim === spec.headDim ? 'head_dim' : 'value_head_dim'}])`,
      );
    const a = toFloat32(t);
    for (let i = 0; i < a.length; i++) {
      if (!Number.isFinite(a[i])) {
        const d = i % dim;
        const tok = Math.floor(i / dim) % T;
        const h = Math.floor(i / (dim * T));
        throw bad(
          name,
          `value ${a[i]} at head ${h}, token ${tok}, dim ${d}: every value must be finite (an overflow in the model or the writer)`,
        );
      }
    }
    return a;
  };
  const keys: Float32Array[] = [];
  const values: Float32Array[] = [];
  for (const l of cacheLayers) {
    keys.push(layer(`present.${l}.key`, spec.headDim));
    values.push(layer(`present.${l}.value`, valueDim));
  }
  const vector = (name: string): BigInt64Array | undefined => {
    const t = f.tensors.get(name);
    if (!t) return undefined;
    if (t.dtype !== 'I64') throw bad(name, `dtype ${t.dtype}, expected I64`);
    if (!sameShape(t.shape, [T])) throw bad(name, `shape [${t.shape.join(', ')}], expected [${T}] (one per token)`);
    return int64s(t);
  };
  const positions = vector('positions');
  if (positions) {
    for (let t = 0; t < T; t++) {
      if (positions[t] !== BigInt(s.startPosition + t))
        throw bad(
          'positions',
          `token ${t} is at position ${positions[t]}, expected ${s.startPosition + t} (start_position ${s.startPosition} + ${t}); kvtc's blobs address contiguous positions, so caches with gaps or reordered tokens cannot be used`,
        );
    }
  }
  const idsRaw = vector('input_ids');
  let ids: number[] | undefined;
  if (idsRaw) {
    ids = new Array<number>(T);
    for (let t = 0; t < T; t++) {
      const v = idsRaw[t];
      if (v < 0n || v > 0x7fffffffn) throw bad('input_ids', `token ${t} has id ${v}, outside [0, 2^31)`);
      ids[t] = Number(v);
    }
  }
  for (const [k, want] of [
    ['tokens', s.tokens],
    ['start_position', s.startPosition],
  ] as const) {
    const v = f.metadata[k];
    if (v !== undefined && v !== String(want))
      throw dumpError(path, `__metadata__ ${k} is ${JSON.stringify(v)}, but ${KV_DUMP_MANIFEST} says ${want} for it`);
  }
  const dtype: KvDtype = spec.kvDtype;
  return {
    cache: {
      layers: spec.layers,
      kvHeads: spec.kvHeads,
      headDim: spec.headDim,
      ...(valueDim !== spec.headDim ? { valueDim } : {}),
      tokens: T,
      dtype,
      keys,
      values,
      startPosition: s.startPosition,
    },
    ...(ids ? { ids } : {}),
    source: { name: s.file, sha256: sha256(u8), bytes: u8.byteLength },
  };
}
