// Tested by test/cli/contract.test.ts.
/** Progress reporting from the core: a callback, never printing (the CLI draws it). */
export interface ProgressEvent {
  stage: string;
  /** Units done / total in this stage (total may be unknown). */
  done?: number;
  total?: number;
  unit?: string;
  /** Free-form detail, e.g. "layer 3/5". */
  detail?: string;
  /**
   * Of `done`, units taken from an earlier run (a resumed journal) rather than worked now: left
   * out of the rate and the ETA, which would otherwise count a journal read as work.
   */
  resumed?: number;
}

export type ProgressFn = (e: ProgressEvent) => void;

export const noProgress: ProgressFn = () => {};

/**
 * A rate for people: per second from 1/s up, else per minute, else per hour, with two
 * significant digits below 10 ("0.0 q/s" said nothing about a 26-second question).
 */
export function fmtRate(perSecond: number, unit: string): string {
  const fmt = (x: number) => (x >= 10 ? x.toFixed(0) : x.toPrecision(2));
  if (!Number.isFinite(perSecond) || perSecond <= 0) return `0 ${unit}/s`;
  if (perSecond >= 1) return `${fmt(perSecond)} ${unit}/s`;
  if (perSecond * 60 >= 1) return `${fmt(perSecond * 60)} ${unit}/min`;
  return `${fmt(perSecond * 3600)} ${unit}/h`;
}
