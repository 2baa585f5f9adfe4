// Tested by test/calibrate/kv-dump.test.ts and test/calibrate/kv-dump-shards.test.ts.
/**
 * `kvtc calibrate --kv DIR`: calibration from KV dumps (docs/kv-dumps.md) instead of an ONNX run.
 * The caches come from the dump's files; everything after them — covariances, bases, error
 * tables, bit allocation, grouping choice, measurement, the profile — is calibrate's pipeline
 * (calibrate.ts fitAndWrite), once per rank of a sharded dump.
 *
 *   openDumpRanks (manifests, RoPE vs inv_freq, ranks) → every listed file present → per rank:
 *   splitDumpSequences (seeded) → read tuning + report caches (checked, kept) → stream the fit
 *   sequences one at a time into the covariances (RoPE data check when input_ids are present) →
 *   fitAndWrite → (sharded) OUT/kvtc-shards.json
 *
 * Fit files are read once, while streaming: each is checked as it is read, and a bad one stops
 * calibration before anything is written.
 */
import { stat } from 'node:fs/promises';
import { join } from 'node:path';
import { invariant, KvtcError } from '../errors.js';
import { writeFileAtomic } from '../io/atomic.js';
import { checkOutputDir } from '../io/output.js';
import type { KvCache } from '../model/types.js';
import { noProgress, type ProgressFn } from '../progress.js';
import { mulberry32 } from '../random.js';
import {
  fitAccumulator,
  candidateStates,
  twoLevelOf,
  type BasisState,
  checkAbort,
  checkProfileTarget,
  checkRatios,
  fitAndWrite,
  groupingCandidates,
  KVTC_OUTPUT,
  maxFeatureDim,
  fitTokensNeeded,
  underdeterminedBasis,
  underdeterminedWarning,
  unusedRankWarning,
  eigensolverFor,
  eigensolverUsed,
  checkBudget,
  memoryEstimate,
  spillBytes,
  withCalibrateDefaults,
  type CalibrateOptions,
  type CalibrateResult,
  type RatioResult,
  type GroupingCandidates,
  type SkippedGrouping,
} from './calibrate.js';
import { ParkedCaches, type CacheSet } from './cache-park.js';
import { checkSpillSpace } from './feature-spill.js';
import { combineEstimates, type MemoryEstimate } from './memory-plan.js';
import { KV_DUMP_LIMITS, maxSequenceFileBytes, readDumpSequence, type DumpCache, type DumpSequence, type KvDump } from './kv-dump.js';
import { openDumpRanks, type DumpRank, type ShardRequest } from './kv-shards.js';
import { manifestDraft } from './manifest.js';
import { profileOutDirs } from './outputs.js';
import { stageTimer, type StageTimer } from './stage-times.js';

/** The index of a sharded calibration, beside the per-rank profile directories. */
export const SHARDS_INDEX = 'kvtc-shards.json';

export type KvCalibrateInput = { kv: string; shards?: ShardRequest } & Partial<Omit<CalibrateOptions, 'modelDir' | 'data'>>;

export interface DumpSplit {
  fit: DumpSequence[];
  tuning: DumpSequence[];
  report: DumpSequence[];
}

const tokensOf = (s: readonly DumpSequence[]) => s.reduce((a, x) => a + x.tokens, 0);

/**
 * The dump's sequences split into fit, tuning and report sets: a seeded shuffle (mulberry32, as
 * the text split), then tuning sequences until `heldoutTokens`, report sequences until
 * `reportTokens` (none for 0), fit sequences until `fitTokens`, each in shuffled order. Tuning
 * and report take only sequences longer than sink + window (others have no compressed tokens to
 * measure); the fit only sequences longer than the sink. Too few fit tokens: NOT_ENOUGH_TOKENS.
 */
