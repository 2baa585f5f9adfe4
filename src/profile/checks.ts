// Tested by test/profile/invalid-profiles.test.ts (one case per check) and test/profile/fuzz.test.ts.
/**
 * The integrity checks of docs/profile-format.md §2–§3, one function each: every one reports
 * each problem through `fail` and returns the detail `kvtc validate` shows when there is none.
 * read.ts checkProfile runs them in order with a Checker, which throws the first problem
 * (readProfile) or collects them all (validate).
 */
import { stat } from 'node:fs/promises';
import { readWholeFile } from '../io/read-whole.js';
import { join } from 'node:path';
import { sha256 } from '../io/hash.js';
import { scanSafetensors, toTypedArray } from '../io/safetensors.js';
import { planBitsPerToken } from '../codec/types.js';
import { profileInvalid as invalid } from './errors.js';
import { computeProfileId } from './id.js';
import { PROFILE_LIMITS } from './limits.js';
import { checkOrthonormal } from './orthonormality.js';
import { checkManifestRope } from './rope.js';
import { checkManifestFormat, manifestValueDim } from './format3.js';
import { TENSOR_ROLES, type Manifest, type PlanEntry, type TensorRole } from './schema.js';

/** One check's outcome, as `kvtc validate` lists it. */
export interface Check {
  name: string;
  ok: boolean;
  detail: string;
}

export type Fail = (message: string) => void;

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
export class Checker {
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
    this.checks.push({
      name,
      ok: problems.length === 0,
      detail: problems.length ? `${shown}${problems.length > 5 ? `; … ${problems.length - 5} more` : ''}` : okDetail,
    });
  }
}

export function checkLimits(m: Manifest, fail: Fail): string {
  const L = PROFILE_LIMITS;
  for (const k of ['layers', 'kv_heads', 'head_dim'] as const) {
    if (m.model[k] > L.maxShape) fail(`model.${k} = ${m.model[k]} exceeds ${L.maxShape}, the most a blob header holds`);
  }
  for (const k of ['sink', 'window'] as const) {
    if (m.settings[k] > L.maxRaw) fail(`settings.${k} = ${m.settings[k]} exceeds ${L.maxRaw}, the most a blob header holds`);
  }
  return `model ${m.model.layers} layers × ${m.model.kv_heads} KV heads × ${m.model.head_dim} head dim, sink ${m.settings.sink}, window ${m.settings.window}: within the blob header's limits`;
}

/** Fields whose meaning depends on format_version, and format 3's fields against each other (format3.ts). */
export function checkFormat(m: Manifest, fail: Fail): string {
  return checkManifestFormat(m, fail);
}

export function checkPlans(m: Manifest, fail: Fail): string {
  const { layers, kv_heads: kvh, head_dim: kd } = m.model;
  const vd = manifestValueDim(m.model);
  const covered = new Set<string>();
  const names = new Map<string, string>();
  let listed = 0;
  for (const [pos, pe] of m.plans.entries()) {
    const at = `plans[${pos}]`;
    if (pe.index !== pos)
      fail(`${at}.index is ${pe.index}, but a plan's index must equal its position ${pos} (blob sections refer to plans by it)`);
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
    // Key plans hold key features (head_dim per head), value plans value features (value_head_dim).
    const hd = pe.kind === 'key' ? kd : vd;
    const dimName = pe.kind === 'key' || m.model.value_head_dim === undefined ? 'head dim' : 'value head dim';
    const want = pe.layers.length * kvh * hd;
    if (pe.dim !== want) fail(`${at}.dim is ${pe.dim}, but ${pe.layers.length} layers × ${kvh} KV heads × ${hd} ${dimName} = ${want}`);
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
    if (missing.length)
      fail(
        `plans cover ${covered.size} of the ${2 * layers} (kind, layer) pairs; missing: ${missing.slice(0, 5).join(', ')}${missing.length > 5 ? ', …' : ''}`,
      );
  }
  return `${m.plans.length} plans in index order; each of the ${2 * layers} (kind, layer) pairs covered exactly once; dims and ranks consistent`;
}

/** Why a plan's groups are not sorted, disjoint, within [0, rank) and ending at rank; undefined when they are. */
function groupsValid(pe: PlanEntry): string | undefined {
  let at = 0;
  for (const [g, q] of pe.groups.entries()) {
    if (q.start < at)
      return `groups[${g}] starts at ${q.start}, before the previous group's end ${at} (groups must be sorted and disjoint)`;
    if (q.end <= q.start) return `groups[${g}] is empty or reversed ([${q.start}, ${q.end}))`;
    if (q.end > pe.rank) return `groups[${g}] ends at ${q.end}, past the rank ${pe.rank}`;
    at = q.end;
  }
  if (at !== pe.rank) return `the last group ends at ${at}, but the rank is ${pe.rank} (the last group must end at the rank)`;
  return undefined;
}

export function checkGroups(m: Manifest, fail: Fail): string {
  for (const [pos, pe] of m.plans.entries()) {
    const why = groupsValid(pe);
    if (why) fail(`plans[${pos}].${why}`);
  }
  return "every plan's groups are sorted, disjoint, within its rank, and the last ends at the rank";
}

