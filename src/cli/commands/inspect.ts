import { statSync } from 'node:fs';
import { join, relative } from 'node:path';
import { z } from 'zod';
import { describeModel, modelDirFromOption } from '../../model/load.js';
import { readProfile } from '../../profile/read.js';
import { layerRopeJson, layerRopeWords, scalingWords } from '../../rope/describe.js';
import { ropeRuns } from '../../rope/types.js';
import { ropeFromManifest } from '../../profile/codec-from-profile.js';
import { type Manifest, MANIFEST_FILE } from '../../profile/schema.js';
import { parseOptions } from '../../validation.js';
import { fmtBytes, table } from '../format.js';
import type { CliIO } from '../io.js';
import { printJson } from '../json.js';

const Options = z
  .object({
    _: z.array(z.string()).max(1),
    model: z.string().min(1).optional(),
    onnx: z.string().min(1).optional(),
    json: z.boolean().default(false),
  })
  .refine((o) => o._.length === 1 || o.model !== undefined, { message: 'give a profile directory, --model DIR, or both', path: ['_'] })
  .refine((o) => o.onnx === undefined || o.model !== undefined, {
    message: 'needs --model: it names a graph of the model directory',
    path: ['onnx'],
  });

/** What kvtc reads from a model directory: the facts the codec depends on, RoPE first. */
async function inspectModel(dir: string, io: CliIO, json: boolean, onnx?: string): Promise<Record<string, unknown>> {
  const d = await describeModel(modelDirFromOption(dir, onnx));
  const s = d.spec;
  // runs of consecutive layers sharing one description (a NoPE layer every 4th shows as its own rows)
  const runs = ropeRuns(s.rope);
  const rope = runs.map((u) => ({
    layers: u.first === u.last ? String(u.first) : `${u.first}-${u.last}`,
    ...(u.rope
      ? { ...layerRopeJson(u.rope), head_dim: s.headDim }
      : { none: true, theta: null, rotary_dim: 0, head_dim: s.headDim, layout: null, scaling: null, attention_factor: null }),
    source: d.ropeSource,
  }));
  const out = {
    model: d.name,
    dir: d.dir,
    format: d.files.format,
    files: { config: d.files.config, onnx: d.files.onnx, onnx_choice: d.files.choice, external_data: d.files.externalData ?? null },
    architecture: s.architecture,
    family: s.family,
    layers: s.layers,
    heads: s.heads,
    kv_heads: s.kvHeads,
    head_dim: s.headDim,
    kv_dtype: s.kvDtype,
    max_positions: s.maxPositions,
    rope,
    fingerprint: d.fingerprint,
    notes: d.notes,
  };
  if (!json) {
    io.out(`model   ${d.name} (${d.files.format} export, ${d.dir})`);
    io.out(
      `graph   ${relative(d.dir, d.files.onnx).startsWith('..') ? d.files.onnx : relative(d.dir, d.files.onnx)} (${{ option: 'chosen with --onnx', default: 'chosen by default; --onnx FILE runs another graph of the directory', genai_config: 'named by genai_config.json' }[d.files.choice]})`,
    );
    io.out(
      `        ${s.architecture}: ${s.layers} layers, ${s.heads} heads / ${s.kvHeads} KV heads × ${s.headDim}, KV ${s.kvDtype}, ${s.maxPositions} positions; fingerprint ${d.fingerprint.id}`,
    );
    io.out('RoPE kvtc undoes on keys (and re-applies after decoding), per layer:');
    io.out(
      table(
        ['layers', 'theta', 'rotary dim', 'layout', 'scaling', 'attention factor'],
        runs.map((u) => {
          const layers = u.first === u.last ? String(u.first) : `${u.first}-${u.last}`;
          const r = u.rope;
          if (!r) return [layers, '-', `0 of ${s.headDim}`, '-', '-', '-'];
          const pairs = r.layout === 'half' ? `pairs (i, i+${r.rotaryDim / 2})` : 'pairs (2i, 2i+1)';
          return [
            layers,
            String(r.theta),
            `${r.rotaryDim} of ${s.headDim}`,
            `${r.layout} (${pairs})`,
            scalingWords(r.scaling),
            String(r.attentionFactor ?? 1),
          ];
        }),
      ),
    );
    if (runs.some((u) => !u.rope)) io.out('(layers with "-": no RoPE on their keys, nothing to undo)');
    io.out(`read from: ${d.ropeSource}`);
    for (const n of d.notes) io.out(`note: ${n}`);
  }
  return out;
}

