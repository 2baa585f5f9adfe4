// `kvtc inspect --model DIR` prints the RoPE kvtc will undo per layer (runs of layers sharing a
// description), and --json carries it: on family fixtures whose layers differ (Gemma 3's local and
// global bases, SmolLM3's NoPE layer, Phi-3's longrope with its attention factor, GPT-2's none).
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { runKvtc } from '../helpers/process.js';
import { buildFamilyFixture, family } from './family-fixtures.js';

let dir: string;
beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'kvtc-inspect-rope-'));
  for (const n of ['gemma3', 'smollm3', 'phi3-longrope', 'gpt2'])
    await buildFamilyFixture(family(n), n === 'gemma3' ? '4.x' : '5.x', join(dir, n));
}, 120_000);
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

async function inspectJson(name: string): Promise<{ rope: Record<string, unknown>[] }> {
  const r = await runKvtc(['inspect', '--model', join(dir, name), '--json']);
  expect(r.code, r.stderr).toBe(0);
  return JSON.parse(r.stdout);
}

describe('inspect --model: RoPE per layer', () => {
  it('Gemma 3: sliding layers with the local base, every 3rd layer global with linear ×8 (table and --json)', async () => {
    const j = await inspectJson('gemma3');
    expect(j.rope.map((r) => [r.layers, r.theta, r.scaling])).toEqual([
      ['0-1', 10000, null],
      ['2', 1000000, { type: 'linear', factor: 8 }],
      ['3-4', 10000, null],
      ['5', 1000000, { type: 'linear', factor: 8 }],
    ]);
    expect(j.rope[0]).toMatchObject({ rotary_dim: 32, head_dim: 32, layout: 'half', attention_factor: 1 });
    const t = await runKvtc(['inspect', '--model', join(dir, 'gemma3')]);
    expect(t.code, t.stderr).toBe(0);
    expect(t.stdout).toMatch(/^\s*2\s+1000000\s+32 of 32\s+half \(pairs \(i, i\+16\)\)\s+linear ×8\s+1$/m);
    expect(t.stdout).toMatch(/^0-1\s+10000\s+32 of 32/m);
    expect(t.stdout).toMatch(
      /read from: config\.json: layers 0-1, 3-4: theta 10000.*layers 2, 5: theta 1000000, rotary dim 32, half, linear scaling ×8/,
    );
  });

  it('SmolLM3: the NoPE layer is its own row, marked as nothing to undo', async () => {
    const j = await inspectJson('smollm3');
    expect(j.rope.map((r) => [r.layers, r.none ?? false, r.theta])).toEqual([
      ['0-2', false, 2000000],
      ['3', true, null],
    ]);
    const t = await runKvtc(['inspect', '--model', join(dir, 'smollm3')]);
    expect(t.stdout).toMatch(/^\s*3\s+-\s+0 of 16/m);
    expect(t.stdout).toMatch(/no RoPE on their keys, nothing to undo/);
  });

  it('Phi-3 longrope: partial rotary, the factors and the attention factor', async () => {
    const j = await inspectJson('phi3-longrope');
    expect(j.rope).toHaveLength(1);
    const r = j.rope[0] as {
      rotary_dim: number;
      attention_factor: number;
      scaling: { type: string; short_factor: number[]; long_factor: number[]; original_max_position_embeddings: number };
    };
    expect(r.rotary_dim).toBe(12);
    expect(r.scaling.type).toBe('longrope');
    expect(r.scaling.short_factor).toHaveLength(6);
    expect(r.scaling.original_max_position_embeddings).toBe(64);
    // sqrt(1 + ln(256 / 64) / ln 64): _compute_longrope_parameters with max 256, original 64
    expect(r.attention_factor).toBeCloseTo(Math.sqrt(1 + Math.log(4) / Math.log(64)), 12);
  });

  it('GPT-2: no RoPE on any layer', async () => {
    const j = await inspectJson('gpt2');
    expect(j.rope).toEqual([expect.objectContaining({ layers: '0-1', none: true })]);
  });
});
