import { cpSync, existsSync, mkdirSync, readdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { DEFAULT_MODEL_DIR } from '../../src/paths.js';
import { readProfile } from '../../src/profile/read.js';
import { writeProfile, type ManifestDraft } from '../../src/profile/write.js';
import { MANIFEST, PROFILE, TENSORS, tempDir } from './helpers.js';

/** The committed profile as writeProfile's inputs. */
async function committedInputs() {
  const p = await readProfile(PROFILE);
  const { profile_id: _id, tensors: _t, plans: _p, ...draft } = p.manifest;
  return { draft: draft as ManifestDraft, plans: p.plans };
}

/** Every file under `dir` except kvtc's two profile files, as base64 (byte-identity snapshot). */
function snapshot(dir: string): Record<string, string> {
  return Object.fromEntries(
    (readdirSync(dir, { recursive: true }) as string[])
      .filter((f) => statSync(join(dir, f)).isFile() && f !== MANIFEST && f !== TENSORS)
      .sort()
      .map((f) => [f, readFileSync(join(dir, f)).toString('base64')]),
  );
}

const temps = (dir: string) => readdirSync(dir).filter((f) => f.includes('.tmp'));

describe('writeProfile: output safety (a profile directory may be the model directory)', () => {
  it('--force into a copy of the model directory replaces only the two profile files: every model file and an unrelated file stay byte-identical', async () => {
    const { draft, plans } = await committedInputs();
    const model = join(tempDir(), 'model');
    cpSync(DEFAULT_MODEL_DIR, model, { recursive: true });
    writeFileSync(join(model, 'NOTES.md'), 'my notes\n');
    mkdirSync(join(model, 'sub'));
    writeFileSync(join(model, 'sub', 'keep.bin'), Buffer.from([1, 2, 3]));
    const before = snapshot(model);
    expect(Object.keys(before)).toEqual(expect.arrayContaining(['config.json', 'NOTES.md', join('sub', 'keep.bin')]));
    // First write (no profile there yet: allowed without --force), then forced replacements, one with other settings.
    await writeProfile(model, draft, plans);
    await writeProfile(model, draft, plans, { force: true });
    await writeProfile(model, { ...draft, settings: { ...draft.settings, seed: 99 } }, plans, { force: true });
    expect(snapshot(model)).toEqual(before);
    expect(temps(model)).toEqual([]);
    expect((await readProfile(model)).manifest.settings.seed).toBe(99);
    expect(readFileSync(join(model, TENSORS)).equals(readFileSync(join(PROFILE, TENSORS)))).toBe(true);
  });

  it('creates a missing directory (and its parents)', async () => {
    const { draft, plans } = await committedInputs();
    const out = join(tempDir(), 'a', 'b', 'p');
    const m = await writeProfile(out, draft, plans);
    expect(readdirSync(out).sort()).toEqual([MANIFEST, TENSORS]);
    expect((await readProfile(out)).manifest.profile_id).toBe(m.profile_id);
  });

  it('without --force: refuses another job\'s profile, an unreadable manifest or a lone tensor file; a re-run of the same job is "unchanged"', async () => {
    const { draft, plans } = await committedInputs();
    const out = join(tempDir(), 'p');
    await writeProfile(out, draft, plans);
    expect((await writeProfile(out, draft, plans)).unchanged).toBe(true);
    const other = { ...draft, settings: { ...draft.settings, seed: 1 } };
    await expect(writeProfile(out, other, plans)).rejects.toMatchObject({
      code: 'OUTPUT_EXISTS',
      message: expect.stringContaining('holds a profile of another model, data or settings'),
    });
    writeFileSync(join(out, MANIFEST), '{ not json');
    await expect(writeProfile(out, draft, plans)).rejects.toMatchObject({
      code: 'OUTPUT_EXISTS',
      message: expect.stringContaining('cannot read'),
    });
    const lone = join(tempDir(), 'lone');
    mkdirSync(lone);
    writeFileSync(join(lone, TENSORS), 'x');
    await expect(writeProfile(lone, draft, plans)).rejects.toMatchObject({
      code: 'OUTPUT_EXISTS',
      message: expect.stringContaining(`a ${TENSORS} without its ${MANIFEST}`),
    });
    expect(readFileSync(join(lone, TENSORS), 'utf8')).toBe('x');
    await writeProfile(lone, draft, plans, { force: true });
    expect((await readProfile(lone)).plans).toHaveLength(10);
  });

  it('a failed write leaves no temporary file and touches no other file', async () => {
    const { draft, plans } = await committedInputs();
    const out = join(tempDir(), 'p');
    mkdirSync(join(out, MANIFEST), { recursive: true }); // a directory where the manifest goes: its rename fails
    writeFileSync(join(out, 'other.txt'), 'other');
    await expect(writeProfile(out, draft, plans, { force: true })).rejects.toThrow();
    expect(temps(out)).toEqual([]);
    expect(readFileSync(join(out, 'other.txt'), 'utf8')).toBe('other');
    expect(statSync(join(out, MANIFEST)).isDirectory()).toBe(true);
    expect(existsSync(join(out, TENSORS))).toBe(true); // tensors are written first; without the manifest the profile does not read
    await expect(readProfile(out)).rejects.toMatchObject({ code: 'PROFILE_INVALID' });
  });
});
