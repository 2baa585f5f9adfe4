// Tested by test/calibrate/calibrate.test.ts ("reports where the time goes") and test/calibrate/stage-times.test.ts.
/**
 * Wall-clock seconds by stage, as calibrate reports them: `lap(name)` adds the time since the
 * previous lap (or `restart()`) to `name`, so consecutive laps are disjoint spans of one run;
 * `add` records a span measured elsewhere (a stage interleaved with another).
 */
export interface StageTimer {
  readonly seconds: Record<string, number>;
  lap(name: string): void;
  add(name: string, seconds: number): void;
  /** Starts the next lap now (the time since the last lap is not counted anywhere). */
  restart(): void;
  /** Seconds since the timer was created. */
  total(): number;
}

export function stageTimer(now: () => number = () => performance.now()): StageTimer {
  const seconds: Record<string, number> = {};
  const t0 = now();
  let mark = t0;
  return {
    seconds,
    lap(name) {
      const t = now();
      seconds[name] = (seconds[name] ?? 0) + (t - mark) / 1000;
      mark = t;
    },
    add(name, s) {
      seconds[name] = (seconds[name] ?? 0) + s;
    },
    restart() {
      mark = now();
    },
    total: () => (now() - t0) / 1000,
  };
}
