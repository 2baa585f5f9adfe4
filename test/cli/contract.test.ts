/** The output contract (README "Output contract"): one JSON document per --json run, snake_case keys, exit codes. */
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { snakeKeys } from '../../src/cli/json.js';
import { DEFAULT_PROFILES_DIR } from '../../src/paths.js';
import { kvtc } from '../model/helpers.js';
import { runKvtc } from '../helpers/process.js';

const PROFILE = join(DEFAULT_PROFILES_DIR, 'stories260k');
const COMMANDS = [
  'calibrate',
  'inspect',
  'validate',
  'encode',
  'decode',
  'export',
  'evaluate',
  'bench',
  'capture',
  'generate',
  'convert-llama2c',
];

/** Every key of every object in `v`. */
function keys(v: unknown, out: string[] = []): string[] {
  if (Array.isArray(v)) v.forEach((x) => keys(x, out));
  else if (v && typeof v === 'object')
    for (const [k, x] of Object.entries(v)) {
      out.push(k);
      keys(x, out);
    }
  return out;
}

describe('--json covers usage errors', () => {
  it.each(COMMANDS)('%s --bogus --json prints one JSON object with error.code USAGE, exit 2', async (cmd) => {
    const r = await kvtc(cmd, '--bogus', '--json');
    expect(r.code).toBe(2);
    const doc = JSON.parse(r.stdout);
    expect(doc.error.code).toBe('USAGE');
    expect(doc.error.message).toMatch(/--bogus|required option/);
  });

  it('an invalid choice (--device gpu) and a bad value are JSON errors too', async () => {
    for (const args of [
      ['encode', '--device', 'gpu', '--profile', 'p', '--kv', 'k', '--out', 'o'],
      ['calibrate', '--tokens', 'many'],
    ]) {
      const r = await kvtc(...args, '--json');
      expect(r.code).toBe(2);
      expect(JSON.parse(r.stdout).error.code).toBe('USAGE');
    }
  });

  it('a failure after parsing is one JSON document with error.code and exit 1', async () => {
    const r = await kvtc('inspect', '/nonexistent/profile', '--json');
    expect(r.code).toBe(1);
    expect(JSON.parse(r.stdout).error.code).toBe('PROFILE_INVALID');
  });
});

describe('snake_case keys', () => {
  it('snakeKeys converts camelCase keys at every depth and leaves values alone', () => {
    expect(snakeKeys({ kvHeads: 2, maxPositions: 3, nested: [{ promptTokens: 1, name: 'camelCaseValue' }], delta_points: 1 })).toEqual({
      kv_heads: 2,
      max_positions: 3,
      nested: [{ prompt_tokens: 1, name: 'camelCaseValue' }],
      delta_points: 1,
    });
  });

  it('inspect, validate, generate and capture --json have no camelCase key', async () => {
    const docs = [
      await kvtc('inspect', PROFILE, '--json'),
      await kvtc('validate', PROFILE, '--json'),
      await kvtc('generate', '--prompt', 'Once', '--max-new-tokens', '3', '--json'),
    ];
    for (const d of docs) {
      expect(d.code, d.stderr).toBe(0);
      expect(keys(JSON.parse(d.stdout)).filter((k) => /[A-Z]/.test(k))).toEqual([]);
    }
  });
});

describe('closed pipes', () => {
  it('inspect into a pipe closed after one line ends quietly (no EPIPE stack trace)', async () => {
    const { spawn } = await import('node:child_process');
    const { REPO } = await import('../helpers/process.js');
    const r = await new Promise<{ code: number | null; stderr: string }>((resolve) => {
      const sh = spawn(
        'bash',
        ['-c', `node --import tsx test/helpers/kvtc-entry.ts inspect ${PROFILE} | head -1 >/dev/null; echo "\${PIPESTATUS[0]}" >&2`],
        { cwd: REPO, env: { ...process.env, TSX_DISABLE_CACHE: '1' } },
      );
      let stderr = '';
      sh.stderr.on('data', (d) => (stderr += d));
      sh.on('close', (code) => resolve({ code, stderr }));
    });
    expect(r.stderr).not.toMatch(/EPIPE|\n\s+at /);
    expect(r.stderr.trim()).toBe('0');
  });

  it('progress goes to stderr as plain lines when stderr is a file', async () => {
    const { mkdtempSync, rmSync } = await import('node:fs');
    const { tmpdir } = await import('node:os');
    const dir = mkdtempSync(join(tmpdir(), 'kvtc-contract-'));
    try {
      const r = await runKvtc([
        'calibrate',
        '--tokens',
        '512',
        '--heldout',
        '256',
        '--report-tokens',
        '256',
        '--grouping',
        'layer',
        '--out',
        join(dir, 'p'),
      ]);
      expect(r.code, r.stderr).toBe(0);
      expect(r.stderr).toMatch(/^\[kvtc\] loading model/m);
      expect(r.stderr).toMatch(/^\[kvtc\] capturing calibration KV \d+\/\d+ tokens/m);
      expect(r.stdout).not.toContain('[kvtc]');
      const q = await runKvtc([
        'calibrate',
        '--tokens',
        '512',
        '--heldout',
        '256',
        '--report-tokens',
        '256',
        '--grouping',
        'layer',
        '--out',
        join(dir, 'p'),
        '--quiet',
      ]);
      expect(q.code, q.stderr).toBe(0);
      expect(q.stderr).toBe('');
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe('a failed validate --json', () => {
  it('is one document: the checks, with "error" beside them', async () => {
    const r = await kvtc('validate', PROFILE, '--model', join(PROFILE, '..', '..', 'test', 'fixtures', 'tiny-llama-fp16'), '--json');
    expect(r.code).toBe(1);
    const doc = JSON.parse(r.stdout);
    expect(doc.error.code).toBe('PROFILE_MISMATCH');
    expect(doc.ok).toBe(false);
    expect(doc.checks.some((c: { ok: boolean }) => !c.ok)).toBe(true);
  });
});

describe('inspect --model', () => {
  it("shows kvtc's reading of a model: shape, KV dtype and the RoPE it undoes, with the source", async () => {
    const { DEFAULT_MODEL_DIR } = await import('../../src/paths.js');
    const r = await kvtc('inspect', '--model', DEFAULT_MODEL_DIR);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toMatch(/LlamaForCausalLM: 5 layers, 8 heads \/ 4 KV heads × 8, KV float32/);
    expect(r.stdout).toMatch(/0-4\s+10000\s+8 of 8\s+half \(pairs \(i, i\+4\)\)\s+none\s+1\n[\s\S]*read from: config\.json/);
    const j = JSON.parse((await kvtc('inspect', PROFILE, '--model', DEFAULT_MODEL_DIR, '--json')).stdout);
    expect(j.model_reading.rope).toEqual([
      expect.objectContaining({ layers: '0-4', theta: 10000, rotary_dim: 8, layout: 'half', scaling: null }),
    ]);
    expect(j.model_reading.fingerprint.id).toBe(j.manifest.model.fingerprint.id);
    expect((await kvtc('inspect')).code).toBe(2);
  });
});
