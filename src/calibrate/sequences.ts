/**
 * Calibration text → fixed-length token sequences, split into fit, tuning (held-out) and report sets.
 *
 * Reading (readCalibrationTokens): files are read in order, each streamed and tokenized in
 * chunks of a few KB (ChunkedEncoder), so the time is linear in the text used and the memory is
 * bounded by the token budget; Ctrl-C (the abort signal) is checked between chunks. Documents are
 * taken whole until they are estimated (3 characters a token) to give 1.5 × the tokens needed,
 * where "needed" is 2 × (fit + tuning + report) to leave room for the shuffle; no more than
 * TOKEN_BUDGET_FACTOR × that is ever tokenized: a (large) document is cut there.
 * In a directory, a file that is not UTF-8 text is skipped and reported (strict: an error).
 *
 * Sequences (splitSequences): the documents' tokens are concatenated (no BOS between them), cut
 * into sequences of `seqLen` tokens, each starting with BOS when the tokenizer has one, so
 * attention sinks behave as in real prompts. The split is a seeded shuffle of whole sequences,
 * so no text is in two sets: the fit sequences give the PCA bases, the tuning sequences the clip
 * ranges, error tables and bit allocation, and the report sequences the figures printed and
 * recorded in the profile, which therefore come from text no fitting step saw.
 */
import { basename } from 'node:path';
import { calibrationInterrupted, KvtcError } from '../errors.js';
import { listTextSources, NotUtf8Error, TextFileReader, type NotUtf8Kind } from '../io/text.js';
import type { ModelTokenizer } from '../model/tokenizer.js';
import { noProgress, type ProgressFn } from '../progress.js';
import { mulberry32 } from '../random.js';

export interface SequenceSplit {
  fit: number[][];
  /** Tuning sequences: clip ranges, error tables and the bit allocation are measured on them. */
  heldout: number[][];
  /** Report sequences: the printed and recorded ratio and error; no fitting or tuning step sees them (empty when reportTokens is 0). */
  report: number[][];
  seqLen: number;
  availableTokens: number;
}

/** Characters per chunk the encoder aims for; a chunk ends at a paragraph, line or word break after this. */
export const CHUNK_CHARS = 4096;
/** Context each side of a cut the tokenizer sees when a cut is checked and when the next chunk is encoded. */
const CUT_CONTEXT = 64;
/** Cut candidates checked per chunk before taking the first one unchecked. */
const MAX_CUT_CHECKS = 8;

function startsWith(a: number[], prefix: number[]): boolean {
  if (prefix.length > a.length) return false;
  for (let i = 0; i < prefix.length; i++) if (a[i] !== prefix[i]) return false;
  return true;
}

/** JavaScript's \s, by char code. */
function isSpace(c: number): boolean {
  return (
    (c >= 9 && c <= 13) ||
    c === 32 ||
    c === 0xa0 ||
    c === 0x1680 ||
    (c >= 0x2000 && c <= 0x200a) ||
    c === 0x2028 ||
    c === 0x2029 ||
    c === 0x202f ||
    c === 0x205f ||
    c === 0x3000 ||
    c === 0xfeff
  );
}

function commonPrefix(a: number[], b: number[]): number {
  let i = 0;
  while (i < a.length && i < b.length && a[i] === b[i]) i++;
  return i;
}

/**
 * Tokenizes one document in chunks, giving the tokens a whole-document encode would give.
 *
 * A cut is placed at a whitespace run with text on both sides: a paragraph break (two or more
 * newlines) first, then a line break, then a single space, found from CHUNK_CHARS on (after the
 * run, then before it). A cut is kept only if the tokenizer agrees it is a token boundary: the
 * tokens of the CUT_CONTEXT characters before it do not change when the CUT_CONTEXT characters
 * after it are appended (no token spans it). The next chunk is encoded after those same context
 * characters, and its tokens taken after theirs, so what a tokenizer does at the start of a text
 * (SentencePiece's "▁" prefix, a BPE word boundary) happens only where the document starts.
 *
 * For tokenizers whose merges never cross the chosen breaks (SentencePiece/BPE and byte-level BPE
 * on newlines and spaces), the result equals encode(document) exactly. Only when none of the
 * MAX_CUT_CHECKS candidates checks out (or 4 × CHUNK_CHARS characters have no whitespace) is a cut
 * made where a token may span it; that token is then split in two.
 *
 * Cuts depend only on the text, never on how it arrived: push() pieces of any size, then take()
 * until null, then take(true) at the end of the document.
 */
