// Tested by test/profile/profile-io.test.ts.
/**
 * Reading and writing profiles: a directory with kvtc-profile.json (manifest, see schema.ts)
 * and kvtc-profile.safetensors (per plan: mean [p], basis [p, r], variances/lo/hi [r], F32).
 *
 * Profiles are untrusted input. readProfile — which decode, encode, evaluate, inspect and bench
 * use — runs every integrity check of docs/profile-format.md §2–§3 before anything uses the
 * profile: the schema, the plans' consistency (index, layers, groups, bits), RoPE sanity, the
 * profile id (which binds the tensor file's hash and every manifest field decoding uses), a
 * strict parse of the tensor file (exact header length, contiguous data, no extra, missing or
 * trailing bytes), finite and bounded values and orthonormal bases. Sizes are bounded by the
 * manifest before the tensor file is read. `kvtc validate` runs the same checks through
 * checkProfile, collecting every failure instead of stopping at the first.
 */
import { createHash } from 'node:crypto';
import { existsSync, statSync } from 'node:fs';
import { readFile, stat } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import { KvtcError } from '../errors.js';
import { writeFileAtomic } from '../io/atomic.js';
import { f32, serializeSafetensors, type TensorEntry } from '../io/safetensors.js';
import { planBitsPerToken, type BasisPlan } from '../codec/types.js';
import { formatZodIssues } from '../validation.js';
import { MANIFEST_FILE, ManifestSchema, PROFILE_FORMAT, PROFILE_FORMAT_VERSION, PROFILE_FORMAT_VERSIONS, TENSORS_FILE, TENSORS_FORMAT_VERSION, type Manifest, type PlanEntry } from './schema.js';
import { checkManifestRope, ropeIdLines } from './rope.js';
import { compareProfiles, type Equivalence } from './equivalence.js';
import { decodeUtf8Strict, findDuplicateKey } from './strict-json.js';

export interface Profile {
  dir: string;
  manifest: Manifest;
  plans: BasisPlan[];
}

/** Manifest fields computed at write time. */
export type ManifestDraft = Omit<Manifest, 'profile_id' | 'tensors' | 'plans'>;

/** The bounds a profile must respect (docs/profile-format.md §3, "Reader checks"). */
export const PROFILE_LIMITS = {
  /** model.layers, kv_heads and head_dim: the blob header holds them as u16. */
  maxShape: 0xffff,
  /** settings.sink and window: u32 in the blob header. */
  maxRaw: 0xffffffff,
  /** The manifest file, in bytes. */
  maxManifestBytes: 16 * 1024 * 1024,
  /** The tensor file's JSON header: at most base + perTensor × tensors bytes. */
  headerBaseBytes: 4096,
  headerPerTensorBytes: 512,
  /** |mean|, |lo|, |hi| (KV values are fp16-sized; anything near this is corruption). */
  maxAbs: 1e12,
  /** max |VᵀV − I| over the Gram matrix entries. */
  orthoTolerance: 1e-4,
  /** readProfile computes the whole Gram matrix when p·r² ≤ this (otherwise exact column norms, sampled pairs and probes). */
  fullOrthoWork: 2 ** 22,
  /** validate computes the whole Gram matrix when p·r² ≤ this. */
  validateOrthoWork: 2 ** 31,
} as const;

export function sha256(data: Uint8Array | string): string {
  return createHash('sha256').update(data).digest('hex');
}

function planTensorNames(i: number) {
  return { mean: `plan.${i}.mean`, basis: `plan.${i}.basis`, variances: `plan.${i}.variances`, lo: `plan.${i}.lo`, hi: `plan.${i}.hi` };
}

const TENSOR_ROLES = ['mean', 'basis', 'variances', 'lo', 'hi'] as const;
type TensorRole = (typeof TENSOR_ROLES)[number];

/** The manifest fields the profile id covers (everything decoding uses, plus the tensor file hash). */
export interface ProfileIdFields {
  model: Pick<Manifest['model'], 'layers' | 'kv_heads' | 'head_dim' | 'kv_dtype' | 'rope'>;
  settings: Pick<Manifest['settings'], 'sink' | 'window' | 'entropy'>;
  plans: PlanEntry[];
  tensors: Pick<Manifest['tensors'], 'sha256'>;
}

/** IEEE 754 binary64 bit pattern, big-endian, 16 lowercase hex digits. */
function f64Hex(x: number): string {
  const b = Buffer.alloc(8);
  b.writeDoubleBE(x);
  return b.toString('hex');
}

/**
 * The canonical text the profile id hashes (docs/profile-format.md §2.1): one `key value` line
 * per field, each ending in "\n"; integers in decimal, reals as their float64 bit pattern in hex.
 */
