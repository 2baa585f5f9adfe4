// Tested by test/cli/contract.test.ts.
/** What a command may do to the terminal. Injected so tests run commands in-process. */
export interface CliIO {
  out: (text: string) => void;
  err: (text: string) => void;
  /** True when stderr is a TTY and progress should be drawn. */
  interactive: boolean;
  /** Width of the stderr terminal (0 or undefined when unknown). */
  columns?: number;
}

export const processIO: CliIO = {
  out: (t) => process.stdout.write(t.endsWith('\n') ? t : `${t}\n`),
  err: (t) => process.stderr.write(t.endsWith('\n') ? t : `${t}\n`),
  interactive: Boolean(process.stderr.isTTY),
  get columns() {
    return process.stderr.columns ?? 0;
  },
};

/**
 * A closed pipe (`kvtc inspect P | head -1`) ends the command quietly: the reader has what it
 * wanted, so there is nothing to report and no stack trace to print.
 */
export function endQuietlyOnClosedPipe(): void {
  for (const stream of [process.stdout, process.stderr]) {
    stream.on('error', (e: NodeJS.ErrnoException) => {
      if (e.code === 'EPIPE') process.exit(0);
      throw e;
    });
  }
}

/** Collects output in memory (tests). */
export function memoryIO(): CliIO & { stdout: string[]; stderr: string[] } {
  const stdout: string[] = [];
  const stderr: string[] = [];
  return { stdout, stderr, out: (t) => void stdout.push(t), err: (t) => void stderr.push(t), interactive: false };
}
