/** Calibration text → tokens: chunked tokenization equals whole-document tokenization, the budget stops reading early, Ctrl-C acts between chunks. */
import { createHash } from 'node:crypto';
import { readFileSync, readdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import {
  ChunkedEncoder,
  encodeChunked,
  readCalibrationTokens,
  splitSequences,
  TOKEN_BUDGET_FACTOR,
} from '../../src/calibrate/sequences.js';
import { readTextSources } from '../../src/io/text.js';
import { loadTokenizer, type ModelTokenizer } from '../../src/model/tokenizer.js';
import { DEFAULT_CALIBRATION_DIR, DEFAULT_MODEL_DIR } from '../../src/paths.js';
import { mulberry32 } from '../../src/random.js';
import { tempDir } from '../model/helpers.js';

let stories: ModelTokenizer;

/**
 * `t` with every encode call recorded: its length in characters, and whether `signal` had been
 * aborted when it began (tokenization work counted instead of timed). `onEncode` runs at each call.
 */
function counting(t: ModelTokenizer, o: { signal?: AbortSignal; onEncode?: (chars: number) => void } = {}) {
  const calls: { chars: number; afterAbort: boolean }[] = [];
  const tokenizer: ModelTokenizer = {
    addsBos: t.addsBos,
    bosTokenId: t.bosTokenId,
    eosTokenId: t.eosTokenId,
    decode: (ids, d) => t.decode(ids, d),
    encode: (text, e) => {
      calls.push({ chars: text.length, afterAbort: o.signal?.aborted === true });
      o.onEncode?.(text.length);
      return t.encode(text, e);
    },
  };
  return { tokenizer, calls };
}
beforeAll(async () => {
  stories = await loadTokenizer(DEFAULT_MODEL_DIR);
});

const WORDS =
  'the a of and to in that it was he for on are with as his they be at one have this from or had by word but what some we can out other were all there when up use your how said an each she which do their time if will way about many then them write would like so these her long make thing see him two has look more day could go come did number sound no most people my over know water than call first who may down side been now find'.split(
    ' ',
  );

/** Deterministic English-like text: words, punctuation, lines and paragraphs, about `chars` long. */
function generatedText(chars: number, seed = 1): string {
  const rand = mulberry32(seed);
  const parts: string[] = [];
  let n = 0;
  let line = 0;
  while (n < chars) {
    let s = '';
    const words = 6 + Math.floor(rand() * 10);
    for (let w = 0; w < words; w++) s += (w ? ' ' : '') + WORDS[Math.floor(rand() * WORDS.length)];
    s = s[0].toUpperCase() + s.slice(1) + (rand() < 0.2 ? '?' : '.');
    line++;
    s += line % 5 === 0 ? '\n\n' : '\n';
    parts.push(s);
    n += s.length;
  }
  return parts.join('');
}

/** A small GPT-2 style tokenizer (byte-level BPE, leading space added) with a merge of two newlines. */
function byteLevelTokenizerDir(): string {
  const bs: number[] = [];
  for (let b = 33; b <= 126; b++) bs.push(b);
  for (let b = 161; b <= 172; b++) bs.push(b);
  for (let b = 174; b <= 255; b++) bs.push(b);
  const cs = [...bs];
  let n = 0;
  for (let b = 0; b < 256; b++) {
    if (!bs.includes(b)) {
      bs.push(b);
      cs.push(256 + n++);
    }
  }
  const vocab: Record<string, number> = {};
  bs.forEach((b, i) => (vocab[String.fromCharCode(cs[i])] = b));
  const merges = ['Ċ Ċ', 'Ġ t', 'h e', 'Ġt he', 'Ġ a', 'n d', 'Ġa nd', 'Ġ w', 'o r', 'Ġw or'];
  for (const m of merges) vocab[m.replace(' ', '')] = Object.keys(vocab).length;
  const dir = tempDir('kvtc-bytelevel-');
  writeFileSync(
    join(dir, 'tokenizer.json'),
    JSON.stringify({
      version: '1.0',
      truncation: null,
      padding: null,
      added_tokens: [],
      normalizer: null,
      pre_tokenizer: { type: 'ByteLevel', add_prefix_space: true, trim_offsets: true, use_regex: true },
      post_processor: null,
      decoder: { type: 'ByteLevel', add_prefix_space: true, trim_offsets: true, use_regex: true },
      model: {
        type: 'BPE',
        dropout: null,
        unk_token: null,
        continuing_subword_prefix: '',
        end_of_word_suffix: '',
        fuse_unk: false,
        byte_fallback: false,
        vocab,
        merges,
      },
    }),
  );
  return dir;
}

/** The text selection and tokenization calibrate used before streaming: whole documents, whole-document encodes. */
async function oldStream(fit: number, held: number): Promise<number[]> {
  const texts = await readTextSources([DEFAULT_CALIBRATION_DIR]);
  const need = 2 * (fit + held);
  const stream: number[] = [];
  let have = 0;
  for (const t of texts) {
    for (const id of stories.encode(t.text, { addBos: false })) stream.push(id);
    have += t.text.length / 3;
    if (have >= need * 1.5) break;
  }
  return stream;
}

describe('chunked tokenization', () => {
  it('gives exactly the tokens of a whole-document encode on the bundled calibration text', () => {
    // Every fourth document (the first fourteen are checked through the default stream below) and tinyshakespeare's start.
    const names = readdirSync(DEFAULT_CALIBRATION_DIR)
      .filter((n) => n.endsWith('.txt'))
      .sort()
      .filter((n, i) => i % 4 === 3 || n.startsWith('tiny'));
    for (const n of names) {
      let text = readFileSync(join(DEFAULT_CALIBRATION_DIR, n), 'utf8');
      if (text.length > 60_000) text = text.slice(0, 60_000);
      expect(encodeChunked(text, stories), n).toEqual(stories.encode(text, { addBos: false }));
    }
  });

  it('is exact on awkward text: CRLF, tabs, runs of blank lines and spaces, emoji and CJK, a long line with no newline, "<s>"', () => {
    const rand = mulberry32(7);
    const bits = [
      'Hello world. ',
      '\r\n',
      '\n\n\n',
      '  \n \n',
      '\t',
      '😀',
      '日本語のテキスト',
      'naïve café ',
      '<s>',
      '    ',
      'x'.repeat(300),
      '\n',
    ];
    let text = '';
    while (text.length < 60_000) text += bits[Math.floor(rand() * bits.length)];
    text += 'word '.repeat(8000); // 40 000 characters without a newline
    expect(encodeChunked(text, stories)).toEqual(stories.encode(text, { addBos: false }));
  });

  it('cuts where the text says, whatever the size of the pieces it arrives in', () => {
    const text = generatedText(50_000, 3);
    const whole = encodeChunked(text, stories);
    const e = new ChunkedEncoder(stories);
    const got: number[] = [];
    const rand = mulberry32(5);
    for (let at = 0; at < text.length;) {
      const n = 1 + Math.floor(rand() * 3000);
      e.push(text.slice(at, at + n));
      at += n;
      for (let ids = e.take(); ids !== null; ids = e.take()) got.push(...ids);
    }
    for (let ids = e.take(true); ids !== null; ids = e.take(true)) got.push(...ids);
    expect(got).toEqual(whole);
  });

  it('is exact for a byte-level BPE (GPT-2 style) where "\\n\\n" at the end of a text is one token but two inside it', async () => {
    const gpt2 = await loadTokenizer(byteLevelTokenizerDir());
    const text = generatedText(60_000, 4);
    // The quirk the cut check guards against: cutting after a paragraph break changes the tokens.
    const at = text.indexOf('\n\n') + 2;
    const head = gpt2.encode(text.slice(0, at));
    expect(gpt2.encode(text).slice(0, head.length)).not.toEqual(head);
    expect(encodeChunked(text, gpt2)).toEqual(gpt2.encode(text));
  });

  it("hides a tokenizer's start-of-text behaviour at the cuts (a marker a text starts with)", () => {
    // A fake tokenizer: one id per UTF-16 unit, after a start marker every text gets.
    const fake: ModelTokenizer = { addsBos: false, encode: (t) => [-1, ...Array.from(t, (c) => c.charCodeAt(0))], decode: () => '' };
    const text = generatedText(30_000, 9);
    expect(encodeChunked(text, fake)).toEqual(fake.encode(text));
  });

  it('still loses no text when no cut checks out (a tokenizer that marks the last token of every text)', () => {
    const fake: ModelTokenizer = {
      addsBos: false,
      encode: (t) => Array.from(t, (c, i) => c.charCodeAt(0) + (i === t.length - 1 ? 1e6 : 0)),
      decode: () => '',
    };
    const text = generatedText(30_000, 11);
    const ids = encodeChunked(text, fake);
    const plain = ids.map((id) => id % 1e6);
    // Each cut repeats the one character whose token changed there; nothing is dropped.
    expect(ids.length).toBeGreaterThanOrEqual(text.length);
    expect(ids.length).toBeLessThan(text.length + 30_000 / 4096 + 2);
    expect(String.fromCharCode(...plain.slice(0, 4000))).toBe(text.slice(0, 4000));
  });
});

describe('reading calibration text', () => {
  it('gives the bundled default the token stream of the whole-document reader it replaces (the committed profile re-derives)', async () => {
    const d = await readCalibrationTokens([DEFAULT_CALIBRATION_DIR], stories, { fitTokens: 16384, heldoutTokens: 4096 });
    const old = await oldStream(16384, 4096);
    expect(d.tokens.length).toBe(old.length);
    expect(d.tokens).toEqual(old);
    expect(d.sources.map((s) => s.name)).toEqual(
      readdirSync(DEFAULT_CALIBRATION_DIR)
        .filter((n) => n.endsWith('.txt'))
        .sort()
        .slice(0, d.sources.length),
    );
    expect(d.skipped).toEqual([]);
    // The manifest's source hashes are the files' text hashes.
    for (const s of d.sources) expect(s.sha256).toBe(createHash('sha256').update(readFileSync(s.path, 'utf8')).digest('hex'));
    const split = splitSequences(d.tokens, stories.bosTokenId, {
      seqLen: 512,
      fitTokens: 16384,
      heldoutTokens: 4096,
      seed: 0,
      minFitTokens: 256,
      sources: 'x',
    });
    expect(split.fit.length).toBe(32);
    expect(split.heldout.length).toBe(8);
  });

  describe('a 4 MB file', () => {
    let file: string;
    beforeAll(() => {
      file = join(tempDir('kvtc-seq-'), 'big.txt');
      writeFileSync(file, generatedText(4_000_000, 2));
    });

    it('is tokenized only up to the token budget (a fraction of its text), and still checked and hashed to its end', async () => {
      const { tokenizer, calls } = counting(stories);
      const d = await readCalibrationTokens([file], tokenizer, { fitTokens: 16384, heldoutTokens: 4096 });
      const budget = TOKEN_BUDGET_FACTOR * 2 * (16384 + 4096);
      expect(d.budget).toBe(budget);
      expect(d.tokens.length).toBe(budget);
      // The work done, counted rather than timed: well under half of the 4 MB went through the tokenizer.
      const encoded = calls.reduce((a, c) => a + c.chars, 0);
      expect(encoded).toBeLessThan(readFileSync(file).length / 2);
      expect(d.sources).toHaveLength(1);
      expect(d.sources[0].whole).toBe(false);
      expect(d.sources[0].bytes).toBe(readFileSync(file).length);
      expect(d.sources[0].sha256).toBe(createHash('sha256').update(readFileSync(file)).digest('hex'));
      // The same tokens as the start of a whole-document encode (of enough of its start).
      const head = readFileSync(file, 'utf8').slice(0, 100_000);
      expect(d.tokens.slice(0, 30_000)).toEqual(encodeChunked(head, stories).slice(0, 30_000));
    });

    it('stops at the next checkpoint after the abort signal (Ctrl-C): no further chunk is tokenized, and it rejects with INTERRUPTED (exit code 130)', async () => {
      const controller = new AbortController();
      // Abort while the third chunk is being tokenized (a chunk's own text is longer than the cut contexts of 64–128 characters).
      let chunks = 0;
      const { tokenizer, calls } = counting(stories, {
        signal: controller.signal,
        onEncode: (chars) => {
          if (chars > 2 * 64 && ++chunks === 3) controller.abort();
        },
      });
      // A budget far above the file: without the signal this would tokenize all 4 MB.
      const p = readCalibrationTokens([file], tokenizer, { fitTokens: 10_000_000, heldoutTokens: 4096, signal: controller.signal });
      await expect(p).rejects.toMatchObject({ code: 'INTERRUPTED', message: 'calibration interrupted; nothing was written' });
      expect(controller.signal.aborted).toBe(true);
      // After the abort only the chunk in progress finishes (at most its 64-character tail context is encoded); no new chunk starts.
      const after = calls.filter((c) => c.afterAbort);
      expect(after.length).toBeLessThanOrEqual(1);
      for (const c of after) expect(c.chars).toBeLessThanOrEqual(2 * 64);
    });
  });
});
