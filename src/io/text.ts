// Tested by test/model/text.test.ts and test/model/text-stream.test.ts.
/**
 * Reads calibration / prompt text: a file, or a directory of *.txt files (sorted by name).
 * Text must be UTF-8 (checked strictly: a bad byte is reported with its offset), without NUL bytes
 * (binary files and UTF-16 are valid UTF-8 often enough), and not empty.
 *
 * Two ways in: readTextFile / readTextSources read whole files into strings; TextFileReader
 * streams one file as decoded pieces (bounded memory, the whole file still checked and hashed),
 * for calibration, which tokenizes only as much as it needs. A file that is not UTF-8 is
 * described by what it looks like (binary, UTF-16, Latin-1 / Windows-1252, damaged UTF-8), with a
 * fix that fits.
 */
import { createHash, type Hash } from 'node:crypto';
import { open, readFile, readdir, stat, type FileHandle } from 'node:fs/promises';
import { join } from 'node:path';
import { KvtcError } from '../errors.js';

export interface TextFile {
  path: string;
  text: string;
  bytes: number;
}

/** Offset of the first byte that is not part of a valid UTF-8 sequence, or -1. */
export function firstInvalidUtf8(b: Uint8Array): number {
  let i = 0;
  while (i < b.length) {
    const n = utf8SequenceLength(b, i);
    if (n === 0) return i;
    i += n;
  }
  return -1;
}

/** Length of the valid UTF-8 sequence at b[i] (1–4), or 0 when it is invalid or truncated. */
function utf8SequenceLength(b: Uint8Array, i: number): number {
  const c = b[i];
  if (c < 0x80) return 1;
  let n: number;
  let min: number;
  if (c >= 0xc2 && c <= 0xdf) [n, min] = [1, 0x80];
  else if (c >= 0xe0 && c <= 0xef) [n, min] = [2, 0x800];
  else if (c >= 0xf0 && c <= 0xf4) [n, min] = [3, 0x10000];
  else return 0;
  let cp = c & (0x3f >> n);
  for (let k = 1; k <= n; k++) {
    const cc = b[i + k];
    if (cc === undefined || (cc & 0xc0) !== 0x80) return 0;
    cp = (cp << 6) | (cc & 0x3f);
  }
  if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) return 0;
  return n + 1;
}

/** What a file that is not valid UTF-8 looks like. */
export type NotUtf8Kind = 'binary' | 'utf-16' | 'damaged-utf-8' | 'windows-1252' | 'latin1';

export interface NotUtf8 {
  kind: NotUtf8Kind;
  /** Offset of the first byte that is not valid UTF-8. */
  offset: number;
  /** "is binary, not text (…)" and the like, without the path. */
  problem: string;
  fix: string;
}

function shellQuote(s: string): string {
  return /^[\w@%+=:,./-]+$/.test(s) ? s : `'${s.replaceAll("'", "'\\''")}'`;
}

function iconvFix(path: string, from: string, why: string): string {
  const p = shellQuote(path);
  const tmp = shellQuote(`${path}.utf8`);
  return `Convert it to UTF-8${why}, e.g. \`iconv -f ${from} -t utf-8 ${p} > ${tmp} && mv ${tmp} ${p}\`.`;
}

/**
 * Describes a file that is not UTF-8 text: `sample` is the start of the file (the first MiB is
 * plenty), `offset` the first byte that is not valid UTF-8, or the first NUL byte when `nul` (a
 * NUL is valid UTF-8 but never in text), found by the caller, possibly beyond the sample.
 *
 * - NUL bytes (not in the UTF-16 pattern) or more than 5% control bytes: binary, not text;
 * - a UTF-16 byte-order mark, or NULs in every other byte: UTF-16 text;
 * - more valid multi-byte UTF-8 sequences than invalid bytes: UTF-8 with damage;
 * - otherwise 8-bit text: Windows-1252 when it uses 0x80–0x9F (quotes and dashes there; C1
 *   controls in Latin-1), else Latin-1.
 */
