/**
 * The 95% intervals kvtc evaluate prints next to perplexity (paired block bootstrap,
 * src/evaluate/perplexity-interval.ts), KL and agreement (bootstrap over questions,
 * src/evaluate/summary.ts): against a direct computation on synthetic data, their invariants,
 * the fallback for journals written before per-block NLLs were recorded, and a real run on the
 * bundled model.
 */
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { memoryIO } from '../../src/cli/io.js';
import { main } from '../../src/cli/main.js';
import { evaluate } from '../../src/evaluate/evaluate.js';
import { configHash, EvaluationJournal } from '../../src/evaluate/journal.js';
import { blockSums, bootstrapPerplexity, PERPLEXITY_BLOCK_TOKENS, type NllUnit } from '../../src/evaluate/perplexity-interval.js';
import { combinePerplexity, rowKl, type PerplexityPlan } from '../../src/evaluate/perplexity.js';
import type { PerplexityWindow, QuestionRecord } from '../../src/evaluate/records.js';
import { renderMarkdown } from '../../src/evaluate/report.js';
import { klDivergence, mulberry32, pairedBootstrapDelta } from '../../src/evaluate/stats.js';
import { summarize } from '../../src/evaluate/summary.js';
import { sweepRows } from '../../src/evaluate/sweep.js';

const root = mkdtempSync(join(tmpdir(), 'kvtc-ppl-ci-'));
afterAll(() => rmSync(root, { recursive: true, force: true }));

/** Per-token NLLs with correlated neighbours: an AR(1) around `level` (nats), as text's hard passages give. */
function nllSeries(n: number, seed: number, level = 3): Float64Array {
  const rng = mulberry32(seed);
  const out = new Float64Array(n);
  let e = 0;
  for (let i = 0; i < n; i++) {
    e = 0.8 * e + (rng() - 0.5);
    out[i] = Math.max(0.01, level + e);
  }
  return out;
}

/** Windows of `scored` tokens each, with a codec that adds `extra` nats to every token's NLL. */
function syntheticWindows(windows: number, scored: number, seed: number, extra: number): PerplexityWindow[] {
  return Array.from({ length: windows }, (_, w) => {
    const base = nllSeries(scored, seed + w);
    const codec = base.map((x) => x + extra);
    const sum = (xs: Float64Array) => xs.reduce((a, b) => a + b, 0);
    return {
      index: w,
      scored,
      cacheTokens: 3 * scored - 1,
      baselineNll: sum(base),
      blockTokens: PERPLEXITY_BLOCK_TOKENS,
      baselineBlockNll: blockSums(base, PERPLEXITY_BLOCK_TOKENS),
      codecs: {
        same: { nll: sum(base), compressedTokens: 10, blockNll: blockSums(base, PERPLEXITY_BLOCK_TOKENS) },
        worse: { nll: sum(codec), compressedTokens: 10, blockNll: blockSums(codec, PERPLEXITY_BLOCK_TOKENS) },
      },
    };
  });
}

const plan = (windows: number, scored: number): PerplexityPlan => ({ ids: [], windows, window: 4 * scored, context: 3 * scored });

/** The percentile bootstrap written out directly: sort, then NumPy's linear quantile. */
function directInterval(
  units: readonly NllUnit[],
  seed: number,
  resamples: number,
  stat: (b: number, c: number) => number,
): [number, number] {
  const rng = mulberry32(seed);
  const xs: number[] = [];
  for (let r = 0; r < resamples; r++) {
    let t = 0;
    let b = 0;
    let c = 0;
    for (let i = 0; i < units.length; i++) {
      const u = units[Math.floor(rng() * units.length)];
      t += u.tokens;
      b += u.baseline;
      c += u.codecs[0];
    }
    xs.push(stat(Math.exp(b / t), Math.exp(c / t)));
  }
  xs.sort((p, q) => p - q);
  const q = (p: number) => {
    const pos = (xs.length - 1) * p;
    const lo = Math.floor(pos);
    return xs[lo] + (xs[Math.ceil(pos)] - xs[lo]) * (pos - lo);
  };
  return [q(0.025), q(0.975)];
}

