// Tested by test/evaluate/longcontext.test.ts ("sweep plot").
/**
 * A ratio sweep: every codec of one evaluate run (kvtc profiles at several ratios, and the
 * baselines) against the same uncompressed run, as rows and as an SVG figure in the manner of the
 * paper's: accuracy change, KL, agreement and perplexity change, each with its 95% interval,
 * against the compression ratio measured on the evaluated caches.
 */
import type { EvaluateResult } from './run.js';

export interface SweepRow {
  codec: string;
  /** fp16 bytes of the compressed tokens ÷ their stored bytes, measured on the MMLU caches. */
  ratio_compressed: number;
  /** Whole-cache ratio (protected tokens included). */
  ratio: number;
  delta_points: number;
  delta_ci95: [number, number];
  agreement: number;
  agreement_ci95: [number, number];
  kl: number;
  kl_ci95: [number, number];
  compressed_share: number;
  perplexity_delta: number | null;
  /** Paired block bootstrap 95% interval of perplexity_delta; null without perplexity or without an interval. */
  perplexity_delta_ci95: [number, number] | null;
  /** 100 · (ppl_codec / ppl_uncompressed − 1) and its interval. */
  perplexity_delta_percent: number | null;
  perplexity_delta_percent_ci95: [number, number] | null;
  /** Next-token KL and top-1 agreement on the perplexity text (whole vocabulary), with intervals; null without them. */
  next_token_kl: number | null;
  next_token_kl_ci95: [number, number] | null;
  top1_agreement: number | null;
  top1_agreement_ci95: [number, number] | null;
  long_context_delta_points: number | null;
  long_context_ci95: [number, number] | null;
}

export function sweepRows(r: EvaluateResult): SweepRow[] {
  const o = r.summary.overall;
  const rows: SweepRow[] = [];
  for (const { name } of r.settings.codecs) {
    const c = o.codecs[name];
    if (!c || name === 'identity' || name === 'fp16') continue;
    const ppl = r.perplexity?.codecs[name];
    const lc = r.longContext?.overall.codecs[name];
    rows.push({
      codec: name,
      ratio_compressed: c.ratio_compressed,
      ratio: c.ratio,
      delta_points: c.delta_points,
      delta_ci95: c.delta_ci95,
      agreement: c.agreement,
      agreement_ci95: c.agreement_ci95,
      kl: c.kl,
      kl_ci95: c.kl_ci95,
      compressed_share: c.compressed_share,
      perplexity_delta: ppl && r.perplexity ? ppl.perplexity - r.perplexity.baseline.perplexity : null,
      perplexity_delta_ci95: ppl?.delta_ci95 ?? null,
      perplexity_delta_percent: ppl?.delta_percent ?? null,
      perplexity_delta_percent_ci95: ppl?.delta_percent_ci95 ?? null,
      next_token_kl: ppl?.next_token_kl ?? null,
      next_token_kl_ci95: ppl?.next_token_kl_ci95 ?? null,
      top1_agreement: ppl?.top1_agreement ?? null,
      top1_agreement_ci95: ppl?.top1_agreement_ci95 ?? null,
      long_context_delta_points: lc?.delta_points ?? null,
      long_context_ci95: lc?.delta_ci95 ?? null,
    });
  }
  return rows.sort((a, b) => (a.ratio_compressed || 0) - (b.ratio_compressed || 0));
}

interface Panel {
  title: string;
  value: (r: SweepRow) => number | null;
  interval?: (r: SweepRow) => [number, number] | null;
  /** A reference line (no change). */
  zero?: number;
}

const esc = (s: string) => s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;');
const fmt = (x: number) =>
  x === 0
    ? '0'
    : Math.abs(x) >= 100
      ? x.toFixed(0)
      : Math.abs(x) >= 1
        ? x.toFixed(1)
        : Math.abs(x) >= 0.01
          ? x.toFixed(2)
          : x.toExponential(0);