export function profileIdText(m: ProfileIdFields): string {
  const L: string[] = ['kvtc-profile-id 1', `tensors.sha256 ${m.tensors.sha256}`];
  const md = m.model;
  L.push(`model.layers ${md.layers}`, `model.kv_heads ${md.kv_heads}`, `model.head_dim ${md.head_dim}`, `model.kv_dtype ${md.kv_dtype}`);
  L.push(...ropeIdLines(m, f64Hex));
  L.push(`settings.sink ${m.settings.sink}`, `settings.window ${m.settings.window}`, `settings.entropy ${m.settings.entropy}`);
  L.push(`plans ${m.plans.length}`);
  for (const [i, p] of m.plans.entries()) {
    L.push(
      `plan ${i} index ${p.index}`,
      `plan ${i} kind ${p.kind}`,
      `plan ${i} layers ${p.layers.join(',')}`,
      `plan ${i} dim ${p.dim}`,
      `plan ${i} rank ${p.rank}`,
      `plan ${i} budget_bits ${p.budget_bits}`,
      `plan ${i} bits_per_token ${p.bits_per_token}`,
      `plan ${i} groups ${p.groups.length}`,
    );
    for (const [g, q] of p.groups.entries()) L.push(`plan ${i} group ${g} ${q.start} ${q.end} ${q.type} ${q.mode}`);
    for (const role of TENSOR_ROLES) L.push(`plan ${i} tensor ${role} ${p.tensors[role]}`);
  }
  return L.map((l) => `${l}\n`).join('');
}

/** profile_id: the first 16 hex digits of the sha256 of profileIdText. */
export function computeProfileId(m: ProfileIdFields): string {
  return sha256(profileIdText(m)).slice(0, 16);
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
  const tensors = serializeSafetensors(entries, { producer: draft.producer.name, format_version: String(TENSORS_FORMAT_VERSION) });
  const digest = sha256(tensors);
  const manifest: Manifest = {
    ...draft,
    profile_id: '',
    plans: planEntries,
    tensors: { file: TENSORS_FILE, sha256: digest, bytes: tensors.byteLength },
  };
  manifest.profile_id = computeProfileId(manifest);
  const parsed = ManifestSchema.safeParse(manifest);
  if (!parsed.success) {
    throw new KvtcError('INTERNAL', `kvtc produced a manifest that fails its own schema:\n${formatZodIssues(parsed.error)}`);
  }
  return { manifest, tensors };
}

export function manifestText(manifest: Manifest): string {
  return `${JSON.stringify(manifest, null, 2)}\n`;
}

/** True when `dir` holds either of kvtc's two profile files (kvtc-profile.json, kvtc-profile.safetensors). */
export function isProfileDir(dir: string): boolean {
  return existsSync(join(dir, MANIFEST_FILE)) || existsSync(join(dir, TENSORS_FILE));
}

