// Tested by test/profile/equivalence.test.ts and test/calibrate/calibrate.test.ts.
/**
 * Whether a re-derived profile of the same calibration job is the existing one up to float noise.
 * Calibration runs ONNX Runtime (the forward passes that capture the KV, the covariance Gram
 * products for p ≥ 128, the codec that measures the figures), whose CPU kernels give different
 * last bits on different CPUs (AVX2, AVX-512, Arm). The same job on another machine therefore
 * re-derives the same plans with floats that differ in their last digits and a new profile id;
 * writeProfile (write.ts) keeps the existing files when the two are equivalent here, so re-running
 * a committed calibration never rewrites it (docs/profile-format.md, "Reproducibility").
 *
 * Equivalent means: every manifest field is identical except profile_id, tensors (the hash) and
 * the measured figures (`measured`, `calibration.grouping_candidates`), which agree within
 * PROFILE_TOLERANCE relative; the plans (kinds, layers, ranks, groups, types, bits) are identical;
 * each float tensor agrees within PROFILE_TOLERANCE of its own largest magnitude (the bases,
 * whose columns are unit vectors, within PROFILE_TOLERANCE absolute), with a basis column and its
 * static range allowed to come back negated (the eigensolver's sign rule makes the largest entry
 * positive, and two entries of nearly equal magnitude can swap under noise).
 */
import type { BasisPlan } from '../codec/types.js';
import type { Manifest } from './schema.js';

/**
 * 1e-3: measured on the bundled stories260k job, KV perturbed by relative noise ε from 1e-6 to
 * 1e-4 (simulating another CPU's forward pass) kept the plans and moved the tensors by at most
 * about 3ε and the figures by about ε; CPU kernels differ by ~1e-6, so this admits 1000x that,
 * and stays far below what another seed moves (the report error, ±4%: docs/codec.md).
 */
export const PROFILE_TOLERANCE = 1e-3;

export interface Equivalence {
  tolerance: number;
  /** Largest tensor difference, relative to the tensor's largest magnitude (bases: absolute). */
  tensors_max_rel_diff: number;
  /** Largest relative difference of a measured figure. */
  figures_max_rel_diff: number;
  /** Basis columns that came back negated (with their static ranges). */
  sign_flips: number;
}

export type Comparison = { equivalent: true; detail: Equivalence } | { equivalent: false; difference: string };

export interface ComparedProfile {
  manifest: Manifest;
  plans: BasisPlan[];
}

/** Subtrees of the manifest holding measured figures; within them these keys are still exact. */
const FIGURES = new Set(['measured', 'grouping_candidates']);
const EXACT_IN_FIGURES = new Set(['split', 'context_tokens', 'grouping']);
/** Fields that follow from the tensor bytes (the hash) and so differ whenever a float does. */
const DERIVED = new Set(['profile_id', 'tensors']);

const relDiff = (a: number, b: number) => (a === b ? 0 : Math.abs(a - b) / Math.max(Math.abs(a), Math.abs(b)));

/** The first difference between manifest values, or undefined; figures' relative differences go into `worst`. */
function compareJson(a: unknown, b: unknown, path: string, figure: boolean, worst: { figure: number }, tol: number): string | undefined {
  if (typeof a === 'number' && typeof b === 'number') {
    if (a === b) return undefined;
    if (!figure) return `${path} is ${b}, was ${a}`;
    const d = relDiff(a, b);
    worst.figure = Math.max(worst.figure, d);
    return d <= tol ? undefined : `${path} is ${b}, was ${a} (relative difference ${d.toExponential(2)} > ${tol})`;
  }
  if (Array.isArray(a) || Array.isArray(b)) {
    if (!Array.isArray(a) || !Array.isArray(b) || a.length !== b.length) return `${path} differs in length or kind`;
    for (let i = 0; i < a.length; i++) {
      const d = compareJson(a[i], b[i], `${path}[${i}]`, figure, worst, tol);
      if (d) return d;
    }
    return undefined;
  }
  if (a && b && typeof a === 'object' && typeof b === 'object') {
    const ka = Object.keys(a)
      .filter((k) => (a as Record<string, unknown>)[k] !== undefined)
      .sort();
    const kb = Object.keys(b)
      .filter((k) => (b as Record<string, unknown>)[k] !== undefined)
      .sort();
    if (ka.join('\n') !== kb.join('\n')) return `${path || 'the manifest'} has fields ${kb.join(', ')}, had ${ka.join(', ')}`;
    for (const k of ka) {
      if (!path && DERIVED.has(k)) continue;
      const f = figure ? !EXACT_IN_FIGURES.has(k) : FIGURES.has(k);
      const d = compareJson((a as Record<string, unknown>)[k], (b as Record<string, unknown>)[k], path ? `${path}.${k}` : k, f, worst, tol);
      if (d) return d;
    }
    return undefined;
  }
  return a === b ? undefined : `${path} is ${JSON.stringify(b)}, was ${JSON.stringify(a)}`;
}