/** Four panels side by side; x is log2 of the measured compression ratio of the compressed tokens. */
export function renderSweepSvg(rows: readonly SweepRow[], meta: { title: string; subtitle?: string; perplexitySource?: string }): string {
  const panels: Panel[] = [
    { title: 'MMLU Δ accuracy (points, 95% CI)', value: (r) => r.delta_points, interval: (r) => r.delta_ci95, zero: 0 },
    { title: 'KL(uncompressed ‖ codec), nats, 95% CI', value: (r) => r.kl, interval: (r) => r.kl_ci95, zero: 0 },
    { title: 'agreement with uncompressed, 95% CI', value: (r) => r.agreement, interval: (r) => r.agreement_ci95, zero: 1 },
    {
      title: 'long-context Δ accuracy (points, 95% CI)',
      value: (r) => r.long_context_delta_points,
      interval: (r) => r.long_context_ci95,
      zero: 0,
    },
  ];
  if (rows.some((r) => r.perplexity_delta !== null))
    panels.push({
      title: `Δ perplexity (${meta.perplexitySource ?? 'WikiText-2'}), 95% CI`,
      value: (r) => r.perplexity_delta,
      interval: (r) => r.perplexity_delta_ci95,
      zero: 0,
    });
  const W = 300;
  const H = 240;
  const pad = { l: 52, r: 40, t: 28, b: 40 };
  const width = W * panels.length;
  const height = H + 56;
  const pts = rows.filter((r) => Number.isFinite(r.ratio_compressed) && r.ratio_compressed > 0);
  const xs = pts.map((r) => Math.log2(r.ratio_compressed));
  const [x0, x1] = xs.length ? [Math.min(...xs) - 0.3, Math.max(...xs) + 0.3] : [0, 1];
  const out: string[] = [];
  out.push(
    `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" viewBox="0 0 ${width} ${height}" font-family="sans-serif" font-size="11">`,
  );
  out.push(`<rect width="100%" height="100%" fill="white"/>`);
  out.push(`<text x="8" y="18" font-size="14" font-weight="bold">${esc(meta.title)}</text>`);
  if (meta.subtitle) out.push(`<text x="8" y="36" fill="#444">${esc(meta.subtitle)}</text>`);
  panels.forEach((p, i) => {
    const ox = i * W;
    const oy = 44;
    const vals: number[] = [];
    for (const r of pts) {
      const v = p.value(r);
      if (v === null || !Number.isFinite(v)) continue;
      vals.push(v);
      const ci = p.interval?.(r);
      if (ci) vals.push(...ci.filter(Number.isFinite));
    }
    if (p.zero !== undefined) vals.push(p.zero);
    let [y0, y1] = vals.length ? [Math.min(...vals), Math.max(...vals)] : [0, 1];
    if (y1 - y0 < 1e-9) [y0, y1] = [y0 - 1, y1 + 1];
    const m = 0.08 * (y1 - y0);
    y0 -= m;
    y1 += m;
    const X = (x: number) => ox + pad.l + ((x - x0) / (x1 - x0)) * (W - pad.l - pad.r);
    const Y = (y: number) => oy + pad.t + (1 - (y - y0) / (y1 - y0)) * (H - pad.t - pad.b);
    out.push(`<g>`);
    out.push(`<text x="${ox + pad.l}" y="${oy + 14}" font-weight="bold">${esc(p.title)}</text>`);
    out.push(
      `<rect x="${ox + pad.l}" y="${oy + pad.t}" width="${W - pad.l - pad.r}" height="${H - pad.t - pad.b}" fill="none" stroke="#999"/>`,
    );
    for (let k = 0; k <= 4; k++) {
      const y = y0 + ((y1 - y0) * k) / 4;
      out.push(`<text x="${ox + pad.l - 4}" y="${Y(y) + 4}" text-anchor="end" fill="#444">${fmt(y)}</text>`);
    }
    for (let e = Math.ceil(x0); e <= Math.floor(x1); e++) {
      out.push(`<line x1="${X(e)}" x2="${X(e)}" y1="${oy + H - pad.b}" y2="${oy + H - pad.b + 4}" stroke="#444"/>`);
      out.push(`<text x="${X(e)}" y="${oy + H - pad.b + 16}" text-anchor="middle" fill="#444">${2 ** e}x</text>`);
    }
    out.push(
      `<text x="${ox + pad.l + (W - pad.l - pad.r) / 2}" y="${oy + H - 6}" text-anchor="middle" fill="#444">compression ratio (compressed tokens, log scale)</text>`,
    );
    if (p.zero !== undefined && p.zero >= y0 && p.zero <= y1)
      out.push(
        `<line x1="${ox + pad.l}" x2="${ox + W - pad.r}" y1="${Y(p.zero)}" y2="${Y(p.zero)}" stroke="#bbb" stroke-dasharray="4 3"/>`,
      );
    const kvtc = pts
      .filter((r) => r.codec.startsWith('kvtc'))
      .map((r) => [r, p.value(r)] as const)
      .filter(([, v]) => v !== null && Number.isFinite(v));
    if (kvtc.length > 1)
      out.push(
        `<polyline fill="none" stroke="#1f6fb4" stroke-width="1.5" points="${kvtc.map(([r, v]) => `${X(Math.log2(r.ratio_compressed))},${Y(v!)}`).join(' ')}"/>`,
      );
    for (const r of pts) {
      const v = p.value(r);
      if (v === null || !Number.isFinite(v)) continue;
      const x = X(Math.log2(r.ratio_compressed));
      const color = r.codec.startsWith('kvtc') ? '#1f6fb4' : '#d95f02';
      const ci = p.interval?.(r);
      if (ci && ci.every(Number.isFinite))
        out.push(`<line x1="${x}" x2="${x}" y1="${Y(ci[0])}" y2="${Y(ci[1])}" stroke="${color}" stroke-width="1"/>`);
      out.push(
        `<circle cx="${x}" cy="${Y(v)}" r="3.5" fill="${color}"><title>${esc(`${r.codec}: ${fmt(v)} at ${r.ratio_compressed.toFixed(2)}x`)}</title></circle>`,
      );
      out.push(`<text x="${x + 5}" y="${Y(v) - 5}" fill="${color}" font-size="9">${esc(r.codec)}</text>`);
    }
    out.push(`</g>`);
  });
  out.push(`</svg>`);
  return `${out.join('\n')}\n`;
}