export function describeNotUtf8(path: string, sample: Uint8Array, offset: number, nulAtOffset = false): NotUtf8 {
  const n = sample.length;
  const byteAt = (at: number) => (at < n ? ` (byte 0x${sample[at].toString(16).padStart(2, '0')} at offset ${at})` : ` (at offset ${at})`);
  const removeFix = 'Remove it from the calibration data, or point --data at the text files (a .txt file or a directory of them).';
  if (n >= 2 && ((sample[0] === 0xff && sample[1] === 0xfe) || (sample[0] === 0xfe && sample[1] === 0xff))) {
    return {
      kind: 'utf-16',
      offset,
      problem: 'is UTF-16 text (it starts with a UTF-16 byte-order mark), not UTF-8',
      fix: iconvFix(path, 'utf-16', ''),
    };
  }
  let nul = 0;
  let nulOdd = 0;
  let firstNul = -1;
  let ctrl = 0;
  let high = 0;
  let c1 = 0;
  for (let i = 0; i < n; i++) {
    const c = sample[i];
    if (c === 0) {
      nul++;
      if (i & 1) nulOdd++;
      if (firstNul < 0) firstNul = i;
    } else if ((c < 0x20 && !(c >= 0x09 && c <= 0x0d)) || c === 0x7f) ctrl++;
    else if (c >= 0x80) {
      high++;
      if (c <= 0x9f) c1++;
    }
  }
  if (nulAtOffset && firstNul < 0) firstNul = offset;
  if (nul > 0 || nulAtOffset) {
    // UTF-16 without a BOM: mostly-ASCII text puts a NUL in every other byte.
    if (nul > 0 && nul >= n / 4 && (nulOdd >= 0.95 * nul || nul - nulOdd >= 0.95 * nul)) {
      return {
        kind: 'utf-16',
        offset,
        problem: `is UTF-16 text (${nulOdd >= 0.95 * nul ? 'little' : 'big'}-endian, no byte-order mark), not UTF-8`,
        fix: iconvFix(path, nulOdd >= 0.95 * nul ? 'utf-16le' : 'utf-16be', ''),
      };
    }
    return { kind: 'binary', offset, problem: `is binary, not text (a NUL byte at offset ${firstNul})`, fix: removeFix };
  }
  if (ctrl > 0.05 * n) {
    return {
      kind: 'binary',
      offset,
      problem: `is binary, not text (${Math.round((100 * ctrl) / n)}% of its first ${n} bytes are control bytes)`,
      fix: removeFix,
    };
  }
  let valid = 0;
  let invalid = 0;
  for (let i = 0; i < n;) {
    if (sample[i] < 0x80) {
      i++;
      continue;
    }
    const len = utf8SequenceLength(sample, i);
    if (len === 0) {
      // A sequence cut by the end of the sample is not damage.
      if (i < n - 3) invalid++;
      i++;
    } else {
      valid++;
      i += len;
    }
  }
  const head = `is not valid UTF-8${byteAt(offset)}`;
  if (valid > 0 && valid >= invalid) {
    return {
      kind: 'damaged-utf-8',
      offset,
      problem: `${head}; it is mostly UTF-8 (${valid} valid multi-byte characters, ${Math.max(invalid, 1)} bad byte${invalid > 1 ? 's' : ''}): damaged or mixed encodings`,
      fix: `Repair or re-export the file; \`iconv -f utf-8 -t utf-8 -c ${shellQuote(path)} > ${shellQuote(`${path}.utf8`)}\` drops the bad bytes.`,
    };
  }
  if (c1 > 0) {
    return {
      kind: 'windows-1252',
      offset,
      problem: `${head}; it reads as Windows-1252 text (${high} bytes above 0x7f, some in 0x80–0x9f: curly quotes, dashes)`,
      fix: iconvFix(path, 'windows-1252', ' (if it is in another 8-bit encoding, name that after -f)'),
    };
  }
  return {
    kind: 'latin1',
    offset,
    problem: `${head}; it reads as Latin-1 text (${high} byte${high === 1 ? '' : 's'} above 0x7f)`,
    fix: iconvFix(path, 'latin1', ' (if it is in another 8-bit encoding, name that after -f)'),
  };
}

function dataInvalid(path: string, message: string, fix: string, context: Record<string, unknown> = {}): KvtcError {
  return new KvtcError('DATA_INVALID', `${path}: ${message}`, { fix, context: { file: path, ...context } });
}

/** The DATA_INVALID error for a file that is not UTF-8 (context.kind says what it looks like). */
export function notUtf8Error(path: string, d: NotUtf8): KvtcError {
  return dataInvalid(path, d.problem, d.fix, { offset: d.offset, kind: d.kind });
}

