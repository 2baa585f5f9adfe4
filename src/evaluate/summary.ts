// Tested by test/evaluate/evaluate-cli.test.ts and test/evaluate/scoring.test.ts.
/**
 * Turns per-question records into the numbers `kvtc evaluate` reports (per subject, per
 * group, overall). Pure: no I/O. Rendering is report.ts.
 *
 * Groups and the overall score are micro-averaged over questions, with the harness's
 * pooled standard error; deltas, agreement and KL are computed over the same pooled
 * questions, paired. A question whose prompt is not longer than the codec's protected
 * tokens (sink + window) is not compressed at all: it is counted in the accuracy (the
 * harness would) but reported separately, and `compressed_only` shows the comparison on
 * the questions the codec actually touched.
 *
 * Every figure carries its 95% interval: the accuracy delta, the agreement and the mean KL are
 * bootstrapped over the scope's questions (tasks, for long-context) with one set of resampled
 * indices per codec and scope (bootstrapMeans), seeded by evaluate's --seed.
 */
import type { QuestionRecord } from './records.js';
import { groupOf, MMLU_GROUPS } from './subjects.js';
import { accuracy, bootstrapMeans, groupAccuracy, klDivergence, type Accuracy } from './stats.js';

export interface PairedComparison {
  n: number;
  accuracy: Accuracy;
  /** 100 × (codec − uncompressed accuracy). */
  delta_points: number;
  /** Paired bootstrap 95% interval of delta_points. */
  delta_ci95: [number, number];
  /** Share of questions where the codec's answer equals the uncompressed answer. */
  agreement: number;
  /** Bootstrap 95% interval of agreement (the same resampled questions as delta_ci95). */
  agreement_ci95: [number, number];
}

export interface CodecScope extends PairedComparison {
  /** Mean KL(uncompressed ‖ codec) of the 4-way answer distribution, nats. */
  kl: number;
  /** Bootstrap 95% interval of kl over questions (the same resampled questions as delta_ci95). */
  kl_ci95: [number, number];
  /** fp16 bytes of all cached tokens ÷ stored bytes (protected tokens, headers, scales included). */
  ratio: number;
  /** fp16 bytes of the compressed tokens ÷ their stored bytes; NaN when nothing was compressed. */
  ratio_compressed: number;
  bytes: number;
  fp16_bytes: number;
  compressed_tokens: number;
  /** compressed tokens ÷ prompt tokens. */
  compressed_share: number;
  /** Questions whose prompt was too short for the codec to compress a single token. */
  uncompressed_questions: number;
  /** The same comparison restricted to questions with at least one compressed token. */
  compressed_only: PairedComparison | null;
}

export interface ScopeSummary {
  n: number;
  subjects: number;
  prompt_tokens: number;
  /** Questions whose prompt was cut from the left to fit the model. */
  truncated_questions: number;
  baseline: Accuracy;
  codecs: Record<string, CodecScope>;
}

export interface EvaluateSummary {
  overall: ScopeSummary;
  groups: Record<string, ScopeSummary>;
  subjects: Record<string, ScopeSummary>;
}

export interface SummarizeOptions {
  seed?: number;
  resamples?: number;
  /** fp16 bytes of one token's KV over all layers. */
  bytesPerToken: number;
}

function correct(pred: number, gold: number): number {
  return pred === gold ? 1 : 0;
}

/**
 * The paired comparison of one codec over `recs`, and the mean KL with its interval: delta,
 * agreement and KL are bootstrapped over the same resampled questions (bootstrapMeans), whose
 * first column is the accuracy delta exactly as pairedBootstrapDelta resamples it.
 */