export function splitDumpSequences(
  sequences: readonly DumpSequence[],
  o: {
    seed: number;
    fitTokens: number;
    heldoutTokens: number;
    reportTokens: number;
    sink: number;
    window: number;
    minFitTokens: number;
    source: string;
  },
): DumpSplit {
  const order = sequences.map((_, i) => i);
  const rand = mulberry32(o.seed);
  for (let i = order.length - 1; i > 0; i--) {
    const j = Math.floor(rand() * (i + 1));
    [order[i], order[j]] = [order[j], order[i]];
  }
  const used = new Set<number>();
  const take = (want: number, min: number, atLeastOne: boolean) => {
    const out: DumpSequence[] = [];
    let have = 0;
    for (const i of order) {
      if (have >= want && !(atLeastOne && out.length === 0)) break;
      if (used.has(i) || sequences[i].tokens <= min) continue;
      used.add(i);
      out.push(sequences[i]);
      have += sequences[i].tokens;
    }
    return out;
  };
  const measured = o.sink + o.window;
  const tuning = take(o.heldoutTokens, measured, true);
  const report = o.reportTokens > 0 ? take(o.reportTokens, measured, true) : [];
  const fit = take(o.fitTokens, o.sink, false);
  const fitTokens = tokensOf(fit);
  if (tuning.length === 0 || (o.reportTokens > 0 && report.length === 0) || fitTokens < o.minFitTokens) {
    const long = sequences.filter((s) => s.tokens > measured).length;
    throw new KvtcError(
      'NOT_ENOUGH_TOKENS',
      `the dump ${o.source} has ${sequences.length} sequences (${tokensOf(sequences)} tokens, ${long} longer than sink + window = ${measured}); ` +
        `after ${tuning.length} tuning and ${report.length} report sequences, ${fitTokens} tokens are left to fit, and the fit needs at least ${o.minFitTokens}` +
        (tuning.length === 0 || (o.reportTokens > 0 && report.length === 0)
          ? ` (tuning and report need sequences longer than ${measured} tokens)`
          : ''),
      {
        fix: 'Dump more (or longer) sequences, or lower --tuning-tokens / --report-tokens (or --sink / --window).',
        context: { sequences: sequences.length, fit_tokens: fitTokens, needed: o.minFitTokens },
      },
    );
  }
  return { fit, tuning, report };
}

/** Every file a dump lists is present, and no larger than what the manifest says it holds (before anything is read). */
export async function checkDumpFiles(dump: KvDump): Promise<void> {
  for (const s of dump.sequences) {
    const path = join(dump.dir, s.file);
    let size: number;
    try {
      size = (await stat(path)).size;
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code;
      throw new KvtcError(
        'KV_INVALID',
        `${path}: ${code === 'ENOENT' ? `missing: ${dump.manifestPath} lists it as sequences[${s.index}]` : `cannot be read (${code})`}`,
        {
          fix: 'Copy the whole dump directory (every file its kvtc-dump.json lists), or re-create the dump.',
          context: { file: path, sequence: s.index },
        },
      );
    }
    const max = maxSequenceFileBytes(dump, s);
    if (max > KV_DUMP_LIMITS.maxFileBytes) {
      throw new KvtcError(
        'KV_INVALID',
        `${dump.manifestPath}: sequences[${s.index}] (${s.file}) holds ${s.tokens} tokens, up to ${max} bytes of KV: more than one file may hold (${KV_DUMP_LIMITS.maxFileBytes} bytes)`,
        {
          fix: 'Dump shorter sequences (several files per prompt, each with its start_position).',
          context: { file: dump.manifestPath, sequence: s.index },
        },
      );
    }
    if (size > max) {
      throw new KvtcError(
        'KV_INVALID',
        `${path}: ${size} bytes, more than the ${max} that sequences[${s.index}] (${s.tokens} tokens) can take: not the file the manifest describes`,
        {
          fix: 'Re-create the dump, or fix the manifest entry of this file.',
          context: { file: path, sequence: s.index },
        },
      );
    }
  }
}