/** Thrown by TextFileReader.next() for a file that is not UTF-8; `notUtf8` describes it. */
export class NotUtf8Error extends KvtcError {
  constructor(
    readonly path: string,
    readonly notUtf8: NotUtf8,
  ) {
    super('DATA_INVALID', `${path}: ${notUtf8.problem}`, {
      fix: notUtf8.fix,
      context: { file: path, offset: notUtf8.offset, kind: notUtf8.kind },
    });
  }
}

const SAMPLE_BYTES = 1 << 20;

function cannotRead(path: string, e: unknown): KvtcError {
  const code = (e as NodeJS.ErrnoException).code;
  return dataInvalid(path, code === 'ENOENT' ? 'no such file' : `cannot read (${code ?? (e as Error).message})`, 'Check the path.');
}

/** Reads one UTF-8 text file (a leading BOM is dropped). */
export async function readTextFile(path: string): Promise<TextFile> {
  let buf: Buffer;
  try {
    buf = await readFile(path);
  } catch (e) {
    throw cannotRead(path, e);
  }
  const bytes = new Uint8Array(buf.buffer, buf.byteOffset, buf.byteLength);
  let text: string;
  try {
    text = new TextDecoder('utf-8', { fatal: true }).decode(bytes);
  } catch {
    throw notUtf8Error(path, describeNotUtf8(path, bytes.subarray(0, SAMPLE_BYTES), firstInvalidUtf8(bytes)));
  }
  const nul = bytes.indexOf(0);
  if (nul >= 0) throw notUtf8Error(path, describeNotUtf8(path, bytes.subarray(0, SAMPLE_BYTES), nul, true));
  if (text.charCodeAt(0) === 0xfeff) text = text.slice(1);
  if (text.trim().length === 0) throw emptyError(path, bytes.byteLength);
  return { path, text, bytes: bytes.byteLength };
}

function emptyError(path: string, bytes: number): KvtcError {
  return dataInvalid(path, bytes === 0 ? 'is empty' : 'contains only whitespace', 'Give a file with some text in it.');
}

/** One text file to read: given directly, or found in a directory (`dir`). */
export interface TextSource {
  path: string;
  /** The directory it was listed from; undefined for a file given directly. */
  dir?: string;
}

/** A file, or every *.txt directly inside a directory (sorted by name); several paths concatenate. Nothing is read yet. */
export async function listTextSources(paths: string | string[]): Promise<TextSource[]> {
  const out: TextSource[] = [];
  for (const p of Array.isArray(paths) ? paths : [paths]) {
    let isDir: boolean;
    try {
      isDir = (await stat(p)).isDirectory();
    } catch {
      throw dataInvalid(p, 'no such file or directory', 'Check the path.');
    }
    if (!isDir) {
      out.push({ path: p });
      continue;
    }
    const names = (await readdir(p)).filter((n) => n.endsWith('.txt')).sort();
    if (names.length === 0) throw dataInvalid(p, 'directory has no .txt files', 'Put UTF-8 .txt files in it, or pass a file.');
    for (const n of names) out.push({ path: join(p, n), dir: p });
  }
  return out;
}

/** A file, or every *.txt directly inside a directory (sorted by name); several paths concatenate. */
export async function readTextSources(paths: string | string[]): Promise<TextFile[]> {
  const out: TextFile[] = [];
  for (const s of await listTextSources(paths)) out.push(await readTextFile(s.path));
  return out;
}

/** What TextFileReader knows once a file has been read to its end. */
export interface TextFileInfo {
  path: string;
  bytes: number;
  /** Length of the text in UTF-16 code units (String.length), BOM excluded. */
  chars: number;
  /** sha256 of the text (UTF-8, BOM excluded): the same as sha256 of readTextFile's text. */
  sha256: string;
}

/**
 * Streams one UTF-8 text file as decoded pieces of at most `blockBytes` bytes each, exactly the
 * text readTextFile returns (a leading BOM dropped), in bounded memory. The whole file is
 * checked and hashed as it goes; next() throws NotUtf8Error at the first bad byte (or NUL), and the
 * DATA_INVALID "is empty" / "contains only whitespace" error at the end of such a file.
 */
export class TextFileReader {
  private decoder = new TextDecoder('utf-8', { fatal: true });
  private hash: Hash = createHash('sha256');
  private bytes = 0;
  private chars = 0;
  private first = true;
  private nonBlank = false;
  private done = false;
  private tail = new Uint8Array(0);
  private digest?: string;
  private block: Buffer;

