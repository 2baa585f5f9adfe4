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
}

export type ProgressFn = (e: ProgressEvent) => void;

export const noProgress: ProgressFn = () => {};
