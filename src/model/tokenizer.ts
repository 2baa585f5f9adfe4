// Tested by test/model/text.test.ts and test/calibrate/sequences.test.ts.
/**
 * Tokenizer from tokenizer.json (+ tokenizer_config.json) via @huggingface/tokenizers.
 * BOS is added as the tokenizer config says (`add_bos_token`), else as tokenizer.json's
 * post-processor would add it; it is never added twice.
 */
import { existsSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { Tokenizer } from '@huggingface/tokenizers';
import { KvtcError } from '../errors.js';

export interface ModelTokenizer {
  /** Token ids of `text`, with BOS first when the tokenizer adds one (unless addBos: false). */
  encode(text: string, opts?: { addBos?: boolean }): number[];
  decode(ids: ArrayLike<number>, opts?: { skipSpecial?: boolean }): string;
  bosTokenId?: number;
  eosTokenId?: number;
  /** Whether encode() adds BOS by default. */
  addsBos: boolean;
}

function tokenName(v: unknown): string | undefined {
  if (typeof v === 'string') return v;
  if (v && typeof v === 'object' && typeof (v as { content?: unknown }).content === 'string') return (v as { content: string }).content;
  return undefined;
}

async function readJson(path: string): Promise<Record<string, unknown>> {
  try {
    return JSON.parse(await readFile(path, 'utf8')) as Record<string, unknown>;
  } catch (e) {
    throw new KvtcError('TOKENIZER_MISSING', `${path} is not valid JSON: ${(e as Error).message}`, {
      fix: 'Re-export the tokenizer files (tokenizer.json, tokenizer_config.json) with the model.',
      context: { file: path },
      cause: e,
    });
  }
}

export async function loadTokenizer(dir: string): Promise<ModelTokenizer> {
  const tjPath = join(dir, 'tokenizer.json');
  if (!existsSync(tjPath)) {
    throw new KvtcError('TOKENIZER_MISSING', `${dir} has no tokenizer.json.`, {
      fix: "Put the model's tokenizer.json (and tokenizer_config.json) in the model directory; Optimum and onnxruntime-genai exports both write it.",
      context: { dir },
    });
  }
  const tokenizerJson = await readJson(tjPath);
  const tcPath = join(dir, 'tokenizer_config.json');
  const config = existsSync(tcPath) ? await readJson(tcPath) : {};
  let tok: Tokenizer;
  try {
    tok = new Tokenizer(tokenizerJson, config);
  } catch (e) {
    throw new KvtcError('TOKENIZER_MISSING', `cannot build a tokenizer from ${tjPath}: ${(e as Error).message}`, {
      fix: 'The tokenizer.json is corrupt or uses a component tokenizers.js does not support; re-export it.',
      context: { file: tjPath },
      cause: e,
    });
  }
  const idOf = (v: unknown) => {
    const name = tokenName(v);
    return name === undefined ? undefined : tok.token_to_id(name);
  };
  const bosTokenId = idOf(config.bos_token);
  const eosTokenId = idOf(config.eos_token);
  // Without add_bos_token, ask the post-processor: does encoding with special tokens add BOS?
  const probe = tok.encode('a', { add_special_tokens: true }).ids;
  const postBos = probe.length > 0 && tok.get_added_tokens_decoder().get(probe[0])?.special === true ? probe[0] : undefined;
  const addsBos = typeof config.add_bos_token === 'boolean' ? config.add_bos_token : postBos !== undefined;
  const bos = bosTokenId ?? postBos;
  return {
    bosTokenId: bos,
    eosTokenId,
    addsBos: addsBos && bos !== undefined,
    encode(text, opts = {}) {
      const ids = tok.encode(text, { add_special_tokens: false }).ids;
      if ((opts.addBos ?? addsBos) && bos !== undefined && ids[0] !== bos) ids.unshift(bos);
      return ids;
    },
    decode(ids, opts = {}) {
      return tok.decode(Array.from(ids), { skip_special_tokens: opts.skipSpecial ?? true });
    },
  };
}
