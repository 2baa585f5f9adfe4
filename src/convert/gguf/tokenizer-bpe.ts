// Tested by test/convert/gguf-tokenizer.test.ts (synthetic vocabularies, refusals) and test/gguf/smollm2.test.ts (ids equal transformers' on a long mixed text).
/**
 * GGUF byte-level BPE (`tokenizer.ggml.model = "gpt2"`) → tokenizer.json + tokenizer_config.json,
 * built the way transformers builds its tokenizer from a GGUF
 * (src/transformers/integrations/gguf/gguf_tokenizer_mapping.py: byte_level_tokenizer,
 * add_gguf_special_tokens, set_split_regex), so @huggingface/tokenizers gives the same ids:
 *   - vocabulary: the tokens by id; a token outside GPT-2's byte alphabet is respelled byte by byte;
 *   - merges: tokenizer.ggml.merges in file order;
 *   - CONTROL tokens (token_type 3) spelled in the byte alphabet: special added tokens;
 *     USER_DEFINED tokens (4): added tokens matched whole, not special;
 *   - the pre-tokenizer that `tokenizer.ggml.pre` names (llama.cpp's llama-vocab.cpp regexes).
 */
import { KvtcError } from '../../errors.js';
import { metaString, metaStrings, type GgufModel } from './family.js';
import { readVocabulary, tokenizerError } from './vocabulary.js';

/** GPT-2's bytes_to_unicode: each byte → a printable character (byte-level BPE's alphabet). */
export function bytesToUnicode(): string[] {
  const bs: number[] = [];
  for (let b = 33; b <= 126; b++) bs.push(b);
  for (let b = 161; b <= 172; b++) bs.push(b);
  for (let b = 174; b <= 255; b++) bs.push(b);
  const map = new Array<string>(256);
  for (const b of bs) map[b] = String.fromCodePoint(b);
  let n = 0;
  for (let b = 0; b < 256; b++) if (map[b] === undefined) map[b] = String.fromCodePoint(256 + n++);
  return map;
}

/** llama.cpp LLAMA_VOCAB_PRE_TYPE_LLAMA3 (and transformers' _LLAMA3_SPLIT). */
const LLAMA3_SPLIT =
  "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";

const byteLevel = (useRegex: boolean) => ({ type: 'ByteLevel', add_prefix_space: false, trim_offsets: true, use_regex: useRegex });

/**
 * Pre-tokenizers by `tokenizer.ggml.pre`. GPT-2's own regex is ByteLevel's built-in one.
 * "smollm" is llama.cpp's `\p{N}` split before GPT-2's regex, as SmolLM's own tokenizer.json
 * (Digits individual_digits + ByteLevel) has it; transformers reads the name as plain GPT-2,
 * which gives the same ids on SmolLM vocabularies (they hold no multi-digit tokens).
 */
const PRE_TOKENIZERS: Record<string, () => Record<string, unknown>> = {
  default: () => byteLevel(true),
  gpt2: () => byteLevel(true),
  smollm: () => ({ type: 'Sequence', pretokenizers: [{ type: 'Digits', individual_digits: true }, byteLevel(true)] }),
  ...Object.fromEntries(
    ['llama3', 'llama-v3', 'llama-bpe', 'smaug-bpe'].map((k) => [
      k,
      () => ({
        type: 'Sequence',
        pretokenizers: [{ type: 'Split', pattern: { Regex: LLAMA3_SPLIT }, behavior: 'Isolated', invert: false }, byteLevel(false)],
      }),
    ]),
  ),
};

export const SUPPORTED_BPE_PRE_TOKENIZERS = Object.keys(PRE_TOKENIZERS);

const MAX_TOKEN_CHARS = 4096;

export interface GgufTokenizer {
  tokenizerJson: Record<string, unknown>;
  tokenizerConfig: Record<string, unknown>;
  bosTokenId?: number;
  eosTokenId?: number;
  padTokenId?: number;
  /** One line for the CLI: model, pre-tokenizer, vocabulary size. */
  description: string;
}

