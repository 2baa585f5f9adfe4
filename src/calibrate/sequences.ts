/**
 * Calibration text → fixed-length token sequences, split into fit and held-out sets.
 * Documents are tokenized one by one and concatenated (each starts with BOS when the
 * tokenizer adds one); the stream is cut into sequences of `seqLen` tokens, each starting
 * with BOS so attention sinks behave as in real prompts. The split is a seeded shuffle of
 * whole sequences, so held-out text never overlaps the fit text.
 */
import { KvtcError } from '../errors.js';
import type { ModelTokenizer } from '../model/tokenizer.js';
import { mulberry32 } from '../random.js';

export interface SequenceSplit {
  fit: number[][];
  heldout: number[][];
  seqLen: number;
  availableTokens: number;
}

export function buildSequences(
  texts: string[],
  tokenizer: ModelTokenizer,
  opts: { seqLen: number; fitTokens: number; heldoutTokens: number; seed: number; minFitTokens: number; sources: string },
): SequenceSplit {
  const stream: number[] = [];
  for (const t of texts) for (const id of tokenizer.encode(t, { addBos: false })) stream.push(id);
  const bos = tokenizer.bosTokenId;
  const body = bos === undefined ? opts.seqLen : opts.seqLen - 1;
  const seqs: number[][] = [];
  for (let at = 0; at + body <= stream.length; at += body) {
    const s = stream.slice(at, at + body);
    seqs.push(bos === undefined ? s : [bos, ...s]);
  }
  const rand = mulberry32(opts.seed);
  for (let i = seqs.length - 1; i > 0; i--) {
    const j = Math.floor(rand() * (i + 1));
    [seqs[i], seqs[j]] = [seqs[j], seqs[i]];
  }
  const nHeld = Math.max(1, Math.ceil(opts.heldoutTokens / opts.seqLen));
  const nFit = Math.ceil(opts.fitTokens / opts.seqLen);
  const needMin = nHeld + Math.ceil(opts.minFitTokens / opts.seqLen);
  if (seqs.length < needMin) {
    throw new KvtcError(
      'NOT_ENOUGH_TOKENS',
      `the calibration data (${opts.sources}) gives ${stream.length} tokens = ${seqs.length} sequences of ${opts.seqLen}; ` +
        `the fit needs at least ${needMin * opts.seqLen} tokens (${Math.ceil(opts.minFitTokens / opts.seqLen) * opts.seqLen} to fit the PCA bases + ${nHeld * opts.seqLen} held out)`,
      { fix: 'Add more text with --data (several files or a directory), or lower --heldout.', context: { available: stream.length, needed: needMin * opts.seqLen } },
    );
  }
  const heldout = seqs.slice(0, nHeld);
  const fit = seqs.slice(nHeld, nHeld + nFit);
  return { fit, heldout, seqLen: opts.seqLen, availableTokens: stream.length };
}