  private constructor(
    readonly path: string,
    private fh: FileHandle,
    blockBytes: number,
  ) {
    this.block = Buffer.allocUnsafe(blockBytes);
  }

  static async open(path: string, opts: { blockBytes?: number } = {}): Promise<TextFileReader> {
    try {
      return new TextFileReader(path, await open(path, 'r'), opts.blockBytes ?? 1 << 16);
    } catch (e) {
      throw cannotRead(path, e);
    }
  }

  /** The next piece of text (never empty), or null at the end of the file. */
  async next(): Promise<string | null> {
    while (!this.done) {
      let n: number;
      try {
        n = (await this.fh.read(this.block, 0, this.block.length, null)).bytesRead;
      } catch (e) {
        throw cannotRead(this.path, e);
      }
      const chunk = this.block.subarray(0, n);
      let text: string;
      try {
        text = n === 0 ? this.decoder.decode() : this.decoder.decode(chunk, { stream: true });
      } catch {
        throw await this.notUtf8(chunk);
      }
      // A NUL byte is valid UTF-8 but never text (and only ever the NUL character).
      const nul = chunk.indexOf(0);
      if (nul >= 0) throw await this.describe(this.bytes + nul, true);
      if (n === 0) this.done = true;
      else {
        this.bytes += n;
        // The stream's last 3 bytes (an unfinished sequence may span several small blocks).
        const t = new Uint8Array(Math.min(3, this.tail.length + n));
        const fromTail = t.length - Math.min(n, t.length);
        t.set(this.tail.subarray(this.tail.length - fromTail), 0);
        t.set(chunk.subarray(n - (t.length - fromTail)), fromTail);
        this.tail = t;
      }
      if (this.first && text.length > 0) {
        this.first = false;
        if (text.charCodeAt(0) === 0xfeff) text = text.slice(1); // a second BOM, as readTextFile drops it
      }
      if (this.done && !this.nonBlank && !/\S/.test(text)) throw emptyError(this.path, this.bytes);
      if (text.length === 0) continue;
      if (!this.nonBlank && /\S/.test(text)) this.nonBlank = true;
      this.hash.update(text);
      this.chars += text.length;
      return text;
    }
    return null;
  }

  /** Reads to the end without returning text (still checking and hashing it). */
  async drain(signal?: AbortSignal, onBlock?: () => Promise<void>): Promise<void> {
    while ((await this.next()) !== null) {
      if (signal?.aborted) return;
      await onBlock?.();
    }
  }

  /** Valid once next() has returned null. */
  info(): TextFileInfo {
    this.digest ??= this.hash.digest('hex');
    return { path: this.path, bytes: this.bytes, chars: this.chars, sha256: this.digest };
  }

  async close(): Promise<void> {
    await this.fh.close().catch(() => {});
  }

  /** Locates the first bad byte (the bytes before `chunk` were valid) and describes the file. */
  private async notUtf8(chunk: Uint8Array): Promise<NotUtf8Error> {
    // Up to 3 bytes of an unfinished sequence may be pending from the previous block.
    let back = 0;
    for (let k = 1; k <= this.tail.length; k++) {
      const c = this.tail[this.tail.length - k];
      if ((c & 0xc0) !== 0x80) {
        const need = c >= 0xf0 ? 4 : c >= 0xe0 ? 3 : c >= 0xc0 ? 2 : 1;
        if (need > k) back = k;
        break;
      }
    }
    const joined = new Uint8Array(back + chunk.length);
    joined.set(this.tail.subarray(this.tail.length - back), 0);
    joined.set(chunk, back);
    const at = firstInvalidUtf8(joined);
    return this.describe(this.bytes - back + (at < 0 ? 0 : at), false);
  }

  private async describe(offset: number, nul: boolean): Promise<NotUtf8Error> {
    const sample = Buffer.alloc(SAMPLE_BYTES);
    let got = 0;
    try {
      got = (await this.fh.read(sample, 0, SAMPLE_BYTES, 0)).bytesRead;
    } catch {
      got = 0;
    }
    this.done = true;
    return new NotUtf8Error(this.path, describeNotUtf8(this.path, sample.subarray(0, got), offset, nul));
  }
}
