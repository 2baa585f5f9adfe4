// Tested by test/evaluate/evaluate-cli.test.ts and test/evaluate/longcontext.test.ts.
/**
 * Renders an evaluate result (summary.ts's numbers) as table rows, notes and a Markdown
 * report. Pure: no I/O.
 */
import { fmtRate } from '../progress.js';
import type { Accuracy } from './stats.js';
import type { QuestionRecord } from './records.js';
import type { EvaluateResult } from './run.js';
import type { PairedComparison, ScopeSummary } from './summary.js';

const num = (x: number, digits: number) => (Number.isFinite(x) ? x.toFixed(digits) : 'n/a');
/**
 * The run's settings as --json and --log-samples write them. The protected window keeps the key
 * `recent` there, the name those outputs have always used (scripts read it); in code it is `window`.
 */
export function settingsRecord(
  settings: EvaluateResult['settings'],
): Omit<EvaluateResult['settings'], 'codecs'> & { codecs: { name: string; sink: number; recent: number }[] } {
  return { ...settings, codecs: settings.codecs.map((c) => ({ name: c.name, sink: c.sink, recent: c.window })) };
}

export const fmtAcc = (a: Accuracy) => `${num(100 * a.accuracy, 1)} ± ${num(100 * a.stderr, 1)}`;
const signed = (x: number, digits = 1) => (Number.isFinite(x) ? `${x > 0 ? '+' : ''}${x.toFixed(digits)}` : 'n/a');
export const fmtDelta = (c: PairedComparison) => `${signed(c.delta_points)} [${signed(c.delta_ci95[0])}, ${signed(c.delta_ci95[1])}]`;
/** "x [lo, hi]" with f for all three; "x [n/a]" when there is no interval. */
export const withCi = (x: number, ci: readonly [number, number] | null | undefined, f: (v: number) => string) =>
  `${f(x)} [${ci ? `${f(ci[0])}, ${f(ci[1])}` : 'n/a'}]`;
const kl = (x: number) => (Number.isFinite(x) ? x.toExponential(2) : 'n/a');
const ratio = (x: number) => (Number.isFinite(x) ? `${x.toFixed(2)}x` : 'n/a');
const pct = (x: number) => `${num(100 * x, 1)}%`;

export const CODEC_HEADER = [
  'codec',
  'accuracy % ± se',
  'Δ points [95% CI]',
  'agree [95% CI]',
  'KL (nats) [95% CI]',
  'ratio',
  'ratio (compr. tokens)',
  'tokens compressed',
  'q. not compressed',
];

/** One row for the uncompressed run, then one per codec. */
export function codecRows(scope: ScopeSummary): string[][] {
  const rows: string[][] = [['uncompressed', fmtAcc(scope.baseline), '—', '—', '—', '1.00x', '—', '0.0%', '—']];
  for (const [name, c] of Object.entries(scope.codecs)) {
    rows.push([
      name,
      fmtAcc(c.accuracy),
      fmtDelta(c),
      withCi(c.agreement, c.agreement_ci95, pct),
      withCi(c.kl, c.kl_ci95, kl),
      ratio(c.ratio),
      ratio(c.ratio_compressed),
      pct(c.compressed_share),
      `${c.uncompressed_questions}/${scope.n}`,
    ]);
  }
  return rows;
}

