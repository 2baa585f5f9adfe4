/**
 * Turns per-question records into the numbers `kvtc evaluate` reports (per subject, per
 * group, overall) and renders them as table rows and a Markdown report. Pure: no I/O.
 *
 * Groups and the overall score are micro-averaged over questions, with the harness's
 * pooled standard error; deltas, agreement and KL are computed over the same pooled
 * questions, paired. A question whose prompt is not longer than the codec's protected
 * tokens (sink + window) is not compressed at all: it is counted in the accuracy (the
 * harness would) but reported separately, and `compressed_only` shows the comparison on
 * the questions the codec actually touched.
 */
import type { EvaluateResult, QuestionRecord } from './run.js';
import { groupOf, MMLU_GROUPS } from './subjects.js';
import { accuracy, agreementRate, groupAccuracy, klDivergence, pairedBootstrapDelta, type Accuracy } from './stats.js';

export interface PairedComparison {
  n: number;
  accuracy: Accuracy;
  /** 100 × (codec − uncompressed accuracy). */
  delta_points: number;
  /** Paired bootstrap 95% interval of delta_points. */
  delta_ci95: [number, number];
  /** Share of questions where the codec's answer equals the uncompressed answer. */
  agreement: number;
}

export interface CodecScope extends PairedComparison {
  /** Mean KL(uncompressed ‖ codec) of the 4-way answer distribution, nats. */
  kl: number;
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

function paired(recs: readonly QuestionRecord[], codec: string, acc: Accuracy, opts: SummarizeOptions): PairedComparison {
  const base = recs.map((r) => correct(r.baseline.pred, r.gold));
  const cand = recs.map((r) => correct(r.codecs[codec].pred, r.gold));
  const d = pairedBootstrapDelta(base, cand, { seed: opts.seed ?? 0, resamples: opts.resamples });
  return {
    n: recs.length,
    accuracy: acc,
    delta_points: 100 * d.delta,
    delta_ci95: [100 * d.lo, 100 * d.hi],
    agreement: agreementRate(
      recs.map((r) => r.baseline.pred),
      recs.map((r) => r.codecs[codec].pred),
    ),
  };
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
    let kl = 0;
    for (const r of recs) {
      const c = r.codecs[name];
      bytes += c.bytes;
      fp16 += r.cacheTokens * opts.bytesPerToken;
      cBytes += c.compressedBytes;
      cTokens += c.compressedTokens;
      kl += klDivergence(r.baseline.logLik, c.logLik);
    }
    const touched = recs.filter((r) => r.codecs[name].compressedTokens > 0);
    out.codecs[name] = {
      ...paired(recs, name, acc, opts),
      kl: kl / recs.length,
      ratio: bytes > 0 ? fp16 / bytes : Number.NaN,
      ratio_compressed: cBytes > 0 ? (cTokens * opts.bytesPerToken) / cBytes : Number.NaN,
      bytes,
      fp16_bytes: fp16,
      compressed_tokens: cTokens,
      compressed_share: cTokens / promptTokens,
      uncompressed_questions: recs.length - touched.length,
      compressed_only: touched.length > 0 ? paired(touched, name, accuracy(touched.map((r) => correct(r.codecs[name].pred, r.gold))), opts) : null,
    };
  }
  return out;
}

export function summarize(records: readonly QuestionRecord[], codecs: readonly string[], opts: SummarizeOptions): EvaluateSummary {
  const summary: EvaluateSummary = { overall: summarizeScope(records, codecs, opts), groups: {}, subjects: {} };
  if (records.length === 0) return summary;
  const subjects = [...new Set(records.map((r) => r.subject))];
  for (const s of subjects) summary.subjects[s] = summarizeScope(records.filter((r) => r.subject === s), codecs, opts);
  for (const g of MMLU_GROUPS) {
    const recs = records.filter((r) => groupOf(r.subject) === g);
    if (recs.length > 0) summary.groups[g] = summarizeScope(recs, codecs, opts);
  }
  return summary;
}

// ------------------------------------------------------------------ rendering

const num = (x: number, digits: number) => (Number.isFinite(x) ? x.toFixed(digits) : 'n/a');
export const fmtAcc = (a: Accuracy) => `${num(100 * a.accuracy, 1)} ± ${num(100 * a.stderr, 1)}`;
const signed = (x: number, digits = 1) => (Number.isFinite(x) ? `${x > 0 ? '+' : ''}${x.toFixed(digits)}` : 'n/a');
export const fmtDelta = (c: PairedComparison) => `${signed(c.delta_points)} [${signed(c.delta_ci95[0])}, ${signed(c.delta_ci95[1])}]`;
const ratio = (x: number) => (Number.isFinite(x) ? `${x.toFixed(2)}x` : 'n/a');
const pct = (x: number) => `${num(100 * x, 1)}%`;

export const CODEC_HEADER = ['codec', 'accuracy % ± se', 'Δ points [95% CI]', 'agree', 'KL (nats)', 'ratio', 'ratio (compr. tokens)', 'tokens compressed', 'q. not compressed'];