/** One rank's calibration, as the result and the index report it. */
export interface RankResult {
  /** tp_<t>_pp_<p>; absent for a whole-model dump. */
  rank?: string;
  /** The model layers of this rank's profile and the model's KV head of each of its heads. */
  layers: number[];
  kv_heads: number[];
  fingerprint: string;
  tokens: number;
  heldout_tokens: number;
  report_tokens: number;
  split: { fit: string[]; tuning: string[]; report: string[] };
  rope_check: CalibrateResult['rope_check'];
  profiles: RatioResult[];
}

export interface KvCalibrateResult extends CalibrateResult {
  kv_dir: string;
  ranks: RankResult[];
  /** The kvtc-shards.json written (one per ratio) for a sharded dump. */
  shards_index: string[];
}

/** A model name usable as a directory name (a hub id "org/model" gives "model"). */
function dirName(name: string): string {
  const last = name.split(/[\\/]/).filter(Boolean).pop() ?? '';
  const clean = last.replace(/[^A-Za-z0-9_.-]/g, '-').replace(/^\.+/, '');
  return clean || 'kv-dump';
}

type RankOutcome = RankResult & {
  plans: number;
  randomized: number;
  sketched: number;
  groupings: string[];
  groupings_skipped: SkippedGrouping[];
  groupings_sketched: string[];
  warnings: string[];
};

/**
 * The ranks that read one dump (a whole-model dump, each rank cut from it by --shards, or one
 * rank's own dump), calibrated together so that every file is read once: the tuning and report
 * files are read and each rank's share kept, then each fit file is read and each rank's share
 * added to that rank's covariances and dropped. Then each rank's profiles are fitted and written.
 */
