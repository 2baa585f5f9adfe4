/**
 * `kvtc generate` on the bundled stories260K: what it prints where, sampling with --temperature
 * and --seed, and the three ways it stops. The --max-new-tokens prefix property and bad model
 * directories: test/model/cli.test.ts; TinyStories English: test/model/stories260k.test.ts.
 */
import { describe, expect, it } from 'vitest';
import { kvtc } from '../../model/helpers.js';

const gen = async (...args: string[]) => {
  const r = await kvtc('generate', '--prompt', 'Once upon a time', ...args, '--json');
  expect(r.code, r.stderr).toBe(0);
  return JSON.parse(r.stdout);
};

describe('kvtc generate', () => {
  it('prints the continuation on stdout and the token count, stop reason and speed on stderr', async () => {
    const r = await kvtc('generate', '--prompt', 'Once upon a time', '--max-new-tokens', '5');
    expect(r.code).toBe(0);
    // Greedy stories260K: the TinyStories opening, with the joining space as the tokenizer decodes it.
    expect(r.stdout).toBe(', there was a little');
    expect(r.stderr).toMatch(/^\(5 new tokens, stop: length, \d+ tokens\/s\)$/);
    const j = await gen('--max-new-tokens', '5');
    expect(Object.keys(j).sort()).toEqual([
      'continuation',
      'decode_ms',
      'ids',
      'model',
      'prefill_ms',
      'prompt',
      'prompt_tokens',
      'stop_reason',
      'tokens_per_second',
    ]);
    expect(j).toMatchObject({ model: 'stories260k', prompt: 'Once upon a time', continuation: r.stdout, stop_reason: 'length' });
    expect(j.ids).toHaveLength(5);
    expect(j.prefill_ms).toBeGreaterThan(0);
    expect(j.tokens_per_second).toBeCloseTo(4 / (j.decode_ms / 1000), 6);
  });

  it('--temperature samples: the same seed gives the same tokens, another seed others; greedy ignores the seed', async () => {
    const a = await gen('--max-new-tokens', '24', '--temperature', '1', '--seed', '1');
    const b = await gen('--max-new-tokens', '24', '--temperature', '1', '--seed', '1');
    const c = await gen('--max-new-tokens', '24', '--temperature', '1', '--seed', '2');
    expect(b.ids).toEqual(a.ids);
    expect(c.ids).not.toEqual(a.ids);
    const g1 = await gen('--max-new-tokens', '24', '--seed', '1');
    const g2 = await gen('--max-new-tokens', '24', '--seed', '2');
    expect(g2.ids).toEqual(g1.ids);
    expect(a.ids).not.toEqual(g1.ids);
  });

  it("stops at the model's context: prompt and generated tokens fill its 512 positions, the last one sampled from position 511", async () => {
    const r = await kvtc('generate', '--prompt', 'Once upon a time, '.repeat(90), '--max-new-tokens', '100000', '--json');
    expect(r.code, r.stderr).toBe(0);
    const j = JSON.parse(r.stdout);
    expect(j.stop_reason).toBe('context');
    expect(j.prompt_tokens).toBeGreaterThan(400);
    expect(j.prompt_tokens + j.ids.length).toBe(512 + 1);
  });

  it('--max-new-tokens 0 generates nothing and reports no speed', async () => {
    const j = await gen('--max-new-tokens', '0');
    expect(j).toMatchObject({ ids: [], continuation: '', stop_reason: 'length' });
    expect(j.tokens_per_second).toBeUndefined();
  });
});
