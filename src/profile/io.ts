/**
 * Reading and writing profiles: a directory with kvtc-profile.json (manifest, see schema.ts)
 * and kvtc-profile.safetensors (per plan: mean [p], basis [p, r], variances/lo/hi [r], F32).
 */
import { createHash } from 'node:crypto';
import { existsSync, statSync } from 'node:fs';
import { readFile, writeFile } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import { KvtcError } from '../errors.js';
import { writeDirAtomic } from '../io/atomic.js';
import { f32, parseSafetensors, serializeSafetensors, toTypedArray, type TensorEntry } from '../io/safetensors.js';
import { planBitsPerToken, type BasisPlan } from '../codec/types.js';
import { formatZodIssues } from '../validation.js';
import { MANIFEST_FILE, ManifestSchema, PROFILE_FORMAT, PROFILE_FORMAT_VERSION, TENSORS_FILE, type Manifest } from './schema.js';

export interface Profile {
  dir: string;
  manifest: Manifest;
  plans: BasisPlan[];
}

/** Manifest fields computed at write time. */
export type ManifestDraft = Omit<Manifest, 'profile_id' | 'tensors' | 'plans'>;

export function sha256(data: Uint8Array | string): string {
  return createHash('sha256').update(data).digest('hex');
}

function planTensorNames(i: number) {
  return { mean: `plan.${i}.mean`, basis: `plan.${i}.basis`, variances: `plan.${i}.variances`, lo: `plan.${i}.lo`, hi: `plan.${i}.hi` };
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
      groups: plan.groups.filter((g) => g.type !== 'none').map((g) => ({ start: g.start, end: g.end, type: g.type as 'int2', mode: g.mode })),
      tensors: names,
    };
  });
  const tensors = serializeSafetensors(entries, { producer: draft.producer.name, format_version: String(PROFILE_FORMAT_VERSION) });
  const digest = sha256(tensors);
  const manifest: Manifest = {
    ...draft,
    profile_id: digest.slice(0, 16),
    plans: planEntries,
    tensors: { file: TENSORS_FILE, sha256: digest, bytes: tensors.byteLength },
  };
  const parsed = ManifestSchema.safeParse(manifest);
  if (!parsed.success) {
    throw new KvtcError('INTERNAL', `kvtc produced a manifest that fails its own schema:\n${formatZodIssues(parsed.error)}`);
  }
  return { manifest, tensors };
}

export function manifestText(manifest: Manifest): string {
  return `${JSON.stringify(manifest, null, 2)}\n`;
}

/** True when `dir` holds a kvtc profile manifest. */
export function isProfileDir(dir: string): boolean {
  return existsSync(join(dir, MANIFEST_FILE));
}

/** Same model, calibration data and settings: a re-run of the same calibration job. */
function sameJob(a: Manifest, b: Manifest): boolean {
  return (
    a.model.fingerprint.id === b.model.fingerprint.id &&
    JSON.stringify(a.settings) === JSON.stringify(b.settings) &&
    JSON.stringify(a.calibration.sources) === JSON.stringify(b.calibration.sources)
  );
}

/**
 * Writes the profile directory atomically. An existing directory is replaced only with
 * `force`, or when it holds a profile of the same job (model, data, settings): re-running a
 * calibration must work on the committed profile, and a different CPU may change its last
 * float bits. `unchanged` says the bytes were identical (nothing was written), `replaced`
 * that an earlier run of the same job was overwritten.
 */
export async function writeProfile(dir: string, draft: ManifestDraft, plans: BasisPlan[], opts: { force?: boolean } = {}): Promise<Manifest & { unchanged?: boolean; replaced?: boolean }> {
  const { manifest, tensors } = serializeProfile(draft, plans);
  let replaced = false;
  if (existsSync(dir) && !opts.force) {
    let existing: Manifest | undefined;
    try {
      existing = (await readManifest(dir)).manifest;
    } catch {
      existing = undefined;
    }
    if (!existing || !sameJob(existing, manifest)) {
      throw new KvtcError('OUTPUT_EXISTS', `output ${dir} already exists${existing ? ' and holds a profile of another model, data or settings' : ''}`, {
        fix: 'Pass --force to replace it, or choose another --out.',
        context: { out: dir },
      });
    }
    const same =
      existsSync(join(dir, TENSORS_FILE)) &&
      Buffer.from(await readFile(join(dir, TENSORS_FILE))).equals(Buffer.from(tensors)) &&
      (await readFile(join(dir, MANIFEST_FILE), 'utf8')) === manifestText(manifest);
    if (same) return { ...manifest, unchanged: true };
    replaced = true;
  }
  await writeDirAtomic(
    dir,
    async (tmp) => {
      await writeFile(join(tmp, TENSORS_FILE), tensors);
      await writeFile(join(tmp, MANIFEST_FILE), manifestText(manifest));
    },
    { replace: true },
  );
  return { ...manifest, replaced };
}

/** Resolves a profile argument (directory or its manifest path) to the directory. */
export function profileDir(path: string): string {
  if (existsSync(path) && statSync(path).isFile() && basename(path) === MANIFEST_FILE) return dirname(path);
  return path;
}

