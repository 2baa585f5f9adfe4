// Tested by test/calibrate/kv-dump-shards.test.ts.
/**
 * The ranks a KV dump is calibrated for (docs/kv-dumps.md §4): one whole-model dump, a directory
 * of per-rank dumps (tp_<t>_pp_<p>/), or a whole-model dump cut as a serving engine would cut it
 * (--shards tp=T,pp=P). Every rank is a DumpRank: its model in kvtc's terms and a reader of its
 * sequences, so calibration does the same for each.
 */
import { readdir, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { KvtcError, UsageError } from '../errors.js';
import type { KvCache } from '../model/types.js';
import {
  canonicalJson,
  dumpFingerprint,
  KV_DUMP_MANIFEST,
  openKvDump,
  type DumpCache,
  type DumpModel,
  type DumpSequence,
  type KvDump,
} from './kv-dump.js';

export interface DumpRank {
  /** 'tp_<t>_pp_<p>' for a rank of a sharded dump; undefined for a whole-model dump. */
  label?: string;
  /** The dump read (for a rank cut by --shards, the whole-model dump). */
  dump: KvDump;
  model: DumpModel;
  sequences: DumpSequence[];
  /** This rank's share of a sequence of `dump` as read (identity unless the rank is cut from a whole-model dump). */
  cut(whole: DumpCache): DumpCache;
}

export interface ShardRequest {
  tp: number;
  pp: number;
  /**
   * Whose pipeline split when the stages do not divide the layers evenly: vLLM's (default) gives
   * the extra layers to the stages before the last, SGLang's to the last ones (ppIndices).
   */
  split?: 'vllm' | 'sglang';
}

/** "tp=2,pp=2[,split=vllm|sglang]" (tp or pp left out: 1; split left out: vllm). */
export function parseShards(text: string): ShardRequest {
  const out: ShardRequest = { tp: 1, pp: 1 };
  const seen = new Set<string>();
  for (const part of text.split(',')) {
    const m = /^\s*(tp|pp)\s*=\s*(\d+)\s*$/.exec(part);
    const split = /^\s*split\s*=\s*(vllm|sglang)\s*$/.exec(part);
    if (split && !seen.has('split')) {
      seen.add('split');
      out.split = split[1] as 'vllm' | 'sglang';
      continue;
    }
    if (!m || seen.has(m[1]) || Number(m[2]) < 1 || Number(m[2]) > 0xffff) {
      throw new UsageError(
        `--shards ${JSON.stringify(text)} is not of the form tp=T,pp=P[,split=vllm|sglang]`,
        "Give the tensor-parallel and pipeline-parallel sizes to cut the dump into, e.g. --shards tp=2,pp=2 (each a whole number from 1; one left out is 1); add split=sglang when the server is SGLang and the stages do not divide the layers evenly (vLLM's split is the default).",
        { option: '--shards', value: text },
      );
    }
    seen.add(m[1]);
    out[m[1] as 'tp' | 'pp'] = Number(m[2]);
  }
  return out;
}

/**
 * vLLM's get_pp_indices (vllm/distributed/utils.py, without the VLLM_PP_LAYER_PARTITION
 * override): the model's layers split as evenly as possible; the remainder goes one layer each
 * to the stages before the last, from the last-but-one backwards (partitions[-i] += 1 for i in
 * 2..remainder+1), so the last stage (final norm, LM head) and, when the remainder allows, the
 * first (embeddings) get no extra layer. Returns [start, end) of model layers.
 */
export function ppIndices(numLayers: number, ppRank: number, ppSize: number, split: 'vllm' | 'sglang' = 'vllm'): [number, number] {
  const per = Math.floor(numLayers / ppSize);
  const parts = new Array<number>(ppSize).fill(per);
  const remaining = numLayers % ppSize;
  // SGLang's get_pp_indices (python/kvtc/sglang.py pp_layer_range, cited there): the last
  // `remaining` stages take one layer more.
  if (split === 'sglang') for (let i = 1; i <= remaining; i++) parts[ppSize - i] += 1;
  else for (let i = 2; i < remaining + 2; i++) parts[ppSize - i] += 1;
  const start = parts.slice(0, ppRank).reduce((a, b) => a + b, 0);
  return [start, start + parts[ppRank]];
}

/**
 * Global KV heads of tensor rank t of T over K heads: [t·K/T, (t+1)·K/T) when K ≥ T (vLLM and
 * SGLang require T | K), else the one head ⌊t·K/T⌋ (replicated, K | T).
 */
export function tpHeads(K: number, t: number, T: number): number[] {
  if (K >= T) return Array.from({ length: K / T }, (_, i) => (t * K) / T + i);
  return [Math.floor((t * K) / T)];
}

function cutCache(c: KvCache, layerIdx: number[], heads: number[], valueDim: number): KvCache {
  const T = c.tokens;
  const pick = (a: Float32Array, dim: number) => {
    const out = new Float32Array(heads.length * T * dim);
    heads.forEach((h, i) => out.set(a.subarray(h * T * dim, (h + 1) * T * dim), i * T * dim));
    return out;
  };
  return {
    ...c,
    layers: layerIdx.length,
    kvHeads: heads.length,
    keys: layerIdx.map((l) => pick(c.keys[l], c.headDim)),
    values: layerIdx.map((l) => pick(c.values[l], valueDim)),
  };
}

/** The ranks of a whole-model dump cut by --shards: rank (t, p) holds stage p's cache layers and rank t's heads. */
export function cutDump(dump: KvDump, req: ShardRequest): DumpRank[] {
  const m = dump.model;
  const file = dump.manifestPath;
  if (m.shard) {
    throw new KvtcError(
      'USAGE',
      `--shards cuts a whole-model dump, and ${file} is already rank tp ${m.shard.tpRank}, pp ${m.shard.ppRank} of one`,
      {
        fix: 'Leave out --shards: a directory of tp_<t>_pp_<p>/ dumps is calibrated per rank as it is.',
        context: { file },
      },
    );
  }
  const K = m.spec.kvHeads;
  // (An MLA latent is one "head" (K = 1): every tensor rank keeps a replica, as vLLM and SGLang do.)
  if (!(K % req.tp === 0 || req.tp % K === 0)) {
    throw new KvtcError('USAGE', `--shards tp=${req.tp} does not divide the model's ${K} KV heads (nor do they divide it)`, {
      fix: `Choose a tensor-parallel size that divides ${K} or that ${K} divides, as serving engines require.`,
      context: { option: '--shards', kv_heads: K },
    });
  }
  if (req.pp > m.modelLayers) {
    throw new KvtcError('USAGE', `--shards pp=${req.pp} is more pipeline stages than the model's ${m.modelLayers} layers`, {
      fix: `Choose pp ≤ ${m.modelLayers}.`,
      context: { option: '--shards' },
    });
  }
  const ranks: DumpRank[] = [];
  for (let p = 0; p < req.pp; p++) {
    const [start, end] = ppIndices(m.modelLayers, p, req.pp, req.split);
    const layerIdx = m.cacheLayers.map((l, i) => (l >= start && l < end ? i : -1)).filter((i) => i >= 0);
    if (layerIdx.length === 0) {
      throw new KvtcError(
        'USAGE',
        `--shards pp=${req.pp}: stage ${p} holds model layers ${start}-${end - 1}, none of which keeps a KV cache`,
        {
          fix: 'Choose fewer pipeline stages: a stage without cache layers has nothing to calibrate.',
          context: { option: '--shards', stage: p },
        },
      );
    }
    for (let t = 0; t < req.tp; t++) {
      const heads = tpHeads(K, t, req.tp);
      const cacheLayers = layerIdx.map((i) => m.cacheLayers[i]);
      // The fingerprint a dump of this rank would carry: the same model object, this rank's head count.
      const fingerprint = dumpFingerprint({ ...dump.manifest.model, kv_heads: heads.length });
      const model: DumpModel = {
        ...m,
        spec: {
          ...m.spec,
          layers: layerIdx.length,
          kvHeads: heads.length,
          rope: layerIdx.map((i) => m.spec.rope[i]),
          cacheLayers,
          shard: { tpRank: t, tpSize: req.tp, ppRank: p, ppSize: req.pp, kvHeads: heads },
        },
        cacheLayers,
        shard: { tpRank: t, tpSize: req.tp, ppRank: p, ppSize: req.pp, layers: cacheLayers, kvHeads: heads },
        fingerprint,
      };
      ranks.push({
        label: `tp_${t}_pp_${p}`,
        dump,
        model,
        sequences: dump.sequences,
        cut: (r) => ({ ...r, cache: cutCache(r.cache, layerIdx, heads, m.valueDim) }),
      });
    }
  }
  return ranks;
}

const RANK_DIR = /^tp_(\d+)_pp_(\d+)$/;

function wholeRank(d: KvDump): DumpRank {
  const s = d.model.shard;
  return {
    ...(s ? { label: `tp_${s.tpRank}_pp_${s.ppRank}` } : {}),
    dump: d,
    model: d.model,
    sequences: d.sequences,
    cut: (c) => c,
  };
}

/**
 * The ranks under `dir`: its own dump (whole model, or cut by `shards`), or its tp_<t>_pp_<p>/
 * dumps, checked to be one model's complete set of ranks: every (t, p) present once, the same
 * model section, each directory's name equal to its shard, the stages' layers partitioning the
 * cache layers and each stage's ranks covering every KV head.
 */
export async function openDumpRanks(dir: string, shards?: ShardRequest): Promise<DumpRank[]> {
  let entries: string[] = [];
  try {
    if (!(await stat(dir)).isDirectory()) throw new Error('not a directory');
    entries = await readdir(dir);
  } catch (e) {
    throw new KvtcError(
      'KV_INVALID',
      `${dir}: --kv needs a dump directory (${(e as NodeJS.ErrnoException).code ?? (e as Error).message})`,
      {
        fix: 'Point --kv at a directory written by `python -m kvtc capture` or `python -m kvtc convert-sglang` (docs/kv-dumps.md).',
        context: { file: dir },
      },
    );
  }
  if (entries.includes(KV_DUMP_MANIFEST)) {
    const d = await openKvDump(dir);
    return shards ? cutDump(d, shards) : [wholeRank(d)];
  }
  const rankDirs = entries.filter((e) => RANK_DIR.test(e)).sort();
  if (rankDirs.length === 0) {
    throw new KvtcError('KV_INVALID', `${dir}: holds neither ${KV_DUMP_MANIFEST} nor tp_<t>_pp_<p>/ rank dumps`, {
      fix: `Point --kv at a dump directory (its ${KV_DUMP_MANIFEST} beside seq-*.safetensors) or at the directory holding one tp_<t>_pp_<p>/ dump per rank (docs/kv-dumps.md §1).`,
      context: { file: dir },
    });
  }
  if (shards) {
    throw new KvtcError('USAGE', `--shards cuts a whole-model dump, but ${dir} already holds one dump per rank (${rankDirs.join(', ')})`, {
      fix: 'Leave out --shards: each tp_<t>_pp_<p>/ dump is calibrated as its rank.',
      context: { option: '--shards' },
    });
  }
  const dumps: KvDump[] = [];
  for (const r of rankDirs) dumps.push(await openKvDump(join(dir, r)));
  const first = dumps[0];
  const bad = (d: KvDump, msg: string, fix: string) =>
    new KvtcError('KV_INVALID', `${d.manifestPath}: ${msg}`, { fix, context: { file: d.manifestPath } });
  const refModel = canonicalJson(first.manifest.model);
  const s0 = first.manifest.shard;
  if (!s0)
    throw bad(
      first,
      `is in rank directory ${rankDirs[0]} but has no shard section`,
      'A rank dump records its shard (docs/kv-dumps.md §2.2): re-create it with its rank.',
    );
  const T = s0.tp_size;
  const P = s0.pp_size;
  const seen = new Map<string, KvDump>();
  for (const [i, d] of dumps.entries()) {
    const s = d.manifest.shard;
    const name = rankDirs[i];
    if (!s)
      throw bad(
        d,
        `is in rank directory ${name} but has no shard section`,
        'A rank dump records its shard (docs/kv-dumps.md §2.2): re-create it with its rank.',
      );
    if (name !== `tp_${s.tp_rank}_pp_${s.pp_rank}`)
      throw bad(
        d,
        `says it is rank tp_${s.tp_rank}_pp_${s.pp_rank}, but its directory is ${name}`,
        'Put each rank dump in the directory its shard names.',
      );
    if (s.tp_size !== T || s.pp_size !== P)
      throw bad(
        d,
        `says tp_size ${s.tp_size}, pp_size ${s.pp_size}; ${rankDirs[0]} says ${T}, ${P}`,
        'Calibrate the ranks of one run: all their dumps come from the same parallel layout.',
      );
    if (canonicalJson(d.manifest.model) !== refModel)
      throw bad(
        d,
        `has a model section that differs from ${rankDirs[0]}'s`,
        'Calibrate the ranks of one model together: every rank dump describes the same model.',
      );
    seen.set(name, d);
  }
  const missing: string[] = [];
  for (let p = 0; p < P; p++) for (let t = 0; t < T; t++) if (!seen.has(`tp_${t}_pp_${p}`)) missing.push(`tp_${t}_pp_${p}`);
  if (missing.length) {
    throw new KvtcError(
      'KV_INVALID',
      `${dir}: rank dump${missing.length > 1 ? 's' : ''} ${missing.join(', ')} missing (tp_size ${T} × pp_size ${P} = ${T * P} ranks)`,
      {
        fix: "Copy every rank's dump: a profile per rank needs all of them to check that they cover the model.",
        context: { file: dir, missing },
      },
    );
  }
  // Layers: each stage's ranks agree, and the stages partition the cache layers in order.
  const cacheLayers = first.manifest.model.cache_layers;
  const stageLayers: number[] = [];
  for (let p = 0; p < P; p++) {
    const ref = seen.get(`tp_0_pp_${p}`)!;
    const layers = ref.manifest.shard!.layers;
    for (let t = 1; t < T; t++) {
      const d = seen.get(`tp_${t}_pp_${p}`)!;
      if (d.manifest.shard!.layers.join(',') !== layers.join(','))
        throw bad(
          d,
          `holds layers ${d.manifest.shard!.layers.join(', ')}, but tp_0_pp_${p} holds ${layers.join(', ')}`,
          'The ranks of one pipeline stage hold the same layers: re-create the dumps of one run.',
        );
    }
    stageLayers.push(...layers);
  }
  if (stageLayers.join(',') !== cacheLayers.join(',')) {
    throw new KvtcError(
      'KV_INVALID',
      `${dir}: the stages' shard.layers (${stageLayers.join(', ')}) do not cover model.cache_layers (${cacheLayers.join(', ')}) once each, in order`,
      {
        fix: "Dump every pipeline stage of one run: together their layers are the model's cache layers.",
        context: { file: dir },
      },
    );
  }
  // Heads: each stage's ranks together hold every KV head 0..K-1.
  for (let p = 0; p < P; p++) {
    const heads = new Set<number>();
    for (let t = 0; t < T; t++) for (const h of seen.get(`tp_${t}_pp_${p}`)!.manifest.shard!.kv_heads) heads.add(h);
    const K = Math.max(...heads) + 1;
    if (heads.size !== K) {
      const lost = Array.from({ length: K }, (_, h) => h).filter((h) => !heads.has(h));
      throw new KvtcError('KV_INVALID', `${dir}: the ranks of stage ${p} hold no KV head ${lost.join(', ')} of the model's ${K}`, {
        fix: 'Dump every tensor-parallel rank of one run: together they hold every KV head.',
        context: { file: dir, stage: p, missing: lost },
      });
    }
  }
  // Stage by stage, tensor ranks in order within each (as --shards cuts them).
  const ordered: DumpRank[] = [];
  for (let p = 0; p < P; p++) for (let t = 0; t < T; t++) ordered.push(wholeRank(seen.get(`tp_${t}_pp_${p}`)!));
  return ordered;
}
