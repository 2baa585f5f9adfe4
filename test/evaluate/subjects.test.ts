import { describe, expect, it } from 'vitest';
import { KvtcError } from '../../src/errors.js';
import { MMLU_GROUPS, MMLU_SUBJECTS, closestName, groupOf, resolveSubjects, subjectsInGroup } from '../../src/evaluate/subjects.js';

describe('MMLU subjects and groups', () => {
  it('has 57 subjects in four groups of the harness sizes', () => {
    expect(MMLU_SUBJECTS).toHaveLength(57);
    expect(Object.fromEntries(MMLU_GROUPS.map((g) => [g, subjectsInGroup(g).length]))).toEqual({
      stem: 19,
      humanities: 13,
      social_sciences: 12,
      other: 13,
    });
  });

  it.each([
    ['abstract_algebra', 'stem'],
    ['econometrics', 'social_sciences'],
    ['formal_logic', 'humanities'],
    ['professional_law', 'humanities'],
    ['clinical_knowledge', 'other'],
    ['high_school_psychology', 'social_sciences'],
    ['global_facts', 'other'],
  ])('%s is in %s', (subject, group) => {
    expect(groupOf(subject)).toBe(group);
  });

  it('returns undefined for a non-subject', () => {
    expect(groupOf('toString')).toBeUndefined();
  });
});

describe('resolveSubjects', () => {
  it('expands "all" to every subject', () => {
    expect(resolveSubjects(['all'])).toEqual([...MMLU_SUBJECTS]);
  });

  it('expands groups and mixes them with subjects, in harness order, without duplicates', () => {
    const got = resolveSubjects('virology, stem,abstract_algebra');
    expect(got).toHaveLength(20);
    expect(got[0]).toBe('abstract_algebra');
    expect(got.at(-1)).toBe('virology');
  });

  it('accepts spaces, hyphens, case and the mmlu_ prefix', () => {
    expect(resolveSubjects(['High School Physics', 'mmlu_world-religions'])).toEqual(['high_school_physics', 'world_religions']);
  });

  it('rejects an unknown name, suggesting the closest and listing the valid ones', () => {
    let err: unknown;
    try {
      resolveSubjects(['astronomy', 'anatomyy']);
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(KvtcError);
    const e = err as KvtcError;
    expect(e.code).toBe('USAGE');
    expect(e.message).toBe('Unknown MMLU subject "anatomyy": did you mean "anatomy"?');
    expect(e.fix).toContain('stem, humanities, social_sciences, other');
    expect(e.fix).toContain('world_religions');
    expect(e.context).toMatchObject({ value: 'anatomyy', closest: 'anatomy' });
  });

  it('gives no suggestion for a name far from all of them', () => {
    expect(() => resolveSubjects('quantum_gravity_xyz')).toThrowError(/^Unknown MMLU subject "quantum_gravity_xyz"$/);
    expect(closestName('zzzzzzzz', MMLU_SUBJECTS)).toBeUndefined();
  });

  it('rejects an empty list', () => {
    expect(() => resolveSubjects(' , ')).toThrowError(/No MMLU subjects/);
  });
});
