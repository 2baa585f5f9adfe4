// Tested by test/cli/contract.test.ts.
import ora, { type Ora } from 'ora';
import { fmtRate, type ProgressEvent, type ProgressFn } from '../progress.js';
import type { CliIO } from './io.js';

function fmtDuration(s: number): string {
  if (!Number.isFinite(s)) return '?';
  if (s < 60) return `${s.toFixed(0)}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m${String(Math.round(s % 60)).padStart(2, '0')}s`;
  return `${Math.floor(s / 3600)}h${String(Math.floor((s % 3600) / 60)).padStart(2, '0')}m`;
}

/** One line of progress: stage, done/total, rate, percent and ETA. */
export function progressText(e: ProgressEvent, elapsedSeconds: number): string {
  let text = e.stage;
  if (e.done !== undefined) {
    text += e.total ? ` ${e.done}/${e.total}` : ` ${e.done}`;
    if (e.unit) text += ` ${e.unit}`;
    const worked = e.done - (e.resumed ?? 0);
    if (elapsedSeconds > 0.2 && worked > 0) {
      const rate = worked / elapsedSeconds;
      text += ` · ${fmtRate(rate, e.unit ?? 'it')}`;
      if (e.total) {
        const pct = (100 * e.done) / e.total;
        text += ` · ${pct.toFixed(0)}% · ETA ${fmtDuration((e.total - e.done) / rate)}`;
      }
    }
  }
  if (e.detail) text += ` · ${e.detail}`;
  return text;
}

/** Seconds between plain progress lines when stderr is not a terminal (CI logs, files). */
export const PLAIN_INTERVAL_SECONDS = 10;
/** Narrower terminals get plain lines: a spinner there wraps and redraws without end. */
const MIN_SPINNER_COLUMNS = 40;

export interface Progress {
  fn: ProgressFn;
  stop: (finalText?: string) => void;
}

export interface ProgressOptions {
  /** --quiet: no progress at all. */
  quiet?: boolean;
  /** Clock in ms (tests). */
  now?: () => number;
}

/**
 * Progress on stderr, fitted to where it runs: an ora spinner with rate and ETA on a terminal of
 * usable width; otherwise plain lines, one at each stage and one every PLAIN_INTERVAL_SECONDS.
 * Never on stdout (results go there). NO_COLOR turns the spinner's colour off.
 */
export function createProgress(io: CliIO, opts: ProgressOptions | boolean = {}): Progress {
  const o: ProgressOptions = typeof opts === 'boolean' ? { quiet: !opts } : opts;
  if (o.quiet) return { fn: () => {}, stop: () => {} };
  const now = o.now ?? Date.now;
  const columns = io.columns ?? 0;
  if (io.interactive && columns >= MIN_SPINNER_COLUMNS) return spinnerProgress(io, columns, now);
  return plainProgress(io, now);
}

/**
 * When each stage began: work on two threads interleaves its stages (a basis's tables finish
 * while the next eigensolve runs), and a stage that comes back keeps its own clock, so its rate
 * and ETA are not reset to count all its work in the moments since it returned.
 */
function stageClock(now: () => number): (stage: string) => number {
  const starts = new Map<string, number>();
  return (stage) => {
    let t = starts.get(stage);
    if (t === undefined) {
      if (starts.size >= 256) starts.clear();
      t = now();
      starts.set(stage, t);
    }
    return t;
  };
}

function spinnerProgress(io: CliIO, columns: number, now: () => number): Progress {
  // discardStdin would put stdin in raw mode: Ctrl-C then reaches kvtc only when the event loop
  // is free, and a second Ctrl-C never becomes a real SIGINT.
  const spinner: Ora = ora({ stream: process.stderr, discardStdin: false, color: process.env.NO_COLOR ? false : 'cyan' }).start();
  let stage = '';
  let stageStart = now();
  let last = 0;
  const began = stageClock(now);
  const fn = (e: ProgressEvent) => {
    const t = now();
    if (e.stage !== stage) {
      stage = e.stage;
      stageStart = began(stage);
    } else if (t - last < 100) return;
    last = t;
    const text = progressText(e, (t - stageStart) / 1000);
    spinner.text = text.length > columns - 4 ? `${text.slice(0, columns - 5)}…` : text;
  };
  return {
    fn,
    stop: (finalText) => {
      if (finalText) spinner.succeed(finalText);
      else spinner.stop();
    },
  };
}

function plainProgress(io: CliIO, now: () => number): Progress {
  let stage = '';
  let stageStart = now();
  let last = -Infinity;
  let pending: ProgressEvent | undefined;
  const began = stageClock(now);
  const print = (e: ProgressEvent, t: number) => {
    io.err(`[kvtc] ${progressText(e, (t - stageStart) / 1000)}`);
    last = t;
    pending = undefined;
  };
  const fn = (e: ProgressEvent) => {
    const t = now();
    if (e.stage !== stage) {
      // The previous stage's last state, so a log shows where each stage ended.
      if (pending) print(pending, t);
      stage = e.stage;
      stageStart = began(stage);
      print(e, t);
      return;
    }
    if (t - last >= PLAIN_INTERVAL_SECONDS * 1000) print(e, t);
    else pending = e;
  };
  return { fn, stop: () => {} };
}
