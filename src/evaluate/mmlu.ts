/**
 * MMLU data: an RFC 4180 CSV reader and the per-subject loader.
 *
 * Two layouts are read:
 *  - with header `question,choice0,choice1,choice2,choice3,answer`, answer 0–3
 *    (the Hugging Face `cais/mmlu` export; what data/mmlu ships);
 *  - the original hendrycks/test release: headerless, 6 columns, answer A–D.
 * Files are `<dir>/<split>/<subject>_<split>.csv`.
 */
import { readdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { KvtcError } from '../errors.js';

export type MmluSplit = 'test' | 'dev';

export interface MmluQuestion {
  subject: string;
  question: string;
  choices: [string, string, string, string];
  /** Gold answer index: 0 = A … 3 = D. */
  answer: 0 | 1 | 2 | 3;
  /** 1-based line of the file where this record starts (for error messages). */
  line: number;
}

export interface CsvRecord {
  fields: string[];
  /** 1-based physical line where the record starts. */
  line: number;
}

const HEADER = ['question', 'choice0', 'choice1', 'choice2', 'choice3', 'answer'];

/**
 * Parse RFC 4180 CSV: fields separated by commas, records by CRLF or LF; a quoted field
 * may hold commas, line breaks and doubled quotes (`""` → `"`). Lenient where readers
 * agree (a lone `"` inside an unquoted field is kept literally, as Python's csv does);
 * strict where data would be lost (an unterminated quote, text after a closing quote).
 * Blank lines are skipped, a leading UTF-8 BOM is dropped.
 */
export function parseCsv(text: string, file = '<csv>'): CsvRecord[] {
  const records: CsvRecord[] = [];
  let i = text.charCodeAt(0) === 0xfeff ? 1 : 0;
  let line = 1;
  const n = text.length;
  while (i < n) {
    const startLine = line;
    const fields: string[] = [];
    let firstQuoted = false;
    let endOfRecord = false;
    while (!endOfRecord) {
      let value = '';
      if (text[i] === '"') {
        if (fields.length === 0) firstQuoted = true;
        i++;
        for (;;) {
          const q = text.indexOf('"', i);
          if (q < 0) {
            throw new KvtcError('DATA_INVALID', `${file}:${startLine}: unterminated quoted field`, {
              context: { file, line: startLine },
              fix: 'Close the quoted field with `"` and write a quote inside a field as `""` (RFC 4180).',
            });
          }
          const chunk = text.slice(i, q);
          for (let k = chunk.indexOf('\n'); k >= 0; k = chunk.indexOf('\n', k + 1)) line++;
          value += chunk;
          if (text[q + 1] === '"') {
            value += '"';
            i = q + 2;
            continue;
          }
          i = q + 1;
          break;
        }
        const after = text[i];
        if (i < n && after !== ',' && after !== '\n' && after !== '\r') {
          throw new KvtcError('DATA_INVALID', `${file}:${line}: unexpected text after a closing quote`, {
            context: { file, line },
            fix: 'Quote the whole field and double any quote inside it (`""`).',
          });
        }
      } else {
        const start = i;
        while (i < n && text[i] !== ',' && text[i] !== '\n' && text[i] !== '\r') i++;
        value = text.slice(start, i);
      }
      fields.push(value);
      if (i >= n) {
        endOfRecord = true;
      } else if (text[i] === ',') {
        i++;
      } else {
        // CRLF, LF or a lone CR ends the record.
        if (text[i] === '\r' && text[i + 1] === '\n') i++;
        i++;
        line++;
        endOfRecord = true;
      }
    }
    // A record of one empty unquoted field is a blank line; `""` alone is a real record.
    const blank = fields.length === 1 && fields[0] === '' && !firstQuoted;
    if (!blank) records.push({ fields, line: startLine });
  }
  return records;
}

function isHeader(fields: string[]): boolean {
  return fields.length === HEADER.length && fields.every((f, k) => f.trim().toLowerCase() === HEADER[k]);
}

function parseAnswer(raw: string): 0 | 1 | 2 | 3 | undefined {
  const s = raw.trim();
  const digit = '0123'.indexOf(s);
  if (s.length === 1 && digit >= 0) return digit as 0 | 1 | 2 | 3;
  const letter = 'ABCD'.indexOf(s.toUpperCase());
  if (s.length === 1 && letter >= 0) return letter as 0 | 1 | 2 | 3;
  return undefined;
}

/** Parse one subject's CSV text (either layout) into questions. */
export function parseMmluCsv(text: string, file: string, subject: string): MmluQuestion[] {
  const records = parseCsv(text, file);
  const body = records.length > 0 && isHeader(records[0].fields) ? records.slice(1) : records;
  return body.map(({ fields, line }) => {
    if (fields.length !== HEADER.length) {
      throw new KvtcError('DATA_INVALID', `${file}:${line}: expected 6 columns (question, 4 choices, answer), found ${fields.length}`, {
        context: { file, line, columns: fields.length },
        fix: 'Quote fields that contain commas or line breaks ("a, b"), and double quotes inside them ("").',
      });
    }
    const answer = parseAnswer(fields[5]);
    if (answer === undefined) {
      throw new KvtcError('DATA_INVALID', `${file}:${line}: answer must be 0-3 or A-D, got ${JSON.stringify(fields[5])}`, {
        context: { file, line, answer: fields[5] },
        fix: 'Write the gold answer as 0, 1, 2 or 3 (header layout) or A, B, C or D (original layout).',
      });
    }
    return {
      subject,
      question: fields[0],
      choices: [fields[1], fields[2], fields[3], fields[4]],
      answer,
      line,
    };
  });
}

export function subjectFile(dir: string, subject: string, split: MmluSplit): string {
  return join(dir, split, `${subject}_${split}.csv`);
}

/** Load `<dir>/<split>/<subject>_<split>.csv`. A missing file is DATA_INVALID with the path. */
export async function loadSubject(dir: string, subject: string, split: MmluSplit): Promise<MmluQuestion[]> {
  const file = subjectFile(dir, subject, split);
  let text: string;
  try {
    text = await readFile(file, 'utf8');
  } catch (cause) {
    if ((cause as NodeJS.ErrnoException).code === 'ENOENT') {
      throw new KvtcError('DATA_INVALID', `MMLU ${split} split for "${subject}" not found: ${file}`, {
        cause,
        context: { file, subject, split },
        fix:
          split === 'dev'
            ? `Few-shot prompts take their examples from the dev split: add ${file}, or run with --shots 0.`
            : `Add ${file} (CSV: question,choice0,choice1,choice2,choice3,answer) or point --data at an MMLU directory with ${split}/ inside.`,
      });
    }
    throw cause;
  }
  return parseMmluCsv(text, file, subject);
}

/** Subjects that have a file in `<dir>/<split>/`, sorted. */
export async function listSubjects(dir: string, split: MmluSplit = 'test'): Promise<string[]> {
  const folder = join(dir, split);
  let names: string[];
  try {
    names = await readdir(folder);
  } catch (cause) {
    throw new KvtcError('DATA_INVALID', `MMLU directory has no ${split}/ folder: ${folder}`, {
      cause,
      context: { dir, split },
      fix: `Point --data at a directory holding ${split}/<subject>_${split}.csv files.`,
    });
  }
  const suffix = `_${split}.csv`;
  return names
    .filter((f) => f.endsWith(suffix))
    .map((f) => f.slice(0, -suffix.length))
    .sort();
}