function invalid(dir: string, message: string, fix = 'Re-create the profile with `kvtc calibrate`.'): KvtcError {
  return new KvtcError('PROFILE_INVALID', `profile ${dir}: ${message}`, { fix, context: { profile: dir } });
}

/** Reads the manifest only, with version handling and schema validation. */
export async function readManifest(pathArg: string): Promise<{ dir: string; manifest: Manifest }> {
  const dir = profileDir(pathArg);
  const file = join(dir, MANIFEST_FILE);
  if (!existsSync(dir)) throw new KvtcError('PROFILE_INVALID', `profile ${dir} does not exist`, { fix: 'Pass a profile directory written by `kvtc calibrate` (e.g. kvtc-profiles/stories260k).', context: { profile: dir } });
  if (!existsSync(file)) throw invalid(dir, `no ${MANIFEST_FILE} in it`, 'Pass the directory `kvtc calibrate` wrote (it holds kvtc-profile.json and kvtc-profile.safetensors).');
  let raw: unknown;
  try {
    raw = JSON.parse(await readFile(file, 'utf8'));
  } catch (e) {
    throw invalid(dir, `${MANIFEST_FILE} is not valid JSON (${(e as Error).message})`);
  }
  const r = raw as { format?: unknown; format_version?: unknown; producer?: { version?: unknown } };
  if (r?.format !== PROFILE_FORMAT) throw invalid(dir, `${MANIFEST_FILE} is not a kvtc profile (format is ${JSON.stringify(r?.format)}, expected "${PROFILE_FORMAT}")`);
  if (r.format_version !== PROFILE_FORMAT_VERSION) {
    const v = r.format_version;
    const newer = typeof v === 'number' && v > PROFILE_FORMAT_VERSION;
    throw new KvtcError('PROFILE_VERSION', `profile ${dir} has format version ${JSON.stringify(v)}; this kvtc reads version ${PROFILE_FORMAT_VERSION}`, {
      fix: newer
        ? `It was written by kvtc ${String(r.producer?.version ?? 'newer')}: upgrade kvtc to that version or later to read it.`
        : 'Re-calibrate the model with this kvtc to write a version-1 profile.',
      context: { profile: dir, format_version: v },
    });
  }
  const parsed = ManifestSchema.safeParse(raw);
  if (!parsed.success) throw invalid(dir, `${MANIFEST_FILE} does not match the schema:\n${formatZodIssues(parsed.error)}`);
  return { dir, manifest: parsed.data };
}

/** Reads and checks a whole profile (manifest, tensor file hash and shapes). */
export async function readProfile(pathArg: string): Promise<Profile> {
  const { dir, manifest } = await readManifest(pathArg);
  const file = join(dir, manifest.tensors.file);
  if (!existsSync(file)) throw invalid(dir, `tensor file ${manifest.tensors.file} is missing`);
  const buf = new Uint8Array(await readFile(file));
  if (sha256(buf) !== manifest.tensors.sha256) throw invalid(dir, `${manifest.tensors.file} does not match the sha256 in the manifest (modified or corrupt)`);
  const st = parseSafetensors(buf, file);
  const m = manifest.model;
  const plans = manifest.plans.map((pe): BasisPlan => {
    const get = (name: string, shape: number[]) => {
      const t = st.tensors.get(name);
      if (!t) throw invalid(dir, `tensor ${name} is missing`);
      if (t.dtype !== 'F32' || t.shape.join(',') !== shape.join(',')) throw invalid(dir, `tensor ${name} is ${t.dtype}[${t.shape}], expected F32[${shape}]`);
      return toTypedArray(t) as Float32Array;
    };
    if (pe.dim !== pe.layers.length * m.kv_heads * m.head_dim) throw invalid(dir, `plan ${pe.index} has dim ${pe.dim}, expected ${pe.layers.length}×${m.kv_heads}×${m.head_dim}`);
    // Groups are sorted and disjoint; a gap is components the allocation dropped (coefficient 0).
    let at = 0;
    for (const g of pe.groups) {
      if (g.start < at || g.end <= g.start) throw invalid(dir, `plan ${pe.index} groups overlap or are out of order at component ${g.start}`);
      at = g.end;
    }
    if (at !== pe.rank) throw invalid(dir, `plan ${pe.index} groups end at ${at}, but its rank is ${pe.rank}`);
    return {
      kind: pe.kind,
      layers: pe.layers,
      dim: pe.dim,
      rank: pe.rank,
      mean: get(pe.tensors.mean, [pe.dim]),
      basis: get(pe.tensors.basis, [pe.dim, pe.rank]),
      variances: get(pe.tensors.variances, [pe.rank]),
      lo: get(pe.tensors.lo, [pe.rank]),
      hi: get(pe.tensors.hi, [pe.rank]),
      groups: pe.groups.map((g) => ({ ...g })),
      budgetBits: pe.budget_bits,
    };
  });
  const covered = new Set<string>();
  for (const p of plans) for (const l of p.layers) covered.add(`${p.kind}:${l}`);
  if (covered.size !== 2 * m.layers) throw invalid(dir, `plans cover ${covered.size} of ${2 * m.layers} (layer, kind) pairs`);
  return { dir, manifest, plans };
}
