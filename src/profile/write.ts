// Tested by test/profile/write.test.ts (and test/dynamo/calibrate-export.test.ts through writeProfileFiles).
/**
 * Writing profiles: serializeProfile builds the manifest and tensor file bytes; writeProfile puts
 * them in a directory under the same-job policy of writeProfileFiles, which the Dynamo profile
 * writer (src/dynamo/profile.ts) shares.
 */
import { existsSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { readWholeFile } from '../io/read-whole.js';
import { join } from 'node:path';
import { KvtcError } from '../errors.js';
import { writeFileAtomic } from '../io/atomic.js';
import { sha256 } from '../io/hash.js';
import { f32, serializeSafetensors, type TensorEntry } from '../io/safetensors.js';
import { planBitsPerToken, type BasisPlan } from '../codec/types.js';
import { formatZodIssues } from '../validation.js';
import { computeProfileId } from './id.js';
import { checkManifestFormat, profileFormatVersion } from './format3.js';
import { compareProfiles, type Equivalence } from './equivalence.js';
import { readProfile, readManifest, type Profile } from './read.js';
import { MANIFEST_FILE, ManifestSchema, planTensorNames, TENSORS_FILE, TENSORS_FORMAT_VERSION, type Manifest } from './schema.js';

/** Manifest fields computed at write time. */
export type ManifestDraft = Omit<Manifest, 'profile_id' | 'tensors' | 'plans'>;

/** `o`'s keys in the order of `keys` (the schema's), then any others as they were. */
function ordered<T extends object>(o: T, keys: string[]): T {
  const src = o as Record<string, unknown>;
  const out: Record<string, unknown> = {};
  for (const k of keys) if (k in src) out[k] = src[k];
  for (const k of Object.keys(src)) if (!(k in out)) out[k] = src[k];
  return out as T;
}

/**
 * The draft with `model` and its fingerprint in the schema's key order and `shard` right after
 * `model`, whatever order the caller built them in: format 3's fields land where docs and readers
 * expect them (model.value_head_dim … after kv_dtype), and format 2's order — which the schema
 * follows within `model` — is unchanged, so its bytes are.
 */
function canonicalOrder(draft: ManifestDraft): ManifestDraft {
  const { shard, ...rest } = draft;
  const modelShape = ManifestSchema.shape.model.shape;
  const out: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(rest)) {
    if (k !== 'model') {
      out[k] = v;
      continue;
    }
    const m = v as ManifestDraft['model'];
    out.model = ordered({ ...m, fingerprint: ordered(m.fingerprint, Object.keys(modelShape.fingerprint.shape)) }, Object.keys(modelShape));
    if (shard !== undefined) out.shard = ordered(shard, Object.keys(ManifestSchema.shape.shard.unwrap().shape));
  }
  return out as ManifestDraft;
}

/** Builds the manifest and the tensor file bytes (deterministic for the same inputs). */
export function serializeProfile(draft: ManifestDraft, plans: BasisPlan[]): { manifest: Manifest; tensors: Uint8Array } {
  const entries = new Map<string, TensorEntry>();
  const planEntries = plans.map((plan, i) => {
    const names = planTensorNames(i);
    entries.set(names.mean, f32(plan.mean, [plan.dim]));
    entries.set(names.basis, f32(plan.basis, [plan.dim, plan.rank]));
    entries.set(names.variances, f32(plan.variances, [plan.rank]));
    entries.set(names.lo, f32(plan.lo, [plan.rank]));
    entries.set(names.hi, f32(plan.hi, [plan.rank]));
    const bits = planBitsPerToken(plan);
    return {
      index: i,
      kind: plan.kind,
      layers: plan.layers,
      dim: plan.dim,
      rank: plan.rank,
      budget_bits: plan.budgetBits ?? bits,
      bits_per_token: bits,
      groups: plan.groups
        .filter((g) => g.type !== 'none')
        .map((g) => ({ start: g.start, end: g.end, type: g.type as 'int2', mode: g.mode })),
      tensors: names,
    };
  });
  const tensors = serializeSafetensors(entries, { producer: draft.producer.name, format_version: String(TENSORS_FORMAT_VERSION) });
  const digest = sha256(tensors);
  const manifest: Manifest = {
    ...canonicalOrder(draft),
    // Format 3 exactly when a format-3 field is present: every other profile keeps format 2's bytes and id.
    format_version: profileFormatVersion(draft),
    profile_id: '',
    plans: planEntries,
    tensors: { file: TENSORS_FILE, sha256: digest, bytes: tensors.byteLength },
  };
  manifest.profile_id = computeProfileId(manifest);
  const parsed = ManifestSchema.safeParse(manifest);
  if (!parsed.success) {
    throw new KvtcError('INTERNAL', `kvtc produced a manifest that fails its own schema:\n${formatZodIssues(parsed.error)}`);
  }
  const problems: string[] = [];
  checkManifestFormat(manifest, (msg) => problems.push(msg));
  if (problems.length)
    throw new KvtcError('INTERNAL', `kvtc produced a manifest whose format-3 fields are inconsistent: ${problems.join('; ')}`);
  return { manifest, tensors };
}