export class ChunkedEncoder {
  private buf = '';
  /** The CUT_CONTEXT characters before buf ('' at the start of the document) and their tokens. */
  private left = '';
  private leftIds: number[] = [];

  private readonly chunkChars: number;

  /** chunkChars (at least 2 × CUT_CONTEXT): where cuts are looked for; a chunk is at most 4 × that. */
  constructor(
    private readonly tokenizer: ModelTokenizer,
    chunkChars = CHUNK_CHARS,
  ) {
    this.chunkChars = Math.max(2 * CUT_CONTEXT, Math.floor(chunkChars));
  }

  private enc(text: string): number[] {
    return this.tokenizer.encode(text, { addBos: false });
  }

  push(text: string): void {
    this.buf += text;
  }

  /** Tokens of the next chunk, or null when more text is needed (or, with final, none is left). */
  take(final = false): number[] | null {
    const maxChunk = 4 * this.chunkChars;
    // What a cut may look at: the chunk, the longest it may be, and the context after it.
    const window = maxChunk + CUT_CONTEXT + 1;
    if (this.buf.length === 0 || (!final && this.buf.length < window)) return null;
    let cut: number;
    let cutIds: number[] | undefined;
    if (this.buf.length <= maxChunk) cut = this.buf.length;
    else ({ cut, leftIds: cutIds } = this.findCut(this.buf.slice(0, Math.min(window, this.buf.length)), maxChunk));
    const text = this.buf.slice(0, cut);
    let ids: number[];
    if (this.left === '') ids = this.enc(text);
    else {
      const all = this.enc(this.left + text);
      ids = all.slice(startsWith(all, this.leftIds) ? this.leftIds.length : commonPrefix(all, this.leftIds));
    }
    this.buf = this.buf.slice(cut);
    if (this.buf.length === 0) {
      this.left = '';
      this.leftIds = [];
    } else {
      this.left = text.length >= CUT_CONTEXT ? text.slice(-CUT_CONTEXT) : (this.left + text).slice(-CUT_CONTEXT);
      this.leftIds = cutIds ?? this.enc(this.left);
    }
    return ids;
  }

  /** Where to cut `b` (the buffer's first `window` characters), and the tokens of the context before the cut when checked. */
  private findCut(b: string, maxChunk: number): { cut: number; leftIds?: number[] } {
    const lo = this.chunkChars;
    const para: number[] = [];
    const line: number[] = [];
    const space: number[] = [];
    // Line and paragraph breaks: whole whitespace runs holding a newline, with text on both sides.
    for (let k = b.indexOf('\n', lo - 1); k >= 0 && k <= maxChunk && para.length < MAX_CUT_CHECKS;) {
      let i = k;
      while (i > 0 && isSpace(b.charCodeAt(i - 1))) i--;
      let j = k + 1;
      while (j < b.length && isSpace(b.charCodeAt(j))) j++;
      // (A run reaching the end of the window is not known to end there.)
      if (i > 0 && j < b.length) {
        let nl = 0;
        for (let x = i; x < j; x++) if (b.charCodeAt(x) === 10) nl++;
        const into = nl >= 2 ? para : line;
        if (j >= lo && j <= maxChunk) into.push(j);
        if (i >= lo && i <= maxChunk) into.push(i);
      }
      k = b.indexOf('\n', j);
    }
    // Word breaks: a single space between two non-spaces (the cut goes before it).
    for (
      let k = b.indexOf(' ', lo);
      k >= 0 && k <= maxChunk && para.length + line.length + space.length < MAX_CUT_CHECKS;
      k = b.indexOf(' ', k + 1)
    ) {
      if (k + 1 < b.length && !isSpace(b.charCodeAt(k - 1)) && !isSpace(b.charCodeAt(k + 1))) space.push(k);
    }
    const candidates = [...para, ...line, ...space];
    for (const c of candidates.slice(0, MAX_CUT_CHECKS)) {
      const L = b.slice(c - CUT_CONTEXT, c);
      const leftIds = this.enc(L);
      if (startsWith(this.enc(L + b.slice(c, c + CUT_CONTEXT)), leftIds)) return { cut: c, leftIds };
    }
    if (candidates.length > 0) return { cut: candidates[0] };
    let cut = maxChunk;
    const code = b.charCodeAt(cut - 1);
    if (code >= 0xd800 && code <= 0xdbff) cut--; // never between the halves of a surrogate pair
    return { cut };
  }
}

