import { readFileSync, renameSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { calibrateKv, SHARDS_INDEX, type KvCalibrateResult } from '../../src/calibrate/calibrate-kv.js';
import { openKvDump, readDumpSequence } from '../../src/calibrate/kv-dump.js';
import { openDumpRanks, parseShards, ppIndices, tpHeads } from '../../src/calibrate/kv-shards.js';
import { KvtcError } from '../../src/errors.js';
import { loadModel } from '../../src/model/load.js';
import { ModelRunner } from '../../src/model/runner.js';
import type { KvCache } from '../../src/model/types.js';
import { DEFAULT_CALIBRATION_DIR, DEFAULT_MODEL_DIR } from '../../src/paths.js';
import { codecFromProfile } from '../../src/profile/codec-from-profile.js';
import { readProfile } from '../../src/profile/read.js';
import { readCalibrationTokens } from '../../src/calibrate/sequences.js';
import { kvtc, tempDir } from '../model/helpers.js';
import { cutCache, writeDump, type DumpModelInfo, type DumpSeq } from './kv-dump-helpers.js';

/** vLLM's get_pp_indices, transcribed from vllm/distributed/utils.py (no VLLM_PP_LAYER_PARTITION). */
function vllmGetPpIndices(numHiddenLayers: number, ppRank: number, ppSize: number): [number, number] {
  const layersPerPartition = Math.floor(numHiddenLayers / ppSize);
  const partitions = Array.from({ length: ppSize }, () => layersPerPartition);
  const remaining = numHiddenLayers % ppSize;
  if (remaining) for (let i = 2; i < remaining + 2; i++) partitions[partitions.length - i] += 1;
  const start = partitions.slice(0, ppRank).reduce((a, b) => a + b, 0);
  return [start, start + partitions[ppRank]];
}

describe('pipeline and tensor cuts', () => {
  it("ppIndices is vLLM's get_pp_indices: remainders to the stages before the last", () => {
    // Worked examples: 5 layers on 2 stages [3, 2]; 7 on 4 [2, 2, 2, 1]; 6 on 4 [1, 2, 2, 1]; 32 on 4 even.
    const sizes = (n: number, p: number) => Array.from({ length: p }, (_, r) => ppIndices(n, r, p)).map(([a, b]) => b - a);
    expect(sizes(5, 2)).toEqual([3, 2]);
    expect(sizes(7, 4)).toEqual([2, 2, 2, 1]);
    expect(sizes(6, 4)).toEqual([1, 2, 2, 1]);
    expect(sizes(32, 4)).toEqual([8, 8, 8, 8]);
    for (let n = 1; n <= 40; n++)
      for (let p = 1; p <= n && p <= 9; p++) for (let r = 0; r < p; r++) expect(ppIndices(n, r, p)).toEqual(vllmGetPpIndices(n, r, p));
  });

  it("ppIndices with split=sglang is SGLang's get_pp_indices: remainders to the last stages (as python -m kvtc convert-sglang reads them)", () => {
    // 5 layers on 2 stages [2, 3] (vLLM: [3, 2]); 7 on 4 [1, 2, 2, 2]; 6 on 4 [1, 1, 2, 2]; even splits agree with vLLM's.
    const sizes = (n: number, p: number) => Array.from({ length: p }, (_, r) => ppIndices(n, r, p, 'sglang')).map(([a, b]) => b - a);
    expect(sizes(5, 2)).toEqual([2, 3]);
    expect(sizes(7, 4)).toEqual([1, 2, 2, 2]);
    expect(sizes(6, 4)).toEqual([1, 1, 2, 2]);
    expect(sizes(32, 4)).toEqual([8, 8, 8, 8]);
    for (let n = 1; n <= 40; n++)
      for (let p = 1; p <= n && p <= 9; p++) {
        const s = sizes(n, p);
        expect(s.reduce((a, b) => a + b, 0)).toBe(n);
        expect(Math.max(...s) - Math.min(...s)).toBeLessThanOrEqual(1);
        // Contiguous, in order, and the larger stages last.
        expect([...s].sort((a, b) => a - b)).toEqual(s);
        expect(ppIndices(n, p - 1, p, 'sglang')[1]).toBe(n);
      }
    expect(parseShards('tp=2,pp=2,split=sglang')).toEqual({ tp: 2, pp: 2, split: 'sglang' });
    expect(() => parseShards('tp=2,split=tensorrt')).toThrow(/not of the form tp=T,pp=P\[,split=vllm\|sglang\]/);
  });

  it('tpHeads splits KV heads evenly, and replicates when there are fewer heads than ranks', () => {
    expect([0, 1].map((t) => tpHeads(4, t, 2))).toEqual([
      [0, 1],
      [2, 3],
    ]);
    expect([0, 1, 2, 3].map((t) => tpHeads(2, t, 4))).toEqual([[0], [0], [1], [1]]);
    expect(tpHeads(1, 3, 8)).toEqual([0]);
  });
});

const TEXT = join(DEFAULT_CALIBRATION_DIR, 'inaugural-1797-Adams.txt');
const SETTINGS = { ratios: [8], tokens: 1024, heldout: 512, report: 512, sink: 4, window: 16, grouping: 'layer' as const, seed: 0 };

const relErr = (a: Float32Array, b: Float32Array) => {
  let num = 0;
  let den = 0;
  for (let i = 0; i < a.length; i++) {
    num += (a[i] - b[i]) ** 2;
    den += b[i] ** 2;
  }
  return Math.sqrt(num / den);
};

/** Per-layer relative error over the compressed tokens [sink, tokens - window) of every head. */
function layerErrors(x: KvCache, y: KvCache, kind: 'keys' | 'values', sink: number, window: number): number[] {
  return x[kind].map((a, l) => {
    const D = x.headDim;
    const T = x.tokens;
    const pick = (c: Float32Array) => {
      const out: number[] = [];
      for (let h = 0; h < x.kvHeads; h++)
        for (let t = sink; t < T - window; t++) for (let d = 0; d < D; d++) out.push(c[(h * T + t) * D + d]);
      return Float32Array.from(out);
    };
    return relErr(pick(a), pick(y[kind][l]));
  });
}

/** Puts rank caches (layers of stage p, heads of rank t) back into the whole-model layout. */
function reassemble(whole: KvCache, parts: { layers: number[]; heads: number[]; cache: KvCache }[]): KvCache {
  const T = whole.tokens;
  const D = whole.headDim;
  const keys = whole.keys.map((k) => new Float32Array(k.length).fill(NaN));
  const values = whole.values.map((v) => new Float32Array(v.length).fill(NaN));
  for (const p of parts) {
    p.layers.forEach((l, li) =>
      p.heads.forEach((h, hi) => {
        keys[l].set(p.cache.keys[li].subarray(hi * T * D, (hi + 1) * T * D), h * T * D);
        values[l].set(p.cache.values[li].subarray(hi * T * D, (hi + 1) * T * D), h * T * D);
      }),
    );
  }
  return { ...whole, keys, values };
}

describe('calibrate --kv --shards tp=2,pp=2 on a dump of the bundled model', () => {
  let root: string;
  let dump: string;
  let seqs: DumpSeq[];
  let model: DumpModelInfo;
  let sharded: KvCalibrateResult;
  beforeAll(async () => {
    root = tempDir('kvtc-kvshards-');
    dump = join(root, 'dump');
    const m = await loadModel(DEFAULT_MODEL_DIR);
    try {
      const data = await readCalibrationTokens([TEXT], m.tokenizer, { fitTokens: 1024, heldoutTokens: 512, reportTokens: 512 });
      const runner = new ModelRunner(m);
      seqs = [];
      for (let i = 0; i < 10; i++) {
        const ids = [m.tokenizer.bosTokenId!, ...data.tokens.slice(i * 255, (i + 1) * 255)];
        seqs.push({ cache: (await runner.prefill(ids, { chunk: 256 })).cache, ids });
      }
      const s = m.spec;
      model = { layers: s.layers, heads: s.heads, kvHeads: s.kvHeads, headDim: s.headDim, maxPositions: s.maxPositions, rope: s.rope };
    } finally {
      await m.session.release();
    }
    writeDump(dump, model, seqs);
    sharded = await calibrateKv({ kv: dump, shards: { tp: 2, pp: 2 }, ...SETTINGS, out: join(root, 'shards') });
    await calibrateKv({ kv: dump, ...SETTINGS, out: join(root, 'whole') });
  }, 180_000);

  it('writes one format-3 profile per rank with its shard, layers and heads, and the index', async () => {
    expect(sharded.ranks.map((r) => r.rank)).toEqual(['tp_0_pp_0', 'tp_1_pp_0', 'tp_0_pp_1', 'tp_1_pp_1']);
    for (const r of sharded.ranks) {
      const p = await readProfile(join(root, 'shards', r.rank!));
      const [t, pp] = [Number(r.rank![3]), Number(r.rank![8])];
      expect(p.manifest.shard).toEqual({ tp_rank: t, tp_size: 2, pp_rank: pp, pp_size: 2, kv_heads: t === 0 ? [0, 1] : [2, 3] });
      expect(p.manifest.model.model_layers).toBe(5);
      expect(p.manifest.model.cache_layers).toEqual(pp === 0 ? [0, 1, 2] : [3, 4]);
      expect(p.manifest.model.kv_heads).toBe(2);
      expect(p.manifest.model.layers).toBe(pp === 0 ? 3 : 2);
    }
    const index = JSON.parse(readFileSync(join(root, 'shards', SHARDS_INDEX), 'utf8'));
    expect(index.tp_size).toBe(2);
    expect(index.pp_size).toBe(2);
    expect(index.ranks.map((r: { profile: string }) => r.profile)).toEqual(sharded.ranks.map((r) => r.rank));
    expect(index.ranks.map((r: { profile_id: string }) => r.profile_id)).toEqual(sharded.profiles.map((p) => p.profile_id));
    expect(sharded.shards_index).toEqual([join(root, 'shards', SHARDS_INDEX)]);
  });

  it("each rank encodes and decodes its own shard; reassembled, the shards match the whole-model decode within the profiles' errors", async () => {
    const d = await openKvDump(dump);
    // A sequence none of the ranks fitted on (the report split), read as the whole-model cache.
    const file = sharded.ranks[0].split.report[0];
    const x = (
      await readDumpSequence(
        d,
        d.sequences.find((s) => s.file === file)!,
      )
    ).cache;
    const wholeCodec = await codecFromProfile(await readProfile(join(root, 'whole')));
    const wholeDecoded = (await wholeCodec.decode((await wholeCodec.encode(x)).blob)).cache;
    await wholeCodec.release();
    const parts: { layers: number[]; heads: number[]; cache: KvCache }[] = [];
    const measured = { keys: new Array<number>(5).fill(0), values: new Array<number>(5).fill(0) };
    for (const r of sharded.ranks) {
      const profile = await readProfile(join(root, 'shards', r.rank!));
      const codec = await codecFromProfile(profile);
      const layerIdx = r.layers;
      const shard = cutCache(x, layerIdx, r.kv_heads);
      const decoded = (await codec.decode((await codec.encode(shard)).blob)).cache;
      await codec.release();
      expect(decoded.layers).toBe(layerIdx.length);
      parts.push({ layers: layerIdx, heads: r.kv_heads, cache: decoded });
      const p = sharded.profiles[sharded.ranks.indexOf(r)];
      layerIdx.forEach((l, i) => {
        measured.keys[l] = Math.max(measured.keys[l], p.rel_error.key_per_layer[i]);
        measured.values[l] = Math.max(measured.values[l], p.rel_error.value_per_layer[i]);
      });
    }
    const joined = reassemble(x, parts);
    for (const kind of ['keys', 'values'] as const) {
      const shardErr = layerErrors(joined, x, kind, 4, 16);
      const wholeErr = layerErrors(wholeDecoded, x, kind, 4, 16);
      const gap = layerErrors(joined, wholeDecoded, kind, 4, 16);
      for (let l = 0; l < 5; l++) {
        // Each shard's reconstruction error is of the size its profile measured on the report split…
        expect(shardErr[l], `${kind} layer ${l}`).toBeLessThan(1.5 * measured[kind][l] + 0.01);
        // …and the reassembled cache is the whole-model decode up to the two profiles' errors.
        expect(gap[l], `${kind} layer ${l}`).toBeLessThan(1.2 * (shardErr[l] + wholeErr[l]) + 0.01);
      }
    }
    // A control the check can fail: the two tensor ranks' heads swapped on reassembly.
    const swapped = reassemble(
      x,
      parts.map((p) => ({ ...p, heads: p.heads.map((h) => (h + 2) % 4) })),
    );
    expect(Math.min(...layerErrors(swapped, x, 'values', 4, 16))).toBeGreaterThan(0.5);
  });

  it('rank dumps written per tp_<t>_pp_<p>/ give the same profiles as --shards', async () => {
    const ranksDir = join(root, 'ranks');
    for (const r of sharded.ranks) {
      const t = Number(r.rank![3]);
      const p = Number(r.rank![8]);
      writeDump(
        join(ranksDir, r.rank!),
        model,
        seqs.map((s) => ({ ...s, cache: cutCache(s.cache, r.layers, r.kv_heads) })),
        { shard: { tp_rank: t, tp_size: 2, pp_rank: p, pp_size: 2, layers: r.layers, kv_heads: r.kv_heads } },
      );
    }
    const res = await calibrateKv({ kv: ranksDir, ...SETTINGS, out: join(root, 'from-ranks') });
    expect(res.ranks.map((r) => r.rank)).toEqual(sharded.ranks.map((r) => r.rank));
    // Same caches, same split, same model description (each rank's kv_heads): the same profiles.
    expect(res.profiles.map((p) => p.profile_id)).toEqual(sharded.profiles.map((p) => p.profile_id));
    expect(res.ranks.map((r) => r.fingerprint)).toEqual(sharded.ranks.map((r) => r.fingerprint));

    // One rank's dump alone: its profile is written to --out itself, the same profile as that rank's.
    const one = await calibrateKv({ kv: join(ranksDir, 'tp_1_pp_1'), ...SETTINGS, out: join(root, 'one-rank') });
    expect(one.shards_index).toEqual([]);
    expect(one.profiles[0].profile).toBe(join(root, 'one-rank'));
    expect(one.profiles[0].profile_id).toBe(sharded.profiles[3].profile_id);

    // A missing rank, a rank in the wrong directory, and ranks of another model are refused.
    renameSync(join(ranksDir, 'tp_1_pp_1'), join(root, 'aside'));
    let e = await openDumpRanks(ranksDir).catch((x: KvtcError) => x);
    expect(e).toBeInstanceOf(KvtcError);
    expect((e as KvtcError).message).toMatch(/rank dump tp_1_pp_1 missing \(tp_size 2 × pp_size 2 = 4 ranks\)/);
    renameSync(join(root, 'aside'), join(ranksDir, 'tp_1_pp_1'));
    const m01 = join(ranksDir, 'tp_0_pp_1', 'kvtc-dump.json');
    const saved = readFileSync(m01, 'utf8');
    writeFileSync(m01, saved.replace('"max_positions": 512', '"max_positions": 1024'));
    e = await openDumpRanks(ranksDir).catch((x: KvtcError) => x);
    expect((e as KvtcError).message).toMatch(/tp_0_pp_1\/kvtc-dump\.json: has a model section that differs from tp_0_pp_0's/);
    writeFileSync(m01, saved.replace('"tp_rank": 0', '"tp_rank": 1'));
    e = await openDumpRanks(ranksDir).catch((x: KvtcError) => x);
    expect((e as KvtcError).message).toMatch(/says it is rank tp_1_pp_1, but its directory is tp_0_pp_1/);
    writeFileSync(m01, saved);
    const r = await kvtc('calibrate', '--kv', ranksDir, '--shards', 'tp=2', '--quiet');
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/already holds one dump per rank/);
  }, 120_000);
});
