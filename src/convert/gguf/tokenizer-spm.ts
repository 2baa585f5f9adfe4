// Tested by test/convert/gguf-gemma3.test.ts (synthetic vocabularies, merge order, refusals) and test/gguf/gemma3.test.ts (Gemma 3 270M: ids equal transformers' on a long mixed text).
/**
 * GGUF SentencePiece vocabulary (`tokenizer.ggml.model = "llama"`) of a Gemma model →
 * tokenizer.json + tokenizer_config.json, built the way transformers builds its tokenizer from
 * such a GGUF (src/transformers/integrations/gguf/gguf_tokenizer_mapping.py: gemma_tokenizer,
 * add_gguf_special_tokens; models/gemma/tokenization_gemma.py: GemmaTokenizer), so
 * @huggingface/tokenizers gives the same ids:
 *   - vocabulary: the tokens by id, a token of spaces only ("  ", llama.cpp's spelling) respelled
 *     as that many '▁' (SentencePiece's);
 *   - merges: the file has none, so every split of a token into two vocabulary tokens is a merge,
 *     ranked by the merged token's position in the file (Gemma's scores do not follow its merge
 *     order, the file order does), longer left part first (tokenization_utils_base.generate_merges);
 *   - BPE with byte fallback, normalizer ' ' → '▁', no prefix space (GemmaTokenizer);
 *   - CONTROL tokens (token_type 3) special added tokens, USER_DEFINED ones (4, "\n", "\t\t",
 *     "<b>") plain added tokens matched whole, as llama.cpp matches them;
 *   - BOS (and EOS) from tokenizer.ggml.add_bos_token / add_eos_token (update_post_processor).
 */
import { KvtcError } from '../../errors.js';
import { metaString, metaStrings, type GgufModel } from './family.js';
import { readVocabulary, tokenizerError } from './vocabulary.js';
import type { GgufTokenizer } from './tokenizer-bpe.js';

/** SentencePiece pieces are short (Gemma's longest is 31 characters); merges are quadratic in length. */
const MAX_TOKEN_CHARS = 1024;
const SPACE = '\u2581';
const TOKEN_TYPE = { control: 3, userDefined: 4 } as const;

/** Architectures whose SentencePiece vocabulary transformers builds with gemma_tokenizer. */
export const SPM_GEMMA_ARCHITECTURES = ['gemma', 'gemma2', 'gemma3'] as const;

/** Python's str.isspace() characters (str.strip() with no argument removes these). */
const PY_SPACE = new Set([
  0x09, 0x0a, 0x0b, 0x0c, 0x0d, 0x1c, 0x1d, 0x1e, 0x1f, 0x20, 0x85, 0xa0, 0x1680, 0x2000, 0x2001, 0x2002, 0x2003, 0x2004, 0x2005, 0x2006,
  0x2007, 0x2008, 0x2009, 0x200a, 0x2028, 0x2029, 0x202f, 0x205f, 0x3000,
]);

/** gemma_tokenizer's respelling: `"▁" * len(t) if " " in t and not t.strip() else t` (len in code points). */
export function respellSpaces(t: string): string {
  if (!t.includes(' ')) return t;
  const cps = Array.from(t);
  return cps.every((c) => PY_SPACE.has(c.codePointAt(0)!)) ? SPACE.repeat(cps.length) : t;
}

/**
 * transformers' generate_merges(vocab, vocab_scores) with each token's score given by `score`:
 * for every token, each split into two vocabulary tokens, all sorted by (score, len(left),
 * len(right)) descending. `vocab` maps a token to its (last) id, as a Python dict built from the
 * list does; tokens are visited in first-occurrence order, which only decides exact ties.
 */
