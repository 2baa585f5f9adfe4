// Tested by test/convert/llama2c.test.ts.
/**
 * llama2.c's tokenizer.bin (int32 max_token_length, then per token: float32 score, int32 len,
 * len bytes) → a Hugging Face tokenizer.json equivalent to a slow-converted Llama
 * (sentencepiece BPE with byte fallback, legacy normalizer), plus tokenizer_config.json.
 */
import { readFile } from 'node:fs/promises';
import { fileError, KvtcError } from '../errors.js';

export interface Llama2cVocab {
  maxTokenLength: number;
  /** Sentencepiece pieces with '▁' restored ("▁the", "<0x0A>", "<s>"). */
  pieces: string[];
  scores: Float32Array; // [vocab]
}

export const UNK_ID = 0;
export const BOS_ID = 1;
export const EOS_ID = 2;
const SPACE = '\u2581';

function invalid(source: string, message: string, context: Record<string, unknown> = {}): KvtcError {
  return fileError(
    'TOKENIZER_MISSING',
    source,
    message,
    'Pass the tokenizer.bin written by llama2.c tokenizer.py (the one matching the checkpoint) with --tokenizer.',
    context,
  );
}

/** llama2.c stores the pieces with '▁' as ' ' and BOS/EOS as "\n<s>\n" / "\n</s>\n"; undo both. */
function pieceFromLlama2c(raw: string): string {
  const special = /^\n(<\/?s>)\n$/.exec(raw);
  if (special) return special[1];
  return raw.replaceAll(' ', SPACE);
}

export function parseLlama2cTokenizer(bytes: Uint8Array, source = 'tokenizer.bin', expectedVocab?: number): Llama2cVocab {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  if (bytes.byteLength < 4) throw invalid(source, `file is ${bytes.byteLength} bytes; too short for a tokenizer.bin`);
  const maxTokenLength = view.getInt32(0, true);
  if (maxTokenLength <= 0 || maxTokenLength > 4096)
    throw invalid(source, `max_token_length ${maxTokenLength} is not plausible; this is not a llama2.c tokenizer.bin`);
  const decoder = new TextDecoder('utf-8', { fatal: true });
  const pieces: string[] = [];
  const scores: number[] = [];
  let off = 4;
  while (off < bytes.byteLength && (expectedVocab === undefined || pieces.length < expectedVocab)) {
    if (off + 8 > bytes.byteLength) throw invalid(source, `truncated at byte ${off} (token ${pieces.length})`);
    const score = view.getFloat32(off, true);
    const len = view.getInt32(off + 4, true);
    off += 8;
    if (len < 0 || len > maxTokenLength || off + len > bytes.byteLength || !Number.isFinite(score)) {
      throw invalid(
        source,
        `token ${pieces.length} at byte ${off - 8} has length ${len} and score ${score}; the file is truncated or corrupt`,
      );
    }
    let raw: string;
    try {
      raw = decoder.decode(bytes.subarray(off, off + len));
    } catch {
      throw invalid(source, `token ${pieces.length} is not valid UTF-8`);
    }
    off += len;
    pieces.push(pieceFromLlama2c(raw));
    scores.push(score);
  }
  if (expectedVocab !== undefined && (pieces.length !== expectedVocab || off !== bytes.byteLength)) {
    throw invalid(
      source,
      `holds ${pieces.length} tokens${off !== bytes.byteLength ? ' and trailing data' : ''}, the checkpoint expects vocab_size ${expectedVocab}`,
      { tokens: pieces.length, expectedVocab },
    );
  }
  if (
    pieces.length < 259 ||
    pieces[UNK_ID] !== '<unk>' ||
    pieces[BOS_ID] !== '<s>' ||
    pieces[EOS_ID] !== '</s>' ||
    pieces[3] !== '<0x00>' ||
    pieces[258] !== '<0xFF>'
  ) {
    throw invalid(source, 'expected a Llama sentencepiece vocabulary (<unk>, <s>, </s>, then the 256 byte tokens <0x00>..<0xFF>)');
  }
  if (new Set(pieces).size !== pieces.length) throw invalid(source, 'holds duplicate pieces');
  return { maxTokenLength, pieces, scores: Float32Array.from(scores) };
}