/** Builds the tokenizer files from a GGUF whose tokenizer.ggml.model is "gpt2"; refuses other models. */
export function bpeTokenizerFromGguf(g: GgufModel, opts: { modelMaxLength: number; vocabSize: number }): GgufTokenizer {
  const model = metaString(g, 'tokenizer.ggml.model');
  if (model !== 'gpt2') {
    throw new KvtcError(
      'UNSUPPORTED_ARCHITECTURE',
      `${g.path}: tokenizer model ${model === undefined ? '(tokenizer.ggml.model absent)' : `"${model}"`} is not supported for the ${g.architecture} architecture; kvtc builds byte-level BPE ("gpt2") tokenizers from a GGUF here`,
      {
        fix: 'Convert a GGUF whose tokenizer is byte-level BPE, or export the model with Optimum (it writes tokenizer.json).',
        context: { file: g.path, tokenizer: model ?? null, supported: ['gpt2'] },
      },
    );
  }
  const pre = metaString(g, 'tokenizer.ggml.pre') ?? 'default';
  const preTokenizer = PRE_TOKENIZERS[pre];
  if (!preTokenizer) {
    throw new KvtcError(
      'UNSUPPORTED_ARCHITECTURE',
      `${g.path}: pre-tokenizer "${pre}" (tokenizer.ggml.pre) is not supported; kvtc knows: ${SUPPORTED_BPE_PRE_TOKENIZERS.join(', ')}`,
      {
        fix: 'Its split rule would change the token ids; export the model with Optimum (it writes tokenizer.json) instead.',
        context: { file: g.path, pre, supported: SUPPORTED_BPE_PRE_TOKENIZERS },
      },
    );
  }
  const { tokens, types, bos, eos, unk, pad } = readVocabulary(g, opts.vocabSize);
  const merges = metaStrings(g, 'tokenizer.ggml.merges');
  if (!merges)
    throw tokenizerError(
      g,
      'tokenizer.ggml.merges is missing: a byte-level BPE needs its merges',
      'Re-create the GGUF with llama.cpp convert_hf_to_gguf.py.',
    );
  const addBos = g.meta('tokenizer.ggml.add_bos_token');
  const addEos = g.meta('tokenizer.ggml.add_eos_token');

  const spelling = bytesToUnicode();
  const alphabet = new Set(spelling);
  const inAlphabet = (t: string) => [...t].every((c) => alphabet.has(c));
  const utf8 = new TextEncoder();
  // Later duplicates win, as in transformers' dict comprehension.
  const vocab = new Map<string, number>();
  tokens.forEach((t, i) => {
    if (t.length > MAX_TOKEN_CHARS) throw tokenizerError(g, `token ${i} is ${t.length} characters long`, 'The GGUF is corrupt.');
    vocab.set(inAlphabet(t) ? t : Array.from(utf8.encode(t), (b) => spelling[b]).join(''), i);
  });
  const mergePairs = merges.map((m, i) => {
    const parts = m.split(' ');
    if (parts.length !== 2 || !parts[0] || !parts[1])
      throw tokenizerError(g, `merge ${i} "${m.slice(0, 40)}" is not two tokens separated by one space`, 'The GGUF is corrupt.', {
        merge: i,
      });
    return parts;
  });

  const added: Record<string, unknown>[] = [];
  tokens.forEach((t, i) => {
    const type = types?.[i];
    // CONTROL tokens outside the byte alphabet are llama.cpp mislabels transformers skips too.
    if (type === 3 && inAlphabet(t))
      added.push({ id: i, content: t, single_word: false, lstrip: false, rstrip: false, normalized: false, special: true });
    else if (type === 4 && vocab.has(t))
      added.push({ id: i, content: t, single_word: false, lstrip: false, rstrip: false, normalized: false, special: false });
  });

  const specials: Record<string, { id: string; ids: number[]; tokens: string[] }> = {};
  const single: unknown[] = [];
  const pair: unknown[] = [];
  if (addBos === true && bos !== undefined) {
    specials[tokens[bos]] = { id: tokens[bos], ids: [bos], tokens: [tokens[bos]] };
    single.push({ SpecialToken: { id: tokens[bos], type_id: 0 } });
    pair.push({ SpecialToken: { id: tokens[bos], type_id: 0 } });
  }
  single.push({ Sequence: { id: 'A', type_id: 0 } });
  pair.push({ Sequence: { id: 'A', type_id: 0 } }, { Sequence: { id: 'B', type_id: 1 } });
  if (addEos === true && eos !== undefined) {
    specials[tokens[eos]] = { id: tokens[eos], ids: [eos], tokens: [tokens[eos]] };
    single.push({ SpecialToken: { id: tokens[eos], type_id: 0 } });
    pair.push({ SpecialToken: { id: tokens[eos], type_id: 1 } });
  }

  const tokenizerJson: Record<string, unknown> = {
    version: '1.0',
    truncation: null,
    padding: null,
    added_tokens: added,
    normalizer: null,
    pre_tokenizer: preTokenizer(),
    post_processor: { type: 'TemplateProcessing', single, pair, special_tokens: specials },
    decoder: { type: 'ByteLevel', add_prefix_space: true, trim_offsets: true, use_regex: true },
    model: {
      type: 'BPE',
      dropout: null,
      unk_token: null,
      continuing_subword_prefix: '',
      end_of_word_suffix: '',
      fuse_unk: false,
      byte_fallback: false,
      ignore_merges: false,
      vocab: Object.fromEntries(vocab),
      merges: mergePairs,
    },
  };
  const name = (i: number | undefined) => (i === undefined ? null : tokens[i]);
  const chatTemplate = metaString(g, 'tokenizer.chat_template');
  const tokenizerConfig: Record<string, unknown> = {
    add_bos_token: addBos === true,
    add_eos_token: addEos === true,
    bos_token: name(bos),
    eos_token: name(eos),
    unk_token: name(unk),
    pad_token: name(pad),
    ...(chatTemplate !== undefined ? { chat_template: chatTemplate } : {}),
    clean_up_tokenization_spaces: false,
    model_max_length: opts.modelMaxLength,
    tokenizer_class: 'GPT2Tokenizer',
  };
  return {
    tokenizerJson,
    tokenizerConfig,
    bosTokenId: bos,
    eosTokenId: eos,
    padTokenId: pad,
    description: `byte-level BPE, ${tokens.length} tokens, ${merges.length} merges, pre-tokenizer "${pre}"`,
  };
}
