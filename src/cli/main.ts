import { CommanderError } from 'commander';
import { KvtcError, isKvtcError } from '../errors.js';
import { asIoError } from '../io/output.js';
import { processIO, type CliIO } from './io.js';
import { createProgram } from './program.js';

/** Formats an error for humans: message, then the fix. */
export function formatError(e: KvtcError): string {
  let s = `error [${e.code}]: ${e.message}`;
  if (e.fix) s += `\n  fix: ${e.fix}`;
  return s;
}

/** Runs the CLI; returns the exit code. The only place errors become exit codes. */
export async function main(argv: string[], io: CliIO = processIO): Promise<number> {
  const program = createProgram(io);
  const json = argv.includes('--json');
  try {
    await program.parseAsync(argv);
    return 0;
  } catch (e) {
    if (e instanceof CommanderError) {
      // --help and --version exit 0; commander already printed the usage problem.
      return e.exitCode === 0 ? 0 : 2;
    }
    if (isKvtcError(e)) {
      if (json) io.out(JSON.stringify({ error: e.toJSON() }, null, 2));
      io.err(formatError(e));
      return e.exitCode;
    }
    const ioError = asIoError(e);
    if (ioError) {
      if (json) io.out(JSON.stringify({ error: ioError.toJSON() }, null, 2));
      io.err(formatError(ioError));
      return ioError.exitCode;
    }
    io.err(`error [INTERNAL]: ${(e as Error)?.stack ?? String(e)}\n  fix: this is a kvtc bug; please report it with the command you ran.`);
    return 70;
  }
}