export async function readLlama2cTokenizer(path: string, expectedVocab?: number): Promise<Llama2cVocab> {
  let bytes: Uint8Array;
  try {
    bytes = await readFile(path);
  } catch (e) {
    throw new KvtcError('TOKENIZER_MISSING', `cannot read ${path}: ${(e as Error).message}`, {
      fix: 'Pass the llama2.c tokenizer.bin with --tokenizer.',
      context: { file: path },
      cause: e,
    });
  }
  return parseLlama2cTokenizer(bytes, path, expectedVocab);
}

/**
 * BPE merges as transformers' SentencePieceExtractor builds them: for each piece, every
 * split into two vocabulary pieces (ordered by the ids of left, right), then all merges
 * stably sorted by the merged piece's score, highest first.
 */
export function sentencePieceMerges(vocab: Llama2cVocab): [string, string][] {
  const ids = new Map(vocab.pieces.map((p, i) => [p, i]));
  const merges: { l: string; r: string; score: number }[] = [];
  vocab.pieces.forEach((piece, i) => {
    const chars = Array.from(piece);
    const local: { l: string; r: string; score: number }[] = [];
    for (let k = 1; k < chars.length; k++) {
      const l = chars.slice(0, k).join('');
      const r = chars.slice(k).join('');
      if (ids.has(l) && ids.has(r)) local.push({ l, r, score: vocab.scores[i] });
    }
    local.sort((a, b) => ids.get(a.l)! - ids.get(b.l)! || ids.get(a.r)! - ids.get(b.r)!);
    merges.push(...local);
  });
  merges.sort((a, b) => b.score - a.score); // Array.prototype.sort is stable
  return merges.map((m) => [m.l, m.r]);
}

const special = (id: number, content: string) => ({
  id,
  content,
  single_word: false,
  lstrip: false,
  rstrip: false,
  normalized: false,
  special: true,
});

/** tokenizer.json, shaped like transformers' LlamaConverter output (legacy normalizer). */
export function hfTokenizerJson(vocab: Llama2cVocab): Record<string, unknown> {
  const v: Record<string, number> = {};
  vocab.pieces.forEach((p, i) => (v[p] = i));
  return {
    version: '1.0',
    truncation: null,
    padding: null,
    added_tokens: [special(UNK_ID, '<unk>'), special(BOS_ID, '<s>'), special(EOS_ID, '</s>')],
    normalizer: {
      type: 'Sequence',
      normalizers: [
        { type: 'Prepend', prepend: SPACE },
        { type: 'Replace', pattern: { String: ' ' }, content: SPACE },
      ],
    },
    pre_tokenizer: null,
    post_processor: {
      type: 'TemplateProcessing',
      single: [{ SpecialToken: { id: '<s>', type_id: 0 } }, { Sequence: { id: 'A', type_id: 0 } }],
      pair: [
        { SpecialToken: { id: '<s>', type_id: 0 } },
        { Sequence: { id: 'A', type_id: 0 } },
        { SpecialToken: { id: '<s>', type_id: 1 } },
        { Sequence: { id: 'B', type_id: 1 } },
      ],
      special_tokens: { '<s>': { id: '<s>', ids: [BOS_ID], tokens: ['<s>'] } },
    },
    decoder: {
      type: 'Sequence',
      decoders: [
        { type: 'Replace', pattern: { String: SPACE }, content: ' ' },
        { type: 'ByteFallback' },
        { type: 'Fuse' },
        { type: 'Strip', content: ' ', start: 1, stop: 0 },
      ],
    },
    model: {
      type: 'BPE',
      dropout: null,
      unk_token: '<unk>',
      continuing_subword_prefix: null,
      end_of_word_suffix: null,
      fuse_unk: true,
      byte_fallback: true,
      ignore_merges: false,
      vocab: v,
      merges: sentencePieceMerges(vocab),
    },
  };
}

export function hfTokenizerConfig(opts: { modelMaxLength: number }): Record<string, unknown> {
  const decoder: Record<string, unknown> = {};
  for (const t of [special(UNK_ID, '<unk>'), special(BOS_ID, '<s>'), special(EOS_ID, '</s>')]) {
    const { id, ...rest } = t;
    decoder[String(id)] = rest;
  }
  return {
    add_bos_token: true,
    add_eos_token: false,
    added_tokens_decoder: decoder,
    bos_token: '<s>',
    clean_up_tokenization_spaces: false,
    eos_token: '</s>',
    legacy: true,
    model_max_length: opts.modelMaxLength,
    pad_token: null,
    sp_model_kwargs: {},
    tokenizer_class: 'LlamaTokenizer',
    unk_token: '<unk>',
  };
}
