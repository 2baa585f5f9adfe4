// Tested by test/profile/format3.test.ts.
/**
 * Profile format 3 (docs/profile-format.md §2.4): the manifest fields format 2 lacks — value heads
 * of another width, an MLA latent cache, a subset of the model's layers, one rank's shard, a
 * fingerprint of a KV dump — to and from ModelSpec, and the reader's check of their consistency.
 * kvtc writes format 3 exactly when one of them is present, so every other profile keeps format
 * 2's bytes and id.
 */
import { sha256 } from '../io/hash.js';
import { FAMILIES, type ModelSpec, type ShardSpec } from '../model/types.js';
import { PROFILE_LIMITS } from './limits.js';
import { format3FieldsOf, PROFILE_FORMAT_VERSION, PROFILE_FORMAT_VERSION_3, type Manifest } from './schema.js';

/** The format-3 fields of `model` for a spec: each only when it differs from what its absence means. */
export interface Format3ModelFields {
  value_head_dim?: number;
  cache?: 'mla-latent' | 'gqa';
  model_layers?: number;
  cache_layers?: number[];
}

/**
 * The manifest's `model` format-3 fields for `spec` (spread them after `kv_dtype`/`max_positions`):
 * value_head_dim only when it differs from head_dim, cache only when not gqa, model_layers and
 * cache_layers only when the cache is not every model layer in order.
 */
export function format3ModelFields(
  spec: Pick<ModelSpec, 'layers' | 'headDim' | 'valueDim' | 'cacheLayout' | 'modelLayers' | 'cacheLayers'>,
): Format3ModelFields {
  const out: Format3ModelFields = {};
  if (spec.valueDim !== undefined && spec.valueDim !== spec.headDim) out.value_head_dim = spec.valueDim;
  if (spec.cacheLayout !== undefined && spec.cacheLayout !== 'gqa') out.cache = spec.cacheLayout;
  const cl = spec.cacheLayers;
  const modelLayers = spec.modelLayers ?? spec.layers;
  const identity = (cl === undefined || cl.every((x, i) => x === i)) && modelLayers === spec.layers;
  if (!identity) {
    out.model_layers = modelLayers;
    out.cache_layers = cl ? [...cl] : Array.from({ length: spec.layers }, (_, i) => i);
  }
  return out;
}

/** The manifest's top-level `shard` for a spec's shard. */
export function shardManifest(s: ShardSpec): NonNullable<Manifest['shard']> {
  return { tp_rank: s.tpRank, tp_size: s.tpSize, pp_rank: s.ppRank, pp_size: s.ppSize, kv_heads: [...s.kvHeads] };
}

/** The spec fields a manifest's format-3 fields give (none for a format 1–2 manifest). */
export function specFormat3Fields(
  m: Pick<Manifest, 'model' | 'shard'>,
): Pick<ModelSpec, 'valueDim' | 'cacheLayout' | 'modelLayers' | 'cacheLayers' | 'shard'> {
  const md = m.model;
  const s = m.shard;
  return {
    ...(md.value_head_dim !== undefined ? { valueDim: md.value_head_dim } : {}),
    ...(md.cache !== undefined ? { cacheLayout: md.cache } : {}),
    ...(md.model_layers !== undefined ? { modelLayers: md.model_layers } : {}),
    ...(md.cache_layers !== undefined ? { cacheLayers: [...md.cache_layers] } : {}),
    ...(s ? { shard: { tpRank: s.tp_rank, tpSize: s.tp_size, ppRank: s.pp_rank, ppSize: s.pp_size, kvHeads: [...s.kv_heads] } } : {}),
  };
}

/** Width of each value head of a manifest's model: value_head_dim, else head_dim. */
export function manifestValueDim(md: Pick<Manifest['model'], 'head_dim' | 'value_head_dim'>): number {
  return md.value_head_dim ?? md.head_dim;
}

/** The format version a manifest with these fields is written as: 3 exactly when a format-3 field is present. */
export function profileFormatVersion(m: Pick<Manifest, 'model' | 'shard' | 'format_version'>): 1 | 2 | 3 {
  if (format3FieldsOf(m).length) return PROFILE_FORMAT_VERSION_3;
  return m.format_version === PROFILE_FORMAT_VERSION_3 ? PROFILE_FORMAT_VERSION : m.format_version;
}

/**
 * The fingerprint id of a profile calibrated from a KV dump (fingerprint.source "kv-dump"): the
 * first 16 hex digits of sha256("kv-dump:" + spec_sha256 + "\n"), spec_sha256 being the sha256
 * of the canonical JSON of the dump manifest's `model` object without `name`.
 */
export function kvDumpFingerprintId(specSha256: string): string {
  return sha256(`kv-dump:${specSha256}\n`).slice(0, 16);
}

/** "a, b and c" */
function list(xs: string[]): string {
  return xs.length < 2 ? (xs[0] ?? '') : `${xs.slice(0, -1).join(', ')} and ${xs[xs.length - 1]}`;
}

