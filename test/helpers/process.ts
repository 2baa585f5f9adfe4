import { spawn } from 'node:child_process';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

export const REPO = join(dirname(fileURLToPath(import.meta.url)), '..', '..');

export interface ProcessResult {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
  seconds: number;
  /** True when the process had to be killed at the deadline: it would have hung. */
  hung: boolean;
}

/**
 * Runs a TypeScript entry point (through tsx) as a child process and waits for it to exit by
 * itself; after `deadlineMs` it is killed and reported as hung.
 */
export function runTs(
  entry: string,
  args: string[],
  opts: { env?: NodeJS.ProcessEnv; deadlineMs?: number; cwd?: string } = {},
): Promise<ProcessResult> {
  const t0 = performance.now();
  const child = spawn(process.execPath, ['--import', 'tsx', entry, ...args], {
    cwd: opts.cwd ?? REPO,
    env: { TSX_DISABLE_CACHE: '1', ...(opts.env ?? process.env) },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let stdout = '';
  let stderr = '';
  child.stdout.on('data', (d) => (stdout += d));
  child.stderr.on('data', (d) => (stderr += d));
  let hung = false;
  const timer = setTimeout(() => {
    hung = true;
    child.kill('SIGKILL');
  }, opts.deadlineMs ?? 30_000);
  return new Promise((resolve) => {
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      resolve({ code, signal, stdout, stderr, seconds: (performance.now() - t0) / 1000, hung });
    });
  });
}

/** The kvtc CLI as a child process. */
export const runKvtc = (args: string[], opts: { env?: NodeJS.ProcessEnv; deadlineMs?: number; cwd?: string } = {}) =>
  runTs(join(REPO, 'test', 'helpers', 'kvtc-entry.ts'), args, opts);