function paired(
  recs: readonly QuestionRecord[],
  codec: string,
  acc: Accuracy,
  opts: SummarizeOptions,
): PairedComparison & { kl: number; kl_ci95: [number, number] } {
  const n = recs.length;
  const delta = new Float64Array(n);
  const agree = new Float64Array(n);
  const kl = new Float64Array(n);
  recs.forEach((r, i) => {
    const c = r.codecs[codec];
    delta[i] = correct(c.pred, r.gold) - correct(r.baseline.pred, r.gold);
    agree[i] = c.pred === r.baseline.pred ? 1 : 0;
    kl[i] = klDivergence(r.baseline.logLik, c.logLik);
  });
  const [d, a, k] = bootstrapMeans([delta, agree, kl], { seed: opts.seed ?? 0, resamples: opts.resamples });
  return {
    n,
    accuracy: acc,
    delta_points: 100 * d.mean,
    delta_ci95: [100 * d.lo, 100 * d.hi],
    agreement: a.mean,
    agreement_ci95: [a.lo, a.hi],
    kl: k.mean,
    kl_ci95: [k.lo, k.hi],
  };
}

/** compressed_only keeps the shape it always had: the comparison without the KL. */
function comparison({ kl: _kl, kl_ci95: _ci, ...rest }: ReturnType<typeof paired>): PairedComparison {
  return rest;
}

/** Accuracy of one scope: a single subject directly, several micro-averaged with pooled stderr. */
function scopeAccuracy(bySubject: Map<string, QuestionRecord[]>, pick: (r: QuestionRecord) => number): Accuracy {
  const parts = [...bySubject.values()].map((rs) => accuracy(rs.map(pick)));
  return parts.length === 1 ? parts[0] : groupAccuracy(parts);
}

function summarizeScope(recs: readonly QuestionRecord[], codecs: readonly string[], opts: SummarizeOptions): ScopeSummary {
  const bySubject = new Map<string, QuestionRecord[]>();
  for (const r of recs) {
    const list = bySubject.get(r.subject) ?? [];
    list.push(r);
    bySubject.set(r.subject, list);
  }
  const promptTokens = recs.reduce((s, r) => s + r.promptTokens, 0);
  const out: ScopeSummary = {
    n: recs.length,
    subjects: bySubject.size,
    prompt_tokens: promptTokens,
    truncated_questions: recs.filter((r) => r.truncated > 0).length,
    baseline: scopeAccuracy(bySubject, (r) => correct(r.baseline.pred, r.gold)),
    codecs: {},
  };
  for (const name of codecs) {
    const acc = scopeAccuracy(bySubject, (r) => correct(r.codecs[name].pred, r.gold));
    let bytes = 0;
    let fp16 = 0;
    let cBytes = 0;
    let cTokens = 0;
    for (const r of recs) {
      const c = r.codecs[name];
      bytes += c.bytes;
      fp16 += r.cacheTokens * opts.bytesPerToken;
      cBytes += c.compressedBytes;
      cTokens += c.compressedTokens;
    }
    const touched = recs.filter((r) => r.codecs[name].compressedTokens > 0);
    out.codecs[name] = {
      ...paired(recs, name, acc, opts),
      ratio: bytes > 0 ? fp16 / bytes : Number.NaN,
      ratio_compressed: cBytes > 0 ? (cTokens * opts.bytesPerToken) / cBytes : Number.NaN,
      bytes,
      fp16_bytes: fp16,
      compressed_tokens: cTokens,
      compressed_share: cTokens / promptTokens,
      uncompressed_questions: recs.length - touched.length,
      compressed_only:
        touched.length > 0
          ? comparison(paired(touched, name, accuracy(touched.map((r) => correct(r.codecs[name].pred, r.gold))), opts))
          : null,
    };
  }
  return out;
}

export function summarize(records: readonly QuestionRecord[], codecs: readonly string[], opts: SummarizeOptions): EvaluateSummary {
  const summary: EvaluateSummary = { overall: summarizeScope(records, codecs, opts), groups: {}, subjects: {} };
  if (records.length === 0) return summary;
  const subjects = [...new Set(records.map((r) => r.subject))];
  for (const s of subjects)
    summary.subjects[s] = summarizeScope(
      records.filter((r) => r.subject === s),
      codecs,
      opts,
    );
  for (const g of MMLU_GROUPS) {
    const recs = records.filter((r) => groupOf(r.subject) === g);
    if (recs.length > 0) summary.groups[g] = summarizeScope(recs, codecs, opts);
  }
  return summary;
}

// ------------------------------------------------------------------ rendering
