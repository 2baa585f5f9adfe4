// Tested by test/cli/contract.test.ts.
import { CommanderError } from 'commander';
import { KvtcError, UsageError, isKvtcError } from '../errors.js';
import { errorDocument, jsonText } from './json.js';
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
  const program = createProgram(io, argv);
  const json = argv.includes('--json');
  const fail = (e: KvtcError): number => {
    if (json) io.out(jsonText(errorDocument(e, e.result)));
    io.err(formatError(e));
    return e.exitCode;
  };
  try {
    await program.parseAsync(argv);
    return 0;
  } catch (e) {
    if (e instanceof CommanderError) {
      // --help and --version exit 0; commander already printed the usage problem on stderr.
      if (e.exitCode === 0) return 0;
      if (json) io.out(jsonText(errorDocument(new UsageError(e.message.replace(/^error: /, ''), 'Run `kvtc <command> --help` for the options, their ranges and examples.', { commander_code: e.code }))));
      return 2;
    }
    if (isKvtcError(e)) return fail(e);
    const ioError = asIoError(e);
    if (ioError) return fail(ioError);
    const bug = new KvtcError('INTERNAL', (e as Error)?.message ?? String(e), { fix: 'This is a kvtc bug: please report it with the command you ran.', exitCode: 70 });
    if (json) io.out(jsonText(errorDocument(bug)));
    io.err(`error [INTERNAL]: ${(e as Error)?.stack ?? String(e)}\n  fix: this is a kvtc bug; please report it with the command you ran.`);
    return 70;
  }
}
