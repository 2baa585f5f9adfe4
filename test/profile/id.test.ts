import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { computeProfileId, profileIdText } from '../../src/profile/id.js';
import { sha256 } from '../../src/io/hash.js';
import { MANIFEST, PROFILE } from './helpers.js';

const manifest = () => JSON.parse(readFileSync(join(PROFILE, MANIFEST), 'utf8'));

describe('profile id', () => {
  it('the committed profile carries the id of its canonical text: the first 16 hex digits of its sha256', () => {
    const m = manifest();
    const text = profileIdText(m);
    expect(text.startsWith(`kvtc-profile-id 1\ntensors.sha256 ${m.tensors.sha256}\n`)).toBe(true);
    expect(text.endsWith('\n')).toBe(true);
    expect(computeProfileId(m)).toBe(sha256(text).slice(0, 16));
    expect(computeProfileId(m)).toBe(m.profile_id);
  });

  it('covers what decoding uses (sink, a group, the tensor hash) and not the informational fields', () => {
    const base = computeProfileId(manifest());
    const edits: ((m: any) => void)[] = [
      (m) => (m.settings.sink += 1),
      (m) => (m.plans[0].groups[0].end -= 1),
      (m) => (m.tensors.sha256 = '0'.repeat(64)),
    ];
    for (const edit of edits) {
      const m = manifest();
      edit(m);
      expect(computeProfileId(m)).not.toBe(base);
    }
    const m = manifest();
    m.model.name = 'renamed';
    m.measured = {};
    expect(computeProfileId(m)).toBe(base);
  });
});
