// Tested by test/bench/bench.test.ts.
/**
 * The models the bench runs on: the bundled stories260K with its profile, and a random-weight
 * GQA Llama large enough for the codec and restore-vs-recompute timings to mean something.
 * Built models and profiles are cached under os.tmpdir() and reused by later runs; a
 * calibration's stage times are stored beside its profile so a reused profile still reports them.
 */
import { existsSync } from 'node:fs';
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { calibrate } from '../calibrate/calibrate.js';
import { isKvtcError } from '../errors.js';
import { readProfile } from '../profile/read.js';
import { buildRandomLlama } from '../convert/random-llama.js';
import { DEFAULT_CALIBRATION_DIR, DEFAULT_PROFILES_DIR } from '../paths.js';
import type { ProgressFn } from '../progress.js';
import { benchCacheDir, noteCacheEntry } from './bench-cache.js';

export { benchCacheDir };

export interface GqaShape {
  layers: number;
  hidden: number;
  heads: number;
  kvHeads: number;
  headDim: number;
  intermediate: number;
  maxPositions: number;
}

/** Shaped like a small real GQA model (TinyLlama-like ratios: 4 KV heads of 64, MLP 2.75x). */
export const GQA_SHAPE: GqaShape = { layers: 16, hidden: 1024, heads: 16, kvHeads: 4, headDim: 64, intermediate: 2816, maxPositions: 4096 };
/** --quick: the same proportions, small enough for a test. */
export const QUICK_SHAPE: GqaShape = { layers: 4, hidden: 256, heads: 4, kvHeads: 2, headDim: 64, intermediate: 704, maxPositions: 1024 };

export interface CalibrationRecord {
  model: string;
  tokens: number;
  heldoutTokens: number;
  seconds: Record<string, number>;
  /** When the calibration ran (it is reused from the cache afterwards). */
  at: string;
  reused: boolean;
}

const CALIB_RECORD = 'bench-calibration.json';

export function shapeName(s: GqaShape): string {
  return `gqa-l${s.layers}-h${s.hidden}-q${s.heads}-kv${s.kvHeads}-d${s.headDim}-i${s.intermediate}`;
}

/** Builds (or reuses) a random GQA model, returning its directory. */
export async function ensureGqaModel(shape: GqaShape, onProgress?: ProgressFn): Promise<string> {
  const dir = join(benchCacheDir(), shapeName(shape), 'model');
  if (existsSync(join(dir, 'config.json'))) return dir;
  await noteCacheEntry(shapeName(shape));
  onProgress?.({ stage: `building random ${shapeName(shape)} model` });
  await buildRandomLlama({ out: dir, ...shape, seed: 1, force: true, name: shapeName(shape) });
  return dir;
}

/**
 * A profile for `modelDir`: `explicit` if given, else a committed one under kvtc-profiles/<name>,
 * else one calibrated now (ratio 20, a few thousand tokens) into the bench cache.
 */
export async function ensureProfile(
  modelDir: string,
  name: string,
  opts: { explicit?: string; tokens: number; heldout: number; onProgress?: ProgressFn },
): Promise<{ dir: string; calibration?: CalibrationRecord }> {
  if (opts.explicit) return { dir: opts.explicit };
  const committed = join(DEFAULT_PROFILES_DIR, name);
  if (existsSync(join(committed, 'kvtc-profile.json'))) return { dir: committed };
  const dir = join(benchCacheDir(), name, `profile-t${opts.tokens}`);
  const record = join(dir, CALIB_RECORD);
  if (existsSync(join(dir, 'kvtc-profile.json')) && existsSync(record)) {
    // A profile cached by an older kvtc may not pass this one's checks: then it is calibrated again.
    const usable = await readProfile(dir).then(
      () => true,
      (e) => (isKvtcError(e) ? false : Promise.reject(e)),
    );
    if (usable) {
      const rec = JSON.parse(await readFile(record, 'utf8')) as CalibrationRecord;
      return { dir, calibration: { ...rec, reused: true } };
    }
  }
  await noteCacheEntry(name);
  const r = await calibrate({
    modelDir,
    data: [DEFAULT_CALIBRATION_DIR],
    ratios: [20],
    tokens: opts.tokens,
    heldout: opts.heldout,
    sink: 4,
    window: 128,
    grouping: 'layer',
    chunk: 512,
    seed: 0,
    device: 'cpu',
    out: dir,
    force: true,
    onProgress: opts.onProgress,
  });
  const rec: CalibrationRecord = {
    model: r.model,
    tokens: r.tokens,
    heldoutTokens: r.heldout_tokens,
    seconds: r.seconds,
    at: new Date().toISOString(),
    reused: false,
  };
  await writeFile(record, `${JSON.stringify(rec, null, 2)}\n`);
  return { dir, calibration: rec };
}