/** One row for the uncompressed run, then one per codec. */
export function codecRows(scope: ScopeSummary): string[][] {
  const rows: string[][] = [['uncompressed', fmtAcc(scope.baseline), '—', '—', '—', '1.00x', '—', '0.0%', '—']];
  for (const [name, c] of Object.entries(scope.codecs)) {
    rows.push([name, fmtAcc(c.accuracy), fmtDelta(c), pct(c.agreement), c.kl.toExponential(2), ratio(c.ratio), ratio(c.ratio_compressed), pct(c.compressed_share), `${c.uncompressed_questions}/${scope.n}`]);
  }
  return rows;
}

/** Per-scope rows (subjects or groups): n, uncompressed accuracy, each codec's accuracy and Δ. */
export function scopeTable(scopes: Record<string, ScopeSummary>, codecs: readonly string[], label: string): { header: string[]; rows: string[][] } {
  const header = [label, 'n', 'uncompressed', ...codecs.flatMap((c) => [c, `Δ ${c}`])];
  const rows = Object.entries(scopes).map(([name, s]) => [
    name,
    String(s.n),
    num(100 * s.baseline.accuracy, 1),
    ...codecs.flatMap((c) => [num(100 * s.codecs[c].accuracy.accuracy, 1), signed(s.codecs[c].delta_points)]),
  ]);
  return { header, rows };
}

/** Below this share of prompt tokens through the codec, evaluate warns that the gate measures the raw cache. */
export const LOW_COMPRESSED_SHARE = 0.5;

export const PERPLEXITY_HEADER = ['cache', 'perplexity', 'Δ perplexity', 'context tokens compressed'];

export function perplexityRows(result: EvaluateResult): string[][] {
  const p = result.perplexity;
  if (!p) return [];
  return [
    ['uncompressed', num(p.baseline.perplexity, 3), '—', '0.0%'],
    ...Object.entries(p.codecs).map(([name, c]) => [name, num(c.perplexity, 3), signed(c.perplexity - p.baseline.perplexity, 3), pct(c.compressed_share)]),
  ];
}

/** Plain-language notes that must accompany the numbers. */
export function notes(result: EvaluateResult): string[] {
  const o = result.summary.overall;
  const out: string[] = [];
  for (const c of result.settings.codecs) {
    const s = o.codecs[c.name];
    if (!s || c.name === 'identity' || c.name === 'fp16') continue;
    if (s.uncompressed_questions === o.n) {
      out.push(`${c.name}: NO question was compressed — every prompt fits in the ${c.sink} sink + ${c.recent} recent tokens it keeps exactly; its accuracy here says nothing about the codec.`);
    } else if (s.uncompressed_questions > 0) {
      const co = s.compressed_only!;
      out.push(
        `${c.name}: ${s.uncompressed_questions} of ${o.n} questions were not compressed at all (prompt too short: ${c.name} keeps ${c.sink} sink + ${c.recent} recent tokens exactly${c.name === 'kivi2' ? ' and quantizes only whole groups of tokens' : ''}); ` +
          `on the ${co.n} compressed question${co.n === 1 ? '' : 's'} alone: Δ ${fmtDelta(co)} points, agreement ${pct(co.agreement)}.`,
      );
    }
  }
  // A gate on a mostly raw cache proves little: say so where it happens.
  const low = result.settings.codecs.filter((c) => {
    const s = o.codecs[c.name];
    return s && c.name !== 'identity' && s.uncompressed_questions < o.n && s.compressed_share < LOW_COMPRESSED_SHARE;
  });
  if (low.length) {
    const shares = low.map((c) => `${c.name} ${pct(o.codecs[c.name].compressed_share)}`).join(', ');
    const lc = result.longContext;
    out.push(
      `less than half of the MMLU prompt tokens went through the lossy path (${shares}; the rest are the sink and recent tokens kept exactly), so the MMLU figures mostly measure the uncompressed cache; ` +
        (lc ? `the long-context tasks compress ${low.map((c) => `${c.name} ${pct(lc.overall.codecs[c.name]?.compressed_share ?? NaN)}`).join(', ')}.` : 'run the long-context tasks (--long-context) or --shots 5 for prompts the codecs actually compress.'),
    );
  }
  if (o.truncated_questions > 0) {
    out.push(`${o.truncated_questions} of ${o.n} prompts were longer than the model's ${result.model.maxPositions} positions and were truncated from the left (as lm-evaluation-harness does).`);
  }
  return out;
}

function mdTable(header: string[], rows: string[][]): string {
  const esc = (s: string) => s.replaceAll('|', '\\|');
  return [`| ${header.map(esc).join(' | ')} |`, `|${header.map(() => '---').join('|')}|`, ...rows.map((r) => `| ${r.map(esc).join(' | ')} |`)].join('\n');
}