/** The profile's RoPE in a few words (one description for all layers, or how many). */
function profileRopeWords(m: Manifest): string {
  const rope = ropeFromManifest(m);
  const runs = ropeRuns(rope);
  const u = runs[0].rope;
  if (runs.length === 1 && u)
    return `θ=${u.theta} (${u.layout}${u.scaling ? `, ${scalingWords(u.scaling)}` : ''}${(u.attentionFactor ?? 1) !== 1 ? `, attention factor ${u.attentionFactor}` : ''})`;
  if (runs.length === 1) return layerRopeWords(u, m.model.head_dim);
  return `per layer (${runs.map((u) => `${u.first === u.last ? u.first : `${u.first}-${u.last}`}: ${u.rope ? `θ=${u.rope.theta}` : 'none'}`).join(', ')})`;
}

/** The measured error of a plan's layer, or "x (mean)" over its layers. */
/** Groups shown in full in the table; a plan with more (a basis over many layers has thousands) is cut short. */
export const TABLE_GROUPS = 40;

/**
 * The table's groups cell: the manifest's groups ("width×type", space-separated) up to
 * TABLE_GROUPS, else the first 16 and how many components each type holds over all of them.
 */
export function groupsCell(groups: string): string {
  const list = groups.split(' ').filter((g) => g.length > 0);
  if (list.length <= TABLE_GROUPS) return list.join(' ');
  const perType = new Map<string, number>();
  for (const g of list) {
    const [width, type] = g.split('×');
    perType.set(type, (perType.get(type) ?? 0) + Number(width));
  }
  const totals = [...perType].map(([type, n]) => `${n} ${type}`).join(', ');
  return `${list.slice(0, 16).join(' ')} … ${list.length} groups in all: ${totals}`;
}

export function planError(
  m: { measured: { rel_error: { key: number[]; value: number[] } } },
  p: { kind: string; layers: number[] },
): string {
  const per = p.kind === 'key' ? m.measured.rel_error.key : m.measured.rel_error.value;
  if (p.layers.length === 1) return String(per[p.layers[0]]);
  const mean = p.layers.reduce((a, l) => a + per[l], 0) / p.layers.length;
  return `${Number(mean.toPrecision(6))} (mean)`;
}

