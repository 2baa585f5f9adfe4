/**
 * llama2.c's run.c `encode` as an independent tokenizer reference: optional BOS, a dummy
 * prefix " " token, one token per UTF-8 code point (byte fallback id = byte + 3), then
 * repeatedly merge the adjacent pair whose concatenation is in the vocabulary with the
 * highest score (leftmost on ties).
 */
export function llama2cEncode(pieces: string[], scores: Float32Array, text: string, bos = true): number[] {
  // run.c's vocabulary has ' ' where sentencepiece has '▁'.
  const vocab = new Map(pieces.map((p, i) => [p.replaceAll('\u2581', ' '), i]));
  const tokens: number[] = bos ? [1] : [];
  if (text.length > 0) tokens.push(vocab.get(' ')!);
  for (const ch of text) {
    const id = vocab.get(ch);
    if (id !== undefined) tokens.push(id);
    else for (const b of new TextEncoder().encode(ch)) tokens.push(b + 3);
  }
  const str = (id: number) => pieces[id].replaceAll('\u2581', ' ');
  for (;;) {
    let best = -1e10;
    let bestId = -1;
    let bestIdx = -1;
    for (let i = bos ? 1 : 0; i < tokens.length - 1; i++) {
      const id = vocab.get(str(tokens[i]) + str(tokens[i + 1]));
      if (id !== undefined && scores[id] > best) {
        best = scores[id];
        bestId = id;
        bestIdx = i;
      }
    }
    if (bestIdx === -1) break;
    tokens.splice(bestIdx, 2, bestId);
  }
  return tokens;
}
