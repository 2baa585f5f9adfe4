// Tested by test/fit/eigen.test.ts.
/** Cuppen's divide and conquer on a symmetric tridiagonal matrix, as steps. Part of eigenSteps (eigen-steps.ts). */
import type { MatMulRequest } from './eigen-types.js';
import { tql2 } from './tridiagonal-ql.js';

const DC_LEAF = 32;
const EPS = 2 ** -52;

/**
 * Divide and conquer for the symmetric tridiagonal T (Cuppen; deflation and the
 * Gu–Eisenstat recomputed ẑ keep the eigenvectors orthogonal). d diagonal, e[i] = T(i, i-1)
 * for i ≥ 1 (e[0] ignored). Returns ascending values and ZT (row j = eigenvector j).
 */
export function* dcSteps(
  d0: Float64Array,
  e0: Float64Array,
  n: number,
): Generator<MatMulRequest, { lam: Float64Array; ZT: Float64Array }, Float64Array> {
  if (n <= DC_LEAF) {
    const W = new Float64Array(n * n);
    for (let i = 0; i < n; i++) W[i * n + i] = 1;
    const d = Float64Array.from(d0);
    const e = Float64Array.from(e0);
    tql2(W, d, e, n);
    return { lam: d, ZT: W };
  }
  const m = n >> 1;
  const n2 = n - m;
  const beta = e0[m];
  const d1 = d0.slice(0, m);
  const e1 = e0.slice(0, m);
  d1[m - 1] -= beta;
  const d2 = d0.slice(m);
  const e2 = e0.slice(m);
  d2[0] -= beta;
  e2[0] = 0;
  const A = yield* dcSteps(d1, e1, m);
  const B = yield* dcSteps(d2, e2, n2);
  // T = diag(T1, T2) + beta·v vᵀ, v = (e_m-1; e_m); in the eigenbasis: D + rho z zᵀ.
  const QT = new Float64Array(n * n);
  for (let j = 0; j < m; j++) QT.set(A.ZT.subarray(j * m, j * m + m), j * n);
  for (let j = 0; j < n2; j++) QT.set(B.ZT.subarray(j * n2, j * n2 + n2), (m + j) * n + m);
  const D = new Float64Array(n);
  const z = new Float64Array(n);
  for (let j = 0; j < m; j++) {
    D[j] = A.lam[j];
    z[j] = A.ZT[j * m + m - 1] / Math.SQRT2;
  }
  for (let j = 0; j < n2; j++) {
    D[m + j] = B.lam[j];
    z[m + j] = B.ZT[j * n2] / Math.SQRT2;
  }
  let rho = 2 * beta;
  const flip = rho < 0;
  if (flip) {
    for (let j = 0; j < n; j++) D[j] = -D[j];
    rho = -rho;
  }
  const perm = Array.from({ length: n }, (_, i) => i).sort((a, b) => D[a] - D[b]);
  let dmax = 0;
  let zmax = 0;
  for (let j = 0; j < n; j++) {
    dmax = Math.max(dmax, Math.abs(D[j]));
    zmax = Math.max(zmax, Math.abs(z[j]));
  }
  const tol = 8 * EPS * Math.max(dmax, rho * zmax);
  const keep: number[] = [];
  const defl: number[] = [];
  let pj = -1;
  for (const nj of perm) {
    if (rho * Math.abs(z[nj]) <= tol) {
      defl.push(nj);
      continue;
    }
    if (pj >= 0) {
      let s = z[pj];
      let c = z[nj];
      const tau = Math.hypot(c, s);
      const t = D[nj] - D[pj];
      c /= tau;
      s = -s / tau;
      if (Math.abs(t * c * s) <= tol) {
        // Near-equal D: a Givens rotation zeroes z[pj], which then deflates.
        z[nj] = tau;
        z[pj] = 0;
        const a = pj * n;
        const b = nj * n;
        for (let i = 0; i < n; i++) {
          const x = QT[a + i];
          const y = QT[b + i];
          QT[a + i] = c * x + s * y;
          QT[b + i] = c * y - s * x;
        }
        const tt = D[pj] * c * c + D[nj] * s * s;
        D[nj] = D[pj] * s * s + D[nj] * c * c;
        D[pj] = tt;
        defl.push(pj);
        pj = nj;
        continue;
      }
      keep.push(pj);
    }
    pj = nj;
  }
  if (pj >= 0) keep.push(pj);
  keep.sort((a, b) => D[a] - D[b]);
  const k = keep.length;
  const dl = Float64Array.from(keep, (i) => D[i]);
  const zl = Float64Array.from(keep, (i) => z[i]);
  let zn2 = 0;
  for (let i = 0; i < k; i++) zn2 += zl[i] * zl[i];
  const Delta = new Float64Array(k * k); // Delta[i*k+j] = dl[j] - lam_i, computed relative to the nearer pole
  const lamk = new Float64Array(k);
  const secular = (o: number, tau: number): number => {
    let s = 1;
    for (let j = 0; j < k; j++) s += (rho * zl[j] * zl[j]) / (dl[j] - dl[o] - tau);
    return s;
  };
  for (let i = 0; i < k; i++) {
    let o: number;
    let lo: number;
    let hi: number;
    if (i < k - 1) {
      const gap = dl[i + 1] - dl[i];
      if (secular(i, gap / 2) >= 0) {
        o = i;
        lo = 0;
        hi = gap / 2;
      } else {
        o = i + 1;
        lo = -gap / 2;
        hi = 0;
      }
    } else {
      o = i;
      lo = 0;
      hi = rho * zn2;
    }
    let tau = (lo + hi) / 2;
    for (let it = 0; it < 200; it++) {
      let s = 1;
      let ds = 0;
      for (let j = 0; j < k; j++) {
        const del = dl[j] - dl[o] - tau;
        const w = (rho * zl[j] * zl[j]) / del;
        s += w;
        ds += w / del;
      }
      if (s > 0) hi = tau;
      else if (s < 0) lo = tau;
      else break;
      let nt = tau - s / ds;
      if (!(nt > lo && nt < hi)) nt = (lo + hi) / 2;
      if (hi - lo <= 2 * EPS * Math.max(Math.abs(lo), Math.abs(hi)) || nt === tau) break;
      tau = nt;
    }
    lamk[i] = dl[o] + tau;
    for (let j = 0; j < k; j++) Delta[i * k + j] = dl[j] - dl[o] - tau;
  }
  // Gu–Eisenstat: ẑ from the computed roots, so the vectors below are orthogonal.
  const zh = new Float64Array(k);
  for (let j = 0; j < k; j++) {
    let w = -Delta[j * k + j] / rho;
    for (let i = 0; i < k; i++) if (i !== j) w *= -Delta[i * k + j] / (dl[i] - dl[j]);
    zh[j] = Math.sign(zl[j]) * Math.sqrt(Math.abs(w));
  }
  const UT = new Float64Array(k * k);
  for (let i = 0; i < k; i++) {
    let s = 0;
    for (let j = 0; j < k; j++) {
      const u = zh[j] / Delta[i * k + j];
      UT[i * k + j] = u;
      s += u * u;
    }
    s = 1 / Math.sqrt(s);
    for (let j = 0; j < k; j++) UT[i * k + j] *= s;
  }
  const QK = new Float64Array(k * n);
  keep.forEach((r, i) => QK.set(QT.subarray(r * n, r * n + n), i * n));
  const VK = k > 0 ? yield { A: UT, B: QK, m: k, k, n } : new Float64Array(0);
  const all: { v: number; src: Float64Array; off: number }[] = [];
  for (let i = 0; i < k; i++) all.push({ v: flip ? -lamk[i] : lamk[i], src: VK, off: i * n });
  for (const r of defl) all.push({ v: flip ? -D[r] : D[r], src: QT, off: r * n });
  all.sort((a, b) => a.v - b.v);
  const lam = new Float64Array(n);
  const ZT = new Float64Array(n * n);
  all.forEach((x, j) => {
    lam[j] = x.v;
    ZT.set(x.src.subarray(x.off, x.off + n), j * n);
  });
  return { lam, ZT };
}
