/**
 * The 57 MMLU subjects and their four groups, exactly as lm-evaluation-harness assigns
 * them (SUBJECTS dict in lm_eval/tasks/mmlu/_generate_configs.py, EleutherAI
 * lm-evaluation-harness @ 3c511e38b8729ad3e8251640f8923c3bbac7f897; the groups
 * mmlu_stem, mmlu_humanities, mmlu_social_sciences, mmlu_other).
 */
import { UsageError } from '../errors.js';

export type MmluGroup = 'stem' | 'humanities' | 'social_sciences' | 'other';

export const MMLU_GROUPS: readonly MmluGroup[] = ['stem', 'humanities', 'social_sciences', 'other'];

/** subject → group, in the harness's (alphabetical) order. */
export const SUBJECT_GROUP: Readonly<Record<string, MmluGroup>> = {
  abstract_algebra: 'stem',
  anatomy: 'stem',
  astronomy: 'stem',
  business_ethics: 'other',
  clinical_knowledge: 'other',
  college_biology: 'stem',
  college_chemistry: 'stem',
  college_computer_science: 'stem',
  college_mathematics: 'stem',
  college_medicine: 'other',
  college_physics: 'stem',
  computer_security: 'stem',
  conceptual_physics: 'stem',
  econometrics: 'social_sciences',
  electrical_engineering: 'stem',
  elementary_mathematics: 'stem',
  formal_logic: 'humanities',
  global_facts: 'other',
  high_school_biology: 'stem',
  high_school_chemistry: 'stem',
  high_school_computer_science: 'stem',
  high_school_european_history: 'humanities',
  high_school_geography: 'social_sciences',
  high_school_government_and_politics: 'social_sciences',
  high_school_macroeconomics: 'social_sciences',
  high_school_mathematics: 'stem',
  high_school_microeconomics: 'social_sciences',
  high_school_physics: 'stem',
  high_school_psychology: 'social_sciences',
  high_school_statistics: 'stem',
  high_school_us_history: 'humanities',
  high_school_world_history: 'humanities',
  human_aging: 'other',
  human_sexuality: 'social_sciences',
  international_law: 'humanities',
  jurisprudence: 'humanities',
  logical_fallacies: 'humanities',
  machine_learning: 'stem',
  management: 'other',
  marketing: 'other',
  medical_genetics: 'other',
  miscellaneous: 'other',
  moral_disputes: 'humanities',
  moral_scenarios: 'humanities',
  nutrition: 'other',
  philosophy: 'humanities',
  prehistory: 'humanities',
  professional_accounting: 'other',
  professional_law: 'humanities',
  professional_medicine: 'other',
  professional_psychology: 'social_sciences',
  public_relations: 'social_sciences',
  security_studies: 'social_sciences',
  sociology: 'social_sciences',
  us_foreign_policy: 'social_sciences',
  virology: 'other',
  world_religions: 'humanities',
};

export const MMLU_SUBJECTS: readonly string[] = Object.keys(SUBJECT_GROUP);

export function subjectsInGroup(group: MmluGroup): string[] {
  return MMLU_SUBJECTS.filter((s) => SUBJECT_GROUP[s] === group);
}

export function groupOf(subject: string): MmluGroup | undefined {
  return Object.hasOwn(SUBJECT_GROUP, subject) ? SUBJECT_GROUP[subject] : undefined;
}

// "High School Physics", "mmlu_high-school-physics" and "high_school_physics" name the same subject.
function normalize(name: string): string {
  return name
    .trim()
    .toLowerCase()
    .replace(/[\s-]+/g, '_')
    .replace(/^mmlu_/, '');
}

/**
 * Resolve subject names, group names (stem, humanities, social_sciences, other) and
 * "all"/"mmlu" into a list of subjects in the harness's order, without duplicates.
 * Accepts an array or one comma-separated string. An unknown name is a UsageError
 * listing the valid names and the closest one.
 */
export function resolveSubjects(names: string | readonly string[]): string[] {
  const list = (typeof names === 'string' ? names.split(',') : names).map(normalize).filter((s) => s !== '');
  if (list.length === 0) {
    throw new UsageError('No MMLU subjects given', 'Name subjects, groups (stem, humanities, social_sciences, other) or "all".', {
      value: names,
    });
  }
  const wanted = new Set<string>();
  for (const name of list) {
    if (name === 'all' || name === 'mmlu') {
      for (const s of MMLU_SUBJECTS) wanted.add(s);
    } else if ((MMLU_GROUPS as readonly string[]).includes(name)) {
      for (const s of subjectsInGroup(name as MmluGroup)) wanted.add(s);
    } else if (Object.hasOwn(SUBJECT_GROUP, name)) {
      wanted.add(name);
    } else {
      const valid = ['all', ...MMLU_GROUPS, ...MMLU_SUBJECTS];
      const closest = closestName(name, valid);
      throw new UsageError(
        `Unknown MMLU subject "${name}"${closest ? `: did you mean "${closest}"?` : ''}`,
        `Use "all", a group (${MMLU_GROUPS.join(', ')}) or one of the 57 subjects: ${MMLU_SUBJECTS.join(', ')}.`,
        { value: name, closest, valid },
      );
    }
  }
  return MMLU_SUBJECTS.filter((s) => wanted.has(s));
}

/** The candidate with the smallest edit distance, if it is close enough to be a plausible typo. */
export function closestName(name: string, candidates: readonly string[]): string | undefined {
  let best: string | undefined;
  let bestDist = Infinity;
  for (const c of candidates) {
    const d = levenshtein(name, c);
    if (d < bestDist) {
      bestDist = d;
      best = c;
    }
  }
  return best !== undefined && bestDist <= Math.max(2, Math.floor(best.length / 3)) ? best : undefined;
}

function levenshtein(a: string, b: string): number {
  let prev = Array.from({ length: b.length + 1 }, (_, j) => j);
  for (let i = 1; i <= a.length; i++) {
    const cur = [i];
    for (let j = 1; j <= b.length; j++) {
      cur[j] = Math.min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (a[i - 1] === b[j - 1] ? 0 : 1));
    }
    prev = cur;
  }
  return prev[b.length];
}