export function generateMerges(
  tokens: readonly string[],
  vocab: ReadonlyMap<string, number>,
  score: (token: string) => number,
): [string, string][] {
  interface M {
    l: string;
    r: string;
    s: number;
    ll: number;
    lr: number;
    order: number;
  }
  const all: M[] = [];
  const seen = new Set<string>();
  for (const t of tokens) {
    if (seen.has(t)) continue;
    seen.add(t);
    // Code-unit offsets of the code-point boundaries: Python slices and len() count code points.
    const cuts: number[] = [];
    for (let i = 0; i < t.length; i += t.codePointAt(i)! > 0xffff ? 2 : 1) cuts.push(i);
    const n = cuts.length;
    if (n < 2) continue;
    const s = score(t);
    const local: M[] = [];
    for (let k = 1; k < n; k++) {
      const l = t.slice(0, cuts[k]);
      const r = t.slice(cuts[k]);
      if (vocab.has(l) && vocab.has(r)) local.push({ l, r, s, ll: k, lr: n - k, order: 0 });
    }
    local.sort((a, b) => vocab.get(a.l)! - vocab.get(b.l)! || vocab.get(a.r)! - vocab.get(b.r)!);
    for (const m of local) all.push(m);
  }
  all.forEach((m, i) => (m.order = i));
  // Python's sorted(reverse=True) is stable: equal keys keep their order.
  all.sort((a, b) => b.s - a.s || b.ll - a.ll || b.lr - a.lr || a.order - b.order);
  return all.map((m) => [m.l, m.r]);
}

const addedToken = (id: number, content: string, special: boolean) => ({
  id,
  content,
  single_word: false,
  lstrip: false,
  rstrip: false,
  normalized: false,
  special,
});

