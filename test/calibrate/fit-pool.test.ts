import { describe, expect, it } from 'vitest';
import {
  BlockEigenGate,
  blockEigen,
  blockEigenBytes,
  blockSolver,
  fitBases,
  fitBasisTables,
  type FitJob,
  fitSolver,
  type LazyFitJob,
} from '../../src/calibrate/fit-pool.js';
import { symmetricEigenAsync } from '../../src/fit/eigen-ort.js';
import { CovarianceAccumulator } from '../../src/fit/covariance.js';
import { allocateDetailed, prepareAllocation, rankForBudget } from '../../src/fit/fit.js';
import { RANDOMIZED_EIGEN_MIN_P } from '../../src/fit/ort-thresholds.js';
import { gemmABt } from '../../src/math/gemm.js';
import { rng } from '../codec/rng.js';
import { movable } from '../../src/worker.js';
import { existsSync } from 'node:fs';
import { cudaProviderPath } from '../../src/onnx/session.js';

const p = RANDOMIZED_EIGEN_MIN_P;
const H = 256;

/** A basis job from key-like samples (outliers, then a power law, randomly mixed). */
async function job(seed: number, maxRank?: number): Promise<FitJob> {
  const { normal } = rng(seed);
  const M = new Float64Array(p * p);
  for (let j = 0; j < p; j++) {
    const s = Math.sqrt(((j < 4 ? 20 : 1) * (j + 1) ** -1.2) / p);
    for (let i = 0; i < p; i++) M[i * p + j] = s * normal();
  }
  const T = 1024 + H;
  const X = Float32Array.from(gemmABt(Float64Array.from({ length: T * p }, normal), M, new Float64Array(T * p), T, p, p));
  const acc = new CovarianceAccumulator(p);
  await acc.add(X.subarray(0, 1024 * p), 1024);
  const { mean, cov } = acc.finish();
  return { kind: 'value', layers: [seed], dim: p, cov, mean, heldout: X.slice(1024 * p), heldoutTokens: H, maxRank };
}

