// Tested by test/evaluate/memory.test.ts.
/**
 * Bounds on what one forward pass of `kvtc evaluate` allocates. The ONNX graphs return logits
 * for every position they are fed ([tokens, vocab] float32), and ONNX Runtime and the JS copy each
 * hold them: with Gemma 3's 262,144-token vocabulary a 256-token prefill chunk is 256 MiB of
 * logits, twice, and a 512-token perplexity pass 512 MiB. Feeding at most passTokens() tokens
 * per pass keeps that at MAX_LOGITS_BYTES whatever the vocabulary, at no cost in results
 * (causal attention: a cache extended piece by piece is the cache of the whole).
 */

/** The most logits one forward pass may return, in bytes. */
export const MAX_LOGITS_BYTES = 64 * 2 ** 20;

/**
 * Tokens per forward pass: the runner's default prefill chunk (256) where the vocabulary allows,
 * fewer for large vocabularies (64 for Gemma 3), never under 16.
 */
export function passTokens(vocabSize: number): number {
  return Math.max(16, Math.min(256, Math.floor(MAX_LOGITS_BYTES / (4 * vocabSize))));
}
