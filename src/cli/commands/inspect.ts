import { statSync } from 'node:fs';
import { join } from 'node:path';
import { z } from 'zod';
import { describeModel, modelDirFromOption } from '../../model/load.js';
import { readProfile } from '../../profile/io.js';
import { MANIFEST_FILE } from '../../profile/schema.js';
import { parseOptions } from '../../validation.js';
import { fmtBytes, table } from '../format.js';
import type { CliIO } from '../io.js';
import { printJson } from '../json.js';

const Options = z
  .object({ _: z.array(z.string()).max(1), model: z.string().min(1).optional(), json: z.boolean().default(false) })
  .refine((o) => o._.length === 1 || o.model !== undefined, { message: 'give a profile directory, --model DIR, or both', path: ['_'] });

/** What kvtc reads from a model directory: the facts the codec depends on, RoPE first. */
async function inspectModel(dir: string, io: CliIO, json: boolean): Promise<Record<string, unknown>> {
  const d = await describeModel(modelDirFromOption(dir));
  const s = d.spec;
  const r = s.rope;
  const rope = { layers: `0-${s.layers - 1}`, theta: r.theta, rotary_dim: r.rotaryDim, head_dim: s.headDim, layout: r.layout, scaling: r.scaling ?? null, source: d.ropeSource };
  const out = {
    model: d.name,
    dir: d.dir,
    format: d.files.format,
    files: { config: d.files.config, onnx: d.files.onnx, external_data: d.files.externalData ?? null },
    architecture: s.architecture,
    family: s.family,
    layers: s.layers,
    heads: s.heads,
    kv_heads: s.kvHeads,
    head_dim: s.headDim,
    kv_dtype: s.kvDtype,
    max_positions: s.maxPositions,
    rope: [rope],
    fingerprint: d.fingerprint,
    notes: d.notes,
  };
  if (!json) {
    io.out(`model   ${d.name} (${d.files.format} export, ${d.dir})`);
    io.out(`        ${s.architecture}: ${s.layers} layers, ${s.heads} heads / ${s.kvHeads} KV heads × ${s.headDim}, KV ${s.kvDtype}, ${s.maxPositions} positions; fingerprint ${d.fingerprint.id}`);
    io.out('RoPE kvtc undoes on keys (and re-applies after decoding):');
    const pairs = r.layout === 'half' ? `pairs (i, i+${r.rotaryDim / 2})` : 'pairs (2i, 2i+1)';
    io.out(
      table(
        ['layers', 'theta', 'rotary dim', 'layout', 'scaling', 'read from'],
        [[rope.layers, String(r.theta), `${r.rotaryDim} of ${s.headDim}`, `${r.layout} (${pairs})`, r.scaling ? `${r.scaling.type} ×${r.scaling.factor}` : 'none', d.ropeSource]],
      ),
    );
    for (const n of d.notes) io.out(`note: ${n}`);
  }
  return out;
}

export default async function inspect(raw: Record<string, unknown>, io: CliIO): Promise<void> {
  const opts = parseOptions(Options, raw);
  if (opts._.length === 0) {
    const model = await inspectModel(opts.model!, io, opts.json);
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
    const model = opts.model ? await inspectModel(opts.model, io, true) : undefined;
    printJson(io, { profile: dir, bytes, manifest: m, plans: perPlan, ...(model ? { model_reading: model } : {}) });
    return;
  }
  const s = m.settings;
  io.out(`profile ${dir}  (id ${m.profile_id}, format v${m.format_version}, ${m.producer.name} ${m.producer.version}, ${fmtBytes(bytes)})`);
  io.out(`model   ${m.model.name}: ${m.model.architecture}, ${m.model.layers} layers, ${m.model.heads} heads / ${m.model.kv_heads} KV heads × ${m.model.head_dim}, KV ${m.model.kv_dtype}, RoPE θ=${m.model.rope.theta} (${m.model.rope.layout}${m.model.rope.scaling ? `, ${m.model.rope.scaling.type} ×${m.model.rope.scaling.factor}` : ''}), fingerprint ${m.model.fingerprint.id}`);
  io.out(`settings  target ${s.ratio_target}x, sink ${s.sink}, window ${s.window}, grouping ${s.grouping}, ${s.entropy}, granule ${s.granule}`);
  io.out(`calibration  ${m.calibration.tokens_fit} tokens fit + ${m.calibration.tokens_heldout} held out, from ${m.calibration.sources.length} file(s): ${m.calibration.sources.slice(0, 3).map((x) => x.name).join(', ')}${m.calibration.sources.length > 3 ? ', …' : ''}`);
  io.out(`measured on held-out ${m.measured.context_tokens}-token contexts: ${m.measured.ratio_compressed}x on compressed tokens, ${m.measured.ratio_blob}x whole blob (sink+window raw); rel. error K ${m.measured.rel_error.key_mean}, V ${m.measured.rel_error.value_mean}`);
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
        p.layers.length === 1 ? String((p.kind === 'key' ? m.measured.rel_error.key : m.measured.rel_error.value)[p.layers[0]]) : '-',
        p.groups,
      ]),
    ),
  );
  io.out('');
  io.out('kept rank: principal components stored (the rest are dropped); bits/token include per-token fp16 scale+offset of dynamic groups.');
  if (opts.model) {
    io.out('');
    await inspectModel(opts.model, io, false);
  }
}
