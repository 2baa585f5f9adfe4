// The named steps of calibrate() (src/calibrate/calibrate.ts) and the three-way split, on the bundled model.
import { join } from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { cpSync, existsSync, readFileSync, writeFileSync } from 'node:fs';
import {
  allocateForRatio,
  basisStates,
  calibrate,
  captureCaches,
  captureFit,
  checkRatios,
  fitCandidate,
  groupingCandidates,
  twoLevelBytes,
  maxFeatureDim,
  fitTokensNeeded,
  underdeterminedBasis,
  underdeterminedWarning,
  unusedRankWarning,
  groupingCovarianceBytes,
  layerGroups,
  openModel,
  readSplit,
  type CalibrateResult,
} from '../../src/calibrate/calibrate.js';
import { blobSizeRatio } from '../../src/calibrate/measure.js';
import { stageTimer } from '../../src/calibrate/stage-times.js';
import { planBitsPerToken } from '../../src/codec/types.js';
import { ModelRunner } from '../../src/model/runner.js';
import { readCalibrationTokens, splitSequences } from '../../src/calibrate/sequences.js';
import { loadModel } from '../../src/model/load.js';
import { DEFAULT_CALIBRATION_DIR, DEFAULT_MODEL_DIR } from '../../src/paths.js';
import { readProfile } from '../../src/profile/read.js';
import { tempDir } from '../model/helpers.js';

const LLAMA_8B = { layers: 32, kvHeads: 8, headDim: 128 };
const STORIES = { layers: 5, kvHeads: 4, headDim: 8 };

