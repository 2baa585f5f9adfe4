/**
 * Independent plain-TypeScript forward pass of raw llama2.c weights, following run.c:
 * RoPE on *interleaved* pairs (2i, 2i+1) of q and k, GQA by kv_mul, RMSNorm eps 1e-5,
 * SwiGLU, classifier = wcls or the token embedding. float64 arithmetic.
 */
import type { Llama2cCheckpoint } from '../../src/convert/llama2c.js';

function matvec(w: Float32Array, x: Float64Array, rows: number, cols: number): Float64Array {
  const out = new Float64Array(rows);
  for (let r = 0; r < rows; r++) {
    let s = 0;
    const o = r * cols;
    for (let c = 0; c < cols; c++) s += w[o + c] * x[c];
    out[r] = s;
  }
  return out;
}

function rmsnorm(x: Float64Array, w: Float32Array): Float64Array {
  let ss = 0;
  for (const v of x) ss += v * v;
  const inv = 1 / Math.sqrt(ss / x.length + 1e-5);
  return x.map((v, i) => w[i] * v * inv);
}

/** logits[t]: Float64Array [vocab] after tokens[0..t], as run.c's forward(token, pos=t). */
export function referenceForward(ck: Llama2cCheckpoint, tokens: number[]): Float64Array[] {
  const { dim, hiddenDim, heads, kvHeads, vocabSize } = ck.config;
  const hs = dim / heads;
  const kvDim = hs * kvHeads;
  const kvMul = heads / kvHeads;
  const kCache = ck.layers.map(() => [] as Float64Array[]);
  const vCache = ck.layers.map(() => [] as Float64Array[]);
  const out: Float64Array[] = [];
  tokens.forEach((tok, pos) => {
    let x = Float64Array.from(ck.tokenEmbedding.subarray(tok * dim, (tok + 1) * dim));
    ck.layers.forEach((L, l) => {
      const xb = rmsnorm(x, L.rmsAtt);
      const q = matvec(L.wq, xb, dim, dim);
      const k = matvec(L.wk, xb, kvDim, dim);
      const v = matvec(L.wv, xb, kvDim, dim);
      for (let i = 0; i < dim; i += 2) {
        const freq = 1 / 10000 ** ((i % hs) / hs);
        const fcr = Math.cos(pos * freq);
        const fci = Math.sin(pos * freq);
        for (const vec of i < kvDim ? [q, k] : [q]) {
          const v0 = vec[i];
          const v1 = vec[i + 1];
          vec[i] = v0 * fcr - v1 * fci;
          vec[i + 1] = v0 * fci + v1 * fcr;
        }
      }
      kCache[l].push(k);
      vCache[l].push(v);
      const att = new Float64Array(dim);
      for (let h = 0; h < heads; h++) {
        const kh = Math.floor(h / kvMul) * hs;
        const scores = kCache[l].map((kt) => {
          let s = 0;
          for (let d = 0; d < hs; d++) s += q[h * hs + d] * kt[kh + d];
          return s / Math.sqrt(hs);
        });
        const max = Math.max(...scores);
        const e = scores.map((s) => Math.exp(s - max));
        const sum = e.reduce((a, b) => a + b, 0);
        vCache[l].forEach((vt, t) => {
          for (let d = 0; d < hs; d++) att[h * hs + d] += (e[t] / sum) * vt[kh + d];
        });
      }
      const o = matvec(L.wo, att, dim, dim);
      x = x.map((v, i) => v + o[i]);
      const xb2 = rmsnorm(x, L.rmsFfn);
      const h1 = matvec(L.w1, xb2, hiddenDim, dim);
      const h3 = matvec(L.w3, xb2, hiddenDim, dim);
      const act = h1.map((g, i) => (g / (1 + Math.exp(-g))) * h3[i]);
      const down = matvec(L.w2, act, dim, hiddenDim);
      x = x.map((v, i) => v + down[i]);
    });
    const xf = rmsnorm(x, ck.rmsFinal);
    out.push(matvec(ck.wcls ?? ck.tokenEmbedding, xf, vocabSize, dim));
  });
  return out;
}
