import { spawnSync } from 'node:child_process';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { REPO } from '../helpers/process.js';

describe('examples/restore-chat.mjs', () => {
  it('restores each turn from a blob on disk and prints TTFT restored vs recomputed, bytes and the reply check', () => {
    // The example imports 'kvtc' (the package itself, dist/ built by npm ci / npm run build).
    const r = spawnSync(
      process.execPath,
      [join(REPO, 'examples', 'restore-chat.mjs'), '--turns', '3', '--reply-tokens', '8', '--repeats', '1'],
      { cwd: REPO, encoding: 'utf8' },
    );
    expect(r.status, r.stderr).toBe(0);
    expect(r.stdout).toMatch(/^turn 1: \d+ tokens of context, recompute TTFT [\d.]+ ms$/m);
    expect(r.stdout).toMatch(
      /^turn 2: \d+ tokens of context, recompute TTFT [\d.]+ ms, restore TTFT [\d.]+ ms \([\d.]+x; blob [\d.]+ KiB on disk\); reply (matches the uncompressed run \(8 tokens\)|diverges from the uncompressed run at token \d of 8)$/m,
    );
    expect(r.stdout).toMatch(/saved \d+ tokens of cache: [\d.]+ KiB on disk vs [\d.]+ KiB as fp16/);
  });
});