describe('groupingCandidates', () => {
  it("'auto' tries one layer per basis, then 2, 4, … layers, then all; a fixed grouping is itself", () => {
    expect(groupingCandidates(STORIES, 'auto').fit).toEqual(['layer', 2, 4, 'all']);
    expect(groupingCandidates({ ...STORIES, layers: 1 }, 'auto').fit).toEqual(['layer']);
    expect(groupingCandidates({ ...STORIES, layers: 16 }, 'auto').fit).toEqual(['layer', 2, 4, 8, 'all']);
    expect(groupingCandidates(STORIES, 3)).toEqual({ fit: [3], skipped: [] });
    // A grouping asked for by name keeps its exact covariance where that fits in memory, even for
    // a model past TWO_LEVEL_MIN_FEATURES, and is fitted two-level beyond ...
    expect(groupingCandidates(LLAMA_8B, 'all', undefined, 64 * 2 ** 30)).toEqual({ fit: ['all'], skipped: [] });
    expect(groupingCandidates(LLAMA_8B, 'all', undefined, 12 * 2 ** 30)).toEqual({ fit: ['all'], skipped: [], sketched: ['all'] });
    expect(groupingCandidates(LLAMA_8B, 'layer', undefined, 64 * 2 ** 30)).toEqual({ fit: ['layer'], skipped: [] });
    // R×R sums and result per kind, plus the per-layer covariances: 2 × (2 × 8 × 4096² + 32 × 8 × 1024²).
    expect(twoLevelBytes(LLAMA_8B)).toBe(2 * (2 * 8 * 4096 ** 2 + 32 * 8 * 1024 ** 2));
    expect(twoLevelBytes(LLAMA_8B, 4096, false)).toBe(2 ** 30 / 2);
    // ... and a usage error naming both sizes only when even that does not fit.
    expect(() => groupingCandidates(LLAMA_8B, 'all', undefined, 2 ** 28)).toThrow(
      expect.objectContaining({
        code: 'USAGE',
        message: expect.stringMatching(
          /--grouping all needs 16\.0 GiB of float64 covariance, or 1\.0 GiB for the two-level fit .*p = 32768/,
        ),
      }),
    );
    // A lowered limit for fixed groupings (CalibrateOptions.covarianceBudget) sends them two-level too.
    expect(groupingCandidates(STORIES, 'all', undefined, undefined, { fixedCovarianceLimit: 1 }).sketched).toEqual(['all']);
    expect(groupingCandidates(STORIES, 'all')).toEqual({ fit: ['all'], skipped: [] });
  });

  it('fits multi-layer groupings two-level past the budget or TWO_LEVEL_MIN_FEATURES, and leaves out only what no memory holds', () => {
    // Llama 3 8B: p = 1024 per layer; all layers p = 32768 would need 2 × 8 × 32768² bytes = 16 GiB.
    expect(groupingCovarianceBytes(LLAMA_8B, 'all')).toBe(2 * 8 * 32768 ** 2);
    const c = groupingCandidates(LLAMA_8B, 'auto', undefined, 12 * 2 ** 30);
    expect(c.fit).toEqual(['layer', 2, 4, 8, 16, 'all']);
    expect(c.sketched).toEqual(['2', '4', '8', '16', 'all']);
    expect(c.skipped).toEqual([]);
    // One reduction serves them all: 512 MiB beyond the 'layer' covariances (512 MiB).
    const tight = groupingCandidates(LLAMA_8B, 'auto', undefined, 0.75 * 2 ** 30);
    expect(tight.fit).toEqual(['layer']);
    expect(tight.skipped.map((g) => g.grouping)).toEqual(['2', '4', '8', '16', 'all']);
    expect(groupingCandidates(LLAMA_8B, 'auto', undefined, 2 ** 30).sketched).toEqual(['2', '4', '8', '16', 'all']);
    // Fit tokens: 2p for the per-layer bases, 2R for the two-level ones (R = 4096 reduced columns),
    // so the default 16,384 fit tokens suffice for 'all' on 8B.
    expect(maxFeatureDim(LLAMA_8B, c)).toBe(4096);
    expect(maxFeatureDim(LLAMA_8B, c.fit)).toBe(32768);
    expect(maxFeatureDim(LLAMA_8B, c, 12288)).toBe(12288);
  });

  it('names the widest basis with more columns than the fit has vectors, and needs no more fit text than --tokens asks for', () => {
    const c = groupingCandidates(LLAMA_8B, 'auto', undefined, 12 * 2 ** 30);
    // Two-level: the all-layer bases have R reduced columns; per-layer ones p = 1024.
    expect(underdeterminedBasis(LLAMA_8B, c, 16380)).toBeUndefined();
    expect(underdeterminedBasis(LLAMA_8B, c, 4096)).toEqual({
      grouping: 'all',
      kinds: ['key', 'value'],
      columns: 4096,
      twoLevel: true,
      fit_vectors: 4096,
    });
    expect(underdeterminedBasis(LLAMA_8B, c, 4097)).toBeUndefined();
    const u = underdeterminedBasis(LLAMA_8B, c, 4092, 6000)!;
    expect(u).toMatchObject({ grouping: 'all', columns: 6000, twoLevel: true });
    const w = underdeterminedWarning(u, '--tokens');
    expect(w).toMatch(/all-layer key and value bases have up to 6,000 reduced columns/);
    expect(w).toMatch(/at most 4,091 of their components carry fit variance/);
    expect(w).toMatch(/at least 12,000 tokens/);
    expect(w).toMatch(/--two-level-rank to 2,046/);
    // Exact covariances: p_G features; only the per-layer candidate.
    const layer = groupingCandidates(LLAMA_8B, 'layer');
    expect(underdeterminedBasis(LLAMA_8B, layer, 1024)).toMatchObject({ grouping: 'layer', columns: 1024, twoLevel: false });
    expect(underdeterminedWarning(underdeterminedBasis(LLAMA_8B, layer, 1000)!, 'dump')).toMatch(
      /per-layer key and value bases have 1,024 features .* at least 2,048 tokens \(dump more sequences/,
    );
    expect(underdeterminedBasis(LLAMA_8B, layer, 1025)).toBeUndefined();
    // --two-level-rank given where no basis is fitted two-level changed nothing, and says so.
    expect(unusedRankWarning(undefined, layer)).toEqual([]);
    expect(unusedRankWarning(6000, c)).toEqual([]);
    expect(unusedRankWarning(100, groupingCandidates(STORIES, 'auto'))).toEqual([
      expect.stringMatching(
        /^--two-level-rank 100 changed nothing: no basis of this run is fitted two-level \(groupings fitted: layer, 2, 4, all\)/,
      ),
    ]);
    // The data must give twice the widest basis, or the --tokens asked for when less (never under 256).
    expect(fitTokensNeeded(4096, 16384)).toBe(8192);
    expect(fitTokensNeeded(4096, 4096)).toBe(4096);
    expect(fitTokensNeeded(100, 4096)).toBe(256);
    expect(fitTokensNeeded(4096, 128)).toBe(256);
    // A model at TWO_LEVEL_MIN_FEATURES keeps exact covariances while they fit the budget
    // (8 layers × 1024: layer 128 MiB, 2 256 MiB, 4 512 MiB, all 1 GiB), two-level beyond.
    const mid = { layers: 8, kvHeads: 8, headDim: 128 };
    expect(groupingCandidates(mid, 'auto').sketched).toBeUndefined();
    const midTight = groupingCandidates(mid, 'auto', 2 ** 29);
    expect(midTight.fit).toEqual(['layer', 2, 4, 'all']);
    expect(midTight.sketched).toEqual(['4', 'all']);
    // One layer per basis is always fitted with its covariance, whatever the budget.
    const one = groupingCandidates(LLAMA_8B, 'auto', 1, 0);
    expect(one.fit).toEqual(['layer']);
    expect(one.sketched).toBeUndefined();
  });

  it('layerGroups covers every layer once, in order', () => {
    for (const g of ['layer', 2, 3, 'all'] as const) {
      expect(layerGroups(5, g).flat()).toEqual([0, 1, 2, 3, 4]);
    }
    expect(layerGroups(5, 2)).toEqual([[0, 1], [2, 3], [4]]);
  });
});

describe('checkRatios', () => {
  it('refuses ratios out of range as usage errors', () => {
    expect(() => checkRatios([1.2])).toThrow(/out of range/);
    expect(() => checkRatios([20, 65])).toThrow(
      expect.objectContaining({ code: 'USAGE', fix: expect.stringMatching(/between 1.5 and 64/) }),
    );
    expect(() => checkRatios([Number.NaN])).toThrow();
    expect(() => checkRatios([2, 20])).not.toThrow();
  });
});

describe('the three-way split', () => {
  it('gives fit, tuning and report sequences that share no sequence, and the two-way split when there is no report', async () => {
    const model = await loadModel(DEFAULT_MODEL_DIR);
    try {
      const d = await readCalibrationTokens([DEFAULT_CALIBRATION_DIR], model.tokenizer, {
        fitTokens: 8192,
        heldoutTokens: 2048,
        reportTokens: 4096,
      });
      const opts = { seqLen: 512, fitTokens: 8192, heldoutTokens: 2048, seed: 3, minFitTokens: 256, sources: 'x' };
      const s = splitSequences(d.tokens, model.tokenizer.bosTokenId, { ...opts, reportTokens: 4096 });
      expect([s.fit.length, s.heldout.length, s.report.length]).toEqual([16, 4, 8]);
      const key = (q: number[]) => q.join(',');
      const sets = [s.fit, s.heldout, s.report].map((x) => new Set(x.map(key)));
      expect(sets[0].size + sets[1].size + sets[2].size).toBe(28);
      for (const q of s.report) {
        expect(sets[0].has(key(q))).toBe(false);
        expect(sets[1].has(key(q))).toBe(false);
      }
      for (const q of s.heldout) expect(sets[0].has(key(q))).toBe(false);
      // Without a report split, fit and tuning are those of the two-way split of the same seed (Dynamo's calibration uses it).
      const two = splitSequences(d.tokens, model.tokenizer.bosTokenId, opts);
      expect(two.report).toEqual([]);
      expect(two.heldout).toEqual(s.heldout);
      // Too little text names the report split in what it needs.
      expect(() => splitSequences(d.tokens.slice(0, 6000), model.tokenizer.bosTokenId, { ...opts, reportTokens: 4096 })).toThrow(
        /held out for the report/,
      );
    } finally {
      await model.session.release();
    }
  });
});

describe('calibrate --grouping auto on the bundled model', () => {
  let result: CalibrateResult;
  let out: string;
  beforeAll(async () => {
    out = join(tempDir('kvtc-auto-'), 'p');
    result = await calibrate({
      modelDir: DEFAULT_MODEL_DIR,
      data: [DEFAULT_CALIBRATION_DIR],
      ratios: [4, 20],
      ratiosGiven: true,
      tokens: 4096,
      heldout: 2048,
      report: 2048,
      sink: 4,
      window: 128,
      grouping: 'auto',
      chunk: 256,
      seed: 0,
      device: 'cpu',
      out,
      force: false,
    });
  }, 120_000);

  it('fits every candidate and keeps, per ratio, the one with the smallest tuning-split error', () => {
    expect(result.groupings).toEqual(['layer', '2', '4', 'all']);
    // 4,096 fit tokens for bases of at most 160 features, no --two-level-rank: nothing to warn of.
    expect(result.warnings).toEqual([]);
    for (const p of result.profiles) {
      expect(p.grouping_candidates.map((c) => c.grouping)).toEqual(result.groupings);
      const score = (c: { rel_error: { key: number; value: number } }) => (c.rel_error.key + c.rel_error.value) / 2;
      const best = [...p.grouping_candidates].sort((a, b) => score(a) - score(b))[0];
      expect(p.grouping).toBe(best.grouping);
      const chosen = p.grouping_candidates.find((c) => c.grouping === p.grouping)!;
      // The candidate's tuning figures are the chosen profile's tuning figures.
      expect(chosen.rel_error.key).toBeCloseTo(p.tuning_rel_error.key, 12);
      // Every candidate lands on the target on the tuning split (the budget-scale search).
      for (const c of p.grouping_candidates) expect(Math.abs(c.ratio_compressed / p.ratio_target - 1)).toBeLessThan(0.05);
    }
  });

  it('reports on the report split, with a 95% interval around the figure, and records where every figure came from', async () => {
    expect(result.report_tokens).toBe(2048);
    expect(result.heldout_tokens).toBe(2048);
    for (const p of result.profiles) {
      for (const [x, ci] of [
        [p.rel_error.key, p.rel_error.key_ci95],
        [p.rel_error.value, p.rel_error.value_ci95],
      ] as const) {
        expect(ci).toBeDefined();
        expect(ci![0]).toBeLessThanOrEqual(x);
        expect(ci![1]).toBeGreaterThanOrEqual(x);
        expect(ci![1]).toBeGreaterThan(ci![0]);
      }
      expect(p.clip_ranges.tuned + p.clip_ranges.min_max).toBeGreaterThan(0);
      const m = (await readProfile(p.profile)).manifest;
      expect(m.measured.split).toBe('report');
      expect(m.calibration.tokens_report).toBe(2048);
      expect(m.settings.grouping).toBe(p.grouping);
      expect(m.settings.grouping_requested).toBe('auto');
      expect(m.settings.report).toBe(2048);
      expect(m.calibration.grouping_candidates!.map((c) => c.grouping)).toEqual(result.groupings);
      expect(m.measured.rel_error.key_mean).toBeCloseTo(p.rel_error.key, 5);
      expect(m.measured.rel_error.key_mean_ci95![0]).toBeLessThanOrEqual(m.measured.rel_error.key_mean);
      expect(m.measured.tuning_rel_error!.value_mean).toBeCloseTo(p.tuning_rel_error.value, 5);
    }
  });
});

describe('the steps one by one, on the bundled model', () => {
  it('openModel → readSplit → captureFit → captureCaches → fitCandidate → allocateForRatio, each doing what it says', async () => {
    const opts = {
      modelDir: DEFAULT_MODEL_DIR,
      data: [DEFAULT_CALIBRATION_DIR],
      ratios: [8],
      tokens: 2048,
      heldout: 1024,
      report: 1024,
      sink: 4,
      window: 128,
      grouping: 2 as const,
      chunk: 256,
      seed: 0,
      device: 'cpu' as const,
      out: join(tempDir('kvtc-steps-'), 'p'),
      force: false,
    };
    const { model } = await openModel(opts);
    try {
      const spec = model.spec;
      const { split, seqLen } = await readSplit(opts, spec, model.tokenizer, [2], () => {});
      expect(seqLen).toBe(512);
      expect([split.fit.length, split.heldout.length, split.report.length]).toEqual([4, 2, 2]);
      const runner = new ModelRunner(model);
      const states = await basisStates(spec, 2, 'cpu');
      // Layers [0,1], [2,3], [4]; keys and values.
      expect(states.map((s) => `${s.kind}:${s.layers.join(',')}:${s.dim}`)).toEqual([
        'key:0,1:64',
        'value:0,1:64',
        'key:2,3:64',
        'value:2,3:64',
        'key:4:32',
        'value:4:32',
      ]);
      const timer = stageTimer();
      let last = 0;
      const rope = await captureFit(runner, spec, split.fit, [states], {
        sink: 4,
        chunk: 256,
        progress: (e) => {
          last = e.done ?? last;
        },
        timer,
      });
      // The RoPE read from the config was checked against the keys, and fits them.
      expect(rope.checked).toBe(true);
      expect(rope.pairs).toBeGreaterThan(0);
      // Every fit token but the sink went into every covariance, and the progress counted the tokens.
      for (const s of states) expect(s.acc.count).toBe(4 * (512 - 4));
      expect(last).toBe(4 * 512);
      expect(timer.seconds.forward).toBeGreaterThan(0);
      expect(timer.seconds.covariance).toBeGreaterThan(0);
      const tuning = await captureCaches(runner, split.heldout, 'tuning', { chunk: 256, progress: () => {} });
      expect(tuning.map((c) => c.tokens)).toEqual([512, 512]);
      const fitted = await fitCandidate(spec, states, tuning, 4, [8]);
      expect(fitted.tables).toHaveLength(6);
      for (const [i, t] of fitted.tables.entries()) {
        expect(t.tokens).toBe(2 * (512 - 4));
        expect(t.dim).toBe(states[i].dim);
        expect(t.kind).toBe(states[i].kind);
      }
      const dims = states.map((s) => s.dim);
      const { plans, scale } = allocateForRatio(fitted.tables, dims, 8, tuning, spec, 4, 128, 'deflate-rle');
      // The search lands on the target on the tuning caches, and every plan keeps to its scaled budget.
      expect(Math.abs(scale.ratio / 8 - 1)).toBeLessThan(0.02);
      expect(blobSizeRatio(plans, fitted.tables, tuning, spec, 4, 128, 'deflate-rle')).toBeCloseTo(scale.ratio, 12);
      for (const [i, p] of plans.entries()) expect(planBitsPerToken(p)).toBeLessThanOrEqual(Math.floor(((16 * dims[i]) / 8) * scale.scale));
    } finally {
      await model.session.release();
    }
  }, 120_000);
});

describe('calibrate checks the RoPE it read against the keys', () => {
  it('a config whose rope_theta contradicts the graph is refused with ROPE_MISMATCH naming theta, and nothing is written', async () => {
    const dir = join(tempDir('kvtc-badrope-'), 'model');
    cpSync(DEFAULT_MODEL_DIR, dir, { recursive: true });
    const cfg = JSON.parse(readFileSync(join(dir, 'config.json'), 'utf8'));
    writeFileSync(join(dir, 'config.json'), JSON.stringify({ ...cfg, rope_theta: 10 * (cfg.rope_theta ?? 10000) }));
    const out = join(tempDir('kvtc-badrope-'), 'p');
    await expect(
      calibrate({
        modelDir: dir,
        data: [DEFAULT_CALIBRATION_DIR],
        ratios: [8],
        tokens: 1024,
        heldout: 512,
        report: 512,
        sink: 4,
        window: 128,
        grouping: 'layer',
        chunk: 256,
        seed: 0,
        device: 'cpu',
        out,
        force: false,
      }),
    ).rejects.toMatchObject({ code: 'ROPE_MISMATCH', message: expect.stringMatching(/theta/) });
    expect(existsSync(out)).toBe(false);
  }, 60_000);
});
