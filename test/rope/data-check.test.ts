/**
 * The RoPE data check (src/rope/data-check.ts) on keys cached by real ONNX graphs: it passes on
 * every family fixture read correctly (and on the bundled trained model), and it stops with
 * ROPE_MISMATCH naming the setting when the config is deliberately wrong: theta ×10, the layout
 * swapped, a NoPE layer read as rotated (and the reverse), scaling ignored, one base for
 * Gemma 3's local and global layers. The wrong readings come from editing config.json and
 * reading it again with the independent reference (transformers-reference.ts).
 */
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { KvtcError } from '../../src/errors.js';
import { loadTokenizer } from '../../src/model/tokenizer.js';
import { createSession } from '../../src/onnx/session.js';
import { DEFAULT_MODEL_DIR, WIKITEXT_TEST } from '../../src/paths.js';
import { mulberry32 } from '../../src/random.js';
import { checkModelRope, checkRopeFromData, MIN_PAIRS, type CheckRope, type RopeCheckInput } from '../../src/rope/data-check.js';
import { uniformModelRope, type RopeSpec } from '../../src/rope/types.js';
import { emptyPast, step, type CacheShape } from '../convert/run-llama.js';
import { buildFamilyFixture, family, FAMILIES, type FamilyDef } from './family-fixtures.js';
import { transformersLayerRopes, type RefLayerRope } from './transformers-reference.js';

type Json = Record<string, unknown>;
let tmp: string;
beforeAll(async () => void (tmp = await mkdtemp(join(tmpdir(), 'kvtc-ropecheck-'))));
afterAll(async () => rm(tmp, { recursive: true, force: true }));

const TOKENS = 160;
/** Seeded ids from a small alphabet, so tokens repeat at many distances. */
const IDS = (() => {
  const r = mulberry32(5);
  return [1, ...Array.from({ length: TOKENS - 1 }, () => 3 + Math.floor(r() * 40))];
})();

const asCheck = (r: RefLayerRope | null): CheckRope | null =>
  r && {
    invFreq: r.invFreq,
    rotaryDim: r.rotaryDim,
    layout: r.layout,
    attentionFactor: r.attentionFactor,
    ...(r.long ? { long: r.long } : {}),
  };

/** Keys [kvHeads, tokens, headDim] per layer of one forward pass over IDS. */
async function capture(def: FamilyDef, kvDtype: 'float32' | 'float16' = 'float32'): Promise<Omit<RopeCheckInput, 'layers'>> {
  const fx = await buildFamilyFixture(def, '5.x', join(tmp, `${def.name}-${kvDtype}`), { kvDtype });
  const session = await createSession(join(fx.dir, 'onnx', 'model.onnx'));
  const shape: CacheShape = { layers: def.layers, kvHeads: def.kvHeads, headDim: def.headDim, kvDtype };
  const r = await step(session, shape, [IDS], emptyPast(shape));
  await session.release();
  return {
    keys: Array.from({ length: def.layers }, (_, l) => r.presentF32[2 * l]),
    kvHeads: def.kvHeads,
    headDim: def.headDim,
    tokens: TOKENS,
    startPosition: 0,
    ids: IDS,
    ...(def.absolutePositions ? { absolutePositions: true } : {}),
  };
}

const readAs = (cfg: Json) => transformersLayerRopes(cfg).map(asCheck);

function mismatch(inp: RopeCheckInput): KvtcError {
  try {
    checkRopeFromData(inp);
  } catch (e) {
    expect(e).toBeInstanceOf(KvtcError);
    expect((e as KvtcError).code).toBe('ROPE_MISMATCH');
    expect((e as KvtcError).fix).toBeTruthy();
    return e as KvtcError;
  }
  throw new Error('the RoPE check passed a wrong config');
}

