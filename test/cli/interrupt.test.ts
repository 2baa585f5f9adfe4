/** Ctrl-C as a user sends it: a real SIGINT to a real process. */
import { spawn } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { REPO } from '../helpers/process.js';

const root = mkdtempSync(join(tmpdir(), 'kvtc-interrupt-'));
afterAll(() => rmSync(root, { recursive: true, force: true }));

/** Starts kvtc, sends SIGINT once stderr matches `when` (plus `delayMs`), returns how it ended. */
function interrupt(args: string[], when: RegExp, delayMs: number) {
  const child = spawn(process.execPath, ['--import', 'tsx', 'test/helpers/kvtc-entry.ts', ...args], {
    cwd: REPO,
    env: { ...process.env, TSX_DISABLE_CACHE: '1' },
  });
  let stdout = '';
  let stderr = '';
  let sent = false;
  child.stdout.on('data', (d) => (stdout += d));
  child.stderr.on('data', (d) => {
    stderr += d;
    if (!sent && when.test(stderr)) {
      sent = true;
      setTimeout(() => child.kill('SIGINT'), delayMs);
    }
  });
  const kill = setTimeout(() => child.kill('SIGKILL'), 60_000);
  return new Promise<{ code: number | null; stdout: string; stderr: string }>((resolve) => {
    child.on('close', (code) => {
      clearTimeout(kill);
      resolve({ code, stdout, stderr });
    });
  });
}

describe('Ctrl-C', () => {
  // No time bound on the exit (a hang is caught by the SIGKILL guard): the property is that it
  // stops partway, at a question boundary, and keeps what it scored.
  it('evaluate: exits 130, printing and keeping the questions already scored, marked partial', async () => {
    const report = join(root, 'report.md');
    const r = await interrupt(
      ['evaluate', '--subjects', 'stem', '--codec', 'int8', '--perplexity-tokens', '0', '--report', report, '--json'],
      /MMLU 0\/\d+/,
      1500,
    );
    expect(r.code, r.stderr).toBe(130);
    const doc = JSON.parse(r.stdout);
    expect(doc.error.code).toBe('INTERRUPTED');
    expect(doc.partial.questions_scored).toBeGreaterThan(0);
    expect(doc.partial.questions_scored).toBeLessThan(doc.partial.questions_planned);
    expect(doc.n).toBe(doc.partial.questions_scored);
    expect(existsSync(report)).toBe(true);
    expect(readFileSync(report, 'utf8')).toMatch(/Partial results.*interrupted after \d+ of \d+ questions/);
  });
});