/** Same model, calibration data and settings: a re-run of the same calibration job. */
function sameJob(a: Manifest, b: Manifest): boolean {
  return (
    a.model.fingerprint.id === b.model.fingerprint.id &&
    JSON.stringify(a.settings) === JSON.stringify(b.settings) &&
    JSON.stringify(a.calibration.sources) === JSON.stringify(b.calibration.sources)
  );
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
 * Writes the profile's two files into `dir` (created if missing) — kvtc-profile.safetensors
 * first, kvtc-profile.json last, each to a temporary name in `dir` and renamed — and touches
 * nothing else there: `dir` may be the model's own directory. Existing profile files are
 * replaced only with `force`, or when they hold a profile of the same job (model, data,
 * settings): re-running a calibration must work on the committed profile. Other files in `dir`
 * never matter. A profile of the same job that is identical (`unchanged`) or equivalent within
 * tolerance (`unchanged` + `equivalent`: another CPU's ONNX Runtime kernels move the last float
 * bits, equivalence.ts) is left untouched and returned as it is on disk, so re-running a
 * committed calibration on any machine leaves it as committed; one that differs beyond that is
 * overwritten (`replaced`, with the `difference`).
 */
export async function writeProfile(dir: string, draft: ManifestDraft, plans: BasisPlan[], opts: { force?: boolean } = {}): Promise<Manifest & WriteOutcome> {
  const { manifest, tensors } = serializeProfile(draft, plans);
  const manifestPath = join(dir, MANIFEST_FILE);
  const tensorsPath = join(dir, TENSORS_FILE);
  const hasManifest = existsSync(manifestPath);
  const hasTensors = existsSync(tensorsPath);
  let replaced = false;
  let difference: string | undefined;
  if ((hasManifest || hasTensors) && !opts.force) {
    let existing: Manifest | undefined;
    if (hasManifest) {
      try {
        existing = (await readManifest(dir)).manifest;
      } catch {
        existing = undefined;
      }
    }
    if (!existing || !sameJob(existing, manifest)) {
      const what = existing
        ? 'a profile of another model, data or settings'
        : hasManifest
          ? `a ${MANIFEST_FILE} that kvtc cannot read as a profile`
          : `a ${TENSORS_FILE} without its ${MANIFEST_FILE}`;
      throw new KvtcError('OUTPUT_EXISTS', `output ${dir} already holds ${what}`, {
        fix: `Pass --force to replace its ${MANIFEST_FILE} and ${TENSORS_FILE} (nothing else in the directory is touched), or choose another --out.`,
        context: { out: dir },
      });
    }
    const same =
      hasTensors &&
      Buffer.from(await readFile(tensorsPath)).equals(Buffer.from(tensors)) &&
      (await readFile(manifestPath, 'utf8')) === manifestText(manifest);
    if (same) return { ...manifest, unchanged: true };
    // The whole existing profile, every reader check run: one that fails them is replaced.
    let kept: Profile | undefined;
    try {
      kept = await readProfile(dir);
    } catch (e) {
      difference = `the existing profile fails its checks (${(e as Error).message})`;
    }
    if (kept) {
      const c = compareProfiles(kept, { manifest, plans });
      if (c.equivalent) return { ...kept.manifest, unchanged: true, equivalent: c.detail };
      difference = c.difference;
    }
    replaced = true;
  }
  // Tensors first, manifest last: a reader never sees a new manifest over old tensors, and an
  // interrupted write leaves a profile whose hash check fails rather than a mixed one.
  await writeFileAtomic(tensorsPath, tensors);
  await writeFileAtomic(manifestPath, manifestText(manifest));
  return { ...manifest, replaced, ...(difference ? { difference } : {}) };
}

/** Resolves a profile argument (directory or its manifest path) to the directory. */
export function profileDir(path: string): string {
  if (existsSync(path) && statSync(path).isFile() && basename(path) === MANIFEST_FILE) return dirname(path);
  return path;
}

const RECALIBRATE = 'Re-create the profile with `kvtc calibrate` (or restore the two files it wrote).';

function invalid(dir: string, message: string, fix = RECALIBRATE, check?: string): KvtcError {
  return new KvtcError('PROFILE_INVALID', `profile ${dir}: ${message}`, { fix, context: { profile: dir, ...(check ? { check } : {}) } });
}

/** Reads the manifest only, with version handling and schema validation. */
export async function readManifest(pathArg: string): Promise<{ dir: string; manifest: Manifest }> {
  const dir = profileDir(pathArg);
  const file = join(dir, MANIFEST_FILE);
  if (!existsSync(dir)) throw new KvtcError('PROFILE_INVALID', `profile ${dir} does not exist`, { fix: 'Pass a profile directory written by `kvtc calibrate` (e.g. kvtc-profiles/stories260k).', context: { profile: dir } });
  if (!existsSync(file)) throw invalid(dir, `no ${MANIFEST_FILE} in it`, 'Pass the directory `kvtc calibrate` wrote (it holds kvtc-profile.json and kvtc-profile.safetensors).');
  let raw: unknown;
  let bytes: Buffer;
  try {
    const st = await stat(file);
    if (!st.isFile()) throw new Error('not a regular file');
    if (st.size > PROFILE_LIMITS.maxManifestBytes) throw new Error(`${st.size} bytes, more than the ${PROFILE_LIMITS.maxManifestBytes} a manifest may have`);
    bytes = await readFile(file);
  } catch (e) {
    throw invalid(dir, `${MANIFEST_FILE} cannot be read (${(e as Error).message})`);
  }
  // Strict UTF-8 and unique keys: what Node's 'utf8' decoding and JSON.parse silently repair
  // (U+FFFD, last key wins) would let two readers see two different manifests in one file.
  const decoded = decodeUtf8Strict(bytes);
  if ('badOffset' in decoded) {
    throw invalid(dir, `${MANIFEST_FILE} is not valid UTF-8 (byte 0x${(bytes[decoded.badOffset] ?? 0).toString(16).padStart(2, '0')} at offset ${decoded.badOffset})`, `${RECALIBRATE} A manifest is UTF-8 JSON: an editor that saved it in another encoding corrupted it.`);
  }
  try {
    raw = JSON.parse(decoded.text);
  } catch (e) {
    throw invalid(dir, `${MANIFEST_FILE} is not valid JSON (${(e as Error).message})`);
  }
  const dup = findDuplicateKey(decoded.text);
  if (dup) {
    throw invalid(dir, `${MANIFEST_FILE} has the key ${dup.path} twice (the second at byte offset ${dup.offset}); JSON readers disagree on which one counts`, `${RECALIBRATE} If it was edited by hand, keep one of the two.`);
  }
  const r = raw as { format?: unknown; format_version?: unknown; producer?: { version?: unknown } };
  if (r?.format !== PROFILE_FORMAT) throw invalid(dir, `${MANIFEST_FILE} is not a kvtc profile (format is ${JSON.stringify(r?.format)}, expected "${PROFILE_FORMAT}")`);
  if (!(PROFILE_FORMAT_VERSIONS as readonly unknown[]).includes(r.format_version)) {
    const v = r.format_version;
    const newer = typeof v === 'number' && v > PROFILE_FORMAT_VERSION;
    throw new KvtcError('PROFILE_VERSION', `profile ${dir} has format version ${JSON.stringify(v)}; this kvtc reads versions ${PROFILE_FORMAT_VERSIONS.join(' and ')}`, {
      fix: newer
        ? `It was written by kvtc ${String(r.producer?.version ?? 'newer')}: upgrade kvtc to that version or later to read it.`
        : `Re-calibrate the model with this kvtc to write a version-${PROFILE_FORMAT_VERSION} profile.`,
      context: { profile: dir, format_version: v },
    });
  }
  const parsed = ManifestSchema.safeParse(raw);
  if (!parsed.success) throw invalid(dir, `${MANIFEST_FILE} does not match the schema:\n${formatZodIssues(parsed.error)}`);
  return { dir, manifest: parsed.data };
}

// ---------------------------------------------------------------------------------------------
// Integrity checks

/** One check's outcome, as `kvtc validate` lists it. */
export interface Check {
  name: string;
  ok: boolean;
  detail: string;
}

type Fail = (message: string) => void;

/** Each check's fix when readProfile throws for it. */
const FIX: Record<string, string> = {
  'profile id':
    'The manifest or tensor file was edited after kvtc wrote them, or they belong to different profiles: restore the two files `kvtc calibrate` wrote, or re-calibrate.',
  'tensor file': 'The tensor file is corrupt, truncated or was edited: restore the two files `kvtc calibrate` wrote, or re-calibrate.',
};

/**
 * Runs checks in order. Throwing (readProfile): the first problem throws PROFILE_INVALID naming
 * it. Collecting (validate): every check's problems are recorded, and a check whose input is
 * missing is recorded as failed with "not checked".
 */
class Checker {
  readonly checks: Check[] = [];
  constructor(
    readonly dir: string,
    readonly collect: boolean,
  ) {}

  /** `body` reports each problem through `fail` and returns the detail shown when there is none. */
  run(name: string, body: (fail: Fail) => string): boolean {
    const problems: string[] = [];
    const fail: Fail = (m) => {
      if (!this.collect) throw invalid(this.dir, m, FIX[name], name);
      problems.push(m);
    };
    const okDetail = body(fail);
    this.record(name, problems, okDetail);
    return problems.length === 0;
  }

  async runAsync(name: string, body: (fail: Fail) => Promise<string>): Promise<boolean> {
    const problems: string[] = [];
    const fail: Fail = (m) => {
      if (!this.collect) throw invalid(this.dir, m, FIX[name], name);
      problems.push(m);
    };
    const okDetail = await body(fail);
    this.record(name, problems, okDetail);
    return problems.length === 0;
  }

  skip(name: string, why: string): void {
    this.checks.push({ name, ok: false, detail: `not checked: ${why}` });
  }

  private record(name: string, problems: string[], okDetail: string): void {
    const shown = problems.slice(0, 5).join('; ');
    this.checks.push({ name, ok: problems.length === 0, detail: problems.length ? `${shown}${problems.length > 5 ? `; … ${problems.length - 5} more` : ''}` : okDetail });
  }
}

const isSafeCount = (n: unknown): n is number => typeof n === 'number' && Number.isSafeInteger(n) && n >= 0;

function checkLimits(m: Manifest, fail: Fail): string {
  const L = PROFILE_LIMITS;
  for (const k of ['layers', 'kv_heads', 'head_dim'] as const) {
    if (m.model[k] > L.maxShape) fail(`model.${k} = ${m.model[k]} exceeds ${L.maxShape}, the most a blob header holds`);
  }
  for (const k of ['sink', 'window'] as const) {
    if (m.settings[k] > L.maxRaw) fail(`settings.${k} = ${m.settings[k]} exceeds ${L.maxRaw}, the most a blob header holds`);
  }
  return `model ${m.model.layers} layers × ${m.model.kv_heads} KV heads × ${m.model.head_dim} head dim, sink ${m.settings.sink}, window ${m.settings.window}: within the blob header's limits`;
}

function checkPlans(m: Manifest, fail: Fail): string {
  const { layers, kv_heads: kvh, head_dim: hd } = m.model;
  const covered = new Set<string>();
  const names = new Map<string, string>();
  let listed = 0;
  for (const [pos, pe] of m.plans.entries()) {
    const at = `plans[${pos}]`;
    if (pe.index !== pos) fail(`${at}.index is ${pe.index}, but a plan's index must equal its position ${pos} (blob sections refer to plans by it)`);
    for (const [li, l] of pe.layers.entries()) {
      listed++;
      if (l >= layers) {
        fail(`${at}.layers[${li}] = ${l} is not a layer of the model (it has ${layers}: 0–${layers - 1})`);
        continue;
      }
      const key = `${pe.kind}:${l}`;
      if (covered.has(key)) fail(`${at}.layers[${li}]: ${pe.kind} layer ${l} is already covered by another plan`);
      covered.add(key);
    }
    const want = pe.layers.length * kvh * hd;
    if (pe.dim !== want) fail(`${at}.dim is ${pe.dim}, but ${pe.layers.length} layers × ${kvh} KV heads × ${hd} head dim = ${want}`);
    if (pe.rank > pe.dim) fail(`${at}.rank ${pe.rank} exceeds its dim ${pe.dim} (a basis has at most p orthonormal columns)`);
    for (const role of TENSOR_ROLES) {
      const name = pe.tensors[role];
      const prev = names.get(name);
      if (prev) fail(`${at}.tensors.${role} names tensor ${name}, already used as ${prev}`);
      else names.set(name, `${at}.tensors.${role}`);
    }
  }
  if (covered.size !== 2 * layers || listed !== covered.size) {
    const missing: string[] = [];
    for (const kind of ['key', 'value']) {
      for (let l = 0; l < layers && missing.length < 6; l++) if (!covered.has(`${kind}:${l}`)) missing.push(`${kind} ${l}`);
    }
    if (missing.length) fail(`plans cover ${covered.size} of the ${2 * layers} (kind, layer) pairs; missing: ${missing.slice(0, 5).join(', ')}${missing.length > 5 ? ', …' : ''}`);
  }
  return `${m.plans.length} plans in index order; each of the ${2 * layers} (kind, layer) pairs covered exactly once; dims and ranks consistent`;
}

/** Why a plan's groups are not sorted, disjoint, within [0, rank) and ending at rank; undefined when they are. */
function groupsValid(pe: PlanEntry): string | undefined {
  let at = 0;
  for (const [g, q] of pe.groups.entries()) {
    if (q.start < at) return `groups[${g}] starts at ${q.start}, before the previous group's end ${at} (groups must be sorted and disjoint)`;
    if (q.end <= q.start) return `groups[${g}] is empty or reversed ([${q.start}, ${q.end}))`;
    if (q.end > pe.rank) return `groups[${g}] ends at ${q.end}, past the rank ${pe.rank}`;
    at = q.end;
  }
  if (at !== pe.rank) return `the last group ends at ${at}, but the rank is ${pe.rank} (the last group must end at the rank)`;
  return undefined;
}

function checkGroups(m: Manifest, fail: Fail): string {
  for (const [pos, pe] of m.plans.entries()) {
    const why = groupsValid(pe);
    if (why) fail(`plans[${pos}].${why}`);
  }
  return 'every plan\'s groups are sorted, disjoint, within its rank, and the last ends at the rank';
}

function checkBits(m: Manifest, fail: Fail): string {
  for (const [pos, pe] of m.plans.entries()) {
    const bits = planBitsPerToken(pe);
    if (pe.bits_per_token !== bits) fail(`plans[${pos}].bits_per_token is ${pe.bits_per_token}, but its groups use ${bits} bits per token`);
  }
  return 'every plan\'s bits_per_token equals what its groups use (scales included)';
}

function checkBudget(m: Manifest, fail: Fail): string {
  for (const [pos, pe] of m.plans.entries()) {
    const bits = planBitsPerToken(pe);
    if (bits > pe.budget_bits) fail(`plans[${pos}] uses ${bits} bits per token, over its budget_bits ${pe.budget_bits}`);
  }
  return 'every plan fits its bit budget';
}

/**
 * The informational fields against each other and the model (their ranges are the schema's,
 * schema.ts FIGURE_LIMITS): what kvtc writes always passes; a hand edit or a foreign writer may not.
 */
function checkFigures(m: Manifest, fail: Fail): string {
  const { layers, heads, kv_heads: kvh } = m.model;
  if (heads % kvh !== 0) fail(`model.heads ${heads} is not a multiple of model.kv_heads ${kvh} (each KV head serves heads / kv_heads query heads)`);
  const r = m.measured.rel_error;
  for (const k of ['key', 'value'] as const) {
    if (r[k].length !== layers) fail(`measured.rel_error.${k} has ${r[k].length} entries; the model has ${layers} layers (one figure per layer)`);
    const ci = r[`${k}_mean_ci95`];
    if (ci && !(ci[0] <= ci[1])) fail(`measured.rel_error.${k}_mean_ci95 is [${ci[0]}, ${ci[1]}]: its low end is above its high end`);
  }
  const raw = m.settings.sink + m.settings.window;
  if (m.measured.context_tokens <= raw) {
    fail(`measured.context_tokens ${m.measured.context_tokens} leaves no compressed token after sink ${m.settings.sink} + window ${m.settings.window} (calibrate measures on contexts longer than that)`);
  }
  return `${layers} per-layer errors of each kind, intervals ordered, heads a multiple of KV heads, measured contexts longer than sink + window`;
}

function checkRope(m: Manifest, fail: Fail): string {
  return checkManifestRope(m, fail, PROFILE_LIMITS.maxShape);
}

function checkProfileId(m: Manifest, fail: Fail): string {
  const want = computeProfileId(m);
  if (m.profile_id !== want) {
    const legacy = m.profile_id === m.tensors.sha256.slice(0, 16);
    fail(
      legacy
        ? `profile_id ${m.profile_id} follows the old rule (the tensor file hash alone); this kvtc binds the id to the manifest too (expected ${want}): re-calibrate to re-derive it`
        : `profile_id ${m.profile_id} does not match the tensor file hash and the manifest fields decoding uses (expected ${want}): the model shape, RoPE, sink/window/entropy, a plan or tensors.sha256 was edited`,
    );
  }
  return `${m.profile_id} matches the tensor file hash and every manifest field decoding uses`;
}

/** Bytes of the tensor data the plans declare: Σ 4·(p + p·r + 3r). */
function declaredDataBytes(m: Manifest): number {
  let n = 0;
  for (const pe of m.plans) n += 4 * (pe.dim + pe.dim * pe.rank + 3 * pe.rank);
  return n;
}

interface ParsedTensor {
  shape: number[];
  begin: number;
  end: number;
}

/**
 * The tensor file, strictly: size as declared and as the plans imply, sha256, a header length
 * that fits, a JSON header of exactly the plans' tensors (F32, declared shapes), data contiguous
 * from offset 0 to the end of the file. Returns the tensors by name when the structure is sound.
 */
async function checkTensorFile(dir: string, m: Manifest, fail: Fail): Promise<{ detail: string; tensors?: Map<string, Float32Array> }> {
  const L = PROFILE_LIMITS;
  const file = join(dir, m.tensors.file);
  let st;
  try {
    st = await stat(file);
  } catch {
    fail(`tensor file ${m.tensors.file} is missing`);
    return { detail: '' };
  }
  if (!st.isFile()) {
    fail(`${m.tensors.file} is not a regular file`);
    return { detail: '' };
  }
  const count = m.plans.length * TENSOR_ROLES.length;
  const dataBytes = declaredDataBytes(m);
  const maxHeader = L.headerBaseBytes + L.headerPerTensorBytes * count;
  if (st.size !== m.tensors.bytes) {
    fail(`${m.tensors.file} has ${st.size} bytes, but tensors.bytes says ${m.tensors.bytes}`);
    return { detail: '' };
  }
  if (st.size < 8 + dataBytes || st.size > 8 + maxHeader + dataBytes) {
    fail(`${m.tensors.file} has ${st.size} bytes, but the plans' tensors take ${dataBytes} bytes of data plus a header of at most ${maxHeader}`);
    return { detail: '' };
  }
  const raw = await readFile(file);
  const buf = new Uint8Array(raw.buffer, raw.byteOffset, raw.byteLength);
  if (buf.byteLength !== st.size) {
    fail(`${m.tensors.file} changed while it was read`);
    return { detail: '' };
  }
  const digest = sha256(buf);
  if (digest !== m.tensors.sha256) fail(`${m.tensors.file} does not match the sha256 in the manifest (modified or corrupt): file ${digest}, manifest ${m.tensors.sha256}`);

  const dv = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  const n64 = dv.getBigUint64(0, true);
  if (n64 > BigInt(buf.byteLength - 8) || n64 > BigInt(maxHeader)) {
    fail(`${m.tensors.file}: header length ${n64} does not fit (file ${buf.byteLength} bytes, header at most ${maxHeader})`);
    return { detail: '' };
  }
  const n = Number(n64);
  if (n % 8 !== 0) {
    fail(`${m.tensors.file}: header length ${n} is not a multiple of 8 (the header is padded with spaces to one)`);
    return { detail: '' };
  }
  let header: unknown;
  try {
    header = JSON.parse(new TextDecoder('utf-8', { fatal: true }).decode(buf.subarray(8, 8 + n)));
  } catch (e) {
    fail(`${m.tensors.file}: header is not valid UTF-8 JSON (${(e as Error).message}); is the header length ${n} right?`);
    return { detail: '' };
  }
  if (typeof header !== 'object' || header === null || Array.isArray(header)) {
    fail(`${m.tensors.file}: header is not a JSON object`);
    return { detail: '' };
  }
  const dataStart = 8 + n;
  const dataLen = buf.byteLength - dataStart;
  const entries = new Map<string, ParsedTensor>();
  let sound = true;
  const broken = (msg: string) => {
    sound = false;
    fail(`${m.tensors.file}: ${msg}`);
  };
  for (const [name, raw] of Object.entries(header as Record<string, unknown>)) {
    if (name === '__metadata__') {
      if (typeof raw !== 'object' || raw === null || Array.isArray(raw) || !Object.values(raw).every((v) => typeof v === 'string')) broken('__metadata__ is not an object of strings');
      continue;
    }
    const e = raw as Record<string, unknown> | null;
    if (typeof e !== 'object' || e === null || Array.isArray(e) || Object.keys(e).sort().join(',') !== 'data_offsets,dtype,shape') {
      broken(`tensor ${name}: entry must be exactly {dtype, shape, data_offsets}`);
      continue;
    }
    if (e.dtype !== 'F32') broken(`tensor ${name} has dtype ${JSON.stringify(e.dtype)}, expected F32`);
    const shape = e.shape;
    const offs = e.data_offsets;
    if (!Array.isArray(shape) || !shape.every(isSafeCount)) {
      broken(`tensor ${name} has an invalid shape ${JSON.stringify(shape)}`);
      continue;
    }
    if (!Array.isArray(offs) || offs.length !== 2 || !offs.every(isSafeCount) || offs[1] < offs[0] || offs[1] > dataLen) {
      broken(`tensor ${name} has data_offsets ${JSON.stringify(offs)} outside the ${dataLen}-byte data buffer`);
      continue;
    }
    let elems = 1;
    for (const d of shape as number[]) elems = Math.min(elems * d, Number.MAX_SAFE_INTEGER);
    if (offs[1] - offs[0] !== 4 * elems) {
      broken(`tensor ${name} has ${offs[1] - offs[0]} bytes, but F32${JSON.stringify(shape)} needs ${4 * elems}`);
      continue;
    }
    entries.set(name, { shape: shape as number[], begin: offs[0], end: offs[1] });
  }
  // Contiguous from 0 to the end of the file: no gaps, overlaps or trailing bytes.
  const spans = [...entries.entries()].sort((a, b) => a[1].begin - b[1].begin || a[1].end - b[1].end);
  let at = 0;
  for (const [name, t] of spans) {
    if (t.begin !== at) {
      broken(`tensor ${name} starts at data offset ${t.begin}, but the previous tensor ends at ${at} (the data must be contiguous)`);
      break;
    }
    at = t.end;
  }
  if (sound && at !== dataLen) broken(`${dataLen - at} bytes after the last tensor's data (trailing bytes, or a wrong header length)`);
  // Exactly the plans' tensors, with their declared shapes.
  const wanted = new Map<string, number[]>();
  for (const pe of m.plans) {
    const shapes: Record<TensorRole, number[]> = { mean: [pe.dim], basis: [pe.dim, pe.rank], variances: [pe.rank], lo: [pe.rank], hi: [pe.rank] };
    for (const role of TENSOR_ROLES) wanted.set(pe.tensors[role], shapes[role]);
  }
  for (const [name, shape] of wanted) {
    const t = entries.get(name);
    if (!t) broken(`tensor ${name} is missing`);
    else if (t.shape.join(',') !== shape.join(',')) broken(`tensor ${name} has shape [${t.shape}], the plan declares [${shape}]`);
  }
  for (const name of entries.keys()) if (!wanted.has(name)) broken(`tensor ${name} is not used by any plan (an extra tensor)`);
  if (!sound) return { detail: '' };
  const tensors = new Map<string, Float32Array>();
  for (const [name, t] of entries) {
    const copy = new Uint8Array(t.end - t.begin);
    copy.set(buf.subarray(dataStart + t.begin, dataStart + t.end));
    tensors.set(name, new Float32Array(copy.buffer));
  }
  return { detail: `${buf.byteLength} bytes as declared, sha256 matches, exactly the plans' ${entries.size} F32 tensors with their declared shapes, contiguous, no trailing bytes`, tensors };
}

function checkValues(m: Manifest, tensors: Map<string, Float32Array>, fail: Fail): string {
  const lim = PROFILE_LIMITS.maxAbs;
  for (const [pos, pe] of m.plans.entries()) {
    for (const role of TENSOR_ROLES) {
      const a = tensors.get(pe.tensors[role])!;
      const bounded = role !== 'basis' && role !== 'variances';
      for (let i = 0; i < a.length; i++) {
        const v = a[i];
        if (!Number.isFinite(v)) {
          fail(`plan ${pos} ${role}[${i}] (tensor ${pe.tensors[role]}) = ${v}`);
          break;
        }
        if (bounded && Math.abs(v) > lim) {
          fail(`plan ${pos} ${role}[${i}] (tensor ${pe.tensors[role]}) = ${v}, beyond ±${lim.toExponential(0)}`);
          break;
        }
      }
    }
  }
  return `no NaN or Inf in means, bases, variances or ranges; means and ranges within ±${lim.toExponential(0)}`;
}

function checkRanges(m: Manifest, tensors: Map<string, Float32Array>, fail: Fail): string {
  for (const [pos, pe] of m.plans.entries()) {
    const lo = tensors.get(pe.tensors.lo)!;
    const hi = tensors.get(pe.tensors.hi)!;
    for (const g of pe.groups) {
      if (g.mode !== 'static') continue;
      for (let j = g.start; j < Math.min(g.end, pe.rank); j++) {
        if (!(lo[j] <= hi[j])) {
          fail(`plan ${pos} component ${j}: lo ${lo[j]} > hi ${hi[j]}`);
          break;
        }
      }
    }
  }
  return 'lo ≤ hi for every statically quantized component';
}

/** max |VᵀV − I| over the r×r Gram matrix of basis [p, r] (float64 sums; NaN if any entry is). */
export function orthonormalityError(basis: Float32Array, p: number, r: number): number {
  const G = new Float64Array(r * r);
  for (let i = 0; i < p; i++) {
    const o = i * r;
    for (let a = 0; a < r; a++) {
      const va = basis[o + a];
      if (va === 0) continue;
      const ro = a * r;
      for (let b = a; b < r; b++) G[ro + b] += va * basis[o + b];
    }
  }
  let worst = 0;
  for (let a = 0; a < r; a++) {
    for (let b = a; b < r; b++) {
      const e = Math.abs(G[a * r + b] - (a === b ? 1 : 0));
      if (!(e <= worst)) worst = e;
    }
  }
  return worst;
}

/** Deterministic uniform [0, 1) (mulberry32). */
function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/**
 * The cheap orthonormality check, O(p·r): every column's norm exactly, 64 random off-diagonal
 * Gram entries, and 4 random ±1 probes z with |(VᵀV − I)z| ≤ r·tol per entry — each test is
 * implied by max |VᵀV − I| ≤ tol, so it never refuses a basis the full check accepts.
 * Returns the worst violation scaled to the tolerance's units (≤ tol passes).
 */
export function sampledOrthonormalityError(basis: Float32Array, p: number, r: number, seed = 0): number {
  if (r === 0) return 0;
  const rand = prng(0x9e3779b9 ^ seed);
  const K = 4;
  const z = Array.from({ length: K }, () => Float64Array.from({ length: r }, () => (rand() < 0.5 ? -1 : 1)));
  const [z0, z1, z2, z3] = z;
  // Pass 1 (row by row, contiguous): column norms and y_k = V·z_k.
  const norms = new Float64Array(r);
  const y = Array.from({ length: K }, () => new Float64Array(p));
  for (let i = 0; i < p; i++) {
    const o = i * r;
    let s0 = 0;
    let s1 = 0;
    let s2 = 0;
    let s3 = 0;
    for (let j = 0; j < r; j++) {
      const v = basis[o + j];
      norms[j] += v * v;
      s0 += v * z0[j];
      s1 += v * z1[j];
      s2 += v * z2[j];
      s3 += v * z3[j];
    }
    y[0][i] = s0;
    y[1][i] = s1;
    y[2][i] = s2;
    y[3][i] = s3;
  }
  // Pass 2: w_k = Vᵀ·y_k = VᵀV·z_k.
  const w = Array.from({ length: K }, () => new Float64Array(r));
  const [w0, w1, w2, w3] = w;
  for (let i = 0; i < p; i++) {
    const o = i * r;
    const a0 = y[0][i];
    const a1 = y[1][i];
    const a2 = y[2][i];
    const a3 = y[3][i];
    for (let j = 0; j < r; j++) {
      const v = basis[o + j];
      w0[j] += v * a0;
      w1[j] += v * a1;
      w2[j] += v * a2;
      w3[j] += v * a3;
    }
  }
  let worst = 0;
  for (let j = 0; j < r; j++) {
    const e = Math.abs(norms[j] - 1);
    if (!(e <= worst)) worst = e;
    // |(VᵀV − I)z|_j ≤ Σ_k |E_jk| ≤ r·tol when every entry is within tol: rescale to entry units.
    for (let k = 0; k < K; k++) {
      const d = Math.abs(w[k][j] - z[k][j]) / r;
      if (!(d <= worst)) worst = d;
    }
  }
  if (r > 1) {
    for (let k = 0; k < 64; k++) {
      const a = Math.floor(rand() * r);
      const b = (a + 1 + Math.floor(rand() * (r - 1))) % r;
      let s = 0;
      for (let i = 0; i < p; i++) s += basis[i * r + a] * basis[i * r + b];
      const e = Math.abs(s);
      if (!(e <= worst)) worst = e;
    }
  }
  return worst;
}

function checkBases(m: Manifest, tensors: Map<string, Float32Array>, work: number, fail: Fail): string {
  const tol = PROFILE_LIMITS.orthoTolerance;
  let worst = 0;
  let worstPlan = -1;
  let sampled = 0;
  for (const [pos, pe] of m.plans.entries()) {
    const basis = tensors.get(pe.tensors.basis)!;
    const { dim: p, rank: r } = pe;
    if (r > p) {
      fail(`plan ${pos}: rank ${r} > dim ${p}, so its basis cannot be orthonormal`);
      continue;
    }
    const full = p * r * r <= work;
    if (!full) sampled++;
    const e = full ? orthonormalityError(basis, p, r) : sampledOrthonormalityError(basis, p, r, pos);
    if (!(e <= tol)) fail(`plan ${pos} basis (tensor ${pe.tensors.basis}) is not orthonormal: |VᵀV − I| reaches ${e.toExponential(2)}${full ? '' : ' (sampled)'}, tolerance ${tol}`);
    if (!(e <= worst)) [worst, worstPlan] = [e, pos];
  }
  const how = sampled ? ` (${sampled} of ${m.plans.length} plans checked by exact column norms, sampled pairs and random probes)` : '';
  return `max |VᵀV − I| = ${worst.toExponential(2)}${worstPlan >= 0 ? ` (plan ${worstPlan})` : ''}, tolerance ${tol}${how}`;
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
  const plansOk = c.run('plans', (fail) => checkPlans(manifest, fail));
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
  } else c.skip('tensor file', 'the manifest\'s plans or limits are inconsistent');
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
  const plans = manifest.plans.map(
    (pe): BasisPlan => ({
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
    }),
  );
  return { dir, checks: c.checks, manifest, profile: { dir, manifest, plans } };
}

/** Reads a whole profile and runs every integrity check on it; the first problem throws PROFILE_INVALID. */
export async function readProfile(pathArg: string): Promise<Profile> {
  const r = await checkProfile(pathArg);
  if (!r.profile) throw invalid(r.dir, 'failed its checks', RECALIBRATE); // unreachable: throwing mode throws the problem itself
  return r.profile;
}