/** Per-scope rows (subjects or groups): n, uncompressed accuracy, each codec's accuracy and Δ. */
export function scopeTable(
  scopes: Record<string, ScopeSummary>,
  codecs: readonly string[],
  label: string,
): { header: string[]; rows: string[][] } {
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

export const PERPLEXITY_HEADER = [
  'cache',
  'perplexity [95% CI]',
  'Δ perplexity [95% CI]',
  'Δ % [95% CI]',
  'next-token KL (nats) [95% CI]',
  'top-1 agree [95% CI]',
  'context tokens compressed',
];

export function perplexityRows(result: EvaluateResult): string[][] {
  const p = result.perplexity;
  if (!p) return [];
  return [
    ['uncompressed', withCi(p.baseline.perplexity, p.baseline.perplexity_ci95, (x) => num(x, 3)), '—', '—', '—', '—', '0.0%'],
    ...Object.entries(p.codecs).map(([name, c]) => [
      name,
      num(c.perplexity, 3),
      withCi(c.delta, c.delta_ci95, (x) => signed(x, 3)),
      withCi(c.delta_percent, c.delta_percent_ci95, (x) => `${signed(x, 2)}%`),
      // Absent from windows journaled by builds before 2026-12-07.
      c.next_token_kl === null ? 'not recorded' : withCi(c.next_token_kl, c.next_token_kl_ci95, kl),
      c.top1_agreement === null ? 'not recorded' : withCi(c.top1_agreement, c.top1_agreement_ci95, pct),
      pct(c.compressed_share),
    ]),
  ];
}

/** How the perplexity intervals were computed, in one sentence (report and console). */
export function perplexityIntervalNote(p: NonNullable<EvaluateResult['perplexity']>): string {
  const i = p.interval;
  const how =
    i.method === 'block'
      ? `paired block bootstrap: ${i.units} blocks of ${i.block_tokens} consecutive scored tokens pooled over the windows, resampled ${i.resamples} times (seed ${i.seed}), the same blocks for every cache`
      : i.method === 'window'
        ? `paired bootstrap over the ${i.units} windows, resampled ${i.resamples} times (seed ${i.seed})`
        : 'no interval';
  return `95% intervals: ${how}${i.note ? `; ${i.note}` : ''}.`;
}

/** Plain-language notes that must accompany the numbers. */
export function notes(result: EvaluateResult): string[] {
  const o = result.summary.overall;
  const out: string[] = [];
  for (const c of result.settings.codecs) {
    const s = o.codecs[c.name];
    if (!s || c.name === 'identity' || c.name === 'fp16') continue;
    if (s.uncompressed_questions === o.n) {
      out.push(
        `${c.name}: NO question was compressed — every prompt fits in the ${c.sink} sink + ${c.window} recent tokens it keeps exactly; its accuracy here says nothing about the codec.`,
      );
    } else if (s.uncompressed_questions > 0) {
      const co = s.compressed_only!;
      out.push(
        `${c.name}: ${s.uncompressed_questions} of ${o.n} questions were not compressed at all (prompt too short: ${c.name} keeps ${c.sink} sink + ${c.window} recent tokens exactly${c.name === 'kivi2' ? ' and quantizes only whole groups of tokens' : ''}); ` +
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
        (lc
          ? `the long-context tasks compress ${low.map((c) => `${c.name} ${pct(lc.overall.codecs[c.name]?.compressed_share ?? NaN)}`).join(', ')}.`
          : 'run the long-context tasks (--long-context) or --shots 5 for prompts the codecs actually compress.'),
    );
  }
  if (o.truncated_questions > 0) {
    out.push(
      `${o.truncated_questions} of ${o.n} prompts were longer than the model's ${result.model.maxPositions} positions and were truncated from the left (as lm-evaluation-harness does).`,
    );
  }
  return out;
}

function mdTable(header: string[], rows: string[][]): string {
  const esc = (s: string) => s.replaceAll('|', '\\|');
  return [
    `| ${header.map(esc).join(' | ')} |`,
    `|${header.map(() => '---').join('|')}|`,
    ...rows.map((r) => `| ${r.map(esc).join(' | ')} |`),
  ].join('\n');
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

/** "interrupted after 3 of 8 questions (…, perplexity not measured)": what a partial result covers. */
export function partialSummary(p: NonNullable<EvaluateResult['partial']>): string {
  const later = [
    p.longContextPlanned !== undefined ? `${p.longContextScored} of ${p.longContextPlanned} long-context tasks` : '',
    p.perplexityWindowsPlanned !== undefined
      ? `${p.perplexityWindowsScored} of ${p.perplexityWindowsPlanned} perplexity windows scored`
      : '',
  ].filter(Boolean);
  return `interrupted after ${p.questionsScored} of ${p.questionsPlanned} questions (${[...later, 'perplexity not measured'].join(', ')})`;
}

export function renderMarkdown(result: EvaluateResult, meta: ReportMeta = {}): string {
  const o = result.summary.overall;
  const codecs = result.settings.codecs.map((c) => c.name);
  const lines: string[] = [];
  lines.push(`# kvtc evaluate: ${result.model.name}`, '');
  if (meta.command) lines.push('```', meta.command, '```', '');
  if (result.partial) lines.push(`> **Partial results**: ${partialSummary(result.partial)}.`, '');
  lines.push(
    ...(meta.version || meta.date ? [`- kvtc ${meta.version ?? ''}${meta.date ? `, run at ${meta.date}` : ''}`] : []),
    `- model: \`${result.model.name}\` (fingerprint \`${result.model.fingerprint}\`, ${result.model.maxPositions} positions)`,
    `- profile: ${meta.profile ? `\`${meta.profile}\`` : 'none (kvtc not evaluated)'}`,
    `- MMLU: ${o.n} questions in ${o.subjects} subject(s), ${result.settings.shots}-shot${result.settings.limit !== undefined ? `, at most ${result.settings.limit} per subject` : ''}; lm-evaluation-harness prompt and log-likelihood scoring`,
    `- protected tokens: ${result.settings.codecs.map((c) => `${c.name} ${c.sink} sink + ${c.window} recent`).join('; ')}`,
    `- bootstrap seed ${result.settings.seed}; speed ${fmtRate(result.timing.questionsPerSecond, 'questions')}`,
    '',
    '## Overall (micro-averaged)',
    '',
    mdTable(CODEC_HEADER, codecRows(o)),
    '',
    'Δ = codec − uncompressed accuracy on the same questions (paired bootstrap 95% interval). ' +
      '"ratio" is fp16 bytes of the whole cache ÷ stored bytes, protected sink/window tokens included; ' +
      '"ratio (compr. tokens)" counts only the tokens that went through the codec. KL is the mean KL(uncompressed ‖ codec) of the 4-way answer distribution; ' +
      'agreement is the share of unchanged answers; their 95% intervals bootstrap the same resampled questions as Δ.',
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
      `${Object.entries(lc.tasks)
        .map(([k, n]) => `${n} ${k.replace('_', ' ')}`)
        .join(
          ', ',
        )} tasks of ${lc.context_tokens.toFixed(0)} tokens on average; 4-way multiple choice scored by log-likelihood, paired as above.`,
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
      perplexityIntervalNote(p),
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
  const header = {
    kvtc: meta.version,
    date: meta.date,
    command: meta.command ?? null,
    model: result.model,
    settings: settingsRecord(result.settings),
    partial: result.partial ?? null,
  };
  const row = (task: string, r: QuestionRecord) => ({
    task,
    subject: r.subject,
    index: r.index,
    gold: r.gold,
    prompt_tokens: r.promptTokens,
    truncated: r.truncated,
    cache_tokens: r.cacheTokens,
    baseline: { pred: r.baseline.pred, log_lik: r.baseline.logLik },
    codecs: Object.fromEntries(
      Object.entries(r.codecs).map(([k, c]) => [
        k,
        { pred: c.pred, log_lik: c.logLik, compressed_tokens: c.compressedTokens, bytes: c.bytes },
      ]),
    ),
  });
  const rows = [
    ...result.questions.map((r) => row('mmlu', r)),
    ...(result.longContext?.questions ?? []).map((r) => row('long_context', r)),
  ];
  return [header, ...rows].map((o) => JSON.stringify(o)).join('\n') + '\n';
}
