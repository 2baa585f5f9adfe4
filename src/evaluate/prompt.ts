/**
 * MMLU prompts, byte for byte as lm-evaluation-harness builds them for its default
 * `mmlu` task (EleutherAI/lm-evaluation-harness, lm_eval/tasks/mmlu/default/_default_template_yaml
 * and lm_eval/api/samplers.py):
 *
 *   doc_to_text:  "{{question.strip()}}\nA. {{choices[0]}}\nB. {{choices[1]}}\nC. {{choices[2]}}\nD. {{choices[3]}}\nAnswer:"
 *   doc_to_choice: ["A", "B", "C", "D"]; target_delimiter " "; fewshot_delimiter "\n\n"
 *   fewshot_split: dev, sampler: first_n (the first k dev rows, in file order)
 *   description:  "The following are multiple choice questions (with answers) about {subject, _ → space}.\n\n"
 *
 * context = description + Σ_shots (doc_to_text + " " + letter + "\n\n") + doc_to_text(test)
 * and the scored continuations are target_delimiter + choice: " A", " B", " C", " D".
 * Only the question is stripped; choices are used as they are.
 */
import { KvtcError } from '../errors.js';
import { loadSubject, type MmluQuestion } from './mmlu.js';

export const CHOICE_LETTERS = ['A', 'B', 'C', 'D'] as const;
/** What is scored after the context: target_delimiter + letter. */
export const CONTINUATIONS = [' A', ' B', ' C', ' D'] as const;

export function description(subject: string): string {
  return `The following are multiple choice questions (with answers) about ${subject.split('_').join(' ')}.\n\n`;
}

// Python's str.isspace() set, which str.strip() removes: unlike JS trim() it includes
// \x1c-\x1f and \x85 and excludes \ufeff.
const PY_WS = '[\\t\\n\\v\\f\\r\\x1c-\\x1f \\x85\\xa0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000]';
const PY_STRIP = new RegExp(`^${PY_WS}+|${PY_WS}+$`, 'g');

/** Python's `s.strip()`. */
export function pythonStrip(s: string): string {
  return s.replace(PY_STRIP, '');
}

/** One question without its answer; ends in "Answer:" (no trailing space). */
export function formatQuestion(q: Pick<MmluQuestion, 'question' | 'choices'>): string {
  const [a, b, c, d] = q.choices;
  return `${pythonStrip(q.question)}\nA. ${a}\nB. ${b}\nC. ${c}\nD. ${d}\nAnswer:`;
}

/** One few-shot example: the question, " ", its gold letter, then the "\n\n" delimiter. */
export function formatExample(q: Pick<MmluQuestion, 'question' | 'choices' | 'answer'>): string {
  return `${formatQuestion(q)} ${CHOICE_LETTERS[q.answer]}\n\n`;
}

/** The full context for `question`, with `shots` worked examples (already chosen) before it. */
export function buildPrompt(
  subject: string,
  question: Pick<MmluQuestion, 'question' | 'choices'>,
  shots: readonly MmluQuestion[] = [],
): string {
  return description(subject) + shots.map(formatExample).join('') + formatQuestion(question);
}

/**
 * The first `k` dev examples of a subject (the harness's first_n sampler). k = 0 needs no
 * file; k > 0 without a dev split, or with fewer than k rows, is DATA_INVALID.
 */
export async function loadShots(dir: string, subject: string, k: number): Promise<MmluQuestion[]> {
  if (k === 0) return [];
  const dev = await loadSubject(dir, subject, 'dev');
  if (dev.length < k) {
    throw new KvtcError('DATA_INVALID', `--shots ${k} needs ${k} dev examples for "${subject}", the dev split has ${dev.length}`, {
      context: { subject, shots: k, available: dev.length },
      fix: `Use --shots ${dev.length} or fewer, or add rows to the ${subject} dev split.`,
    });
  }
  return dev.slice(0, k);
}

/**
 * The few-shot prefix shared by every question of a subject (description + shots): it can
 * be prefilled once and its KV cache reused.
 */
export function sharedPrefix(subject: string, shots: readonly MmluQuestion[]): string {
  return description(subject) + shots.map(formatExample).join('');
}
