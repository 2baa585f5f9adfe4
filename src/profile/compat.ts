/**
 * Profile-versus-model compatibility: the one check encode, evaluate, bench and validate share
 * (kvtc profiles, dynamo profiles, and captured caches that record their model).
 * A profile made for another model would compress caches it has never seen. A mismatch names
 * what differs: an architecture field kvtc reads, or the ONNX graph / its weights.
 */
import { relative, sep } from 'node:path';
import { KvtcError } from '../errors.js';
import { architectureFields, type ModelFingerprint } from '../model/fingerprint.js';
import type { DynamoManifest } from '../dynamo/schema.js';
import type { KvCache, ModelSpec } from '../model/types.js';
import { ropeFields, type RopeFields } from '../rope/describe.js';
import type { Profile } from './read.js';
import { ropeFromManifest } from './rope.js';
import type { Manifest } from './schema.js';

export interface ModelIdentity {
  name: string;
  dir: string;
  fingerprint: Pick<ModelFingerprint, 'id'> & Partial<Pick<ModelFingerprint, 'specSha256' | 'onnx'>>;
  spec?: ModelSpec;
  /** The model directory and the graph file in use (ModelDescription.files), to name the graph a profile wants. */
  files?: { dir: string; onnx: string };
}

/** The graph file relative to the model directory, as a profile records it (manifest model.onnx_file). */
export function onnxFileOf(files: { dir: string; onnx: string }): string {
  return relative(files.dir, files.onnx).split(sep).join('/');
}

/**
 * Same architecture, another ONNX graph file than the one the profile records (a transformers.js
 * repo's model_q4.onnx beside model.onnx): the one mismatch another --onnx fixes.
 */
function otherGraphFile(manifest: Manifest, model: ModelIdentity): { recorded: string; here: string } | undefined {
  const recorded = manifest.model.onnx_file;
  if (!recorded || !model.files || !model.fingerprint.onnx || model.fingerprint.onnx.sha256 === manifest.model.fingerprint.onnx_sha256)
    return undefined;
  const here = onnxFileOf(model.files);
  return recorded === here ? undefined : { recorded, here };
}

/**
 * RoPE as compared field by field: rope.theta, rope.rotary_dim, rope.layout, rope.scaling for one
 * description shared by all layers (snake_case scaling keys, sorted); the per-layer groups as JSON otherwise.
 */
function ropeCompareFields(r: RopeFields): Record<string, unknown> {
  if (!('theta' in r)) return { 'rope (per layer)': JSON.stringify(r.per_layer) };
  const snake = (k: string) => k.replace(/[A-Z]/g, (c) => `_${c.toLowerCase()}`);
  return {
    'rope.theta': r.theta,
    'rope.rotary_dim': r.rotary_dim,
    'rope.layout': r.layout,
    'rope.scaling': r.scaling
      ? JSON.stringify(
          Object.fromEntries(
            Object.entries(r.scaling)
              .map(([k, v]) => [snake(k), v] as const)
              .sort(([x], [y]) => x.localeCompare(y)),
          ),
        )
      : 'none',
  };
}

/** "field is X in the profile, Y in the model" for each field where `profile` and `model` differ (compared as text). */
function fieldDifferences(profile: Record<string, unknown>, model: Record<string, unknown>): string[] {
  return Object.keys(profile).flatMap((k) =>
    String(profile[k]) === String(model[k]) ? [] : [`${k} is ${String(profile[k])} in the profile, ${String(model[k])} in the model`],
  );
}

/** The architecture fields (and the spec hash) that differ between a profile's model and `model`, in words. */
function architectureDifferences(manifest: Manifest, model: ModelIdentity): string[] {
  const pm = manifest.model;
  if (pm.fingerprint.id === model.fingerprint.id || !model.spec) return [];
  const a = architectureFields(model.spec);
  const want: Record<string, unknown> = {
    architecture: pm.architecture,
    family: pm.family,
    layers: pm.layers,
    heads: pm.heads,
    kv_heads: pm.kv_heads,
    head_dim: pm.head_dim,
    kv_dtype: pm.kv_dtype,
    ...ropeCompareFields(ropeFields(ropeFromManifest(manifest))),
  };
  const have: Record<string, unknown> = {
    architecture: a.architecture,
    family: a.family,
    layers: a.layers,
    heads: a.heads,
    kv_heads: a.kv_heads,
    head_dim: a.head_dim,
    kv_dtype: a.kv_dtype,
    ...ropeCompareFields(a.rope),
  };
  const out = fieldDifferences(want, have);
  if (!out.length && model.fingerprint.specSha256 && model.fingerprint.specSha256 !== pm.fingerprint.spec_sha256)
    out.push('an architecture field the profile does not list (hidden size or vocabulary) differs');
  return out;
}