/** The manifest as kvtc writes it: two-space JSON and a final newline (profiles and dynamo profiles alike). */
export function manifestText(manifest: unknown): string {
  return `${JSON.stringify(manifest, null, 2)}\n`;
}

/** True when `dir` holds either of kvtc's two profile files (kvtc-profile.json, kvtc-profile.safetensors). */
export function isProfileDir(dir: string): boolean {
  return existsSync(join(dir, MANIFEST_FILE)) || existsSync(join(dir, TENSORS_FILE));
}

/** A profile directory's two files as a writer produced them: the manifest names the tensor file's sha256. */
export interface ProfileFiles<M> {
  manifestFile: string;
  tensorsFile: string;
  manifest: M;
  tensors: Uint8Array;
}

/** How one kind of profile applies the same-job policy of writeProfileFiles. */
export interface SameJobPolicy<M, K> {
  /** The fields that make a job (model, calibration data, settings): equal JSON means a re-run of the same job. */
  job(m: M): unknown[];
  /** Reads the manifest already in `dir` (throws when it cannot be read as one). */
  readManifest(dir: string): Promise<M>;
  /** What `dir` already holds, for the refusal: `existing` is undefined when no manifest could be read. */
  describe(existing: M | undefined, hasManifest: boolean): string;
  /**
   * The same job's files differ from the new bytes: `kept` leaves them as they are (reported as
   * unchanged), otherwise `difference` says why they are replaced. Without it they are replaced.
   */
  differs?(): Promise<{ kept: K } | { difference?: string }>;
}

/** What writeProfileFiles did: nothing (`unchanged`, with what `differs` kept), or wrote the files (`replaced` when a run of the same job was there). */
export type FilesOutcome<K> = { unchanged: true; kept?: K } | { unchanged?: undefined; replaced: boolean; difference?: string };

/**
 * Writes the two files into `dir` (created if missing) — tensors first, manifest last, each to a
 * temporary name in `dir` and renamed — and touches nothing else there: `dir` may be the model's
 * own directory. Existing files are replaced only with `force`, or when they hold a profile of
 * the same job: re-running a calibration must work on the committed profile. A same-job profile
 * whose bytes are identical is left untouched (`unchanged`).
 */
