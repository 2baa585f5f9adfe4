/**
 * evaluate and bench refuse a `--dynamo-profile` calibrated for another model through the shared
 * profile-versus-model check (src/profile/compat.ts), naming what differs, before any prefill.
 */
import { join } from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { calibrateDynamo } from '../../src/dynamo/calibrate-dynamo.js';
import { DEFAULT_CALIBRATION_DIR, DEFAULT_MODEL_DIR } from '../../src/paths.js';
import { FIXTURE, kvtc, tempDir } from '../model/helpers.js';

let tiny: string;
const DIFFERENCES = [
  'layers is 2 in the profile, 5 in the model',
  'kv_heads is 1 in the profile, 4 in the model',
  'head_dim is 16 in the profile, 8 in the model',
  'kv_dtype is float16 in the profile, float32 in the model',
];

beforeAll(async () => {
  tiny = join(tempDir('kvtc-dynamo-mismatch-'), 'tiny-dynamo');
  await calibrateDynamo({
    modelDir: FIXTURE,
    data: [DEFAULT_CALIBRATION_DIR],
    ratios: [4],
    tokens: 512,
    heldout: 256,
    blockTokens: 4,
    chunk: 256,
    seed: 0,
    device: 'cpu',
    out: tiny,
    force: false,
  });
}, 120_000);

describe('a dynamo profile of another model', () => {
  it.each([
    ['evaluate', ['--subjects', 'anatomy', '--limit', '1', '--perplexity-tokens', '0', '--long-context', '0'], 'the model being evaluated'],
    ['bench', ['--model', DEFAULT_MODEL_DIR, '--quick'], 'the model being benchmarked'],
  ])('%s --dynamo-profile: PROFILE_MISMATCH naming each differing field', async (cmd, args, role) => {
    const r = await kvtc(cmd, '--dynamo-profile', tiny, ...args, '--json', '--quiet');
    expect(r.code, r.stderr).toBe(1);
    const e = JSON.parse(r.stdout).error;
    expect(e.code).toBe('PROFILE_MISMATCH');
    expect(e.message).toMatch(
      new RegExp(
        `^profile ${tiny} was calibrated for model tiny-llama-fp16 \\(fingerprint [0-9a-f]{16}\\), but ${role} is stories260k \\(fingerprint 9699b3e4089e0884, \\S+stories260k\\): layers is 2`,
      ),
    );
    expect(e.context.differences).toEqual(DIFFERENCES);
    expect(e.fix).toMatch(/^Calibrate a dynamo profile for this model: kvtc calibrate --target dynamo --model \S+stories260k$/);
  });
});
