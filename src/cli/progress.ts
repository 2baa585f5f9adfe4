import ora, { type Ora } from 'ora';
import type { ProgressEvent, ProgressFn } from '../progress.js';
import type { CliIO } from './io.js';

function fmtDuration(s: number): string {
  if (!Number.isFinite(s)) return '?';
  if (s < 60) return `${s.toFixed(0)}s`;
  return `${Math.floor(s / 60)}m${String(Math.round(s % 60)).padStart(2, '0')}s`;
}

/**
 * An ora spinner that shows the stage, a rate (units/s) and an ETA. Silent when stderr
 * is not a TTY or with --json, so machine output stays clean.
 */
export function createProgress(io: CliIO, enabled: boolean): { fn: ProgressFn; stop: (finalText?: string) => void } {
  if (!enabled || !io.interactive) return { fn: () => {}, stop: () => {} };
  const spinner: Ora = ora({ stream: process.stderr }).start();
  let stage = '';
  let stageStart = Date.now();
  let last = 0;
  const fn = (e: ProgressEvent) => {
    const now = Date.now();
    if (e.stage !== stage) {
      stage = e.stage;
      stageStart = now;
    } else if (now - last < 100) return;
    last = now;
    const elapsed = (now - stageStart) / 1000;
    let text = e.stage;
    if (e.done !== undefined) {
      text += e.total ? ` ${e.done}/${e.total}` : ` ${e.done}`;
      if (e.unit) text += ` ${e.unit}`;
      if (elapsed > 0.2 && e.done > 0) {
        const rate = e.done / elapsed;
        text += ` · ${rate.toFixed(rate < 10 ? 1 : 0)} ${e.unit ?? 'it'}/s`;
        if (e.total) {
          const pct = (100 * e.done) / e.total;
          text += ` · ${pct.toFixed(0)}% · ETA ${fmtDuration((e.total - e.done) / rate)}`;
        }
      }
    }
    if (e.detail) text += ` · ${e.detail}`;
    spinner.text = text;
  };
  return {
    fn,
    stop: (finalText) => {
      if (finalText) spinner.succeed(finalText);
      else spinner.stop();
    },
  };
}