async function calibrateDump(
  ranks: DumpRank[],
  opts: ReturnType<typeof withCalibrateDefaults>,
  outDirs: string[][],
  o: { progress: ProgressFn; timer: StageTimer; entropy: NonNullable<CalibrateOptions['entropy']> },
): Promise<RankOutcome[]> {
  const { progress, timer } = o;
  const dump = ranks[0].dump;
  const label = ranks.length > 1 ? ` (${ranks.length} ranks)` : ranks[0].label ? ` (${ranks[0].label})` : '';
  const plans = ranks.map((rank) => {
    const spec = rank.model.spec;
    const candidates = dumpCandidates(spec, rank.dump, opts);
    const split = splitDumpSequences(rank.sequences, {
      seed: opts.seed,
      fitTokens: opts.tokens,
      heldoutTokens: opts.heldout,
      reportTokens: opts.report,
      sink: opts.sink,
      window: opts.window,
      minFitTokens: fitTokensNeeded(maxFeatureDim(spec, candidates, opts.twoLevelRank), opts.tokens),
      source: dump.dir,
    });
    return { rank, spec, candidates, split };
  });
  // The split depends on the sequences and the options only, the same for every rank of one dump.
  const { split } = plans[0];
  const files = (x: DumpSplit) => [x.fit, x.tuning, x.report].map((l) => l.map((q) => q.file).join(',')).join(';');
  invariant(
    plans.every((p) => files(p.split) === files(split)),
    'Error in calibrateDump: ranks of one dump split its sequences differently',
  );
  timer.restart();
  // With the two-level fit (large models) each rank's tuning and report caches wait on disk, read
  // back one at a time (cache-park.ts), as calibrate's do.
  const parked: ParkedCaches[] = [];
  const read = async (seqs: DumpSequence[], what: string) => {
    const total = tokensOf(seqs);
    const sources: DumpCache['source'][] = [];
    const sets: (KvCache[] | ParkedCaches)[] = [];
    for (const p of plans) {
      if (!p.candidates.sketched?.length) sets.push([]);
      else {
        const park = await ParkedCaches.create();
        parked.push(park);
        sets.push(park);
      }
    }
    let done = 0;
    for (const s of seqs) {
      checkAbort(opts.signal);
      const whole = await readDumpSequence(dump, s);
      sources.push(whole.source);
      for (const [i, r] of ranks.entries()) {
        const { cache } = r.cut(whole);
        const set = sets[i];
        if (Array.isArray(set)) set.push(cache);
        else await set.add(cache);
      }
      done += s.tokens;
      progress({ stage: `reading ${what} KV${label}`, done, total, unit: 'tokens' });
    }
    return { sources, sets };
  };
  let states: BasisState[][][] = [];
  try {
    const tuningRead = await read(split.tuning, 'tuning');
    const reportRead = await read(split.report, 'report');
    timer.lap('read');
    states = await Promise.all(
      plans.map((p) => candidateStates(p.spec, p.candidates, opts.device, { rank: opts.twoLevelRank, external: opts.external })),
    );
    return await fitRanks(states, tuningRead, reportRead);
  } finally {
    // The two-level fit's spill is deleted after its second pass; here too on an error or Ctrl-C.
    for (const st of states) await twoLevelOf(st)?.dispose();
    for (const p of parked) await p.dispose();
  }

  type Read = { sources: DumpCache['source'][]; sets: (KvCache[] | CacheSet)[] };
  async function fitRanks(states: BasisState[][][], tuningRead: Read, reportRead: Read): Promise<RankOutcome[]> {
    const accs = plans.map((p, i) => fitAccumulator(p.spec, states[i], { sink: opts.sink }));
    const fitSources: DumpCache['source'][] = [];
    const total = tokensOf(split.fit);
    let done = 0;
    for (const s of split.fit) {
      checkAbort(opts.signal);
      let t = performance.now();
      const whole = await readDumpSequence(dump, s);
      fitSources.push(whole.source);
      timer.add('read', (performance.now() - t) / 1000);
      t = performance.now();
      for (const [i, r] of ranks.entries()) {
        const c = r.cut(whole);
        await accs[i].add(c.cache, c.ids);
      }
      timer.add('covariance', (performance.now() - t) / 1000);
      done += s.tokens;
      progress({ stage: `reading fit KV${label}`, done, total, unit: 'tokens' });
    }
    timer.restart();
    // Which file went where: the calibration sources, each named by its split (the seed is in settings).
    const sources = [
      ...fitSources.map((q) => ({ ...q, name: `fit:${q.name}` })),
      ...tuningRead.sources.map((q) => ({ ...q, name: `tuning:${q.name}` })),
      ...reportRead.sources.map((q) => ({ ...q, name: `report:${q.name}` })),
    ];
    const out: RankOutcome[] = [];
    for (const [i, { rank, spec, candidates }] of plans.entries()) {
      checkAbort(opts.signal);
      const tuning = tuningRead.sets[i];
      const report = reportRead.sets[i];
      const written = await fitAndWrite({
        opts,
        spec,
        candidates,
        states: states[i],
        tuning,
        report,
        outDirs: outDirs[i],
        entropy: o.entropy,
        progress: rank.label ? (e) => progress({ ...e, stage: `${e.stage} (${rank.label})` }) : progress,
        timer,
        draft: (d) =>
          manifestDraft({
            dump: rank.model,
            ratio: d.ratio,
            // chunk has no meaning without a model run; recorded as given.
            opts: { ...opts, grouping: d.grouping },
            groupingRequested: String(opts.grouping),
            candidates: d.candidates,
            sketched: candidates.sketched,
            granule: d.granule,
            entropy: o.entropy,
            sources,
            split: { fit: split.fit.length, heldout: split.tuning.length, report: split.report.length, seqLen: 1 },
            tokens: { fit: tokensOf(split.fit), heldout: tokensOf(split.tuning), report: tokensOf(split.report) },
            m: d.m,
            tuning: d.tuning,
          }),
      });
      // The rank's caches are no longer needed once its profiles are written (parked ones leave the disk).
      for (const r of [tuningRead, reportRead]) {
        const set = r.sets[i];
        if (set instanceof ParkedCaches) await set.dispose();
        r.sets[i] = [];
      }
      const ropeCheck = accs[i].ropeCheck();
      const shard = spec.shard;
      const fitVectors = split.fit.reduce((a, q) => a + Math.max(0, q.tokens - opts.sink), 0);
      const under = underdeterminedBasis(spec, candidates, fitVectors, opts.twoLevelRank);
      out.push({
        ...(rank.label ? { rank: rank.label } : {}),
        layers: rank.model.cacheLayers,
        kv_heads: shard ? [...shard.kvHeads] : Array.from({ length: spec.kvHeads }, (_, h) => h),
        fingerprint: rank.model.fingerprint.id,
        tokens: tokensOf(split.fit),
        heldout_tokens: tokensOf(split.tuning),
        report_tokens: tokensOf(split.report),
        split: { fit: split.fit.map((q) => q.file), tuning: split.tuning.map((q) => q.file), report: split.report.map((q) => q.file) },
        rope_check: { checked: ropeCheck.checked, pairs: ropeCheck.pairs, ...(ropeCheck.reason ? { reason: ropeCheck.reason } : {}) },
        profiles: written.profiles,
        plans: written.plans,
        randomized: written.randomized,
        sketched: written.sketched,
        groupings: candidates.fit.map(String),
        groupings_skipped: candidates.skipped,
        groupings_sketched: candidates.sketched ?? [],
        warnings: [...unusedRankWarning(opts.twoLevelRank, candidates), ...(under ? [underdeterminedWarning(under, 'dump')] : [])],
      });
    }
    return out;
  }
}

