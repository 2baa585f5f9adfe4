/**
 * The checks both real-model tests (smollm2.test.ts, gemma3.test.ts) make against a committed
 * transformers reference (scripts/gguf-reference*.py): a logits row against the reference's top-k,
 * and `kvtc generate`'s greedy ids against transformers' greedy steps.
 */
import { expect } from 'vitest';
import generateCommand from '../../src/cli/commands/generate.js';
import { memoryIO } from '../../src/cli/io.js';

export const argmax = (a: ArrayLike<number>) => {
  let b = 0;
  for (let i = 1; i < a.length; i++) if (a[i] > a[b]) b = i;
  return b;
};

/**
 * Compares one position's logits with the reference's top-k ids and values. Returns the largest
 * |Δlogit| over those ids and whether the top-1 agrees; a disagreement is allowed only where
 * transformers' own top-2 margin is within 2 × tol (a tie kvtc may break the other way).
 */
export function compareTopK(
  row: Float32Array,
  topIds: number[],
  topLogits: number[],
  tol: number,
  where: string,
): { maxDiff: number; agree: boolean } {
  let maxDiff = 0;
  topIds.forEach((id, k) => {
    maxDiff = Math.max(maxDiff, Math.abs(row[id] - topLogits[k]));
  });
  const top1 = argmax(row);
  const agree = top1 === topIds[0];
  if (!agree) expect(topLogits[0] - topLogits[1], `${where}: top-1 ${top1}, transformers ${topIds[0]}`).toBeLessThanOrEqual(2 * tol);
  return { maxDiff, agree };
}

export interface GreedyReference {
  prompt: number;
  steps: { id: number; margin: number }[];
}

/**
 * Runs `kvtc generate` greedily on `prompt` for as many tokens as the reference has, expects the
 * same ids up to the first step transformers itself decides within 2 × tol (free after it), and
 * returns the continuation text.
 */
export async function expectGreedyAsReference(modelDir: string, prompt: string, g: GreedyReference, tol: number): Promise<string> {
  const io = memoryIO();
  await generateCommand(
    { model: modelDir, prompt, maxNewTokens: String(g.steps.length), temperature: '0', seed: '0', device: 'cpu', json: true },
    io,
  );
  const r = JSON.parse(io.stdout.join('\n'));
  const clear = g.steps.findIndex((s) => s.margin <= 2 * tol);
  const n = clear === -1 ? g.steps.length : clear + 1;
  expect(r.ids.slice(0, n)).toEqual(g.steps.slice(0, n).map((s) => s.id));
  return r.continuation as string;
}
