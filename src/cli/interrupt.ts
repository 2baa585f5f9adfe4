/**
 * Ctrl-C for long commands: the first one aborts `signal` (the command stops at its next
 * checkpoint and keeps or discards its work as it documents) and removes the handler, so a second
 * Ctrl-C is Node's default SIGINT and quits at once.
 */
import type { CliIO } from './io.js';

export interface Interrupt {
  signal: AbortSignal;
  dispose: () => void;
}

export function onInterrupt(io: CliIO, message: string): Interrupt {
  const controller = new AbortController();
  const handler = () => {
    process.off('SIGINT', handler);
    controller.abort();
    io.err(`\n${message}`);
  };
  process.on('SIGINT', handler);
  return { signal: controller.signal, dispose: () => process.off('SIGINT', handler) };
}