describe('fitBases with FitJob.maxRank', () => {
  it('chooses the solver from maxRank and p', () => {
    expect(fitSolver({ dim: p })).toBe('dense');
    expect(fitSolver({ dim: p, maxRank: p })).toBe('dense');
    expect(fitSolver({ dim: p, maxRank: p + 5 })).toBe('dense');
    expect(fitSolver({ dim: p, maxRank: Math.floor(0.6 * p) })).toBe('randomized');
    expect(fitSolver({ dim: p, maxRank: Math.floor(0.6 * p) + 1 })).toBe('dense-truncated');
    expect(fitSolver({ dim: p - 1, maxRank: 8 })).toBe('dense');
  });

  it('worker threads return the truncated tables of the randomized fit, identical to an inline fit', async () => {
    const k = rankForBudget(p, Math.floor((1.5 * 16 * p) / 20)); // ratio 20, budget scale up to 1.5
    const jobs = [await job(1, k), await job(2)];
    const inline = await fitBasisTables(jobs[0], { eigenThreads: 1 });
    const pooled = await fitBases(jobs, { threads: 2 });
    const [t, full] = pooled.map((o) => o.tables);
    expect(pooled.map((o) => o.solver)).toEqual(['randomized', 'dense']);
    expect([t.features, t.dim, t.vectors.length, t.values.length, t.coeffs.length, t.staticErr.length]).toEqual([
      p,
      k,
      p * k,
      k,
      H * k,
      4 * k,
    ]);
    expect([full.features, full.dim, full.residual]).toEqual([p, p, 0]);
    expect(t.residual).toBeGreaterThan(0);
    // Transferred intact: the worker's tables are the inline fit's, byte for byte.
    for (const key of ['vectors', 'values', 'coeffs', 'none', 'staticErr', 'staticLo', 'staticHi', 'dynamicErr'] as const) {
      expect(Buffer.from(t[key].buffer).equals(Buffer.from(inline.tables[key].buffer)), key).toBe(true);
    }
    expect(t.residual).toBe(inline.tables.residual);
    const plan = allocateDetailed(t, Math.floor((16 * p) / 20)).plan;
    expect(plan.dim).toBe(p);
    expect(plan.rank).toBeLessThanOrEqual(k);
    expect(plan.basis.length).toBe(p * plan.rank);
  }, 120_000);

  it("from p = 384 the held-out projection runs on ONNX Runtime: the JavaScript projection's coefficients, to float32 rounding", async () => {
    const k = rankForBudget(p, Math.floor((1.5 * 16 * p) / 20));
    const j = await job(5, k);
    const out = await fitBasisTables({ ...j, heldout: j.heldout.slice() });
    // prepareAllocation without coefficients projects in JavaScript (gemmABt).
    const js = prepareAllocation({ ...j, vectors: out.tables.vectors, values: out.tables.values });
    let worst = 0;
    let scale = 0;
    for (let i = 0; i < js.coeffs.length; i++) {
      worst = Math.max(worst, Math.abs(out.tables.coeffs[i] - js.coeffs[i]));
      scale = Math.max(scale, Math.abs(js.coeffs[i]));
    }
    expect(worst / scale).toBeLessThan(1e-6);
    expect(Math.abs(out.tables.residual / js.residual - 1)).toBeLessThan(1e-9);
    let none = 0;
    for (let c = 0; c < k; c++) none = Math.max(none, Math.abs(out.tables.none[c] / js.none[c] - 1));
    expect(none).toBeLessThan(1e-5);
  });

  it('a lazy job solves its block eigenproblem on the worker that takes it, as blockEigen does here', async () => {
    const base = await job(6);
    const m = p;
    const k = 100;
    const lazy = (kind: 'key' | 'value'): LazyFitJob => ({
      dim: m,
      make: async (run) => {
        const e = await run({ op: 'block-eigen', block: base.cov!.slice(), m, k });
        const Y = Float64Array.from(base.heldout, (v, i) => v - base.mean[i % m]);
        const C = gemmABt(
          Y,
          Float64Array.from({ length: k * m }, (_, i) => e.W[(i % m) * k + Math.floor(i / m)]),
          new Float64Array(H * k),
          H,
          k,
          m,
        );
        return {
          kind,
          layers: [0],
          dim: m,
          mean: base.mean.slice(),
          eigen: { values: e.values, vectors: e.W },
          coefficients: { coeffs: Float32Array.from(C), residual: 0 },
          heldout: new Float32Array(0),
          heldoutTokens: H,
        };
      },
    });
    const here = await blockEigen({ block: base.cov!.slice(), m, k }, 1);
    expect(here.solver).toBe('randomized');
    const pooled = await fitBases([lazy('key'), lazy('value')], { threads: 2 });
    for (const o of pooled) {
      expect(o.solver).toBe('two-level');
      expect(Buffer.from(o.tables.values.buffer).equals(Buffer.from(here.values.buffer))).toBe(true);
      expect(Buffer.from(o.tables.vectors.buffer).equals(Buffer.from(here.W.buffer))).toBe(true);
    }
    expect(pooled.map((o) => o.tables.kind)).toEqual(['key', 'value']);
  }, 120_000);

  it('a block solved on a worker posts its phases before its result when asked (a lone block at a large R: minutes)', async () => {
    const base = await job(9);
    const m = p;
    for (const k of [100, m - 40]) {
      const events: [string, number, number][] = [];
      let W: Float64Array | undefined;
      const lazy: LazyFitJob = {
        dim: m,
        make: async (run) => {
          const e = await run({ op: 'block-eigen', block: base.cov!.slice(), m, k }, (phase, done, total) =>
            events.push([phase, done, total]),
          );
          W = e.W.slice();
          return {
            kind: 'key',
            layers: [0],
            dim: m,
            mean: base.mean.slice(),
            eigen: { values: e.values, vectors: e.W },
            coefficients: { coeffs: new Float32Array(H * k), residual: 0 },
            heldout: new Float32Array(0),
            heldoutTokens: H,
          };
        },
      };
      await fitBases([lazy, { ...lazy }], { threads: 2 });
      const here = await blockEigen({ block: base.cov!.slice(), m, k }, 1);
      expect(Buffer.from(W!.buffer).equals(Buffer.from(here.W.buffer))).toBe(true);
      const phases = [...new Set(events.map((e) => e[0]))];
      if (here.solver === 'randomized') {
        const l = k + 10;
        expect(phases).toEqual(
          [
            'sketch',
            ...['Householder reduction', 'divide and conquer', 'back-transform'].map((x) => `Rayleigh–Ritz ${l} wide, ${x}`),
          ].filter((x) => l >= 384 || x === 'sketch'),
        );
      } else expect(phases).toEqual(['Householder reduction', 'divide and conquer', 'back-transform']);
      const first = events.filter((e) => e[0] === phases[0]);
      expect(first.at(-1)![1]).toBe(first.at(-1)![2]);
    }
  }, 120_000);

  it('a job holding a buffer an earlier job moved to a worker fails at once instead of waiting forever', async () => {
    // Node drops a message whose transfer list holds a detached buffer without a word: two lazy
    // jobs sharing one mean moved it with the first, and the pool waited for the second's answer.
    const base = await job(10);
    const lazy: LazyFitJob = {
      dim: p,
      make: async (run) => {
        const e = await run({ op: 'block-eigen', block: base.cov!.slice(), m: p, k: 100 });
        return { ...base, heldout: base.heldout.slice(), eigen: { values: e.values, vectors: e.W } };
      },
    };
    await expect(fitBases([lazy, lazy], { threads: 2 })).rejects.toThrow(/detached/);
    expect(movable(new Float64Array(0))).toBe(false);
    expect(movable(new Float64Array(4).subarray(1))).toBe(false);
    expect(movable(new Float64Array(4))).toBe(true);
  }, 60_000);

  it("--device cuda reaches the fit's products: DEVICE_UNAVAILABLE without the CUDA provider, the CPU's tables with it", async () => {
    const k = rankForBudget(p, Math.floor((1.5 * 16 * p) / 20));
    const j = await job(7, k);
    const fit = fitBasisTables({ ...j, heldout: j.heldout.slice(), device: 'cuda' });
    const block = blockEigen({ block: j.cov!.slice(), m: p, k, device: 'cuda' });
    if (!existsSync(cudaProviderPath())) {
      await expect(fit).rejects.toMatchObject({ code: 'DEVICE_UNAVAILABLE' });
      await expect(block).rejects.toMatchObject({ code: 'DEVICE_UNAVAILABLE' });
      return;
    }
    const cpu = await fitBasisTables({ ...j, heldout: j.heldout.slice() });
    const gpu = await fit;
    for (let c = 0; c < 8; c++) expect(Math.abs(gpu.tables.values[c] / cpu.tables.values[c] - 1)).toBeLessThan(1e-9);
    expect((await block).values[0] / cpu.tables.values[0]).toBeCloseTo(1, 9);
  }, 120_000);

  it('BlockEigenGate: block eigensolves overlap only while their working sets fit its limit together', async () => {
    const threads: (number | undefined)[] = [];
    const peak = async (limit: number, m: number) => {
      const gate = new BlockEigenGate(limit);
      let now = 0;
      let most = 0;
      threads.length = 0;
      const run = gate.wrap(async (task) => {
        threads.push(task.threads);
        most = Math.max(most, ++now);
        await new Promise((r) => setTimeout(r, 20));
        now--;
        return { values: new Float64Array(task.k), W: new Float64Array(task.m * task.k), solver: 'dense' };
      });
      const task = { op: 'block-eigen' as const, block: new Float64Array(0), m, k: 8 };
      await Promise.all([run(task), run(task), run(task)]);
      return most;
    };
    const b = blockEigenBytes(64, 8);
    expect(b).toBe(8 * 8 * 64 * 64); // below RANDOMIZED_EIGEN_MIN_P: the dense solve, cut to k
    expect(await peak(2 * b, 64)).toBe(2);
    expect(threads).toEqual([undefined, undefined, undefined]); // paired: the worker's one thread
    expect(await peak(3 * b, 64)).toBe(3);
    expect(await peak(2 * b - 1, 64)).toBe(1); // one at a time, never none
    expect(threads).toEqual([0, 0, 0]); // alone: every core for its products
    expect(await peak(1, 64)).toBe(1);
  });

  it('BlockEigenGate.held keeps its slot after the solve until release(): the lift ends before the next lone solve', async () => {
    const b = blockEigenBytes(64, 8);
    const gate = new BlockEigenGate(b); // one at a time
    const order: string[] = [];
    const run = async (task: { m: number; k: number }) => {
      order.push(`solve ${task.k}`);
      return { values: new Float64Array(task.k), W: new Float64Array(task.m * task.k), solver: 'dense' as const };
    };
    const first = gate.held(run);
    await first.run({ op: 'block-eigen', block: new Float64Array(0), m: 64, k: 8 });
    const second = gate.wrap(run)({ op: 'block-eigen', block: new Float64Array(0), m: 64, k: 8 });
    await new Promise((r) => setTimeout(r, 30));
    order.push('lift');
    expect(order).toEqual(['solve 8', 'lift']); // the second waits while the first is held
    first.release();
    first.release(); // idempotent: the slot is not freed twice
    await second;
    expect(order).toEqual(['solve 8', 'lift', 'solve 8']);
    // A solve that fails frees its slot at once.
    const failing = gate.held(async () => {
      throw new Error('boom');
    });
    await expect(failing.run({ op: 'block-eigen', block: new Float64Array(0), m: 64, k: 8 })).rejects.toThrow('boom');
    await gate.wrap(run)({ op: 'block-eigen', block: new Float64Array(0), m: 64, k: 8 });
  });

  it('a block above 0.6·m is solved by the dense decomposition cut to k: its top k pairs exactly', async () => {
    expect([blockSolver(4096, 2457), blockSolver(4096, 2458), blockSolver(4096, 4096), blockSolver(p - 1, 8)]).toEqual([
      'randomized',
      'dense-truncated',
      'dense',
      'dense-truncated',
    ]);
    expect([blockSolver(p, 230), blockSolver(p, 231), blockSolver(p, p - 1)]).toEqual(['randomized', 'dense-truncated', 'dense-truncated']);
    // The memory plan's working set follows the solver: the sketch's below, eight blocks above.
    const l = 2457 + 246;
    expect(blockEigenBytes(4096, 2457)).toBe(8 * 4096 ** 2 + 32 * l * 4096 + 24 * l * l);
    expect(blockEigenBytes(4096, 2458)).toBe(64 * 4096 ** 2);
    const base = await job(8);
    const k = p - 40;
    const e = await blockEigen({ block: base.cov!.slice(), m: p, k }, 1);
    expect(e.solver).toBe('dense-truncated');
    const d = await symmetricEigenAsync(base.cov!, p, { threads: 1 });
    expect(Array.from(e.values)).toEqual(Array.from(d.values.subarray(0, k)));
    expect(e.W.length).toBe(p * k);
    for (let i = 0; i < p; i++)
      for (let c = 0; c < k; c++) if (e.W[i * k + c] !== d.vectors[i * p + c]) expect.unreachable(`W[${i}, ${c}]`);
  });

  it('above 0.6p the dense decomposition is cut to maxRank', async () => {
    const k = p - 10;
    const j = await job(4, k);
    const out = await fitBasisTables(j);
    expect(out.solver).toBe('dense-truncated');
    expect([out.tables.features, out.tables.dim]).toEqual([p, k]);
    const d = await symmetricEigenAsync(j.cov, p); // the same solver, so the same bits
    expect(Array.from(out.tables.values)).toEqual(Array.from(d.values.subarray(0, k)));
    for (let i = 0; i < p; i++)
      for (let c = 0; c < k; c++) if (out.tables.vectors[i * k + c] !== d.vectors[i * p + c]) expect.unreachable(`vectors[${i}, ${c}]`);
  });

  it('rejects a maxRank that is not a positive integer', async () => {
    const j = await job(3, 0);
    await expect(fitBasisTables(j)).rejects.toThrow(/maxRank \(0\) must be an integer >= 1/);
  });
});