export default async function inspect(raw: Record<string, unknown>, io: CliIO): Promise<void> {
  const opts = parseOptions(Options, raw);
  if (opts._.length === 0) {
    const model = await inspectModel(opts.model!, io, opts.json, opts.onnx);
    if (opts.json) printJson(io, model);
    return;
  }
  const { dir, manifest: m, plans } = await readProfile(opts._[0]);
  const bytes = statSync(join(dir, MANIFEST_FILE)).size + m.tensors.bytes;
  const perPlan = m.plans.map((p, i) => {
    const kept = plans[i].variances.reduce((a, v) => a + v, 0);
    return {
      plan: p.index,
      kind: p.kind,
      layers: p.layers,
      dim: p.dim,
      rank: p.rank,
      bits_per_token: p.bits_per_token,
      budget_bits: p.budget_bits,
      groups: p.groups.map((g) => `${g.end - g.start}×${g.type}${g.mode === 'dynamic' ? '(dyn)' : ''}`).join(' '),
      variance_kept: kept,
    };
  });
  if (opts.json) {
    const model = opts.model ? await inspectModel(opts.model, io, true, opts.onnx) : undefined;
    printJson(io, { profile: dir, bytes, manifest: m, plans: perPlan, ...(model ? { model_reading: model } : {}) });
    return;
  }
  const s = m.settings;
  io.out(`profile ${dir}  (id ${m.profile_id}, format v${m.format_version}, ${m.producer.name} ${m.producer.version}, ${fmtBytes(bytes)})`);
  io.out(
    `model   ${m.model.name}: ${m.model.architecture}, ${m.model.layers} layers, ${m.model.heads} heads / ${m.model.kv_heads} KV heads × ${m.model.head_dim}${m.model.value_head_dim !== undefined && m.model.value_head_dim !== m.model.head_dim ? ` (values × ${m.model.value_head_dim})` : ''}, KV ${m.model.kv_dtype}, RoPE ${profileRopeWords(m)}, fingerprint ${m.model.fingerprint.id}${m.model.fingerprint.source === 'kv-dump' ? ' (from a KV dump)' : ''}`,
  );
  // Format 3: what part of the model this profile covers (docs/profile-format.md §2.4).
  if (m.model.cache === 'mla-latent')
    io.out(
      `cache   MLA latent: keys = the decoupled RoPE key (${m.model.head_dim} wide), values = the compressed KV (${m.model.value_head_dim ?? m.model.head_dim} wide)`,
    );
  if (m.model.cache_layers)
    io.out(
      `layers  model layers ${m.model.cache_layers.join(',')} of ${m.model.model_layers} (the others are in other pipeline stages or keep no cache)`,
    );
  if (m.shard)
    io.out(
      `shard   tensor-parallel rank ${m.shard.tp_rank} of ${m.shard.tp_size}, pipeline stage ${m.shard.pp_rank} of ${m.shard.pp_size}: KV heads ${m.shard.kv_heads.join(',')}`,
    );
  const chosen =
    s.grouping_requested === 'auto'
      ? ` (chosen by --grouping auto among ${(m.calibration.grouping_candidates ?? []).map((c) => c.grouping).join(', ')})`
      : '';
  io.out(
    `settings  target ${s.ratio_target}x, sink ${s.sink}, window ${s.window}, grouping ${s.grouping}${chosen}, ${s.entropy}, granule ${s.granule}`,
  );
  const report = m.calibration.tokens_report !== undefined ? ` + ${m.calibration.tokens_report} report` : '';
  io.out(
    `calibration  ${m.calibration.tokens_fit} tokens fit + ${m.calibration.tokens_heldout} ${report ? 'tuning' : 'held out'}${report}, from ${m.calibration.sources.length} file(s): ${m.calibration.sources
      .slice(0, 3)
      .map((x) => x.name)
      .join(', ')}${m.calibration.sources.length > 3 ? ', …' : ''}`,
  );
  const e = m.measured.rel_error;
  const ci = (c?: [number, number]) => (c ? ` [${c[0]}, ${c[1]}]` : '');
  const where = m.measured.split === 'report' ? 'the report split (text neither the fit nor the tuning saw)' : 'held-out text';
  io.out(
    `measured on ${where}, ${m.measured.context_tokens}-token contexts: ${m.measured.ratio_compressed}x on compressed tokens, ${m.measured.ratio_blob}x whole blob (sink+window raw); rel. error K ${e.key_mean}${ci(e.key_mean_ci95)}, V ${e.value_mean}${ci(e.value_mean_ci95)}`,
  );
  io.out('');
  io.out(
    table(
      ['plan', 'kind', 'layers', 'p', 'kept rank', 'bits/token', 'budget', 'rel err', 'groups (width×type)'],
      perPlan.map((p) => [
        p.plan,
        p.kind,
        p.layers.join(','),
        p.dim,
        p.rank,
        p.bits_per_token,
        p.budget_bits,
        planError(m, p),
        groupsCell(p.groups),
      ]),
    ),
  );
  io.out('');
  io.out(
    'kept rank: the last principal component stored (the rest are dropped; groups may skip one); bits/token include per-token fp16 scale+offset of dynamic groups;',
  );
  io.out("rel err: of the plan's layer, or the mean over its layers; --json lists every group of a plan the table cuts short.");
  if (opts.model) {
    io.out('');
    await inspectModel(opts.model, io, false, opts.onnx);
  }
}
