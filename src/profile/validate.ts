/** Profile checks behind `kvtc validate`: each returns pass/fail with a reason; nothing throws past readProfile. */
import { isKvtcError } from '../errors.js';
import { describeModel } from '../model/load.js';
import { readProfile, type Profile } from './io.js';

export interface Check {
  name: string;
  ok: boolean;
  detail: string;
}

export interface ValidateResult {
  profile: string;
  ok: boolean;
  checks: Check[];
}

const ORTHO_TOL = 1e-4;

/** max |VᵀV − I| over the r×r Gram matrix of basis [p, r] (float64 sums). */
export function orthonormalityError(basis: Float32Array, p: number, r: number): number {
  let worst = 0;
  for (let a = 0; a < r; a++) {
    for (let b = a; b < r; b++) {
      let s = 0;
      for (let i = 0; i < p; i++) s += basis[i * r + a] * basis[i * r + b];
      worst = Math.max(worst, Math.abs(s - (a === b ? 1 : 0)));
    }
  }
  return worst;
}

function nonFinite(a: Float32Array): number {
  for (let i = 0; i < a.length; i++) if (!Number.isFinite(a[i])) return i;
  return -1;
}

export async function validateProfile(path: string, modelDir?: string): Promise<ValidateResult> {
  const checks: Check[] = [];
  let profile: Profile;
  try {
    profile = await readProfile(path);
  } catch (e) {
    if (!isKvtcError(e)) throw e;
    return { profile: path, ok: false, checks: [{ name: 'schema and tensors', ok: false, detail: `${e.message}${e.fix ? ` (fix: ${e.fix})` : ''}` }] };
  }
  checks.push({ name: 'schema', ok: true, detail: `manifest is a valid format-${profile.manifest.format_version} kvtc profile` });
  checks.push({ name: 'tensor file', ok: true, detail: `sha256 matches, every tensor has the shape its plan declares (${profile.plans.length} plans)` });

  const bad: string[] = [];
  for (const [i, p] of profile.plans.entries()) {
    for (const [name, a] of [['mean', p.mean], ['basis', p.basis], ['variances', p.variances], ['lo', p.lo], ['hi', p.hi]] as const) {
      const at = nonFinite(a);
      if (at >= 0) bad.push(`plan ${i} ${name}[${at}] = ${a[at]}`);
    }
  }
  checks.push({ name: 'finite values', ok: bad.length === 0, detail: bad.length ? bad.slice(0, 5).join('; ') : 'no NaN or Inf in means, bases, variances or ranges' });

  let worst = 0;
  let worstPlan = -1;
  for (const [i, p] of profile.plans.entries()) {
    const e = orthonormalityError(p.basis, p.dim, p.rank);
    if (e > worst) [worst, worstPlan] = [e, i];
  }
  checks.push({
    name: 'orthonormal bases',
    ok: worst <= ORTHO_TOL,
    detail: `max |VᵀV − I| = ${worst.toExponential(2)}${worstPlan >= 0 ? ` (plan ${worstPlan})` : ''}, tolerance ${ORTHO_TOL}`,
  });

  const ranges: string[] = [];
  for (const [i, p] of profile.plans.entries()) {
    for (const g of p.groups) {
      if (g.mode !== 'static') continue;
      for (let j = g.start; j < g.end; j++) if (!(p.lo[j] <= p.hi[j])) ranges.push(`plan ${i} component ${j}: lo ${p.lo[j]} > hi ${p.hi[j]}`);
    }
  }
  checks.push({ name: 'static ranges', ok: ranges.length === 0, detail: ranges.length ? ranges.slice(0, 5).join('; ') : 'lo ≤ hi for every statically quantized component' });

  const budget = profile.manifest.plans.filter((p) => p.bits_per_token > p.budget_bits);
  checks.push({ name: 'bit budget', ok: budget.length === 0, detail: budget.length ? `plans ${budget.map((p) => p.index).join(', ')} exceed their budget` : 'every plan fits its bit budget' });

  if (modelDir) {
    try {
      const d = await describeModel(modelDir);
      const m = profile.manifest.model;
      const same = d.fingerprint.id === m.fingerprint.id;
      checks.push({
        name: 'model',
        ok: same,
        detail: same
          ? `made for this model (${d.name}, fingerprint ${d.fingerprint.id})`
          : `made for ${m.name} (fingerprint ${m.fingerprint.id}), but ${modelDir} is ${d.name} (fingerprint ${d.fingerprint.id}); calibrate a profile for it with \`kvtc calibrate --model ${modelDir}\``,
      });
      const shapeOk = d.spec.layers === m.layers && d.spec.kvHeads === m.kv_heads && d.spec.headDim === m.head_dim;
      checks.push({ name: 'model shape', ok: shapeOk, detail: `model ${d.spec.layers}×${d.spec.kvHeads}×${d.spec.headDim}, profile ${m.layers}×${m.kv_heads}×${m.head_dim} (layers × KV heads × head dim)` });
    } catch (e) {
      if (!isKvtcError(e)) throw e;
      checks.push({ name: 'model', ok: false, detail: e.message });
    }
  }
  return { profile: profile.dir, ok: checks.every((c) => c.ok), checks };
}