describe('perplexity block bootstrap', () => {
  it('sums blocks of consecutive tokens, the last one shorter', () => {
    expect(blockSums([1, 2, 3, 4, 5], 2)).toEqual([3, 7, 5]);
    expect(blockSums([], 32)).toEqual([]);
  });

  it('matches a direct computation of the paired percentile bootstrap', () => {
    const units: NllUnit[] = Array.from({ length: 37 }, (_, i) => {
      const b = nllSeries(32, 100 + i);
      const s = b.reduce((x, y) => x + y, 0);
      return { tokens: i === 36 ? 5 : 32, baseline: s, codecs: [s * (1 + 0.01 * Math.sin(i))] };
    });
    const ci = bootstrapPerplexity(units, { seed: 7, resamples: 2000 });
    const tol = (a: [number, number], b: [number, number]) => {
      expect(a[0]).toBeCloseTo(b[0], 10);
      expect(a[1]).toBeCloseTo(b[1], 10);
    };
    tol(
      ci.baseline,
      directInterval(units, 7, 2000, (b) => b),
    );
    tol(
      ci.codecs[0].delta,
      directInterval(units, 7, 2000, (b, c) => c - b),
    );
    tol(
      ci.codecs[0].deltaPercent,
      directInterval(units, 7, 2000, (b, c) => 100 * (c / b - 1)),
    );
  });

  it('gives point estimates of exp(mean NLL) with intervals around them, exactly [0, 0] for an identical codec', () => {
    const ws = syntheticWindows(4, 128, 1, 0.05);
    const r = combinePerplexity(plan(4, 128), ws, ['same', 'worse'], { seed: 3 });
    const all = ws.flatMap((w) => [...nllSeries(128, 1 + w.index)]);
    const direct = Math.exp(all.reduce((a, b) => a + b, 0) / all.length);
    expect(r.baseline.perplexity).toBeCloseTo(direct, 10);
    expect(r.interval).toMatchObject({ method: 'block', block_tokens: 32, units: 16, seed: 3, note: null });
    const [lo, hi] = r.baseline.perplexity_ci95!;
    expect(lo).toBeLessThan(r.baseline.perplexity);
    expect(hi).toBeGreaterThan(r.baseline.perplexity);
    expect(r.codecs.same.delta).toBe(0);
    expect(r.codecs.same.delta_ci95).toEqual([0, 0]);
    expect(r.codecs.same.delta_percent_ci95).toEqual([0, 0]);
    // Every token +0.05 nats: Δ% is exactly 100·(e^0.05 − 1) in every resample.
    const w = r.codecs.worse;
    expect(w.delta_percent).toBeCloseTo(100 * Math.expm1(0.05), 9);
    expect(w.delta_percent_ci95![0]).toBeCloseTo(100 * Math.expm1(0.05), 9);
    expect(w.delta_percent_ci95![1]).toBeCloseTo(100 * Math.expm1(0.05), 9);
    expect(w.delta_ci95![0]).toBeLessThan(w.delta);
    expect(w.delta_ci95![1]).toBeGreaterThan(w.delta);
  });

  it('shrinks with more blocks', () => {
    const width = (windows: number) => {
      const r = combinePerplexity(plan(windows, 128), syntheticWindows(windows, 128, 11, 0), ['same', 'worse'], { resamples: 4000 });
      return r.baseline.perplexity_ci95![1] - r.baseline.perplexity_ci95![0];
    };
    const few = width(4);
    const many = width(64);
    // 16x the blocks: about 1/4 the width; at least half as wide is a safe margin.
    expect(many).toBeLessThan(few / 2);
  });

  it('falls back to whole windows for journals without blocks, and to no interval (with why) for one window', () => {
    const strip = (w: PerplexityWindow): PerplexityWindow => ({
      index: w.index,
      scored: w.scored,
      cacheTokens: w.cacheTokens,
      baselineNll: w.baselineNll,
      codecs: Object.fromEntries(Object.entries(w.codecs).map(([k, c]) => [k, { nll: c.nll, compressedTokens: c.compressedTokens }])),
    });
    const ws = syntheticWindows(3, 128, 5, 0.02);
    // One window from an old journal among new ones: the whole run falls back.
    const mixed = combinePerplexity(plan(3, 128), [strip(ws[0]), ws[1], ws[2]], ['same', 'worse']);
    expect(mixed.interval).toMatchObject({ method: 'window', block_tokens: null, units: 3 });
    expect(mixed.interval.note).toMatch(/no per-block NLLs/);
    expect(mixed.codecs.same.delta_ci95).toEqual([0, 0]);
    const [lo, hi] = mixed.baseline.perplexity_ci95!;
    expect(lo).toBeLessThanOrEqual(mixed.baseline.perplexity);
    expect(hi).toBeGreaterThanOrEqual(mixed.baseline.perplexity);
    const one = combinePerplexity(plan(1, 128), [strip(ws[0])], ['same', 'worse']);
    expect(one.interval.method).toBeNull();
    expect(one.interval.note).toMatch(/1 window: no interval/);
    expect(one.baseline.perplexity_ci95).toBeNull();
    expect(one.codecs.worse.delta_ci95).toBeNull();
    expect(one.codecs.worse.delta).toBeGreaterThan(0);
  });

  it('reads back a perplexity journal line written before blocks were recorded', async () => {
    const path = join(root, 'old.jsonl');
    const config = { seed: 0, perplexity: { tokens: 1024, text: 'wiki.test.raw', text_sha256: 'x' } };
    const header = { format: 'kvtc-evaluate-journal', format_version: 1, config_hash: configHash(config), config };
    const old = {
      kind: 'perplexity',
      key: 'perplexity/0',
      window: { index: 0, scored: 128, cacheTokens: 383, baselineNll: 500.5, codecs: { int4: { nll: 510.25, compressedTokens: 251 } } },
      seconds: { wall: 1, prefill: 0, scoring: 0, codecs: {} },
    };
    writeFileSync(path, `${JSON.stringify(header)}\n${JSON.stringify(old)}\n`);
    const j = await EvaluationJournal.open(path, config);
    try {
      expect(j.resumed).toBe(1);
      const e = j.get('perplexity/0');
      expect(e?.kind === 'perplexity' && e.window).toEqual(old.window);
    } finally {
      j.close();
    }
  });
});