export function checkBits(m: Manifest, fail: Fail): string {
  for (const [pos, pe] of m.plans.entries()) {
    const bits = planBitsPerToken(pe);
    if (pe.bits_per_token !== bits) fail(`plans[${pos}].bits_per_token is ${pe.bits_per_token}, but its groups use ${bits} bits per token`);
  }
  return "every plan's bits_per_token equals what its groups use (scales included)";
}

export function checkBudget(m: Manifest, fail: Fail): string {
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
export function checkFigures(m: Manifest, fail: Fail): string {
  const { layers, heads, kv_heads: kvh } = m.model;
  // A shard's kv_heads is its rank's share (replicas included when tp exceeds the model's KV
  // heads), so only a whole-model profile has query heads a multiple of it.
  if (!m.shard && heads % kvh !== 0)
    fail(`model.heads ${heads} is not a multiple of model.kv_heads ${kvh} (each KV head serves heads / kv_heads query heads)`);
  const r = m.measured.rel_error;
  for (const k of ['key', 'value'] as const) {
    if (r[k].length !== layers)
      fail(`measured.rel_error.${k} has ${r[k].length} entries; the model has ${layers} layers (one figure per layer)`);
    const ci = r[`${k}_mean_ci95`];
    if (ci && !(ci[0] <= ci[1])) fail(`measured.rel_error.${k}_mean_ci95 is [${ci[0]}, ${ci[1]}]: its low end is above its high end`);
  }
  const raw = m.settings.sink + m.settings.window;
  if (m.measured.context_tokens <= raw) {
    fail(
      `measured.context_tokens ${m.measured.context_tokens} leaves no compressed token after sink ${m.settings.sink} + window ${m.settings.window} (calibrate measures on contexts longer than that)`,
    );
  }
  return `${layers} per-layer errors of each kind, intervals ordered, heads a multiple of KV heads, measured contexts longer than sink + window`;
}

export function checkRope(m: Manifest, fail: Fail): string {
  return checkManifestRope(m, fail, PROFILE_LIMITS.maxShape);
}

export function checkProfileId(m: Manifest, fail: Fail): string {
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

/**
 * The tensor file, strictly: size as declared and as the plans imply, sha256, a header length
 * that fits, a JSON header of exactly the plans' tensors (F32, declared shapes), data contiguous
 * from offset 0 to the end of the file. Returns the tensors by name when the structure is sound.
 */
export async function checkTensorFile(
  dir: string,
  m: Manifest,
  fail: Fail,
): Promise<{ detail: string; tensors?: Map<string, Float32Array> }> {
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
    fail(
      `${m.tensors.file} has ${st.size} bytes, but the plans' tensors take ${dataBytes} bytes of data plus a header of at most ${maxHeader}`,
    );
    return { detail: '' };
  }
  const buf = await readWholeFile(file);
  if (buf.byteLength !== st.size) {
    fail(`${m.tensors.file} changed while it was read`);
    return { detail: '' };
  }
  const digest = sha256(buf);
  if (digest !== m.tensors.sha256)
    fail(`${m.tensors.file} does not match the sha256 in the manifest (modified or corrupt): file ${digest}, manifest ${m.tensors.sha256}`);

  // The one safetensors parser, strict: header length bounded by the plans, a multiple of 8,
  // entries of exactly {dtype, shape, data_offsets}, F32 only, contiguous data, no trailing bytes.
  let sound = true;
  const broken = (msg: string) => {
    sound = false;
    fail(`${m.tensors.file}: ${msg}`);
  };
  const parsed = scanSafetensors(buf, broken, { maxHeaderBytes: maxHeader, dtypes: ['F32'] });
  if (!parsed) return { detail: '' };
  const entries = parsed.tensors;
  // Exactly the plans' tensors, with their declared shapes.
  const wanted = new Map<string, number[]>();
  for (const pe of m.plans) {
    const shapes: Record<TensorRole, number[]> = {
      mean: [pe.dim],
      basis: [pe.dim, pe.rank],
      variances: [pe.rank],
      lo: [pe.rank],
      hi: [pe.rank],
    };
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
  for (const [name, t] of entries) tensors.set(name, toTypedArray(t) as Float32Array);
  return {
    detail: `${buf.byteLength} bytes as declared, sha256 matches, exactly the plans' ${entries.size} F32 tensors with their declared shapes, contiguous, no trailing bytes`,
    tensors,
  };
}

export function checkValues(m: Manifest, tensors: Map<string, Float32Array>, fail: Fail): string {
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

export function checkRanges(m: Manifest, tensors: Map<string, Float32Array>, fail: Fail): string {
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

export function checkBases(m: Manifest, tensors: Map<string, Float32Array>, work: number, fail: Fail): string {
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
    const o = checkOrthonormal(basis, p, r, { tolerance: tol, fullWork: work, seed: pos });
    const e = o.error;
    if (o.sampled) sampled++;
    if (!o.ok)
      fail(
        `plan ${pos} basis (tensor ${pe.tensors.basis}) is not orthonormal: |VᵀV − I| reaches ${e.toExponential(2)}${o.sampled ? ' (sampled)' : ''}, tolerance ${tol}`,
      );
    if (!(e <= worst)) [worst, worstPlan] = [e, pos];
  }
  const how = sampled ? ` (${sampled} of ${m.plans.length} plans checked by exact column norms, sampled pairs and random probes)` : '';
  return `max |VᵀV − I| = ${worst.toExponential(2)}${worstPlan >= 0 ? ` (plan ${worstPlan})` : ''}, tolerance ${tol}${how}`;
}
