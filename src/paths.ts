// Tested by test/api/package.test.ts.
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

/** The package root: this file lives at <root>/src/paths.ts or <root>/dist/paths.js. */
export const PACKAGE_ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..');

/** The bundled default model (converted stories260K, Optimum layout). */
export const DEFAULT_MODEL_DIR = join(PACKAGE_ROOT, 'models', 'stories260k');
export const DEFAULT_CALIBRATION_DIR = join(PACKAGE_ROOT, 'calibration-data');
export const DEFAULT_PROFILES_DIR = join(PACKAGE_ROOT, 'kvtc-profiles');
export const MMLU_DIR = join(PACKAGE_ROOT, 'data', 'mmlu');
export const WIKITEXT_TEST = join(PACKAGE_ROOT, 'data', 'wikitext-2', 'wiki.test.raw');
