import { cpSync, mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { main } from '../../src/cli/main.js';
import { memoryIO } from '../../src/cli/io.js';

export const FIXTURE = join(dirname(fileURLToPath(import.meta.url)), '..', 'fixtures', 'tiny-llama-fp16');

export const tempDir = (prefix = 'kvtc-model-') => mkdtempSync(join(tmpdir(), prefix));

/** A writable copy of the fixture model. */
export function fixtureCopy(): string {
  const d = join(tempDir(), 'model');
  cpSync(FIXTURE, d, { recursive: true });
  return d;
}

/** Runs the CLI in-process. */
export async function kvtc(...args: string[]) {
  const io = memoryIO();
  const code = await main(['node', 'kvtc', ...args], io);
  return { code, stdout: io.stdout.join('\n'), stderr: io.stderr.join('\n') };
}
