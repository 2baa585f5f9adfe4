// Tested by test/api/defaults.test.ts.
/**
 * Every default kvtc applies when an option is left out, in one place: the CLI's help text and
 * option parsing, the library functions and each command read them from here, so a default
 * changes once. The reasons for each value are in docs/codec.md and docs/evaluation.md.
 */

/** `kvtc calibrate` (src/calibrate/calibrate.ts) and its Dynamo target (src/dynamo/calibrate-dynamo.ts). */
export const CALIBRATE_DEFAULTS = {
  /** Target compression ratio of the compressed tokens: the paper's operating point. */
  ratio: 20,
  /** Fit tokens: the PCA bases are fitted on them. */
  tokens: 16384,
  /** Tuning tokens, held out from the fit: clip ranges, error tables, bit allocation, grouping choice. */
  tuningTokens: 4096,
  /**
   * Report tokens, held out from fit and tuning. With 4096 the reported 2x key error of
   * stories260K moved by ±4% from seed to seed; with 8192 it was within 2% of the error on corpus
   * files calibration never read (docs/codec.md, "Three splits").
   */
  reportTokens: 8192,
  /** Leading tokens kept uncompressed (attention sinks). */
  sink: 4,
  /** Most recent tokens kept uncompressed (the protected window). */
  window: 128,
  /** Layers per PCA basis: chosen by measurement on the tuning split. */
  grouping: 'auto' as const,
  /** R, the reduced columns per kind of the two-level fit (src/fit/two-level.ts TWO_LEVEL_RANK; docs/benchmarks.md, "Two-level fit"). */
  twoLevelRank: 4096,
  /** Prefill chunk length (tokens per forward pass). */
  chunk: 256,
  /** Seed of the held-out selection. */
  seed: 0,
  /** With --target dynamo: tokens per KV block (vLLM's default block size, the first of kvbench.rs's 16/32/64). */
  blockTokens: 16,
  /** With --target dynamo: the FP8 cast of the serving GPU (SM89+; sm80 is the kernels' software fallback). */
  fp8Cast: 'sm89' as const,
} as const;

/** `kvtc evaluate` (src/evaluate/). */
export const EVALUATE_DEFAULTS = {
  /** Few-shot examples: lm-evaluation-harness's default for MMLU. */
  shots: 0,
  /** Tokens of text for the perplexity proxy. */
  perplexityTokens: 2048,
  /** Long-context tasks of each kind. */
  longContext: 10,
  /** Long-context prompts fill the model's context up to this many tokens. */
  longContextTokens: 4096,
  /** Bootstrap seed. */
  seed: 0,
} as const;