/** Tokens of `text` (no BOS), encoded in chunks: the same as tokenizer.encode for the tokenizers ChunkedEncoder describes, in linear time. */
export function encodeChunked(text: string, tokenizer: ModelTokenizer): number[] {
  const e = new ChunkedEncoder(tokenizer);
  e.push(text);
  const out: number[] = [];
  for (let ids = e.take(true); ids !== null; ids = e.take(true)) for (const id of ids) out.push(id);
  return out;
}

export interface SplitOptions {
  seqLen: number;
  fitTokens: number;
  heldoutTokens: number;
  /** Report tokens (default 0: no report split). */
  reportTokens?: number;
  seed: number;
  minFitTokens: number;
  /** The data, as the NOT_ENOUGH_TOKENS message names it. */
  sources: string;
}

/** Cuts a token stream into sequences and splits them into fit and held-out sets (seeded). */
export function splitSequences(stream: ArrayLike<number>, bos: number | undefined, opts: SplitOptions): SequenceSplit {
  const body = bos === undefined ? opts.seqLen : opts.seqLen - 1;
  const seqs: number[][] = [];
  for (let at = 0; at + body <= stream.length; at += body) {
    const s = Array.prototype.slice.call(stream, at, at + body) as number[];
    seqs.push(bos === undefined ? s : [bos, ...s]);
  }
  const rand = mulberry32(opts.seed);
  for (let i = seqs.length - 1; i > 0; i--) {
    const j = Math.floor(rand() * (i + 1));
    [seqs[i], seqs[j]] = [seqs[j], seqs[i]];
  }
  const nHeld = Math.max(1, Math.ceil(opts.heldoutTokens / opts.seqLen));
  const nReport = (opts.reportTokens ?? 0) > 0 ? Math.ceil(opts.reportTokens! / opts.seqLen) : 0;
  const nFit = Math.ceil(opts.fitTokens / opts.seqLen);
  const needMin = nHeld + nReport + Math.ceil(opts.minFitTokens / opts.seqLen);
  if (seqs.length < needMin) {
    const parts = [
      `${Math.ceil(opts.minFitTokens / opts.seqLen) * opts.seqLen} to fit the PCA bases`,
      `${nHeld * opts.seqLen} held out for tuning`,
    ];
    if (nReport > 0) parts.push(`${nReport * opts.seqLen} held out for the report`);
    throw new KvtcError(
      'NOT_ENOUGH_TOKENS',
      `the calibration data (${opts.sources}) gives ${stream.length} tokens = ${seqs.length} sequences of ${opts.seqLen}; ` +
        `the fit needs at least ${needMin * opts.seqLen} tokens (${parts.join(' + ')})`,
      {
        fix: `Add more text with --data (several files or a directory), or lower --heldout${nReport > 0 ? ' / --report-tokens' : ''}.`,
        context: { available: stream.length, needed: needMin * opts.seqLen },
      },
    );
  }
  // Tuning first, then report, then fit: with no report split the tuning and fit sequences are
  // exactly those of a two-way split of the same seed.
  const heldout = seqs.slice(0, nHeld);
  const report = seqs.slice(nHeld, nHeld + nReport);
  const fit = seqs.slice(nHeld + nReport, nHeld + nReport + nFit);
  return { fit, heldout, report, seqLen: opts.seqLen, availableTokens: stream.length };
}

/** Whole documents (each tokenized in chunks, concatenated) → sequences and the seeded split. */
export function buildSequences(texts: string[], tokenizer: ModelTokenizer, opts: SplitOptions): SequenceSplit {
  const stream: number[] = [];
  for (const t of texts) for (const id of encodeChunked(t, tokenizer)) stream.push(id);
  return splitSequences(stream, tokenizer.bosTokenId, opts);
}

/**
 * How many times the needed tokens (2 × (fit + held-out)) readCalibrationTokens tokenizes at most.
 * The whole-document rule alone gives the bundled default 119 363 tokens (2.9 × its 40 960), so
 * 3 leaves its stream, and the committed profile, as they were, while a 4 MB file stops at
 * 122 880 tokens (about 1 s).
 */
export const TOKEN_BUDGET_FACTOR = 3;

export interface CalibrationSource {
  path: string;
  name: string;
  /** sha256 of the whole file's text (BOM excluded), as the profile manifest records it. */
  sha256: string;
  bytes: number;
  /** Tokens it gave to the stream. */
  tokens: number;
  /** False when the token budget was reached in it (the rest was read and checked, not tokenized). */
  whole: boolean;
}

