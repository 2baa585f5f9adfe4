// Tested by test/profile/invalid-profiles.test.ts.
/**
 * Profile checks behind `kvtc validate`: every integrity check readProfile runs (io.ts
 * checkProfile, here collecting every failure instead of stopping at the first, with the exact
 * orthonormality check), and with a model directory, the profile compared with the model:
 * fingerprint, shape, KV dtype and each RoPE field. Each returns pass/fail with a reason.
 */
import { isKvtcError } from '../errors.js';
import { describeModel } from '../model/load.js';
import { profileModelMismatch } from './compat.js';
import type { RopeSpec } from '../model/types.js';
import { checkProfile, PROFILE_LIMITS, type Check } from './io.js';
import type { Manifest } from './schema.js';

export { orthonormalityError, sampledOrthonormalityError, type Check } from './io.js';

export interface ValidateResult {
  profile: string;
  ok: boolean;
  checks: Check[];
}

const show = (v: unknown) => (v === undefined ? 'none' : JSON.stringify(v));

/** The RoPE fields on which the profile and the model differ, as "field: profile X, model Y". */
export function ropeDifferences(profile: Manifest['model']['rope'], model: RopeSpec): string[] {
  const diffs: string[] = [];
  const cmp = (field: string, a: unknown, b: unknown) => {
    if (a !== b) diffs.push(`${field}: profile ${show(a)}, model ${show(b)}`);
  };
  cmp('theta', profile.theta, model.theta);
  cmp('rotary_dim', profile.rotary_dim, model.rotaryDim);
  cmp('layout', profile.layout, model.layout);
  const ps = profile.scaling;
  const ms = model.scaling;
  if (!ps || !ms) {
    if (ps || ms) diffs.push(`scaling: profile ${ps ? ps.type : 'none'}, model ${ms ? ms.type : 'none'}`);
    return diffs;
  }
  cmp('scaling.type', ps.type, ms.type);
  cmp('scaling.factor', ps.factor, ms.factor);
  cmp('scaling.low_freq_factor', ps.low_freq_factor, ms.lowFreqFactor);
  cmp('scaling.high_freq_factor', ps.high_freq_factor, ms.highFreqFactor);
  cmp('scaling.original_max_position_embeddings', ps.original_max_position_embeddings, ms.originalMaxPositionEmbeddings);
  return diffs;
}

export async function validateProfile(path: string, modelDir?: string): Promise<ValidateResult> {
  const r = await checkProfile(path, { collect: true, orthoWork: PROFILE_LIMITS.validateOrthoWork });
  const checks = [...r.checks];
  const m = r.manifest?.model;
  if (modelDir) {
    try {
      const d = await describeModel(modelDir);
      if (!m) {
        checks.push({ name: 'model', ok: false, detail: 'not checked: the manifest did not pass the schema' });
      } else {
        const mismatch = profileModelMismatch({ dir: r.dir, manifest: { model: m } as Manifest }, d, 'the model being checked');
        checks.push({
          name: 'model',
          ok: !mismatch,
          detail: mismatch ? `${mismatch.message}; ${mismatch.fix}` : `made for this model (${d.name}, fingerprint ${d.fingerprint.id})`,
        });
        const s = d.spec;
        const shapeOk = s.layers === m.layers && s.kvHeads === m.kv_heads && s.headDim === m.head_dim && s.heads === m.heads;
        checks.push({
          name: 'model shape',
          ok: shapeOk,
          detail: `model ${s.layers}×${s.heads}×${s.kvHeads}×${s.headDim}, profile ${m.layers}×${m.heads}×${m.kv_heads}×${m.head_dim} (layers × heads × KV heads × head dim)`,
        });
        checks.push({
          name: 'model kv dtype',
          ok: s.kvDtype === m.kv_dtype,
          detail: s.kvDtype === m.kv_dtype ? `${m.kv_dtype}, as the model's cache` : `profile ${m.kv_dtype}, but the model's cache is ${s.kvDtype}`,
        });
        const diffs = ropeDifferences(m.rope, s.rope);
        checks.push({
          name: 'model rope',
          ok: diffs.length === 0,
          detail: diffs.length ? `the profile's RoPE differs from the model's (keys would be un-rotated wrongly): ${diffs.join('; ')}` : 'theta, rotary_dim, layout and scaling equal the model\'s',
        });
      }
    } catch (e) {
      if (!isKvtcError(e)) throw e;
      checks.push({ name: 'model', ok: false, detail: e.message });
    }
  }
  return { profile: r.dir, ok: checks.every((c) => c.ok), checks };
}
