/**
 * calibrate → capture → encode → decode on one family fixture (transformers 5.x config form),
 * shared by test/rope/families-codec-{1,2,3,4}.test.ts (split so each file stays well under 30 s): the
 * profile is fitted on keys un-rotated per layer as kvtc reads the family, and a captured cache
 * round-trips through the codec with a bounded, nonzero error.
 */
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { readKvCache } from '../../src/model/kv-io.js';
import { WIKITEXT_TEST } from '../../src/paths.js';
import { kvtc, tempDir } from '../model/helpers.js';
import { buildFamilyFixture, type FamilyDef } from './family-fixtures.js';

const TOKENS = 250; // the fixtures have 256 positions

export function codecRoundTrips(defs: FamilyDef[]): void {
  describe('calibrate, encode, decode on each model family', () => {
    it.each(defs.map((d) => [d.name, d] as const))('%s', async (name, def) => {
      const dir = tempDir('kvtc-families-codec-');
      const text = join(dir, 't.txt');
      writeFileSync(text, readFileSync(WIKITEXT_TEST, 'utf8').slice(20_000, 26_000));
      const fx = await buildFamilyFixture(def, '5.x', join(dir, name));
      const profile = join(dir, 'profile');
      const c = await kvtc(
        'calibrate',
        '--model',
        fx.dir,
        '--tokens',
        '256',
        '--heldout',
        '128',
        '--report-tokens',
        '128',
        '--ratio',
        '8',
        '--grouping',
        'layer',
        '--out',
        profile,
        '--json',
      );
      expect(c.code, c.stderr).toBe(0);
      const kv = join(dir, 'kv.safetensors');
      const cap = await kvtc('capture', '--model', fx.dir, '--text', text, '--max-tokens', String(TOKENS), '--out', kv, '--quiet');
      expect(cap.code, cap.stderr).toBe(0);
      const blob = join(dir, 'kv.kvtc');
      const e = await kvtc('encode', '--profile', profile, '--kv', kv, '--out', blob, '--json');
      expect(e.code, e.stderr).toBe(0);
      expect(JSON.parse(e.stdout).ratio_compressed).toBeGreaterThan(2);
      const out = join(dir, 'restored.safetensors');
      const d = await kvtc('decode', '--profile', profile, '--in', blob, '--out', out);
      expect(d.code, d.stderr).toBe(0);
      const a = (await readKvCache(kv)).cache;
      const b = (await readKvCache(out)).cache;
      expect(b.tokens).toBe(TOKENS);
      for (const kind of ['keys', 'values'] as const) {
        let num = 0;
        let den = 0;
        for (let l = 0; l < a.layers; l++) {
          for (let i = 0; i < a[kind][l].length; i++) {
            num += (a[kind][l][i] - b[kind][l][i]) ** 2;
            den += a[kind][l][i] ** 2;
          }
        }
        const rel = Math.sqrt(num / den);
        expect(rel, kind).toBeGreaterThan(0);
        expect(rel, kind).toBeLessThan(0.5);
      }
    });
  });
}