describe('KL and agreement intervals', () => {
  /** Questions where codec "b" flips some answers and perturbs every log-likelihood; "same" changes nothing. */
  function records(n: number): QuestionRecord[] {
    const rng = mulberry32(42);
    return Array.from({ length: n }, (_, i) => {
      const base = [0, 1, 2, 3].map(() => -2 * rng());
      const pert = base.map((x) => x + 0.6 * (rng() - 0.5));
      const arg = (xs: number[]) => xs.indexOf(Math.max(...xs));
      const outcome = (logLik: number[]) => ({ logLik, pred: arg(logLik), compressedTokens: 5, bytes: 10, compressedBytes: 5 });
      return {
        subject: i % 2 ? 'astronomy' : 'world_religions',
        index: i,
        gold: i % 4,
        promptTokens: 200,
        truncated: 0,
        cacheTokens: 199,
        baseline: { logLik: base, pred: arg(base) },
        codecs: { same: outcome([...base]), b: outcome(pert) },
      };
    });
  }

  it('bootstrap the same resampled questions as Δ, and match a direct computation', () => {
    const recs = records(80);
    const s = summarize(recs, ['same', 'b'], { seed: 5, resamples: 3000, bytesPerToken: 1 });
    const b = s.overall.codecs.b;
    const kls = recs.map((r) => klDivergence(r.baseline.logLik, r.codecs.b.logLik));
    const agree = recs.map((r) => (r.codecs.b.pred === r.baseline.pred ? 1 : 0));
    const rng = mulberry32(5);
    const klStats: number[] = [];
    const agStats: number[] = [];
    for (let r = 0; r < 3000; r++) {
      let k = 0;
      let a = 0;
      for (let i = 0; i < recs.length; i++) {
        const j = Math.floor(rng() * recs.length);
        k += kls[j];
        a += agree[j];
      }
      klStats.push(k / recs.length);
      agStats.push(a / recs.length);
    }
    const q = (xs: number[], p: number) => {
      const s2 = [...xs].sort((x, y) => x - y);
      const pos = (s2.length - 1) * p;
      const lo = Math.floor(pos);
      return s2[lo] + (s2[Math.ceil(pos)] - s2[lo]) * (pos - lo);
    };
    expect(b.kl_ci95[0]).toBeCloseTo(q(klStats, 0.025), 12);
    expect(b.kl_ci95[1]).toBeCloseTo(q(klStats, 0.975), 12);
    expect(b.agreement_ci95[0]).toBeCloseTo(q(agStats, 0.025), 12);
    expect(b.agreement_ci95[1]).toBeCloseTo(q(agStats, 0.975), 12);
    expect(b.kl_ci95[0]).toBeLessThan(b.kl);
    expect(b.kl_ci95[1]).toBeGreaterThan(b.kl);
    expect(b.agreement).toBeLessThan(1);
    expect(b.agreement_ci95[0]).toBeLessThan(b.agreement);
    // Δ's interval is the one pairedBootstrapDelta gives, unchanged by the added columns.
    const d = pairedBootstrapDelta(
      recs.map((r) => (r.baseline.pred === r.gold ? 1 : 0)),
      recs.map((r) => (r.codecs.b.pred === r.gold ? 1 : 0)),
      { seed: 5, resamples: 3000 },
    );
    expect(b.delta_ci95).toEqual([100 * d.lo, 100 * d.hi]);
    // An unchanged codec: KL 0 and agreement 1, with intervals of no width.
    expect(s.overall.codecs.same).toMatchObject({ kl: 0, kl_ci95: [0, 0], agreement: 1, agreement_ci95: [1, 1] });
    // Groups, subjects and compressed_only carry them too.
    for (const scope of [...Object.values(s.groups), ...Object.values(s.subjects)]) {
      const c = scope.codecs.b;
      expect(c.kl_ci95[0]).toBeLessThanOrEqual(c.kl);
      expect(c.kl_ci95[1]).toBeGreaterThanOrEqual(c.kl);
      expect(c.agreement_ci95[0]).toBeLessThanOrEqual(c.agreement);
      expect(c.agreement_ci95[1]).toBeGreaterThanOrEqual(c.agreement);
    }
    expect(b.compressed_only?.agreement_ci95).toEqual(b.agreement_ci95);
  });
});

