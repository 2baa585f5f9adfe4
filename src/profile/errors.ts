// Tested by test/profile/invalid-profiles.test.ts.
/** The error every profile check throws: PROFILE_INVALID, naming the directory, the problem and the fix. */
import { KvtcError } from '../errors.js';

export const RECALIBRATE = 'Re-create the profile with `kvtc calibrate` (or restore the two files it wrote).';

/** `check` names the integrity check that failed (checks.ts), for `kvtc validate` and error context. */
export function profileInvalid(dir: string, message: string, fix = RECALIBRATE, check?: string): KvtcError {
  return new KvtcError('PROFILE_INVALID', `profile ${dir}: ${message}`, { fix, context: { profile: dir, ...(check ? { check } : {}) } });
}
