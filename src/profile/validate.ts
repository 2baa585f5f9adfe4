// Tested by test/profile/invalid-profiles.test.ts.
/**
 * Profile checks behind `kvtc validate`: every integrity check readProfile runs (read.ts
 * checkProfile, here collecting every failure instead of stopping at the first, with the exact
 * orthonormality check), and with a model directory, the profile compared with the model:
 * fingerprint, shape, KV dtype and each RoPE field. Each returns pass/fail with a reason.
 */
import { DEFAULT_MAX_POSITIONS } from '../codec/blob.js';
import { isKvtcError } from '../errors.js';
import { describeModel } from '../model/load.js';
import { profileModelMismatch } from './compat.js';
import { manifestValueDim } from './format3.js';
import { valueDimOf } from '../model/types.js';
import { ropeDifferences, ropeFromManifest } from './rope.js';
import { checkProfile } from './read.js';
import { PROFILE_LIMITS } from './limits.js';
import { type Check } from './checks.js';
import type { Manifest } from './schema.js';

export { orthonormalityError, sampledOrthonormalityError } from './orthonormality.js';
export { type Check } from './checks.js';

export interface ValidateResult {
  profile: string;
  ok: boolean;
  checks: Check[];
}

export { ropeDifferences } from './rope.js';

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
        const sv = valueDimOf(s);
        const mv = manifestValueDim(m);
        const shapeOk = s.layers === m.layers && s.kvHeads === m.kv_heads && s.headDim === m.head_dim && sv === mv && s.heads === m.heads;
        const vd = sv !== s.headDim || mv !== m.head_dim;
        checks.push({
          name: 'model shape',
          ok: shapeOk,
          detail: vd
            ? `model ${s.layers}×${s.heads}×${s.kvHeads}×${s.headDim}/${sv}, profile ${m.layers}×${m.heads}×${m.kv_heads}×${m.head_dim}/${mv} (layers × heads × KV heads × key/value head dim)`
            : `model ${s.layers}×${s.heads}×${s.kvHeads}×${s.headDim}, profile ${m.layers}×${m.heads}×${m.kv_heads}×${m.head_dim} (layers × heads × KV heads × head dim)`,
        });
        checks.push({
          name: 'model kv dtype',
          ok: s.kvDtype === m.kv_dtype,
          detail:
            s.kvDtype === m.kv_dtype
              ? `${m.kv_dtype}, as the model's cache`
              : `profile ${m.kv_dtype}, but the model's cache is ${s.kvDtype}`,
        });
        const diffs = ropeDifferences(ropeFromManifest({ model: m } as Manifest), s.rope);
        checks.push({
          name: 'model rope',
          ok: diffs.length === 0,
          detail: diffs.length
            ? `the profile's RoPE differs from the model's (keys would be un-rotated wrongly): ${diffs.join('; ')}`
            : "theta, rotary_dim, layout and scaling equal the model's",
        });
        // Not in the fingerprint (a config may raise max_position_embeddings): compared here, so a stale bound shows.
        const mp = m.max_positions;
        checks.push({
          name: 'model positions',
          ok: mp === undefined || mp === s.maxPositions,
          detail:
            mp === undefined
              ? `not recorded (a profile written before model.max_positions): encode and decode bound positions at ${DEFAULT_MAX_POSITIONS} (2^24); the model has ${s.maxPositions}`
              : mp === s.maxPositions
                ? `${mp}, as the model's`
                : `profile ${mp}, but the model has ${s.maxPositions} positions: encode and decode refuse positions past ${mp}; re-calibrate to record the model's`,
        });
      }
    } catch (e) {
      if (!isKvtcError(e)) throw e;
      checks.push({ name: 'model', ok: false, detail: e.message });
    }
  }
  return { profile: r.dir, ok: checks.every((c) => c.ok), checks };
}
