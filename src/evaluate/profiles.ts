// Tested by test/evaluate/evaluate-api.test.ts and test/evaluate/evaluate-cli.test.ts.
/** Which profiles an evaluation uses when none is named: default profile discovery. */
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { defaultProfileDir } from '../calibrate/outputs.js';
import type { LoadedModel } from '../model/load.js';
import { DEFAULT_PROFILES_DIR } from '../paths.js';
import { readProfile, type Profile } from '../profile/read.js';
import { MANIFEST_FILE } from '../profile/schema.js';

/**
 * Where a model's default profile may be: kvtc-profiles/<model> in the working directory (where
 * calibrate writes it), the model's own directory (kvtc-profile.json beside config.json), then
 * the profiles shipped with kvtc (the bundled model's).
 */
export function profileCandidates(model: Pick<LoadedModel, 'name' | 'dir'>): string[] {
  return [...new Set([defaultProfileDir(model.name), model.dir, join(DEFAULT_PROFILES_DIR, model.name)])];
}

/** The profiles to use: the directories given (each must hold one), else the first default candidate that holds one, else none. */
export async function findProfiles(dirs: readonly string[] | undefined, model: Pick<LoadedModel, 'name' | 'dir'>): Promise<Profile[]> {
  if (dirs?.length) return Promise.all(dirs.map((p) => readProfile(p)));
  const found = profileCandidates(model).find((d) => existsSync(join(d, MANIFEST_FILE)));
  return found ? [await readProfile(found)] : [];
}