/** Builds the tokenizer files from a Gemma GGUF whose tokenizer.ggml.model is "llama" (SentencePiece); refuses others. */
export function spmTokenizerFromGguf(g: GgufModel, opts: { modelMaxLength: number; vocabSize: number }): GgufTokenizer {
  const model = metaString(g, 'tokenizer.ggml.model');
  if (model !== 'llama' || !(SPM_GEMMA_ARCHITECTURES as readonly string[]).includes(g.architecture)) {
    throw new KvtcError(
      'UNSUPPORTED_ARCHITECTURE',
      `${g.path}: tokenizer model ${model === undefined ? '(tokenizer.ggml.model absent)' : `"${model}"`} is not supported for the ${g.architecture} architecture; kvtc builds SentencePiece ("llama") tokenizers of ${SPM_GEMMA_ARCHITECTURES.join(', ')} GGUFs here`,
      {
        fix: 'Convert a Gemma GGUF with its SentencePiece vocabulary, or export the model with Optimum (it writes tokenizer.json).',
        context: { file: g.path, tokenizer: model ?? null, architecture: g.architecture },
      },
    );
  }
  const { tokens, types, bos, eos, unk, pad } = readVocabulary(g, opts.vocabSize);
  if (metaStrings(g, 'tokenizer.ggml.merges')) {
    // gemma_tokenizer would take file merges as they are; no Gemma GGUF has them, and rebuilding them is what kvtc checked.
    throw new KvtcError(
      'UNSUPPORTED_ARCHITECTURE',
      `${g.path}: a SentencePiece vocabulary with tokenizer.ggml.merges is not supported (Gemma GGUFs carry none)`,
      {
        fix: 'Export the model with Optimum (it writes tokenizer.json) instead.',
        context: { file: g.path },
      },
    );
  }
  // A SentencePiece vocabulary without the flag gets BOS, as llama.cpp and transformers do.
  const addBos = g.meta('tokenizer.ggml.add_bos_token') ?? true;
  const addEos = g.meta('tokenizer.ggml.add_eos_token') ?? false;
  // GemmaTokenizer's unknown token is "<unk>" whatever the file says; BPE needs it in the vocabulary.
  const unkToken = unk !== undefined ? tokens[unk] : '<unk>';

  const spelled = tokens.map((t, i) => {
    if (t.length > MAX_TOKEN_CHARS)
      throw tokenizerError(g, `token ${i} is ${t.length} characters long`, 'The GGUF is corrupt.', { token: i });
    return respellSpaces(t);
  });
  // Later duplicates win, as in transformers' dict comprehension.
  const vocab = new Map<string, number>();
  spelled.forEach((t, i) => vocab.set(t, i));
  if (!vocab.has(unkToken)) throw tokenizerError(g, `the unknown token "${unkToken}" is not in the vocabulary`, 'The GGUF is corrupt.');
  const merges = generateMerges(spelled, vocab, (t) => -vocab.get(t)!);

  const added: ReturnType<typeof addedToken>[] = [];
  tokens.forEach((t, i) => {
    const type = types?.[i];
    if (type === TOKEN_TYPE.control) added.push(addedToken(i, t, true));
    // The check uses the file's spelling, so space-only tokens stay BPE pieces (as in transformers).
    else if (type === TOKEN_TYPE.userDefined && vocab.has(t)) added.push(addedToken(i, t, false));
  });

  const specials: Record<string, { id: string; ids: number[]; tokens: string[] }> = {};
  const single: unknown[] = [];
  const pair: unknown[] = [];
  const withBos = addBos === true && bos !== undefined;
  const withEos = addEos === true && eos !== undefined;
  const sp = (i: number, typeId: number) => ({ SpecialToken: { id: tokens[i], type_id: typeId } });
  if (withBos) specials[tokens[bos]] = { id: tokens[bos], ids: [bos], tokens: [tokens[bos]] };
  if (withEos) specials[tokens[eos]] = { id: tokens[eos], ids: [eos], tokens: [tokens[eos]] };
  for (const [part, typeId, into] of [
    ['A', 0, single],
    ['A', 0, pair],
    ['B', 1, pair],
  ] as const) {
    if (withBos) into.push(sp(bos, typeId));
    into.push({ Sequence: { id: part, type_id: typeId } });
    if (withEos) into.push(sp(eos, typeId));
  }

  const tokenizerJson: Record<string, unknown> = {
    version: '1.0',
    truncation: null,
    padding: null,
    added_tokens: added,
    normalizer: { type: 'Replace', pattern: { String: ' ' }, content: SPACE },
    pre_tokenizer: { type: 'Split', pattern: { String: ' ' }, behavior: 'MergedWithPrevious', invert: false },
    post_processor: { type: 'TemplateProcessing', single, pair, special_tokens: specials },
    decoder: {
      type: 'Sequence',
      decoders: [{ type: 'Replace', pattern: { String: SPACE }, content: ' ' }, { type: 'ByteFallback' }, { type: 'Fuse' }],
    },
    model: {
      type: 'BPE',
      dropout: null,
      unk_token: unkToken,
      continuing_subword_prefix: null,
      end_of_word_suffix: null,
      fuse_unk: true,
      byte_fallback: true,
      ignore_merges: false,
      vocab: Object.fromEntries(vocab),
      merges,
    },
  };
  const name = (i: number | undefined) => (i === undefined ? null : tokens[i]);
  const chatTemplate = metaString(g, 'tokenizer.chat_template');
  const tokenizerConfig: Record<string, unknown> = {
    add_bos_token: withBos,
    add_eos_token: withEos,
    bos_token: name(bos),
    eos_token: name(eos),
    unk_token: unkToken,
    pad_token: name(pad),
    ...(vocab.has('<mask>') ? { mask_token: '<mask>' } : {}),
    ...(chatTemplate !== undefined ? { chat_template: chatTemplate } : {}),
    clean_up_tokenization_spaces: false,
    model_max_length: opts.modelMaxLength,
    padding_side: 'left',
    tokenizer_class: 'GemmaTokenizer',
  };
  return {
    tokenizerJson,
    tokenizerConfig,
    bosTokenId: bos,
    eosTokenId: eos,
    padTokenId: pad,
    description: `SentencePiece BPE (Gemma), ${tokens.length} tokens, ${merges.length} merges rebuilt from the vocabulary`,
  };
}