/**
 * The reader's check of the fields whose meaning depends on the format version and of format 3's
 * fields against each other (docs/profile-format.md §2.4). Each failure names the field.
 */
export function checkManifestFormat(m: Manifest, fail: (msg: string) => void): string {
  const md = m.model;
  const v = m.format_version;
  const present = format3FieldsOf(m);
  if (v < 3 && present.length)
    fail(
      `format_version is ${v}, but ${list(present)} ${present.length > 1 ? 'are' : 'is'} format 3: a manifest with them has format_version 3`,
    );
  if (v === 3 && !present.length)
    fail(
      `format_version is 3, but the manifest has none of format 3's fields (model.value_head_dim, model.cache, model.model_layers, model.cache_layers, shard, model.fingerprint.source): kvtc writes such a profile as format 2`,
    );
  if (v < 3 && !(FAMILIES as readonly string[]).includes(md.family))
    fail(
      `model.family ${JSON.stringify(md.family)} is not one of format ${v}'s families (${FAMILIES.join(', ')}); other labels are format 3`,
    );

  const fp = md.fingerprint;
  if (fp.source === 'kv-dump') {
    if (fp.onnx_sha256 !== undefined)
      fail(
        'model.fingerprint.onnx_sha256 is present, but fingerprint.source is kv-dump: a profile calibrated from a KV dump has no ONNX graph',
      );
    const want = kvDumpFingerprintId(fp.spec_sha256);
    if (fp.id !== want)
      fail(
        `model.fingerprint.id ${fp.id} is not the id of a kv-dump fingerprint with this spec_sha256 (expected ${want}: sha256("kv-dump:" + spec_sha256 + "\\n"))`,
      );
  } else if (fp.onnx_sha256 === undefined) {
    fail(
      'model.fingerprint.onnx_sha256 is missing: only a profile calibrated from a KV dump (fingerprint.source "kv-dump", format 3) has none',
    );
  }

  const max = PROFILE_LIMITS.maxShape;
  if (md.value_head_dim !== undefined && md.value_head_dim > max)
    fail(`model.value_head_dim = ${md.value_head_dim} exceeds ${max}, the most a head dim may be`);
  if (md.cache === 'mla-latent' && md.kv_heads !== 1)
    fail(`model.cache is mla-latent, but model.kv_heads is ${md.kv_heads}: an MLA latent cache has one KV head (the latent)`);

  const hasML = md.model_layers !== undefined;
  const cl = md.cache_layers;
  if (hasML !== (cl !== undefined))
    fail(
      `model.${hasML ? 'model_layers' : 'cache_layers'} is present without model.${hasML ? 'cache_layers' : 'model_layers'}: the two go together`,
    );
  if (hasML && md.model_layers! > max) fail(`model.model_layers = ${md.model_layers} exceeds ${max}`);
  if (cl) {
    if (cl.length !== md.layers)
      fail(`model.cache_layers has ${cl.length} entries, but model.layers is ${md.layers} (one model layer per profile layer)`);
    for (let i = 0; i < cl.length; i++) {
      if (i > 0 && !(cl[i] > cl[i - 1])) {
        fail(`model.cache_layers[${i}] = ${cl[i]} is not above model.cache_layers[${i - 1}] = ${cl[i - 1]} (strictly increasing)`);
        break;
      }
      if (hasML && cl[i] >= md.model_layers!) {
        fail(
          `model.cache_layers[${i}] = ${cl[i]} is not a layer of the model (model.model_layers is ${md.model_layers}: 0–${md.model_layers! - 1})`,
        );
        break;
      }
    }
  }

  const s = m.shard;
  if (s) {
    if (s.tp_rank >= s.tp_size) fail(`shard.tp_rank ${s.tp_rank} is not below shard.tp_size ${s.tp_size}`);
    if (s.pp_rank >= s.pp_size) fail(`shard.pp_rank ${s.pp_rank} is not below shard.pp_size ${s.pp_size}`);
    if (s.tp_size > max || s.pp_size > max) fail(`shard.tp_size ${s.tp_size} or shard.pp_size ${s.pp_size} exceeds ${max}`);
    if (s.kv_heads.length !== md.kv_heads)
      fail(
        `shard.kv_heads has ${s.kv_heads.length} entries, but model.kv_heads is ${md.kv_heads} (the model's head index of each profile head)`,
      );
    const seen = new Set<number>();
    for (const [i, h] of s.kv_heads.entries()) {
      if (h > max) {
        fail(`shard.kv_heads[${i}] = ${h} exceeds ${max}`);
        break;
      }
      if (seen.has(h)) {
        fail(`shard.kv_heads[${i}] = ${h} is listed twice (a rank holds each of its heads once)`);
        break;
      }
      seen.add(h);
    }
  }
  const extra = present.length ? `; format 3 fields: ${list(present)}` : '';
  return `format ${v}: family ${md.family}, fingerprint ${fp.source ?? 'onnx'}${extra}`;
}
