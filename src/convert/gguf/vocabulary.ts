// Tested by test/convert/gguf-llama.test.ts and test/convert/gguf-gemma3.test.ts (tokenizer refusals of both kinds).
/**
 * The part of a GGUF tokenizer every kind shares: the token strings, their types and the special
 * token ids, each bounded and checked against the model's embedding rows before anything is built.
 */
import { ggufInvalid } from '../../gguf/errors.js';
import { metaNumber, metaNumbers, metaStrings, type GgufModel } from './family.js';

/** More tokens than any released vocabulary (Gemma's 262,144) by far, and bounded. */
const MAX_VOCAB = 1 << 21;

export const tokenizerError = (g: GgufModel, message: string, fix: string, context: Record<string, unknown> = {}) =>
  ggufInvalid(g.path, message, context, fix);

export interface GgufVocabulary {
  tokens: string[];
  /** tokenizer.ggml.token_type, one per token, when the GGUF has it. */
  types?: number[];
  bos?: number;
  eos?: number;
  unk?: number;
  pad?: number;
}

export function readVocabulary(g: GgufModel, vocabSize: number): GgufVocabulary {
  const tokens = metaStrings(g, 'tokenizer.ggml.tokens');
  if (!tokens || tokens.length === 0)
    throw tokenizerError(
      g,
      'tokenizer.ggml.tokens is missing or empty',
      'The GGUF carries no vocabulary; re-create it with llama.cpp convert_hf_to_gguf.py.',
    );
  if (tokens.length > MAX_VOCAB || tokens.length > vocabSize) {
    throw tokenizerError(
      g,
      `${tokens.length} tokens, more than the model's ${vocabSize} embedding rows`,
      'The GGUF is inconsistent or corrupt.',
      {
        tokens: tokens.length,
        vocabSize,
      },
    );
  }
  const types = metaNumbers(g, 'tokenizer.ggml.token_type');
  if (types && types.length !== tokens.length)
    throw tokenizerError(g, `tokenizer.ggml.token_type has ${types.length} entries for ${tokens.length} tokens`, 'The GGUF is corrupt.');
  const id = (key: string) => {
    const v = metaNumber(g, `tokenizer.ggml.${key}`);
    if (v === undefined) return undefined;
    if (!Number.isInteger(v) || v < 0 || v >= tokens.length)
      throw tokenizerError(g, `tokenizer.ggml.${key} = ${v} is not a token id (0..${tokens.length - 1})`, 'The GGUF is corrupt.', {
        key,
        value: v,
      });
    return v;
  };
  return { tokens, types, bos: id('bos_token_id'), eos: id('eos_token_id'), unk: id('unknown_token_id'), pad: id('padding_token_id') };
}
