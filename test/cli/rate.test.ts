/**
 * Rates as kvtc prints them (src/progress.ts fmtRate, used by progress lines and evaluate's
 * speed): a 26-second MMLU question used to read "0.0 questions/s".
 */
import { describe, expect, it } from 'vitest';
import { createProgress, progressText } from '../../src/cli/progress.js';
import { fmtRate } from '../../src/progress.js';

describe('fmtRate', () => {
  it('picks per second, per minute or per hour, two significant digits below 10', () => {
    expect(fmtRate(250, 'tokens')).toBe('250 tokens/s');
    expect(fmtRate(3.14159, 'q')).toBe('3.1 q/s');
    expect(fmtRate(1 / 26, 'questions')).toBe('2.3 questions/min');
    expect(fmtRate(0.5, 'q')).toBe('30 q/min');
    expect(fmtRate(1 / 600, 'bases')).toBe('6.0 bases/h');
    expect(fmtRate(0, 'q')).toBe('0 q/s');
  });

  it('is what a progress line shows', () => {
    expect(progressText({ stage: 'MMLU', done: 3, total: 10, unit: 'q' }, 78)).toBe('MMLU 3/10 q · 2.3 q/min · 30% · ETA 3m02s');
  });

  it('leaves items resumed from a journal out of the rate and the ETA', () => {
    // 82 questions read from the journal in a blink, 2 scored in 52 s: 2.3 q/min, not 97 q/min.
    expect(progressText({ stage: 'MMLU', done: 84, total: 100, unit: 'q', resumed: 82 }, 52)).toBe(
      'MMLU 84/100 q · 2.3 q/min · 84% · ETA 6m56s',
    );
    expect(progressText({ stage: 'MMLU', done: 82, total: 100, unit: 'q', resumed: 82 }, 1)).toBe('MMLU 82/100 q');
  });

  it("keeps a stage's clock when another stage interleaves with it (a basis finishing during the next eigensolve)", () => {
    let t = 0;
    const lines: string[] = [];
    const p = createProgress({ out: () => {}, err: (x) => lines.push(x), interactive: false }, { now: () => t });
    const solve = 'eigensolve: Householder reduction';
    p.fn({ stage: solve, done: 0, total: 300, unit: 'GFLOP' });
    t = 10_000;
    p.fn({ stage: 'fitting bases', done: 1, total: 2, unit: 'bases' });
    t = 20_000;
    p.fn({ stage: solve, done: 60, total: 300, unit: 'GFLOP' });
    // 60 GFLOP in the 20 s since the solve began: 3.0 GFLOP/s, ETA 80 s (not 60 GFLOP in 10 s).
    expect(lines.at(-1)).toBe('[kvtc] eigensolve: Householder reduction 60/300 GFLOP · 3.0 GFLOP/s · 20% · ETA 1m20s');
  });
});
