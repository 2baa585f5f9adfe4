/** Model identity survives re-saves, and a mismatch names what differs (issue 11). */
import { cpSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { DEFAULT_MODEL_DIR, DEFAULT_PROFILES_DIR } from '../../src/paths.js';
import { kvtc, tempDir } from '../model/helpers.js';

const PROFILE = join(DEFAULT_PROFILES_DIR, 'stories260k');

function modelCopy(edit: (cfg: Record<string, unknown>) => string): string {
  const dir = join(tempDir('kvtc-compat-'), 'stories260k');
  cpSync(DEFAULT_MODEL_DIR, dir, { recursive: true });
  const cfg = JSON.parse(readFileSync(join(dir, 'config.json'), 'utf8'));
  writeFileSync(join(dir, 'config.json'), edit(cfg));
  return dir;
}

describe('model identity', () => {
  it('a re-indented config.json with its keys reordered (a save_pretrained round trip) keeps validate --model green', async () => {
    const dir = modelCopy((cfg) => `${JSON.stringify(Object.fromEntries(Object.entries(cfg).reverse()), null, 4)}\n\n`);
    const r = await kvtc('validate', PROFILE, '--model', dir);
    expect(r.code, r.stdout + r.stderr).toBe(0);
    expect(r.stdout).toMatch(/✓ model: made for this model/);
  });

  it('a config that changes what kvtc reads is a mismatch that names the field', async () => {
    const dir = modelCopy((cfg) => JSON.stringify({ ...cfg, rope_theta: 500000 }));
    const r = await kvtc('validate', PROFILE, '--model', dir);
    expect(r.code).toBe(1);
    expect(r.stdout).toMatch(/✗ model: .*rope\.theta is 10000 in the profile, 500000 in the model/);
    const e = await kvtc('evaluate', '--profile', PROFILE, '--model', dir, '--subjects', 'anatomy', '--limit', '1', '--json', '--quiet');
    expect(e.code).toBe(1);
    const doc = JSON.parse(e.stdout);
    expect(doc.error.code).toBe('PROFILE_MISMATCH');
    expect(doc.error.context.differences).toEqual(['rope.theta is 10000 in the profile, 500000 in the model']);
  });

  it('the same architecture with another graph says the graph differs', async () => {
    const dir = modelCopy((cfg) => JSON.stringify(cfg));
    const onnx = join(dir, 'onnx', 'model.onnx');
    const bytes = readFileSync(onnx);
    writeFileSync(onnx, Buffer.concat([bytes, Buffer.from([0x0a, 0x00])])); // an extra empty field: same model, other bytes
    const r = await kvtc('validate', PROFILE, '--model', dir);
    expect(r.code).toBe(1);
    expect(r.stdout).toMatch(/the ONNX graph differs/);
  });
});