/** What differs between the model a profile was made for and `model`, in words (empty: nothing). */
export function profileModelDifferences(manifest: Manifest, model: ModelIdentity): string[] {
  const pm = manifest.model;
  if (pm.fingerprint.id === model.fingerprint.id) return [];
  const out = architectureDifferences(manifest, model);
  if (pm.fingerprint.source === 'kv-dump') {
    // No graph to compare: a dump's fingerprint hashes the dump manifest's model description.
    out.push('the profile was calibrated from a KV dump (fingerprint source kv-dump), whose fingerprint no ONNX model has');
    return out;
  }
  if (!out.length && model.fingerprint.onnx && model.fingerprint.onnx.sha256 !== pm.fingerprint.onnx_sha256) {
    const g = otherGraphFile(manifest, model);
    out.push(
      g
        ? `the ONNX graph differs: the profile was calibrated on ${g.recorded}, this is ${g.here}`
        : 'the ONNX graph differs (same architecture: another export or other weights)',
    );
  }
  if (!out.length) out.push('the weights beside the graph differ (same architecture and graph)');
  return out;
}

/** The model a profile records it was made for: kvtc's manifest keeps a fingerprint object, the dynamo manifest its id. */
interface RecordedModel {
  name: string;
  id: string;
}

/** A profile made for another model: the message every command prints, the fix and the differences. */
export interface ProfileModelMismatch {
  message: string;
  fix: string;
  differences: string[];
}

function mismatch(
  profileDir: string,
  recorded: RecordedModel,
  model: ModelIdentity,
  differences: string[],
  role: string,
  fix?: string,
): ProfileModelMismatch {
  return {
    message: `profile ${profileDir} was calibrated for model ${recorded.name} (fingerprint ${recorded.id}), but ${role} is ${model.name} (fingerprint ${model.fingerprint.id}, ${model.dir}): ${differences.join('; ')}`,
    fix:
      fix ??
      `Pass --model with the directory of ${recorded.name} the profile was made for, or calibrate a profile for this model: kvtc calibrate --model ${model.dir}`,
    differences,
  };
}

function mismatchError(
  profileDir: string,
  recorded: RecordedModel,
  model: ModelIdentity,
  m: ProfileModelMismatch,
  extra: Record<string, unknown> = {},
): KvtcError {
  return new KvtcError('PROFILE_MISMATCH', m.message, {
    fix: m.fix,
    context: {
      profile: profileDir,
      profile_model: recorded.name,
      profile_fingerprint: recorded.id,
      model: model.dir,
      model_fingerprint: model.fingerprint.id,
      differences: m.differences,
      ...extra,
    },
  });
}

/** Why `profile` does not fit `model` (validate prints it as a failed check), or undefined when it does. */
export function profileModelMismatch(
  profile: Pick<Profile, 'dir' | 'manifest'>,
  model: ModelIdentity,
  role = 'the model being used',
): ProfileModelMismatch | undefined {
  const diff = profileModelDifferences(profile.manifest, model);
  if (!diff.length) return undefined;
  const pm = profile.manifest.model;
  // Only when the graph file is all that differs (no architecture field) is another --onnx the fix.
  const g = architectureDifferences(profile.manifest, model).length ? undefined : otherGraphFile(profile.manifest, model);
  const fix = g
    ? `Pass --onnx ${g.recorded} to run the graph the profile was calibrated on, or calibrate one for ${g.here}: kvtc calibrate --model ${model.dir} --onnx ${g.here}`
    : undefined;
  return mismatch(profile.dir, { name: pm.name, id: pm.fingerprint.id }, model, diff, role, fix);
}

