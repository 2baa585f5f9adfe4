// Tested by test/profile/read.test.ts and test/profile/invalid-profiles.test.ts.
/**
 * Reading profiles: a directory with kvtc-profile.json (manifest, see schema.ts) and
 * kvtc-profile.safetensors (per plan: mean [p], basis [p, r], variances/lo/hi [r], F32).
 *
 * Profiles are untrusted input. readProfile — which decode, encode, evaluate, inspect and bench
 * use — runs every integrity check of docs/profile-format.md §2–§3 (checks.ts) before anything
 * uses the profile: the schema, the plans' consistency (index, layers, groups, bits), RoPE sanity,
 * the profile id (which binds the tensor file's hash and every manifest field decoding uses), a
 * strict parse of the tensor file (exact header length, contiguous data, no extra, missing or
 * trailing bytes), finite and bounded values and orthonormal bases. Sizes are bounded by the
 * manifest before the tensor file is read. `kvtc validate` runs the same checks through
 * checkProfile, collecting every failure instead of stopping at the first.
 */
import { existsSync, statSync } from 'node:fs';
import { readFile, stat } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import { KvtcError } from '../errors.js';
import type { BasisPlan } from '../codec/types.js';
import { formatZodIssues } from '../validation.js';
import {
  checkBases,
  checkBits,
  checkBudget,
  checkFigures,
  checkFormat,
  checkGroups,
  checkLimits,
  checkPlans,
  checkProfileId,
  checkRanges,
  checkRope,
  checkTensorFile,
  checkValues,
  Checker,
  type Check,
} from './checks.js';
import { profileInvalid as invalid, RECALIBRATE } from './errors.js';
import { PROFILE_LIMITS } from './limits.js';
import {
  MANIFEST_FILE,
  ManifestSchema,
  PROFILE_FORMAT,
  PROFILE_FORMAT_VERSION,
  PROFILE_FORMAT_VERSION_3,
  PROFILE_FORMAT_VERSIONS,
  type Manifest,
} from './schema.js';
import { decodeUtf8Strict, findDuplicateKey } from './strict-json.js';

export interface Profile {
  dir: string;
  manifest: Manifest;
  plans: BasisPlan[];
}

/** Resolves a profile argument (directory or its manifest path) to the directory. */
export function profileDir(path: string): string {
  if (existsSync(path) && statSync(path).isFile() && basename(path) === MANIFEST_FILE) return dirname(path);
  return path;
}

/** Reads the manifest only, with version handling and schema validation. */
export async function readManifest(pathArg: string): Promise<{ dir: string; manifest: Manifest }> {
  const dir = profileDir(pathArg);
  const file = join(dir, MANIFEST_FILE);
  if (!existsSync(dir))
    throw new KvtcError('PROFILE_INVALID', `profile ${dir} does not exist`, {
      fix: 'Pass a profile directory written by `kvtc calibrate` (e.g. kvtc-profiles/stories260k).',
      context: { profile: dir },
    });
  if (!existsSync(file))
    throw invalid(
      dir,
      `no ${MANIFEST_FILE} in it`,
      'Pass the directory `kvtc calibrate` wrote (it holds kvtc-profile.json and kvtc-profile.safetensors).',
    );
  let raw: unknown;
  let bytes: Buffer;
  try {
    const st = await stat(file);
    if (!st.isFile()) throw new Error('not a regular file');
    if (st.size > PROFILE_LIMITS.maxManifestBytes)
      throw new Error(`${st.size} bytes, more than the ${PROFILE_LIMITS.maxManifestBytes} a manifest may have`);
    bytes = await readFile(file);
  } catch (e) {
    throw invalid(dir, `${MANIFEST_FILE} cannot be read (${(e as Error).message})`);
  }
  // Strict UTF-8 and unique keys: what Node's 'utf8' decoding and JSON.parse silently repair
  // (U+FFFD, last key wins) would let two readers see two different manifests in one file.
  const decoded = decodeUtf8Strict(bytes);
  if ('badOffset' in decoded) {
    throw invalid(
      dir,
      `${MANIFEST_FILE} is not valid UTF-8 (byte 0x${(bytes[decoded.badOffset] ?? 0).toString(16).padStart(2, '0')} at offset ${decoded.badOffset})`,
      `${RECALIBRATE} A manifest is UTF-8 JSON: an editor that saved it in another encoding corrupted it.`,
    );
  }
  try {
    raw = JSON.parse(decoded.text);
  } catch (e) {
    throw invalid(dir, `${MANIFEST_FILE} is not valid JSON (${(e as Error).message})`);
  }
  const dup = findDuplicateKey(decoded.text);
  if (dup) {
    throw invalid(
      dir,
      `${MANIFEST_FILE} has the key ${dup.path} twice (the second at byte offset ${dup.offset}); JSON readers disagree on which one counts`,
      `${RECALIBRATE} If it was edited by hand, keep one of the two.`,
    );
  }
  const r = raw as { format?: unknown; format_version?: unknown; producer?: { version?: unknown } };
  if (r?.format !== PROFILE_FORMAT)
    throw invalid(dir, `${MANIFEST_FILE} is not a kvtc profile (format is ${JSON.stringify(r?.format)}, expected "${PROFILE_FORMAT}")`);
  if (!(PROFILE_FORMAT_VERSIONS as readonly unknown[]).includes(r.format_version)) {
    const v = r.format_version;
    const newer = typeof v === 'number' && v > PROFILE_FORMAT_VERSION_3;
    throw new KvtcError(
      'PROFILE_VERSION',
      `profile ${dir} has format version ${JSON.stringify(v)}; this kvtc reads versions ${PROFILE_FORMAT_VERSIONS.join(', ')}`,
      {
        fix: newer
          ? `It was written by kvtc ${String(r.producer?.version ?? 'newer')}: upgrade kvtc to that version or later to read it.`
          : `Re-calibrate the model with this kvtc to write a version-${PROFILE_FORMAT_VERSION} profile.`,
        context: { profile: dir, format_version: v },
      },
    );
  }
  const parsed = ManifestSchema.safeParse(raw);
  if (!parsed.success) throw invalid(dir, `${MANIFEST_FILE} does not match the schema:\n${formatZodIssues(parsed.error)}`);
  return { dir, manifest: parsed.data };
}

