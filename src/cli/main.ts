// Tested by test/cli/contract.test.ts.
import { CommanderError } from 'commander';
import { InternalError, KvtcError, UsageError, isKvtcError } from '../errors.js';
import { EXIT_INTERNAL, EXIT_OK, EXIT_USAGE, exitCodeFor } from './exit-codes.js';
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

/** Runs the CLI; returns the exit code. The only place errors become exit codes (through exit-codes.ts). */
export async function main(argv: string[], io: CliIO = processIO): Promise<number> {
  const program = createProgram(io, argv);
  const json = argv.includes('--json');
  const fail = (e: KvtcError): number => {
    if (json) io.out(jsonText(errorDocument(e, e.result)));
    io.err(formatError(e));
    return exitCodeFor(e);
  };
  try {
    await program.parseAsync(argv);
    return EXIT_OK;
  } catch (e) {
    if (e instanceof CommanderError) {
      // --help and --version exit 0; commander already printed the usage problem on stderr.
      if (e.exitCode === 0) return EXIT_OK;
      if (json)
        io.out(
          jsonText(
            errorDocument(
              new UsageError(e.message.replace(/^error: /, ''), 'Run `kvtc <command> --help` for the options, their ranges and examples.', {
                commander_code: e.code,
              }),
            ),
          ),
        );
      return EXIT_USAGE;
    }
    if (isKvtcError(e)) return fail(e);
    const ioError = asIoError(e);
    if (ioError) return fail(ioError);
    const bug = new InternalError((e as Error)?.message ?? String(e));
    if (json) io.out(jsonText(errorDocument(bug)));
    io.err(`error [INTERNAL]: ${(e as Error)?.stack ?? String(e)}\n  fix: this is a kvtc bug; please report it with the command you ran.`);
    return EXIT_INTERNAL;
  }
}