/** Throws PROFILE_MISMATCH unless `profile` was calibrated for `model`. */
export function checkProfileForModel(
  profile: Pick<Profile, 'dir' | 'manifest'>,
  model: ModelIdentity,
  role = 'the model being used',
): void {
  const m = profileModelMismatch(profile, model, role);
  if (m) {
    const pm = profile.manifest.model;
    throw mismatchError(profile.dir, { name: pm.name, id: pm.fingerprint.id }, model, m);
  }
}

/** What differs between the model a dynamo profile was made for and `model` (empty: nothing). */
export function dynamoProfileModelDifferences(manifest: Pick<DynamoManifest, 'model'>, model: ModelIdentity): string[] {
  const pm = manifest.model;
  if (pm.fingerprint === model.fingerprint.id) return [];
  const s = model.spec;
  const out = s
    ? fieldDifferences(
        { architecture: pm.architecture, layers: pm.layers, kv_heads: pm.kv_heads, head_dim: pm.head_dim, kv_dtype: pm.kv_dtype },
        { architecture: s.architecture, layers: s.layers, kv_heads: s.kvHeads, head_dim: s.headDim, kv_dtype: s.kvDtype },
      )
    : [];
  // The dynamo manifest keeps only the fingerprint id, so past the shape nothing says which part differs.
  if (!out.length) out.push('the fingerprint differs (same shape: another export, other weights or another RoPE)');
  return out;
}

/** Throws PROFILE_MISMATCH unless the dynamo profile was calibrated for `model`. */
export function checkDynamoProfileForModel(
  profile: { dir: string; manifest: Pick<DynamoManifest, 'model'> },
  model: ModelIdentity,
  role = 'the model being used',
): void {
  const diff = dynamoProfileModelDifferences(profile.manifest, model);
  if (!diff.length) return;
  const recorded = { name: profile.manifest.model.name, id: profile.manifest.model.fingerprint };
  throw mismatchError(
    profile.dir,
    recorded,
    model,
    mismatch(
      profile.dir,
      recorded,
      model,
      diff,
      role,
      `Calibrate a dynamo profile for this model: kvtc calibrate --target dynamo --model ${model.dir}`,
    ),
  );
}

/**
 * Throws PROFILE_MISMATCH when the KV cache in file `kv` records (kvtc capture's metadata) that
 * another model produced it. A cache without a recorded fingerprint is left to the codec's shape
 * checks: caches from other tools are welcome.
 */
export function checkCacheForProfile(
  profile: Pick<Profile, 'dir' | 'manifest'>,
  kv: string,
  cache: Pick<KvCache, 'layers' | 'kvHeads' | 'headDim' | 'valueDim' | 'dtype'>,
  recorded: { model?: string; fingerprint?: string },
): void {
  const pm = profile.manifest.model;
  if (!recorded.fingerprint || recorded.fingerprint === pm.fingerprint.id) return;
  const model: ModelIdentity = { name: recorded.model ?? 'an unnamed model', dir: kv, fingerprint: { id: recorded.fingerprint } };
  // value_head_dim only where either side has values of their own width (else it repeats head_dim's line).
  const ownValues = pm.value_head_dim !== undefined || cache.valueDim !== undefined;
  const out = fieldDifferences(
    {
      layers: pm.layers,
      kv_heads: pm.kv_heads,
      head_dim: pm.head_dim,
      ...(ownValues ? { value_head_dim: pm.value_head_dim ?? pm.head_dim } : {}),
      kv_dtype: pm.kv_dtype,
    },
    {
      layers: cache.layers,
      kv_heads: cache.kvHeads,
      head_dim: cache.headDim,
      ...(ownValues ? { value_head_dim: cache.valueDim ?? cache.headDim } : {}),
      kv_dtype: cache.dtype,
    },
  );
  // A capture records only the fingerprint id: the same shape from another model says no more.
  if (!out.length) out.push('the fingerprint differs (same cache shape: another model, export or RoPE)');
  const recordedModel = { name: pm.name, id: pm.fingerprint.id };
  const m = mismatch(
    profile.dir,
    recordedModel,
    model,
    out,
    `the model that captured the cache`,
    `Encode with the profile calibrated for the model that produced this cache, or calibrate one for it with \`kvtc calibrate --model DIR\`.`,
  );
  throw mismatchError(profile.dir, recordedModel, model, m, { kv, cache_fingerprint: recorded.fingerprint });
}
