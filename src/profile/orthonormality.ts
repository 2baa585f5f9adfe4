// Tested by test/profile/orthonormality.test.ts.
/**
 * Is a basis V [p, r] (row-major float32) orthonormal, VᵀV = I within a tolerance? The full
 * check computes the r×r Gram matrix (O(p·r²)); the sampled one is O(p·r) and never stricter.
 * Profiles (checks.ts) and Dynamo profiles (src/dynamo/profile.ts) both check with checkOrthonormal.
 */
import { mulberry32 } from '../random.js';

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

/**
 * The cheap orthonormality check, O(p·r): every column's norm exactly, 64 random off-diagonal
 * Gram entries, and 4 random ±1 probes z with |(VᵀV − I)z| ≤ r·tol per entry — each test is
 * implied by max |VᵀV − I| ≤ tol, so it never refuses a basis the full check accepts.
 * Returns the worst violation scaled to the tolerance's units (≤ tol passes).
 */
export function sampledOrthonormalityError(basis: Float32Array, p: number, r: number, seed = 0): number {
  if (r === 0) return 0;
  const rand = mulberry32(0x9e3779b9 ^ seed);
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

/** How orthonormal a basis is, as checkOrthonormal measured it. */
export interface Orthonormality {
  /** max |VᵀV − I| (full), or the sampled check's worst violation in the same units. */
  error: number;
  /** True when p·r² exceeded `fullWork` and the sampled check ran. */
  sampled: boolean;
  /** error ≤ tolerance (false for NaN). */
  ok: boolean;
}

/**
 * The one orthonormality check: the full Gram matrix when p·r² ≤ fullWork, the sampled check
 * otherwise (seeded, so a profile is accepted or refused the same way on every read). Each
 * target passes its own tolerance: profiles 1e-4 (PROFILE_LIMITS.orthoTolerance), Dynamo
 * profiles 1e-3 (src/dynamo/profile.ts DYNAMO_ORTHO_TOLERANCE, where the reason is given).
 */
export function checkOrthonormal(
  basis: Float32Array,
  p: number,
  r: number,
  opts: { tolerance: number; fullWork: number; seed?: number },
): Orthonormality {
  const sampled = p * r * r > opts.fullWork;
  const error = sampled ? sampledOrthonormalityError(basis, p, r, opts.seed ?? 0) : orthonormalityError(basis, p, r);
  return { error, sampled, ok: error <= opts.tolerance };
}
