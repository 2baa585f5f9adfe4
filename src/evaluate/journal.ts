// Tested by test/evaluate/journal.test.ts.
/**
 * The evaluation journal: `kvtc evaluate` appends each finished item (an MMLU question, a
 * long-context task, a perplexity window) as one JSON line, so a run that is killed (OOM,
 * SIGKILL) or interrupted loses at most the item in flight, and a rerun of the same command
 * picks up where it stopped and ends with the same report.
 *
 * File: line 1 is a header naming the run's configuration and its hash; every further line is
 * one JournalEntry. Each line is written with one write() of the whole line and its newline,
 * so a crash can leave at most a last line without its newline: reading drops it (that item is
 * redone) and cuts the file back to the last whole line before appending. A journal whose hash
 * is not the run's is refused with the settings that differ, never mixed into the report.
 */
import { createHash } from 'node:crypto';
import { closeSync, fsyncSync, ftruncateSync, openSync, statSync, writeSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { z } from 'zod';
import { writeFileAtomic } from '../io/atomic.js';
import { KvtcError, UsageError } from '../errors.js';
import type { PerplexityWindow, QuestionRecord } from './records.js';

export const JOURNAL_FORMAT = 'kvtc-evaluate-journal';
export const JOURNAL_VERSION = 1;
/** A journal of every MMLU question with a dozen codecs is ~20 MB; refuse to read anything far past that. */
const MAX_JOURNAL_BYTES = 1 << 30;
/** fsync at most this often (seconds): a power loss may cost the last few items, a kill costs none. */
const FSYNC_INTERVAL_S = 5;

/** Seconds spent on one item, so a resumed run reports the time of all its parts. */
export interface ItemTiming {
  wall: number;
  prefill: number;
  scoring: number;
  codecs: Record<string, number>;
}

export type JournalEntry =
  | { kind: 'mmlu'; key: string; record: QuestionRecord; seconds: ItemTiming }
  | { kind: 'long_context'; key: string; record: QuestionRecord; seconds: ItemTiming }
  | { kind: 'perplexity'; key: string; window: PerplexityWindow; seconds: ItemTiming };

/** What the scoring loop needs of a journal (run.ts knows nothing of files). */
export interface JournalSink {
  get(key: string): JournalEntry | undefined;
  append(entry: JournalEntry): void;
}

// JSON has no ±Infinity/NaN (a log-likelihood of a token with probability 0 is −Infinity):
// they travel as strings and come back as numbers.
const num = z.union([z.number(), z.enum(['Infinity', '-Infinity', 'NaN']).transform(Number)]);
const timingSchema = z.object({ wall: num, prefill: num, scoring: num, codecs: z.record(z.string(), num) });
const outcomeSchema = z.object({
  logLik: z.array(num),
  pred: z.number().int(),
  compressedTokens: z.number().int(),
  bytes: z.number(),
  compressedBytes: z.number(),
});
const recordSchema = z.object({
  subject: z.string(),
  index: z.number().int(),
  gold: z.number().int(),
  promptTokens: z.number().int(),
  truncated: z.number().int(),
  cacheTokens: z.number().int(),
  baseline: z.object({ logLik: z.array(num), pred: z.number().int() }),
  codecs: z.record(z.string(), outcomeSchema),
});
const entrySchema = z.discriminatedUnion('kind', [
  z.object({ kind: z.literal('mmlu'), key: z.string(), record: recordSchema, seconds: timingSchema }),
  z.object({ kind: z.literal('long_context'), key: z.string(), record: recordSchema, seconds: timingSchema }),
  z.object({
    kind: z.literal('perplexity'),
    key: z.string(),
    window: z.object({
      index: z.number().int(),
      scored: z.number().int(),
      cacheTokens: z.number().int(),
      baselineNll: num,
      // Optional: journals written before per-block NLLs were recorded lack them (perplexity-interval.ts falls back).
      blockTokens: z.number().int().min(1).optional(),
      baselineBlockNll: z.array(num).optional(),
      codecs: z.record(
        z.string(),
        z.object({
          nll: num,
          compressedTokens: z.number().int(),
          blockNll: z.array(num).optional(),
          blockKl: z.array(num).optional(),
          blockTop1: z.array(num).optional(),
        }),
      ),
    }),
    seconds: timingSchema,
  }),
]);
const headerSchema = z.object({
  format: z.literal(JOURNAL_FORMAT),
  format_version: z.literal(JOURNAL_VERSION),
  config_hash: z.string(),
  config: z.record(z.string(), z.unknown()),
});

const encodeNumbers = (_key: string, v: unknown) => (typeof v === 'number' && !Number.isFinite(v) ? String(v) : v);

/** JSON with object keys sorted, so equal configurations hash alike whatever order they were built in. */
function canonical(v: unknown): string {
  if (Array.isArray(v)) return `[${v.map(canonical).join(',')}]`;
  if (v && typeof v === 'object')
    return `{${Object.keys(v)
      .sort()
      .filter((k) => (v as Record<string, unknown>)[k] !== undefined)
      .map((k) => `${JSON.stringify(k)}:${canonical((v as Record<string, unknown>)[k])}`)
      .join(',')}}`;
  return JSON.stringify(v);
}

export function configHash(config: Record<string, unknown>): string {
  return createHash('sha256').update(canonical(config)).digest('hex').slice(0, 16);
}

/** "path: journal X, this run Y" for every leaf setting that differs. */
export function configDifferences(journal: Record<string, unknown>, run: Record<string, unknown>): string[] {
  const flat = (v: unknown, prefix: string, out: Map<string, string>) => {
    if (v && typeof v === 'object' && !Array.isArray(v)) {
      for (const [k, x] of Object.entries(v)) flat(x, prefix ? `${prefix}.${k}` : k, out);
    } else if (v !== undefined) out.set(prefix, canonical(v));
    return out;
  };
  const a = flat(journal, '', new Map());
  const b = flat(run, '', new Map());
  const keys = [...new Set([...a.keys(), ...b.keys()])].sort();
  return keys.filter((k) => a.get(k) !== b.get(k)).map((k) => `${k}: journal ${a.get(k) ?? '(unset)'}, this run ${b.get(k) ?? '(unset)'}`);
}

export interface OpenJournalOptions {
  /** Discard an existing journal and start over. */
  fresh?: boolean;
}

export class EvaluationJournal implements JournalSink {
  /** Items read back from an earlier run of the same configuration. */
  readonly resumed: number;
  /** Whether the last line of the journal was cut short (a write killed midway) and dropped. */
  readonly droppedPartialLine: boolean;
  private fd: number | undefined;
  private lastSync = performance.now() / 1000;
  private unsynced = false;

  private constructor(
    readonly path: string,
    private readonly entries: Map<string, JournalEntry>,
    fd: number,
    droppedPartialLine: boolean,
  ) {
    this.fd = fd;
    this.resumed = entries.size;
    this.droppedPartialLine = droppedPartialLine;
  }

  /**
   * Opens the journal at `path` for this configuration: creates it (or replaces it with `fresh`),
   * or reads back the items of an earlier run of the same configuration. Refuses a journal of
   * another configuration (USAGE, naming the settings that differ) and a damaged one (DATA_INVALID).
   */
  static async open(path: string, config: Record<string, unknown>, options: OpenJournalOptions = {}): Promise<EvaluationJournal> {
    const hash = configHash(config);
    let size: number | undefined;
    try {
      size = statSync(path).size;
    } catch {
      size = undefined;
    }
    if (options.fresh || size === undefined || size === 0) {
      const header = { format: JOURNAL_FORMAT, format_version: JOURNAL_VERSION, config_hash: hash, config };
      await writeFileAtomic(path, `${JSON.stringify(header)}\n`);
      return new EvaluationJournal(path, new Map(), openSync(path, 'a'), false);
    }
    if (size > MAX_JOURNAL_BYTES) {
      throw new KvtcError(
        'DATA_INVALID',
        `the evaluation journal ${path} is ${size} bytes, more than kvtc writes (at most ${MAX_JOURNAL_BYTES})`,
        {
          context: { file: path, bytes: size },
          fix: 'Pass --fresh to start the evaluation over, or --journal FILE to use another journal.',
        },
      );
    }
    const buf = await readFile(path);
    const text = buf.toString('utf8');
    const damaged = (line: number, why: string) =>
      new KvtcError('DATA_INVALID', `the evaluation journal ${path} is damaged at line ${line}: ${why}`, {
        context: { file: path, line },
        fix: 'Pass --fresh to start the evaluation over (the journal is replaced), or --journal FILE to keep it and use another.',
      });
    const firstEnd = text.indexOf('\n');
    // The header is written whole (temp file + rename): a header without its newline is not ours.
    let header: z.infer<typeof headerSchema>;
    try {
      if (firstEnd < 0) throw new Error('no header line');
      header = headerSchema.parse(JSON.parse(text.slice(0, firstEnd)));
    } catch {
      throw new KvtcError(
        'DATA_INVALID',
        `${path} is not a kvtc evaluate journal (its first line is not a ${JOURNAL_FORMAT} v${JOURNAL_VERSION} header)`,
        {
          context: { file: path },
          fix: 'Pass --journal FILE to journal elsewhere, or --fresh to replace this file.',
        },
      );
    }
    if (header.config_hash !== hash) {
      const diff = configDifferences(header.config, config);
      throw new UsageError(
        `the evaluation journal ${path} belongs to a run with other settings (${diff.join('; ') || `configuration ${header.config_hash}, this run ${hash}`}); its results cannot be mixed into this run`,
        'Rerun with the settings the journal was written with to resume it, pass --fresh to discard it and start over, or pass --journal FILE to keep it and journal elsewhere.',
        { journal: path, journal_config_hash: header.config_hash, config_hash: hash, differences: diff },
      );
    }
    const entries = new Map<string, JournalEntry>();
    let pos = firstEnd + 1;
    let line = 1;
    let dropped = false;
    while (pos < text.length) {
      line++;
      const end = text.indexOf('\n', pos);
      if (end < 0) {
        // Killed in the middle of writing this line: drop it, the item is redone.
        dropped = true;
        break;
      }
      let entry: JournalEntry;
      try {
        entry = entrySchema.parse(JSON.parse(text.slice(pos, end))) as JournalEntry;
      } catch (e) {
        throw damaged(line, e instanceof SyntaxError ? 'not JSON' : 'not a journal entry');
      }
      if (!entries.has(entry.key)) entries.set(entry.key, entry);
      pos = end + 1;
    }
    const fd = openSync(path, 'a');
    // Appends go after the last whole line: cut off a partial one first.
    const keep = Buffer.byteLength(text.slice(0, pos), 'utf8');
    if (keep !== buf.length) {
      ftruncateSync(fd, keep);
      fsyncSync(fd);
    }
    return new EvaluationJournal(path, entries, fd, dropped);
  }

  get(key: string): JournalEntry | undefined {
    return this.entries.get(key);
  }

  get size(): number {
    return this.entries.size;
  }

  /** Appends one entry as a single write of a whole line; fsyncs every few seconds. */
  append(entry: JournalEntry): void {
    if (this.fd === undefined) throw new KvtcError('INTERNAL', `journal ${this.path}: append after close`);
    const bytes = Buffer.from(`${JSON.stringify(entry, encodeNumbers)}\n`, 'utf8');
    // O_APPEND: one write() of the whole line, so a kill leaves whole lines or a cut last one.
    let off = 0;
    while (off < bytes.length) off += writeSync(this.fd, bytes, off, bytes.length - off);
    this.entries.set(entry.key, entry);
    this.unsynced = true;
    const now = performance.now() / 1000;
    if (now - this.lastSync >= FSYNC_INTERVAL_S) this.sync(now);
  }

  private sync(now = performance.now() / 1000): void {
    if (this.fd !== undefined && this.unsynced) fsyncSync(this.fd);
    this.unsynced = false;
    this.lastSync = now;
  }

  /** Flushes to disk and closes; the journal stays for a later resume. */
  close(): void {
    if (this.fd === undefined) return;
    this.sync();
    closeSync(this.fd);
    this.fd = undefined;
  }
}
