/**
 * Profile-versus-model compatibility: the one check encode, evaluate, bench and validate share.
 * A profile made for another model would compress caches it has never seen.
 */
import { KvtcError } from '../errors.js';
import type { ModelFingerprint } from '../model/fingerprint.js';
import type { Profile } from './io.js';

export interface ModelIdentity {
  name: string;
  dir: string;
  fingerprint: Pick<ModelFingerprint, 'id'>;
}

/** Throws PROFILE_MISMATCH unless `profile` was calibrated for `model`. */
export function checkProfileForModel(profile: Profile, model: ModelIdentity, role = 'the model being used'): void {
  const pm = profile.manifest.model;
  if (pm.fingerprint.id !== model.fingerprint.id) {
    throw new KvtcError(
      'PROFILE_MISMATCH',
      `profile ${profile.dir} was calibrated for model ${pm.name} (fingerprint ${pm.fingerprint.id}), but ${role} is ${model.name} (fingerprint ${model.fingerprint.id}, ${model.dir})`,
      {
        fix: `Pass --model with the directory of ${pm.name} the profile was made for, or calibrate a profile for this model: kvtc calibrate --model ${model.dir}`,
        context: { profile: profile.dir, profile_model: pm.name, profile_fingerprint: pm.fingerprint.id, model: model.dir, model_fingerprint: model.fingerprint.id },
      },
    );
  }
}
