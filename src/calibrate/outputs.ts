/**
 * Where calibrate writes its profiles. Without --out: `kvtc-profiles/<model>` in the working
 * directory (never inside kvtc's own install), the model's name skipping layout folders
 * (llama/onnx → llama). One naming rule for one ratio and several: an explicitly asked ratio is
 * always in the name (`<base>-r8`), so `--ratio 8` cannot land on the default 20x profile; only the
 * default ratio with no --ratio, or a single ratio with an explicit --out, is written to `<base>`.
 */
import { resolve } from 'node:path';

export const PROFILES_FOLDER = 'kvtc-profiles';

/** `kvtc-profiles/<name>` under `cwd` (the default profile location). */
export function defaultProfileDir(modelName: string, cwd = process.cwd()): string {
  return resolve(cwd, PROFILES_FOLDER, modelName);
}

export interface OutputNaming {
  /** --out as given. */
  out?: string;
  modelName: string;
  ratios: readonly number[];
  /** True when the user named the ratio(s) (--ratio), false for the default. */
  ratiosGiven?: boolean;
  /** Appended to the default name (e.g. "-dynamo"). */
  suffix?: string;
  cwd?: string;
}

export function profileOutDirs(o: OutputNaming): string[] {
  const base = o.out ?? defaultProfileDir(`${o.modelName}${o.suffix ?? ''}`, o.cwd);
  const byRatio = o.ratios.length > 1 || (o.out === undefined && o.ratiosGiven === true);
  return o.ratios.map((r) => (byRatio ? `${base}-r${r}` : base));
}
