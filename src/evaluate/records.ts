// Tested by test/evaluate/scoring.test.ts.
/** What evaluate records per question: every codec's outcome next to the uncompressed run's. */

export interface CodecOutcome {
  /** Log-likelihood of " A".." D" with this codec's cache. */
  logLik: number[];
  pred: number;
  compressedTokens: number;
  bytes: number;
  compressedBytes: number;
}

export interface QuestionRecord {
  subject: string;
  /** Row of the subject's test split (0-based). */
  index: number;
  gold: number;
  /**
   * Context tokens prefilled for this question after truncation (summed over its contexts:
   * a truncated prompt may need one per continuation length).
   */
  promptTokens: number;
  /** Tokens cut from the left of the prompt to fit the model. */
  truncated: number;
  /** Tokens in the cache(s) that codecs compress: promptTokens − 1 per context (the last token is fed live). */
  cacheTokens: number;
  baseline: { logLik: number[]; pred: number };
  codecs: Record<string, CodecOutcome>;
}

/** One perplexity window: NLL sums (nats) over its scored tokens, uncompressed and per codec. */
export interface PerplexityWindow {
  index: number;
  scored: number;
  /** Prefilled tokens that went into the cache (context − 1). */
  cacheTokens: number;
  baselineNll: number;
  /**
   * Scored tokens per block of the *BlockNll arrays (the window's last block may be shorter), for
   * the block bootstrap (perplexity-interval.ts). Absent in journals written before blocks were
   * recorded, with the arrays.
   */
  blockTokens?: number;
  /** NLL sums per block of blockTokens consecutive scored tokens: [ceil(scored / blockTokens)]. */
  baselineBlockNll?: number[];
  /**
   * Per codec: NLL sum; per block, NLL sums, and (absent in journals before 2026-12-07) the sums of
   * next-token KL(uncompressed ‖ codec) over the whole vocabulary and of top-1 agreement (0/1).
   */
  codecs: Record<string, { nll: number; compressedTokens: number; blockNll?: number[]; blockKl?: number[]; blockTop1?: number[] }>;
}
