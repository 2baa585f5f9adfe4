/**
 * Reads calibration / prompt text: a file, or a directory of *.txt files (sorted by name).
 * Text must be UTF-8 (checked strictly: a bad byte is reported with its offset) and not empty.
 */
import { readFile, readdir, stat } from 'node:fs/promises';
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
    const c = b[i];
    if (c < 0x80) {
      i++;
      continue;
    }
    let n: number;
    let min: number;
    if (c >= 0xc2 && c <= 0xdf) [n, min] = [1, 0x80];
    else if (c >= 0xe0 && c <= 0xef) [n, min] = [2, 0x800];
    else if (c >= 0xf0 && c <= 0xf4) [n, min] = [3, 0x10000];
    else return i;
    let cp = c & (0x3f >> n);
    for (let k = 1; k <= n; k++) {
      const cc = b[i + k];
      if (cc === undefined || (cc & 0xc0) !== 0x80) return i;
      cp = (cp << 6) | (cc & 0x3f);
    }
    if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) return i;
    i += n + 1;
  }
  return -1;
}

function dataInvalid(path: string, message: string, fix: string, context: Record<string, unknown> = {}): KvtcError {
  return new KvtcError('DATA_INVALID', `${path}: ${message}`, { fix, context: { file: path, ...context } });
}

/** Reads one UTF-8 text file (a leading BOM is dropped). */
export async function readTextFile(path: string): Promise<TextFile> {
  let buf: Buffer;
  try {
    buf = await readFile(path);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    throw dataInvalid(path, code === 'ENOENT' ? 'no such file' : `cannot read (${code ?? (e as Error).message})`, 'Check the path.');
  }
  const bytes = new Uint8Array(buf.buffer, buf.byteOffset, buf.byteLength);
  let text: string;
  try {
    text = new TextDecoder('utf-8', { fatal: true }).decode(bytes);
  } catch {
    const at = firstInvalidUtf8(bytes);
    throw dataInvalid(path, `is not valid UTF-8 (byte 0x${bytes[at]?.toString(16).padStart(2, '0')} at offset ${at})`, 'Convert the file to UTF-8, e.g. `iconv -f latin1 -t utf-8 in.txt > out.txt`.', { offset: at });
  }
  if (text.charCodeAt(0) === 0xfeff) text = text.slice(1);
  if (text.trim().length === 0) throw dataInvalid(path, bytes.byteLength === 0 ? 'is empty' : 'contains only whitespace', 'Give a file with some text in it.');
  return { path, text, bytes: bytes.byteLength };
}

/** A file, or every *.txt directly inside a directory (sorted by name); several paths concatenate. */
export async function readTextSources(paths: string | string[]): Promise<TextFile[]> {
  const out: TextFile[] = [];
  for (const p of Array.isArray(paths) ? paths : [paths]) {
    let isDir: boolean;
    try {
      isDir = (await stat(p)).isDirectory();
    } catch {
      throw dataInvalid(p, 'no such file or directory', 'Check the path.');
    }
    if (!isDir) {
      out.push(await readTextFile(p));
      continue;
    }
    const names = (await readdir(p)).filter((n) => n.endsWith('.txt')).sort();
    if (names.length === 0) throw dataInvalid(p, 'directory has no .txt files', 'Put UTF-8 .txt files in it, or pass a file.');
    for (const n of names) out.push(await readTextFile(join(p, n)));
  }
  return out;
}
