import { describe, expect, it } from 'vitest';
import { MMLU_DIR } from '../../src/paths.js';
import { loadSubject } from '../../src/evaluate/mmlu.js';
import { CONTINUATIONS, buildPrompt, description, loadShots, pythonStrip, sharedPrefix } from '../../src/evaluate/prompt.js';

// Expected strings were produced independently with Python's csv module and the harness's
// template ("{{question.strip()}}\nA. ...\nAnswer:", target delimiter " ", fewshot delimiter "\n\n").
const ZERO_SHOT =
  'The following are multiple choice questions (with answers) about abstract algebra.\n\n' +
  'Find the degree for the given field extension Q(sqrt(2), sqrt(3), sqrt(18)) over Q.\nA. 0\nB. 4\nC. 2\nD. 6\nAnswer:';

const FIVE_SHOT =
  'The following are multiple choice questions (with answers) about abstract algebra.\n\n' +
  'Find all c in Z_3 such that Z_3[x]/(x^2 + c) is a field.\nA. 0\nB. 1\nC. 2\nD. 3\nAnswer: B\n\n' +
  'Statement 1 | If aH is an element of a factor group, then |aH| divides |a|. Statement 2 | If H and K are subgroups of G then HK is a subgroup of G.\nA. True, True\nB. False, False\nC. True, False\nD. False, True\nAnswer: B\n\n' +
  'Statement 1 | Every element of a group generates a cyclic subgroup of the group. Statement 2 | The symmetric group S_10 has 10 elements.\nA. True, True\nB. False, False\nC. True, False\nD. False, True\nAnswer: C\n\n' +
  'Statement 1| Every function from a finite set onto itself must be one to one. Statement 2 | Every subgroup of an abelian group is abelian.\nA. True, True\nB. False, False\nC. True, False\nD. False, True\nAnswer: A\n\n' +
  'Find the characteristic of the ring 2Z.\nA. 0\nB. 3\nC. 12\nD. 30\nAnswer: A\n\n' +
  'Find the degree for the given field extension Q(sqrt(2), sqrt(3), sqrt(18)) over Q.\nA. 0\nB. 4\nC. 2\nD. 6\nAnswer:';

describe('MMLU prompt (lm-evaluation-harness format)', () => {
  it('builds the 0-shot prompt exactly', async () => {
    const [q] = await loadSubject(MMLU_DIR, 'abstract_algebra', 'test');
    expect(buildPrompt('abstract_algebra', q, await loadShots(MMLU_DIR, 'abstract_algebra', 0))).toBe(ZERO_SHOT);
  });

  it('builds the 5-shot prompt exactly (first 5 dev rows)', async () => {
    const [q] = await loadSubject(MMLU_DIR, 'abstract_algebra', 'test');
    const shots = await loadShots(MMLU_DIR, 'abstract_algebra', 5);
    const prompt = buildPrompt('abstract_algebra', q, shots);
    expect(prompt).toBe(FIVE_SHOT);
    expect(prompt.startsWith(sharedPrefix('abstract_algebra', shots))).toBe(true);
  });

  it('strips the question like Python str.strip() (incl. U+0085), but not the choices', async () => {
    const q = (await loadSubject(MMLU_DIR, 'sociology', 'test'))[69];
    expect(q.question.endsWith('\u0085')).toBe(true);
    expect(buildPrompt('sociology', q)).toBe(
      'The following are multiple choice questions (with answers) about sociology.\n\n' +
        'Role-learning theory suggests that\nA. we internalise and take on social roles from a pre-existing framework\n' +
        'B. we create and negotiate our roles through interaction with others\nC. social roles are not fixed or stable but fluid and pluralistic\n' +
        'D. roles have to be learned to suppress unconscious motivations\nAnswer:',
    );
    expect(buildPrompt('x', { question: ' q ', choices: [' a', 'b ', 'c', 'd'] })).toBe(
      `${description('x')}q\nA.  a\nB. b \nC. c\nD. d\nAnswer:`,
    );
    expect(pythonStrip('\ufeffq\u001f')).toBe('\ufeffq');
  });

  it('replaces every underscore in the subject name', () => {
    expect(description('high_school_government_and_politics')).toBe(
      'The following are multiple choice questions (with answers) about high school government and politics.\n\n',
    );
  });

  it('scores " A" … " D"', () => {
    expect(CONTINUATIONS).toEqual([' A', ' B', ' C', ' D']);
  });

  it('needs the dev split for shots', async () => {
    await expect(loadShots('/nonexistent-kvtc-mmlu', 'anatomy', 5)).rejects.toMatchObject({ code: 'DATA_INVALID' });
    await expect(loadShots('/nonexistent-kvtc-mmlu', 'anatomy', 0)).resolves.toEqual([]);
    await expect(loadShots(MMLU_DIR, 'anatomy', 6)).rejects.toThrowError(
      /--shots 6 needs 6 dev examples for "anatomy", the dev split has 5/,
    );
  });
});