/** A dump rank's groupings (calibrate.ts groupingCandidates), within --memory by its estimate. */
function dumpCandidates(spec: DumpRank['model']['spec'], dump: KvDump, opts: ReturnType<typeof withCalibrateDefaults>): GroupingCandidates {
  const longest = Math.max(...dump.sequences.map((q) => q.tokens));
  return groupingCandidates(spec, opts.grouping, opts.covarianceBudget, opts.memory, {
    ratios: opts.ratios,
    fixedCovarianceLimit: opts.covarianceBudget,
    rank: opts.twoLevelRank,
    estimate: (c) => memoryEstimate(spec, c, opts, 0, longest).peak,
  });
}

/**
 * The memory a dump's calibration will need, checked against --memory before any file is read,
 * and the disk the two-level fit will spill to: each dump's ranks are calibrated together, so
 * their estimates add (combineEstimates); dumps go one after another, so the largest counts.
 */
async function planDumpMemory(ranks: DumpRank[], opts: ReturnType<typeof withCalibrateDefaults>): Promise<MemoryEstimate> {
  let worst: MemoryEstimate | undefined;
  let spill = 0;
  for (const dump of new Set(ranks.map((r) => r.dump))) {
    const mine = ranks.filter((r) => r.dump === dump);
    const longest = Math.max(...dump.sequences.map((q) => q.tokens));
    let disk = 0;
    const e = combineEstimates(
      mine.map((r) => {
        const spec = r.model.spec;
        const c = dumpCandidates(spec, dump, opts);
        if (c.sketched?.length)
          disk += spillBytes(spec, opts.tokens) + 2 * spillBytes(spec, opts.heldout) + 2 * spillBytes(spec, opts.report);
        return memoryEstimate(spec, c, opts, 0, longest);
      }),
    );
    if (!worst || e.peak > worst.peak) worst = e;
    spill = Math.max(spill, disk);
  }
  checkBudget(worst!, opts);
  if (spill > 0) await checkSpillSpace(spill);
  return worst!;
}

/**
 * Calibrates from the KV dump in `input.kv` (a whole-model dump, a directory of tp_<t>_pp_<p>/
 * rank dumps, or a whole-model dump cut by `input.shards`): one profile per ratio, per rank.
 * Other options as calibrate()'s (CALIBRATE_DEFAULTS for those left out).
 */