describe('rowKl (next-token KL over the vocabulary)', () => {
  /** Independent reference: float64 softmax arrays, KL = Σ p log(p / q). */
  const reference = (a: Float32Array, b: Float32Array) => {
    const soft = (x: Float32Array) => {
      const m = Math.max(...x);
      const e = Array.from(x, (v) => Math.exp(v - m));
      const z = e.reduce((s, v) => s + v, 0);
      return e.map((v) => v / z);
    };
    const p = soft(a);
    const q = soft(b);
    return p.reduce((s, pi, i) => (pi > 0 ? s + pi * Math.log(pi / q[i]) : s), 0);
  };
  it('matches a direct computation, is 0 exactly on equal rows, and compares the argmax', () => {
    const rng = mulberry32(11);
    for (let t = 0; t < 20; t++) {
      const n = 50 + t * 37;
      const a = Float32Array.from({ length: n }, () => 8 * (rng() - 0.5));
      const b = Float32Array.from(a, (v) => v + (t % 5) * 0.3 * (rng() - 0.5));
      const r = rowKl(a, b);
      expect(r.kl).toBeCloseTo(reference(a, b), 10);
      expect(r.top1).toBe(a.indexOf(Math.max(...a)) === b.indexOf(Math.max(...b)));
      expect(rowKl(a, Float32Array.from(a))).toEqual({ kl: 0, top1: true });
    }
    // Large logits (Gemma's soft-capped rows reach ±30) do not overflow.
    const big = Float32Array.from([30, -30, 29.5, 0]);
    const moved = Float32Array.from([29.5, -30, 30, 0]);
    expect(rowKl(big, moved).kl).toBeCloseTo(reference(big, moved), 10);
    expect(rowKl(big, moved).top1).toBe(false);
  });
});