export interface SkippedFile {
  file: string;
  kind: NotUtf8Kind;
  /** The whole message, path first ("x.bin: is binary, not text (…)"). */
  message: string;
  fix: string;
}

export interface CalibrationTokens {
  /** The documents' tokens, concatenated (no BOS). */
  tokens: number[];
  /** The files used, in order. */
  sources: CalibrationSource[];
  /** Files in a directory that are not UTF-8 text, skipped. */
  skipped: SkippedFile[];
  /** The most tokens that were going to be tokenized. */
  budget: number;
}

export interface ReadCalibrationOptions {
  fitTokens: number;
  heldoutTokens: number;
  reportTokens?: number;
  /** Make a non-UTF-8 file in a directory an error, as one given directly is (--strict-data). */
  strict?: boolean;
  signal?: AbortSignal;
  onProgress?: ProgressFn;
  chunkChars?: number;
}

const interrupted = calibrationInterrupted;

const tick = () => new Promise<void>((resolve) => setImmediate(resolve));

/**
 * Reads and tokenizes calibration text (files, or directories of *.txt files, in order) until
 * there is enough, as the module comment says. Files after that are not opened. A file given
 * directly that is not UTF-8 is an error; one found in a directory is skipped and reported
 * (with `strict`, an error). Empty files are errors either way. Between chunks the event loop
 * runs and `signal` is checked: an abort rejects with INTERRUPTED (exit code 130).
 */
export async function readCalibrationTokens(
  paths: string | string[],
  tokenizer: ModelTokenizer,
  opts: ReadCalibrationOptions,
): Promise<CalibrationTokens> {
  const progress = opts.onProgress ?? noProgress;
  const list = await listTextSources(paths);
  const need = 2 * (opts.fitTokens + opts.heldoutTokens + (opts.reportTokens ?? 0));
  const budget = TOKEN_BUDGET_FACTOR * need;
  const tokens: number[] = [];
  const sources: CalibrationSource[] = [];
  const skipped: SkippedFile[] = [];
  let have = 0;
  let lastProgress = 0;
  const check = async () => {
    await tick();
    if (opts.signal?.aborted) throw interrupted();
  };
  if (opts.signal?.aborted) throw interrupted();
  for (const src of list) {
    const reader = await TextFileReader.open(src.path);
    const start = tokens.length;
    const encoder = new ChunkedEncoder(tokenizer, opts.chunkChars);
    let full = false;
    const drainEncoder = async (final: boolean) => {
      for (let ids = encoder.take(final); ids !== null; ids = encoder.take(final)) {
        for (const id of ids) tokens.push(id);
        const now = performance.now();
        if (now - lastProgress > 100) {
          lastProgress = now;
          progress({ stage: 'reading calibration text', done: tokens.length, unit: 'tokens', detail: basename(src.path) });
        }
        await check();
        if (tokens.length >= budget) {
          full = true;
          return;
        }
      }
    };
    try {
      for (let piece = await reader.next(); piece !== null; piece = await reader.next()) {
        if (full) {
          // Past the budget the rest is only checked and hashed (the manifest names the whole file).
          if (opts.signal?.aborted) throw interrupted();
          continue;
        }
        encoder.push(piece);
        await drainEncoder(false);
      }
      if (!full) await drainEncoder(true);
    } catch (e) {
      if (!(e instanceof NotUtf8Error) || src.dir === undefined) throw e;
      tokens.length = start;
      if (opts.strict) {
        throw new KvtcError('DATA_INVALID', e.message, {
          fix: `${e.fix} (--strict-data makes this an error; without it such files are skipped.)`,
          context: e.context,
        });
      }
      skipped.push({ file: src.path, kind: e.notUtf8.kind, message: e.message, fix: e.fix ?? '' });
      continue;
    } finally {
      await reader.close();
    }
    const info = reader.info();
    sources.push({
      path: src.path,
      name: basename(src.path),
      sha256: info.sha256,
      bytes: info.bytes,
      tokens: tokens.length - start,
      whole: !full,
    });
    have += info.chars / 3;
    if (full || have >= need * 1.5) break;
  }
  if (tokens.length > budget) tokens.length = budget;
  if (sources.length === 0) {
    throw new KvtcError('DATA_INVALID', `no UTF-8 text in the calibration data: ${skipped.map((s) => s.message).join('; ')}`, {
      fix: "Point --data at UTF-8 text files (or a directory of them); see each file's problem above.",
      context: { skipped: skipped.map((s) => ({ file: s.file, kind: s.kind })) },
    });
  }
  return { tokens, sources, skipped, budget };
}