export interface CheckOptions {
  /** Stop at the first problem and throw it (readProfile) instead of collecting every check (validate). */
  collect?: boolean;
  /** p·r² up to which the full Gram matrix is computed (default: readProfile's cheap bound). */
  orthoWork?: number;
}

export interface CheckResult {
  dir: string;
  checks: Check[];
  /** The manifest, when it passed the schema. */
  manifest?: Manifest;
  /** The profile, when every check passed. */
  profile?: Profile;
}

/**
 * Runs every integrity check on a profile. Throwing mode (the default) throws the first problem
 * as a PROFILE_INVALID (or PROFILE_VERSION) KvtcError; collecting mode records every check.
 */
export async function checkProfile(pathArg: string, opts: CheckOptions = {}): Promise<CheckResult> {
  const collect = opts.collect === true;
  let dir = profileDir(pathArg);
  let manifest: Manifest;
  try {
    ({ dir, manifest } = await readManifest(pathArg));
  } catch (e) {
    if (!collect || !(e instanceof KvtcError)) throw e;
    return { dir, checks: [{ name: 'schema', ok: false, detail: `${e.message}${e.fix ? ` (fix: ${e.fix})` : ''}` }] };
  }
  const c = new Checker(dir, collect);
  c.checks.push({ name: 'schema', ok: true, detail: `manifest is a valid format-${manifest.format_version} kvtc profile` });
  const limitsOk = c.run('limits', (fail) => checkLimits(manifest, fail));
  const formatOk = c.run('format', (fail) => checkFormat(manifest, fail));
  const plansOk = c.run('plans', (fail) => checkPlans(manifest, fail)) && formatOk;
  c.run('groups', (fail) => checkGroups(manifest, fail));
  c.run('bits per token', (fail) => checkBits(manifest, fail));
  c.run('bit budget', (fail) => checkBudget(manifest, fail));
  c.run('rope', (fail) => checkRope(manifest, fail));
  c.run('figures', (fail) => checkFigures(manifest, fail));
  c.run('profile id', (fail) => checkProfileId(manifest, fail));
  let tensors: Map<string, Float32Array> | undefined;
  if (limitsOk && plansOk) {
    await c.runAsync('tensor file', async (fail) => {
      const r = await checkTensorFile(dir, manifest, fail);
      tensors = r.tensors;
      return r.detail;
    });
  } else c.skip('tensor file', "the manifest's plans, limits or format-3 fields are inconsistent");
  const valueChecks = ['finite values', 'static ranges', 'orthonormal bases'];
  if (!tensors) {
    for (const name of valueChecks) c.skip(name, 'the tensor file did not pass its checks');
    return { dir, checks: c.checks, manifest };
  }
  const t = tensors;
  const finiteOk = c.run('finite values', (fail) => checkValues(manifest, t, fail));
  c.run('static ranges', (fail) => checkRanges(manifest, t, fail));
  if (finiteOk) c.run('orthonormal bases', (fail) => checkBases(manifest, t, opts.orthoWork ?? PROFILE_LIMITS.fullOrthoWork, fail));
  else c.skip('orthonormal bases', 'the bases hold values that are not finite');
  if (!c.checks.every((x) => x.ok)) return { dir, checks: c.checks, manifest };
  const plans = manifest.plans.map((pe): BasisPlan => ({
    kind: pe.kind,
    layers: [...pe.layers],
    dim: pe.dim,
    rank: pe.rank,
    mean: t.get(pe.tensors.mean)!,
    basis: t.get(pe.tensors.basis)!,
    variances: t.get(pe.tensors.variances)!,
    lo: t.get(pe.tensors.lo)!,
    hi: t.get(pe.tensors.hi)!,
    groups: pe.groups.map((g) => ({ ...g })),
    budgetBits: pe.budget_bits,
  }));
  return { dir, checks: c.checks, manifest, profile: { dir, manifest, plans } };
}

/** Reads a whole profile and runs every integrity check on it; the first problem throws PROFILE_INVALID. */
export async function readProfile(pathArg: string): Promise<Profile> {
  const r = await checkProfile(pathArg);
  if (!r.profile) throw invalid(r.dir, 'failed its checks', RECALIBRATE); // unreachable: throwing mode throws the problem itself
  return r.profile;
}