describe('RoPE data check', () => {
  it.each(FAMILIES.map((d) => [d.name, d] as const))('%s: passes with the config read correctly', async (_name, def) => {
    const data = await capture(def);
    const report = checkRopeFromData({ ...data, layers: readAs(def.config['5.x']) });
    expect(report.checked).toBe(true);
    expect(report.pairs).toBeGreaterThanOrEqual(100);
    // First-layer keys of a token are identical once un-rotated (learned positions aside).
    if (!def.absolutePositions) expect(report.layers[0].score).toBeLessThan(1e-9);
    // No misreading comes close to beating the right one (the check needs 20%).
    for (const s of report.layers) if (s.best) expect(s.best.score).toBeGreaterThan(0.95 * s.score);
  });

  it('passes on float16 caches (rounding stays far below the threshold)', async () => {
    const def = family('qwen3');
    const report = checkRopeFromData({ ...(await capture(def, 'float16')), layers: readAs(def.config['5.x']) });
    expect(report.layers[0].score).toBeGreaterThan(0);
    expect(report.layers[0].score).toBeLessThan(1e-5);
  });

  it('passes on the bundled trained model (stories260K) read from its config.json', async () => {
    const cfg = JSON.parse(await readFile(join(DEFAULT_MODEL_DIR, 'config.json'), 'utf8')) as Json;
    const tok = await loadTokenizer(DEFAULT_MODEL_DIR);
    const ids = tok.encode((await readFile(WIKITEXT_TEST, 'utf8')).slice(0, 3000)).slice(0, 300);
    const session = await createSession(join(DEFAULT_MODEL_DIR, 'onnx', 'model.onnx'));
    const shape: CacheShape = { layers: 5, kvHeads: 4, headDim: 8, kvDtype: 'float32' };
    const r = await step(session, shape, [ids], emptyPast(shape));
    await session.release();
    const data = {
      keys: [0, 1, 2, 3, 4].map((l) => r.presentF32[2 * l]),
      kvHeads: 4,
      headDim: 8,
      tokens: ids.length,
      startPosition: 0,
      ids,
    };
    const report = checkRopeFromData({ ...data, layers: readAs(cfg) });
    expect(report.layers[0].score).toBeLessThan(1e-9);
    const e = mismatch({ ...data, layers: readAs({ ...cfg, rope_theta: 100000 }) });
    expect(e.message).toMatch(/layer 0: rope_theta: the keys fit theta ≈ 1\.000e\+4/);
  });

  it('theta ×10 is caught and named', async () => {
    for (const name of ['qwen3', 'olmo2', 'mixtral']) {
      const def = family(name);
      const cfg = def.config['5.x'];
      const params = cfg.rope_parameters as Json;
      const e = mismatch({
        ...(await capture(def)),
        layers: readAs({ ...cfg, rope_parameters: { ...params, rope_theta: (params.rope_theta as number) * 10 } }),
      });
      expect(e.message, name).toMatch(/layer 0: rope_theta: the keys fit theta/);
      expect(e.fix).toMatch(/rope_theta/);
    }
  });

  it('the layout swapped is caught and named', async () => {
    const def = family('granite');
    const e = mismatch({ ...(await capture(def)), layers: readAs({ ...def.config['5.x'], rope_interleaved: true }) });
    expect(e.message).toMatch(/layer 0: RoPE layout: the keys are rotated in half-split pairs/);
    const il = family('llama-interleaved-linear');
    const cfg = { ...il.config['5.x'] };
    delete cfg.rope_interleaved;
    const e2 = mismatch({ ...(await capture(il)), layers: readAs(cfg) });
    expect(e2.message).toMatch(/RoPE layout: the keys are rotated in interleaved pairs/);
  });

  it('a NoPE layer read as rotated, and a rotated layer read as NoPE, are caught on that layer', async () => {
    const def = family('smollm3');
    const data = await capture(def);
    const e = mismatch({ ...data, layers: readAs({ ...def.config['5.x'], no_rope_layers: [1, 1, 1, 1] }) });
    expect(e.message).toMatch(/layer 3 is read as rotated .* but its keys carry no RoPE/);
    expect(e.context?.layer).toBe(3);
    const e2 = mismatch({ ...data, layers: readAs({ ...def.config['5.x'], no_rope_layers: [1, 0, 1, 0] }) });
    expect(e2.message).toMatch(/layer 1 is read as having no RoPE \(NoPE\), but its keys are rotated/);
  });

  it('scaling ignored is caught (llama3, yarn, longrope, linear on Gemma 3 global layers)', async () => {
    for (const name of ['llama-llama3', 'qwen3_moe-yarn', 'phi3-longrope', 'gemma3']) {
      const def = family(name);
      const cfg = def.config['4.x'];
      const e = mismatch({ ...(await capture(def)), layers: readAs({ ...cfg, rope_scaling: null }) });
      expect(e.message, name).toMatch(/RoPE check failed on layer (\d+)/);
      if (name === 'gemma3') {
        expect(e.context?.layer).toBe(2); // the first global layer
        expect(e.message).toMatch(/RoPE scaling: the keys fit linear scaling \(factor 8\)/);
      } else {
        expect(e.context?.layer, name).toBe(0);
        expect(e.message, name).toMatch(/suspect RoPE scaling: the high-frequency pairs agree but the low-frequency ones do not/);
      }
    }
  });

  it('one base for Gemma 3 local and global layers is caught on a layer whose base is wrong', async () => {
    const def = family('gemma3');
    const cfg = def.config['4.x'];
    const e = mismatch({ ...(await capture(def)), layers: readAs({ ...cfg, rope_local_base_freq: cfg.rope_theta }) });
    expect(e.context?.layer).toBe(0);
    expect(e.message).toMatch(/layer 0: (rope_theta|per-layer RoPE)/);
  });

  it("checkModelRope checks kvtc's own per-layer reading (RopeSpec, scaling, NoPE)", async () => {
    const def = family('llama-llama3');
    const data = await capture(def);
    const cache = {
      layers: def.layers,
      kvHeads: def.kvHeads,
      headDim: def.headDim,
      tokens: TOKENS,
      dtype: 'float32' as const,
      keys: data.keys,
      values: data.keys,
      startPosition: 0,
    };
    const llama3: RopeSpec = {
      theta: 500000,
      rotaryDim: 16,
      layout: 'half',
      scaling: { type: 'llama3', factor: 8, lowFreqFactor: 1, highFreqFactor: 4, originalMaxPositionEmbeddings: 64 },
    };
    expect(checkModelRope(cache, IDS, uniformModelRope(llama3, 2)).layers[0].score).toBeLessThan(1e-9);
    expect(() => checkModelRope(cache, IDS, uniformModelRope({ ...llama3, theta: 5000000 }, 2))).toThrow(/ROPE_MISMATCH|layer 0/);
    const e = (() => {
      try {
        checkModelRope(cache, IDS, [llama3, null]);
      } catch (err) {
        return err as KvtcError;
      }
    })();
    expect(e?.code).toBe('ROPE_MISMATCH');
    expect(e?.message).toMatch(/layer 1 is read as having no RoPE/);
  });

  it('catches a longrope cache grown past the switch in several passes (short and long factors mixed)', async () => {
    const def = family('phi3-longrope');
    const fx = await buildFamilyFixture(def, '5.x', join(tmp, 'phi3-chunked'));
    const session = await createSession(join(fx.dir, 'onnx', 'model.onnx'));
    const shape: CacheShape = { layers: def.layers, kvHeads: def.kvHeads, headDim: def.headDim, kvDtype: 'float32' };
    let r = await step(session, shape, [IDS.slice(0, 32)], emptyPast(shape));
    for (let t = 32; t < TOKENS; t += 32) r = await step(session, shape, [IDS.slice(t, t + 32)], r.present);
    await session.release();
    const data = {
      keys: [0, 1].map((l) => r.presentF32[2 * l]),
      kvHeads: def.kvHeads,
      headDim: def.headDim,
      tokens: TOKENS,
      startPosition: 0,
      ids: IDS,
    };
    // kvtc's reading of a 160-token cache: long factors everywhere (one prefill would have used them).
    const asOnePrefill = readAs(def.config['5.x']).map((c) => c && { ...c, invFreq: c.long!.invFreq, long: undefined });
    const e = mismatch({ ...data, layers: asOnePrefill });
    expect(e.context?.layer).toBe(0);
    expect(e.message).toMatch(/suspect RoPE scaling/);
    // Told which pass each token came from, the check agrees with the cache.
    const perPass = readAs(def.config['5.x']);
    expect(
      checkRopeFromData({ ...data, layers: perPass, seqLen: (t) => Math.min(TOKENS, (Math.floor(t / 32) + 1) * 32) }).layers[0].score,
    ).toBeLessThan(1e-9);
  });

  it('reports checked: false, not a verdict, without enough repeated tokens', async () => {
    const def = family('granite');
    const data = await capture(def);
    const distinct = Array.from({ length: TOKENS }, (_, i) => 100 + i);
    const few = [...distinct.slice(0, TOKENS - MIN_PAIRS + 1), ...distinct.slice(0, MIN_PAIRS - 1)];
    const r = checkRopeFromData({ ...data, ids: few, layers: readAs(def.config['5.x']) });
    expect(r.checked).toBe(false);
    expect(r.reason).toMatch(/repeated tokens/);
    // Inputs that do not describe the cache are kvtc bugs, not verdicts.
    expect(() => checkRopeFromData({ ...data, ids: IDS.slice(1), layers: readAs(def.config['5.x']) })).toThrow(
      /159 token ids for 160 cached tokens/,
    );
    expect(() => checkRopeFromData({ ...data, layers: readAs(def.config['5.x']).slice(1) })).toThrow(/1 layer RoPEs for 2 cached layers/);
  });
});
