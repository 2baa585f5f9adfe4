/**
 * Profile-versus-model compatibility: the one check encode, evaluate, bench and validate share.
 * A profile made for another model would compress caches it has never seen. A mismatch names
 * what differs: an architecture field kvtc reads, or the ONNX graph / its weights.
 */
import { KvtcError } from '../errors.js';
import { architectureFields, type ModelFingerprint } from '../model/fingerprint.js';
import type { ModelSpec } from '../model/types.js';
import type { Profile } from './io.js';
import type { Manifest } from './schema.js';

export interface ModelIdentity {
  name: string;
  dir: string;
  fingerprint: Pick<ModelFingerprint, 'id'> & Partial<Pick<ModelFingerprint, 'specSha256' | 'onnx'>>;
  spec?: ModelSpec;
}

/** What differs between the model a profile was made for and `model`, in words (empty: nothing). */
export function profileModelDifferences(manifest: Manifest, model: ModelIdentity): string[] {
  const pm = manifest.model;
  if (pm.fingerprint.id === model.fingerprint.id) return [];
  const out: string[] = [];
  if (model.spec) {
    const a = architectureFields(model.spec);
    const want: Record<string, unknown> = {
      architecture: pm.architecture,
      family: pm.family,
      layers: pm.layers,
      heads: pm.heads,
      kv_heads: pm.kv_heads,
      head_dim: pm.head_dim,
      kv_dtype: pm.kv_dtype,
      'rope.theta': pm.rope.theta,
      'rope.rotary_dim': pm.rope.rotary_dim,
      'rope.layout': pm.rope.layout,
      'rope.scaling': pm.rope.scaling ? JSON.stringify(Object.fromEntries(Object.entries(pm.rope.scaling).sort(([x], [y]) => x.localeCompare(y)))) : 'none',
    };
    const have: Record<string, unknown> = {
      architecture: a.architecture,
      family: a.family,
      layers: a.layers,
      heads: a.heads,
      kv_heads: a.kv_heads,
      head_dim: a.head_dim,
      kv_dtype: a.kv_dtype,
      'rope.theta': a.rope.theta,
      'rope.rotary_dim': a.rope.rotary_dim,
      'rope.layout': a.rope.layout,
      'rope.scaling': a.rope.scaling
        ? JSON.stringify(
            Object.fromEntries(
              Object.entries(a.rope.scaling)
                .map(([k, v]) => [k.replace(/[A-Z]/g, (c) => `_${c.toLowerCase()}`), v] as const)
                .sort(([x], [y]) => x.localeCompare(y)),
            ),
          )
        : 'none',
    };
    for (const k of Object.keys(want)) if (String(want[k]) !== String(have[k])) out.push(`${k} is ${String(want[k])} in the profile, ${String(have[k])} in the model`);
    if (!out.length && model.fingerprint.specSha256 && model.fingerprint.specSha256 !== pm.fingerprint.spec_sha256) out.push('an architecture field the profile does not list (hidden size or vocabulary) differs');
  }
  if (!out.length && model.fingerprint.onnx && model.fingerprint.onnx.sha256 !== pm.fingerprint.onnx_sha256) out.push('the ONNX graph differs (same architecture: another export or other weights)');
  if (!out.length) out.push('the weights beside the graph differ (same architecture and graph)');
  return out;
}

/** Throws PROFILE_MISMATCH unless `profile` was calibrated for `model`. */
export function checkProfileForModel(profile: Profile, model: ModelIdentity, role = 'the model being used'): void {
  const pm = profile.manifest.model;
  const diff = profileModelDifferences(profile.manifest, model);
  if (diff.length) {
    throw new KvtcError(
      'PROFILE_MISMATCH',
      `profile ${profile.dir} was calibrated for model ${pm.name} (fingerprint ${pm.fingerprint.id}), but ${role} is ${model.name} (fingerprint ${model.fingerprint.id}, ${model.dir}): ${diff.join('; ')}`,
      {
        fix: `Pass --model with the directory of ${pm.name} the profile was made for, or calibrate a profile for this model: kvtc calibrate --model ${model.dir}`,
        context: { profile: profile.dir, profile_model: pm.name, profile_fingerprint: pm.fingerprint.id, model: model.dir, model_fingerprint: model.fingerprint.id, differences: diff },
      },
    );
  }
}
