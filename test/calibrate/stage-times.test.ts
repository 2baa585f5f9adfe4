import { describe, expect, it } from 'vitest';
import { stageTimer } from '../../src/calibrate/stage-times.js';

describe('stageTimer', () => {
  it('laps are disjoint spans that add up; restart skips time; add records a span measured elsewhere', () => {
    let t = 1000;
    const timer = stageTimer(() => t);
    t += 500;
    timer.lap('load');
    t += 250;
    timer.lap('forward');
    t += 100;
    timer.restart(); // 100 ms counted nowhere
    t += 1000;
    timer.lap('forward');
    timer.add('covariance', 0.125);
    expect(timer.seconds).toEqual({ load: 0.5, forward: 1.25, covariance: 0.125 });
    expect(timer.total()).toBeCloseTo(1.85, 12);
  });
});