/** The Markdown report written by --report. */
export interface ReportMeta {
  profile?: string;
  /** The command line that produced the result. */
  command?: string;
  /** kvtc's version and the time of the run (ISO 8601). */
  version?: string;
  date?: string;
}

export function renderMarkdown(result: EvaluateResult, meta: ReportMeta = {}): string {
  const o = result.summary.overall;
  const codecs = result.settings.codecs.map((c) => c.name);
  const lines: string[] = [];
  lines.push(`# kvtc evaluate: ${result.model.name}`, '');
  if (meta.command) lines.push('```', meta.command, '```', '');
  if (result.partial) lines.push(`> **Partial results**: interrupted after ${result.partial.questionsScored} of ${result.partial.questionsPlanned} questions (perplexity not measured).`, '');
  lines.push(
    ...(meta.version || meta.date ? [`- kvtc ${meta.version ?? ''}${meta.date ? `, run at ${meta.date}` : ''}`] : []),
    `- model: \`${result.model.name}\` (fingerprint \`${result.model.fingerprint}\`, ${result.model.maxPositions} positions)`,
    `- profile: ${meta.profile ? `\`${meta.profile}\`` : 'none (kvtc not evaluated)'}`,
    `- MMLU: ${o.n} questions in ${o.subjects} subject(s), ${result.settings.shots}-shot${result.settings.limit !== undefined ? `, at most ${result.settings.limit} per subject` : ''}; lm-evaluation-harness prompt and log-likelihood scoring`,
    `- protected tokens: ${result.settings.codecs.map((c) => `${c.name} ${c.sink} sink + ${c.recent} recent`).join('; ')}`,
    `- bootstrap seed ${result.settings.seed}; speed ${result.timing.questionsPerSecond.toFixed(1)} questions/s`,
    '',
    '## Overall (micro-averaged)',
    '',
    mdTable(CODEC_HEADER, codecRows(o)),
    '',
    'Δ = codec − uncompressed accuracy on the same questions (paired bootstrap 95% interval). ' +
      '"ratio" is fp16 bytes of the whole cache ÷ stored bytes, protected sink/window tokens included; ' +
      '"ratio (compr. tokens)" counts only the tokens that went through the codec. KL is KL(uncompressed ‖ codec) of the 4-way answer distribution.',
    '',
  );
  const n = notes(result);
  if (n.length) lines.push(...n.map((s) => `- ${s}`), '');
  if (Object.keys(result.summary.groups).length > 1) {
    const t = scopeTable(result.summary.groups, codecs, 'group');
    lines.push('## Groups', '', mdTable(t.header, t.rows), '');
  }
  const t = scopeTable(result.summary.subjects, codecs, 'subject');
  lines.push('## Subjects', '', mdTable(t.header, t.rows), '');
  if (result.longContext) {
    const lc = result.longContext;
    lines.push(
      '## Long-context tasks (RULER-style, generated)',
      '',
      `${Object.entries(lc.tasks).map(([k, n]) => `${n} ${k.replace('_', ' ')}`).join(', ')} tasks of ${lc.context_tokens.toFixed(0)} tokens on average; 4-way multiple choice scored by log-likelihood, paired as above.`,
      '',
      mdTable(CODEC_HEADER, codecRows(lc.overall)),
      '',
    );
  }
  if (result.perplexity) {
    const p = result.perplexity;
    lines.push(
      `## Perplexity (${p.source ?? 'WikiText-2 test'})`,
      '',
      `${p.windows} window(s) of up to ${p.window} tokens (${p.tokens} tokens in all): the first ${p.context} tokens of each window are prefilled and their cache compressed, the remaining ${p.scored_tokens} tokens in all are scored against it.`,
      '',
      mdTable(PERPLEXITY_HEADER, perplexityRows(result)),
      '',
    );
  }
  return `${lines.join('\n')}\n`;
}

/**
 * --log-samples: one JSON object per scored question (MMLU first, then the long-context tasks),
 * after a header line naming the run — what lm-evaluation-harness's --log_samples gives, paired.
 */
export function sampleLines(result: EvaluateResult, meta: { version: string; date: string; command?: string }): string {
  const header = { kvtc: meta.version, date: meta.date, command: meta.command ?? null, model: result.model, settings: result.settings, partial: result.partial ?? null };
  const row = (task: string, r: QuestionRecord) => ({
    task,
    subject: r.subject,
    index: r.index,
    gold: r.gold,
    prompt_tokens: r.promptTokens,
    truncated: r.truncated,
    cache_tokens: r.cacheTokens,
    baseline: { pred: r.baseline.pred, log_lik: r.baseline.logLik },
    codecs: Object.fromEntries(Object.entries(r.codecs).map(([k, c]) => [k, { pred: c.pred, log_lik: c.logLik, compressed_tokens: c.compressedTokens, bytes: c.bytes }])),
  });
  const rows = [...result.questions.map((r) => row('mmlu', r)), ...(result.longContext?.questions ?? []).map((r) => row('long_context', r))];
  return [header, ...rows].map((o) => JSON.stringify(o)).join('\n') + '\n';
}