export async function calibrateKv(input: KvCalibrateInput): Promise<KvCalibrateResult> {
  const opts = withCalibrateDefaults({ ...input, modelDir: input.kv, data: [] });
  const progress = opts.onProgress ?? noProgress;
  const entropy = opts.entropy ?? 'deflate-rle';
  const timer = stageTimer();
  checkRatios(opts.ratios);
  progress({ stage: 'reading the KV dump' });
  const ranks = await openDumpRanks(input.kv, input.shards);
  opts.external ??= eigensolverFor(ranks[0].model.spec, opts);
  // Every listed file present before any work (each dump directory once, however it is cut).
  for (const d of new Set(ranks.map((r) => r.dump))) await checkDumpFiles(d);
  // One profile per rank under OUT/tp_<t>_pp_<p>/ with the index; one rank's dump given alone is written to OUT itself.
  const sharded = ranks.length > 1 || input.shards !== undefined;
  const first = ranks[0].model;
  const base = profileOutDirs({ out: opts.out, modelName: dirName(first.name), ratios: opts.ratios, ratiosGiven: opts.ratiosGiven });
  const rankDirs = ranks.map((r) => base.map((b) => (sharded ? join(b, r.label!) : b)));
  for (const [i, r] of ranks.entries()) {
    for (const d of rankDirs[i]) {
      checkOutputDir(d);
      if (!opts.force) await checkProfileTarget(d, { model: r.model.fingerprint.id }, KVTC_OUTPUT);
    }
  }
  const memory = await planDumpMemory(ranks, opts);
  timer.lap('load');
  // Ranks cut from one dump are calibrated together (each file read once); rank dumps one by one.
  const results: RankOutcome[] = new Array(ranks.length);
  for (const dump of new Set(ranks.map((r) => r.dump))) {
    const idx = ranks.flatMap((r, i) => (r.dump === dump ? [i] : []));
    const got = await calibrateDump(
      idx.map((i) => ranks[i]),
      opts,
      idx.map((i) => rankDirs[i]),
      { progress, timer, entropy },
    );
    idx.forEach((i, j) => (results[i] = got[j]));
  }
  const index: string[] = [];
  if (sharded) {
    for (const [ri, b] of base.entries()) {
      const shard0 = ranks[0].model.spec.shard!;
      const doc = {
        format: 'kvtc-shards',
        format_version: 1,
        model: { name: first.name, fingerprint: first.fingerprint.id },
        ratio_target: opts.ratios[ri],
        tp_size: shard0.tpSize,
        pp_size: shard0.ppSize,
        ranks: ranks.map((r, i) => ({
          tp_rank: r.model.spec.shard!.tpRank,
          pp_rank: r.model.spec.shard!.ppRank,
          profile: r.label!,
          profile_id: results[i].profiles[ri].profile_id,
          layers: results[i].layers,
          kv_heads: results[i].kv_heads,
        })),
      };
      const path = join(b, SHARDS_INDEX);
      await writeFileAtomic(path, `${JSON.stringify(doc, null, 2)}\n`);
      index.push(path);
    }
  }
  const seconds = timer.seconds;
  seconds.total = timer.total();
  const r0 = results[0];
  return {
    model: first.name,
    model_dir: input.kv,
    kv_dir: input.kv,
    tokens: r0.tokens,
    tokens_requested: opts.tokens,
    heldout_tokens: r0.heldout_tokens,
    report_tokens: r0.report_tokens,
    sequences: r0.split.fit.length + r0.split.tuning.length + r0.split.report.length,
    seq_len: 0,
    plans: r0.plans,
    groupings: r0.groupings,
    groupings_skipped: r0.groupings_skipped,
    groupings_sketched: r0.groupings_sketched,
    randomized_bases: results.reduce((a, r) => a + r.randomized, 0),
    sketched_bases: results.reduce((a, r) => a + r.sketched, 0),
    rope_check: r0.rope_check,
    memory_estimate: memory,
    profiles: results.flatMap((r) => r.profiles),
    seconds,
    skipped_data: [],
    eigensolver: eigensolverUsed(first.spec, opts.external),
    warnings: [...new Set(results.flatMap((r) => r.warnings.map((w) => (r.rank ? `${r.rank}: ${w}` : w))))],
    ranks: results.map(
      ({ plans: _p, randomized: _r, sketched: _k, groupings: _g, groupings_skipped: _s, groupings_sketched: _h, warnings: _w, ...r }) => r,
    ),
    shards_index: index,
  };
}