describe('intervals on a real run of the bundled model', () => {
  it('are finite and contain their point estimates; --perplexity-window gives several windows; a journal without blocks still resumes', async () => {
    const journal = join(root, 'run.jsonl');
    const options = {
      subjects: 'world_religions',
      limit: 6,
      shots: 0,
      codecs: ['int4' as const, 'identity' as const],
      perplexityTokens: 2048,
      perplexityWindow: 256,
      longContext: 1,
      longContextTokens: 256,
      seed: 1,
      journal,
    };
    const { result: r } = await evaluate(options);
    const within = (x: number, ci: [number, number] | null | undefined) => {
      expect(ci).not.toBeNull();
      expect(ci!.every(Number.isFinite)).toBe(true);
      expect(ci![0]).toBeLessThanOrEqual(x);
      expect(ci![1]).toBeGreaterThanOrEqual(x);
    };
    for (const scope of [r.summary.overall, r.longContext!.overall]) {
      within(scope.codecs.int4.kl, scope.codecs.int4.kl_ci95);
      within(scope.codecs.int4.agreement, scope.codecs.int4.agreement_ci95);
      expect(scope.codecs.identity).toMatchObject({ kl: 0, kl_ci95: [0, 0], agreement: 1, agreement_ci95: [1, 1] });
    }
    const p = r.perplexity!;
    // 256-token windows: 192 prefilled, 64 scored = 2 blocks each.
    expect(p).toMatchObject({ windows: 8, window: 256, context: 192, scored_tokens: 512 });
    expect(p.interval).toMatchObject({ method: 'block', block_tokens: 32, units: 16, seed: 1 });
    within(p.baseline.perplexity, p.baseline.perplexity_ci95);
    within(p.codecs.int4.delta, p.codecs.int4.delta_ci95);
    within(p.codecs.int4.delta_percent, p.codecs.int4.delta_percent_ci95);
    expect(p.codecs.identity.delta_ci95).toEqual([0, 0]);
    // Next-token KL and top-1 agreement over the whole vocabulary, paired with the same blocks.
    expect(p.codecs.identity).toMatchObject({
      next_token_kl: 0,
      next_token_kl_ci95: [0, 0],
      top1_agreement: 1,
      top1_agreement_ci95: [1, 1],
    });
    expect(p.codecs.int4.next_token_kl).toBeGreaterThan(0);
    within(p.codecs.int4.next_token_kl!, p.codecs.int4.next_token_kl_ci95);
    within(p.codecs.int4.top1_agreement!, p.codecs.int4.top1_agreement_ci95);
    expect(p.codecs.int4.top1_agreement).toBeGreaterThan(0.5);
    expect(p.codecs.int4.top1_agreement).toBeLessThanOrEqual(1);
    expect(r.settings.perplexityWindow).toBe(256);
    const md = renderMarkdown(r);
    expect(md).toContain('Δ % [95% CI]');
    expect(md).toContain('paired block bootstrap: 16 blocks of 32 consecutive scored tokens');
    expect(md).toContain('next-token KL (nats) [95% CI]');
    const row = sweepRows(r).find((x) => x.codec === 'int4')!;
    expect(row.perplexity_delta_ci95).toEqual(p.codecs.int4.delta_ci95);
    expect(row.next_token_kl_ci95).toEqual(p.codecs.int4.next_token_kl_ci95);
    expect(row.kl_ci95).toEqual(r.summary.overall.codecs.int4.kl_ci95);

    // The journal as a build from before blocks would have written it: resumed, the same point
    // figures, and the perplexity interval falls back to whole windows.
    const lines = readFileSync(journal, 'utf8').split('\n').filter(Boolean);
    const header = JSON.parse(lines[0]);
    expect(header.config.perplexity).toMatchObject({ window: 256 });
    const old = lines.map((l, i) => {
      if (i === 0) return l;
      const e = JSON.parse(l);
      if (e.kind !== 'perplexity') return l;
      delete e.window.blockTokens;
      delete e.window.baselineBlockNll;
      for (const c of Object.values(e.window.codecs) as { blockNll?: number[]; blockKl?: number[]; blockTop1?: number[] }[]) {
        delete c.blockNll;
        delete c.blockKl;
        delete c.blockTop1;
      }
      return JSON.stringify(e);
    });
    writeFileSync(journal, `${old.join('\n')}\n`);
    const again = await evaluate(options);
    expect(again.journal?.resumed).toBe(lines.length - 1);
    const q = again.result.perplexity!;
    expect(q.baseline.perplexity).toBe(p.baseline.perplexity);
    expect(q.interval).toMatchObject({ method: 'window', units: 8 });
    within(q.codecs.int4.delta, q.codecs.int4.delta_ci95);
    expect(again.result.summary.overall.codecs.int4.kl_ci95).toEqual(r.summary.overall.codecs.int4.kl_ci95);
    expect(renderMarkdown(again.result)).toMatch(/whole windows were resampled/);
    // Such a journal recorded no next-token KL: null, and the report says so instead of a number.
    expect(q.codecs.int4).toMatchObject({ next_token_kl: null, next_token_kl_ci95: null, top1_agreement: null });
    expect(renderMarkdown(again.result)).toContain('not recorded');
  }, 300_000);

  it('kvtc evaluate --perplexity-window below 64 is a usage error naming the option', async () => {
    const io = memoryIO();
    const code = await main(['node', 'kvtc', 'evaluate', '--perplexity-window', '32', '--limit', '1', '--quiet'], io);
    expect(code).toBe(2);
    expect(io.stderr.join('\n')).toMatch(/perplexity-?window/i);
  });

  it('refuses a --perplexity-window beyond the model before scoring anything', async () => {
    await expect(evaluate({ subjects: 'world_religions', limit: 1, codecs: ['int4'], perplexityWindow: 4096 })).rejects.toMatchObject({
      code: 'USAGE',
      message: expect.stringContaining('--perplexity-window 4096'),
    });
  });
});