function maxAbs(x: Float32Array): number {
  let m = 0;
  for (let i = 0; i < x.length; i++) m = Math.max(m, Math.abs(x[i]));
  return m;
}

/** max |a − b| over the elements, divided by scale (when positive). */
function tensorDiff(a: Float32Array, b: Float32Array, scale: number): number {
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i] - b[i]));
  return scale > 0 ? m / scale : m;
}

/**
 * Compares two profiles of the same job (see the file comment). `existing` is the profile on disk,
 * `fresh` the one just calibrated; the manifests are the serialized ones (write.ts serializeProfile).
 */
export function compareProfiles(existing: ComparedProfile, fresh: ComparedProfile, tol = PROFILE_TOLERANCE): Comparison {
  const worst = { figure: 0 };
  const d = compareJson(existing.manifest, fresh.manifest, '', false, worst, tol);
  if (d) return { equivalent: false, difference: d };
  if (existing.plans.length !== fresh.plans.length)
    return { equivalent: false, difference: `${fresh.plans.length} plans, had ${existing.plans.length}` };
  let tensors = 0;
  let flips = 0;
  for (const [i, a] of existing.plans.entries()) {
    const b = fresh.plans[i];
    const { dim: p, rank: r } = a;
    if (
      b.dim !== p ||
      b.rank !== r ||
      b.mean.length !== p ||
      b.basis.length !== p * r ||
      b.lo.length !== r ||
      b.hi.length !== r ||
      b.variances.length !== r
    ) {
      return { equivalent: false, difference: `plan ${i} has other tensor shapes` };
    }
    // Columns that came back negated are compared negated, and so are their static ranges ([lo, hi] → [−hi, −lo]).
    const sign = new Float32Array(r);
    let basis = 0;
    for (let j = 0; j < r; j++) {
      let same = 0;
      let neg = 0;
      for (let k = 0; k < p; k++) {
        same = Math.max(same, Math.abs(a.basis[k * r + j] - b.basis[k * r + j]));
        neg = Math.max(neg, Math.abs(a.basis[k * r + j] + b.basis[k * r + j]));
      }
      sign[j] = neg < same ? -1 : 1;
      if (sign[j] < 0) flips++;
      basis = Math.max(basis, Math.min(same, neg));
    }
    const lo = Float32Array.from(b.lo, (x, j) => (sign[j] < 0 ? -b.hi[j] : x));
    const hi = Float32Array.from(b.hi, (x, j) => (sign[j] < 0 ? -b.lo[j] : x));
    const range = Math.max(maxAbs(a.lo), maxAbs(a.hi));
    const parts: [string, number][] = [
      ['mean', tensorDiff(a.mean, b.mean, maxAbs(a.mean))],
      ['basis', basis],
      ['variances', tensorDiff(a.variances, b.variances, maxAbs(a.variances))],
      ['lo', tensorDiff(a.lo, lo, range)],
      ['hi', tensorDiff(a.hi, hi, range)],
    ];
    for (const [name, diff] of parts) {
      // NaN (a corrupt tensor) is never equivalent.
      if (!(diff <= tol))
        return { equivalent: false, difference: `plan ${i} ${name} differs by ${diff.toExponential(2)} (tolerance ${tol})` };
      tensors = Math.max(tensors, diff);
    }
  }
  return {
    equivalent: true,
    detail: { tolerance: tol, tensors_max_rel_diff: tensors, figures_max_rel_diff: worst.figure, sign_flips: flips },
  };
}