export async function writeProfileFiles<M, K = never>(
  dir: string,
  files: ProfileFiles<M>,
  policy: SameJobPolicy<M, K>,
  force = false,
): Promise<FilesOutcome<K>> {
  const manifestPath = join(dir, files.manifestFile);
  const tensorsPath = join(dir, files.tensorsFile);
  const hasManifest = existsSync(manifestPath);
  const hasTensors = existsSync(tensorsPath);
  const text = manifestText(files.manifest);
  let replaced = false;
  let difference: string | undefined;
  if ((hasManifest || hasTensors) && !force) {
    let existing: M | undefined;
    if (hasManifest) {
      try {
        existing = await policy.readManifest(dir);
      } catch {
        existing = undefined;
      }
    }
    if (!existing || JSON.stringify(policy.job(existing)) !== JSON.stringify(policy.job(files.manifest))) {
      throw new KvtcError('OUTPUT_EXISTS', `output ${dir} already holds ${policy.describe(existing, hasManifest)}`, {
        fix: `Pass --force to replace its ${files.manifestFile} and ${files.tensorsFile} (nothing else in the directory is touched), or choose another --out.`,
        context: { out: dir },
      });
    }
    const same =
      hasTensors &&
      Buffer.from(await readWholeFile(tensorsPath)).equals(Buffer.from(files.tensors)) &&
      (await readFile(manifestPath, 'utf8')) === text;
    if (same) return { unchanged: true };
    if (policy.differs) {
      const d = await policy.differs();
      if ('kept' in d) return { unchanged: true, kept: d.kept };
      difference = d.difference;
    }
    replaced = true;
  }
  // Tensors first, manifest last: a reader never sees a new manifest over old tensors, and an
  // interrupted write leaves a profile whose hash check fails rather than a mixed one.
  await writeFileAtomic(tensorsPath, files.tensors);
  await writeFileAtomic(manifestPath, text);
  return { replaced, ...(difference ? { difference } : {}) };
}

/** What writeProfile did: `unchanged` (nothing written; `equivalent` when the bytes differed within tolerance), or `replaced` (with the `difference` that made it). */
export interface WriteOutcome {
  unchanged?: boolean;
  /** The existing profile of the same job was kept: it equals the new one within tolerance (equivalence.ts). */
  equivalent?: Equivalence;
  replaced?: boolean;
  /** Why an earlier run of the same job was replaced: the first difference beyond tolerance. */
  difference?: string;
}

/**
 * Writes a profile into `dir` with writeProfileFiles. Same job: model fingerprint, settings and
 * calibration sources. A profile of the same job that is identical (`unchanged`) or equivalent
 * within tolerance (`unchanged` + `equivalent`: another CPU's ONNX Runtime kernels move the last
 * float bits, equivalence.ts) is left untouched and returned as it is on disk, so re-running a
 * committed calibration on any machine leaves it as committed; one that differs beyond that is
 * overwritten (`replaced`, with the `difference`).
 */
export async function writeProfile(
  dir: string,
  draft: ManifestDraft,
  plans: BasisPlan[],
  opts: { force?: boolean } = {},
): Promise<Manifest & WriteOutcome> {
  const { manifest, tensors } = serializeProfile(draft, plans);
  const out = await writeProfileFiles<Manifest, { profile: Profile; equivalent: Equivalence }>(
    dir,
    { manifestFile: MANIFEST_FILE, tensorsFile: TENSORS_FILE, manifest, tensors },
    {
      job: (m) => [m.model.fingerprint.id, m.settings, m.calibration.sources],
      readManifest: async (d) => (await readManifest(d)).manifest,
      describe: (existing, hasManifest) =>
        existing
          ? 'a profile of another model, data or settings'
          : hasManifest
            ? `a ${MANIFEST_FILE} that kvtc cannot read as a profile`
            : `a ${TENSORS_FILE} without its ${MANIFEST_FILE}`,
      // The whole existing profile, every reader check run: one that fails them is replaced.
      differs: async () => {
        let kept: Profile;
        try {
          kept = await readProfile(dir);
        } catch (e) {
          return { difference: `the existing profile fails its checks (${(e as Error).message})` };
        }
        const c = compareProfiles(kept, { manifest, plans });
        return c.equivalent ? { kept: { profile: kept, equivalent: c.detail } } : { difference: c.difference };
      },
    },
    opts.force,
  );
  if (out.unchanged)
    return out.kept ? { ...out.kept.profile.manifest, unchanged: true, equivalent: out.kept.equivalent } : { ...manifest, unchanged: true };
  return { ...manifest, replaced: out.replaced, ...(out.difference ? { difference: out.difference } : {}) };
}
