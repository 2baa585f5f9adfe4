/**
 * `kvtc inspect PROFILE`: the summary a person reads before committing a profile, checked
 * against the profile's own manifest and tensors. kvtc's reading of a model (--model) and the
 * JSON contract: test/cli/contract.test.ts.
 */
import { readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { fmtBytes } from '../../../src/cli/format.js';
import { groupsCell, TABLE_GROUPS } from '../../../src/cli/commands/inspect.js';
import { DEFAULT_MODEL_DIR, DEFAULT_PROFILES_DIR } from '../../../src/paths.js';
import { readProfile } from '../../../src/profile/read.js';
import { kvtc } from '../../model/helpers.js';

const PROFILE = join(DEFAULT_PROFILES_DIR, 'stories260k');
const manifest = () => JSON.parse(readFileSync(join(PROFILE, 'kvtc-profile.json'), 'utf8'));

describe('kvtc inspect PROFILE', () => {
  it('heads the summary with id, format, producer, size, model, settings, calibration and what was measured', async () => {
    const m = manifest();
    const r = await kvtc('inspect', PROFILE);
    expect(r.code, r.stderr).toBe(0);
    const [head, model, settings, calibration, measured] = r.stdout.split('\n');
    const bytes = statSync(join(PROFILE, 'kvtc-profile.json')).size + m.tensors.bytes;
    expect(head).toBe(
      `profile ${PROFILE}  (id ${m.profile_id}, format v${m.format_version}, kvtc ${m.producer.version}, ${fmtBytes(bytes)})`,
    );
    expect(model).toBe(
      `model   stories260k: LlamaForCausalLM, 5 layers, 8 heads / 4 KV heads × 8, KV float32, RoPE θ=10000 (half), fingerprint ${m.model.fingerprint.id}`,
    );
    expect(settings).toBe(
      `settings  target ${m.settings.ratio_target}x, sink 4, window 128, grouping ${m.settings.grouping} (chosen by --grouping auto among layer, 2, 4, all), ${m.settings.entropy}, granule ${m.settings.granule}`,
    );
    expect(calibration).toMatch(
      new RegExp(
        `^calibration  ${m.calibration.tokens_fit} tokens fit \\+ ${m.calibration.tokens_heldout} tuning \\+ ${m.calibration.tokens_report} report, from ${m.calibration.sources.length} file\\(s\\): inaugural-1789-Washington\\.txt, `,
      ),
    );
    const e = m.measured.rel_error;
    expect(measured).toBe(
      `measured on the report split (text neither the fit nor the tuning saw), ${m.measured.context_tokens}-token contexts: ${m.measured.ratio_compressed}x on compressed tokens, ${m.measured.ratio_blob}x whole blob (sink+window raw); ` +
        `rel. error K ${e.key_mean} [${e.key_mean_ci95[0]}, ${e.key_mean_ci95[1]}], V ${e.value_mean} [${e.value_mean_ci95[0]}, ${e.value_mean_ci95[1]}]`,
    );
  });

  it('has one table row per plan: rank, bits, budget and the measured error of its layer, and groups as the manifest stores them', async () => {
    const m = manifest();
    const r = await kvtc('inspect', PROFILE);
    const lines = r.stdout.split('\n');
    const header = lines.findIndex((l) => l.startsWith('plan  kind'));
    expect(lines[header]).toMatch(/^plan +kind +layers +p +kept rank +bits\/token +budget +rel err +groups \(width×type\)$/);
    const rows = lines.slice(header + 2, header + 2 + m.plans.length).map((l) => l.trim().split(/\s{2,}/));
    expect(lines[header + 2 + m.plans.length]).toBe('');
    for (const [i, p] of m.plans.entries()) {
      const [plan, kind, layers, dim, rank, bits, budget, err, groups] = rows[i];
      expect({ plan, kind, layers, dim, rank, bits, budget }).toEqual({
        plan: String(p.index),
        kind: p.kind,
        layers: p.layers.join(','),
        dim: String(p.dim),
        rank: String(p.rank),
        bits: String(p.bits_per_token),
        budget: String(p.budget_bits),
      });
      const per = (p.kind === 'key' ? m.measured.rel_error.key : m.measured.rel_error.value) as number[];
      expect(err).toBe(
        p.layers.length === 1
          ? String(per[p.layers[0]])
          : `${Number((p.layers.reduce((a: number, l: number) => a + per[l], 0) / p.layers.length).toPrecision(6))} (mean)`,
      );
      const widths = groups.split(' ').map((g) => Number(/^(\d+)×(int2|int4|int8|fp8)(\(dyn\))?$/.exec(g)?.[1]));
      // Stored components: the basis may keep a component no group stores (a gap), so at most the rank.
      expect(widths.reduce((a, w) => a + w, 0)).toBe(
        p.groups.reduce((a: number, g: { start: number; end: number }) => a + g.end - g.start, 0),
      );
      expect(widths.reduce((a, w) => a + w, 0)).toBeLessThanOrEqual(p.rank);
    }
    expect(r.stdout).toMatch(/\nkept rank: the last principal component stored/);
    expect(r.stdout).toMatch(/measured on the report split/);
    expect(r.stdout).toMatch(/grouping all \(chosen by --grouping auto among layer, 2, 4, all\)/);
  });

  it('--json: the manifest, the size, and per plan the variance the kept components carry', async () => {
    const r = await kvtc('inspect', PROFILE, '--json');
    expect(r.code).toBe(0);
    const j = JSON.parse(r.stdout);
    const p = await readProfile(PROFILE);
    expect(j.manifest).toEqual(manifest());
    expect(j.bytes).toBe(statSync(join(PROFILE, 'kvtc-profile.json')).size + p.manifest.tensors.bytes);
    expect(j.plans).toHaveLength(p.plans.length);
    for (const [i, plan] of p.plans.entries()) {
      expect(j.plans[i].variance_kept).toBeCloseTo(
        plan.variances.reduce((a, v) => a + v, 0),
        6,
      );
      expect(j.plans[i].groups).toBe(
        p.manifest.plans[i].groups.map((g) => `${g.end - g.start}×${g.type}${g.mode === 'dynamic' ? '(dyn)' : ''}`).join(' '),
      );
    }
    expect(j.model_reading).toBeUndefined();
  });

  it("with --model also prints kvtc's reading of the model after the profile; with neither it is a usage error", async () => {
    const r = await kvtc('inspect', PROFILE, '--model', DEFAULT_MODEL_DIR);
    expect(r.code).toBe(0);
    const at = r.stdout.indexOf('RoPE kvtc undoes on keys');
    expect(at).toBeGreaterThan(r.stdout.indexOf('kept rank:'));
    expect(r.stdout.slice(0, at)).toMatch(/\nmodel {3}stories260k \(optimum export, .*models\/stories260k\)\n/);
    const none = await kvtc('inspect', '--json');
    expect(none.code).toBe(2);
    expect(JSON.parse(none.stdout).error.message).toMatch(/arguments \[\]: give a profile directory, --model DIR, or both/);
  });
});

describe('groupsCell (the table cell of a plan with many groups)', () => {
  it('lists up to TABLE_GROUPS groups as the manifest has them, and cuts a longer list short with each type’s components', () => {
    const few = Array.from({ length: TABLE_GROUPS }, (_, i) => `${i + 1}×int4`).join(' ');
    expect(groupsCell(few)).toBe(few);
    // An all-layer basis at rank ~11K: ~1,200 groups, a line of kilobytes in full.
    const many = [
      ...Array.from({ length: 300 }, () => '1×int8'),
      ...Array.from({ length: 900 }, (_, i) => `${(i % 3) + 1}×int2`),
      '64×int4(dyn)',
    ];
    const cell = groupsCell(many.join(' '));
    expect(cell).toBe(`${many.slice(0, 16).join(' ')} … 1201 groups in all: 300 int8, 1800 int2, 64 int4(dyn)`);
    expect(cell.length).toBeLessThan(200);
  });
});
