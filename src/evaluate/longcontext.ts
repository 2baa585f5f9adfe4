/**
 * Long-context tasks in the style of RULER (Hsieh et al., 2024), generated procedurally and
 * offline, so a model is tested where KV compression matters: prompts that fill the context, most
 * of whose tokens lie outside the protected sink and window and go through the codec.
 *
 * - needle: one "The special magic number is N." sentence hidden at a seeded depth in filler text;
 *   the query asks for it.
 * - variable_tracking: two chains of assignments ("VAR QX = 4821." then "VAR RT = VAR QX." ...)
 *   scattered through the filler; the query asks for the value of the last variable of one chain.
 *
 * Both are scored as multiple choice by continuation log-likelihood (like MMLU): the true number
 * against three distractors (for variable tracking, the other chain's value is one of them), all
 * chosen to tokenize to the same number of tokens so no candidate is favoured by its length.
 */
import { KvtcError } from '../errors.js';
import type { ModelTokenizer } from '../model/tokenizer.js';
import { mulberry32 } from '../random.js';
import { encodeRequest, type EncodedRequest } from './scoring.js';

export type LongContextKind = 'needle' | 'variable_tracking';
export const LONG_CONTEXT_KINDS: readonly LongContextKind[] = ['needle', 'variable_tracking'];

export interface LongContextTask {
  kind: LongContextKind;
  index: number;
  /** The prompt, ending where the answer starts. */
  prompt: string;
  /** " 4821." and three distractors; `gold` indexes the right one. */
  continuations: string[];
  gold: number;
  request: EncodedRequest;
}

export interface LongContextOptions {
  /** Tasks of each kind. */
  perKind: number;
  /** Prompt length to aim for, in tokens (at most the model's positions minus the answer). */
  contextTokens: number;
  maxPositions: number;
  seed: number;
}

const LETTERS = 'ABCDEFGHJKLMNPQRSTUVWXYZ';

/** Filler sentences from `text` (WikiText-2), in order, with headings and blank lines dropped. */
export function fillerSentences(text: string): string[] {
  const out: string[] = [];
  for (const line of text.split('\n')) {
    const l = line.trim();
    if (!l || l.startsWith('=')) continue;
    for (const s of l.split(/(?<=\.) /)) if (s.length > 20) out.push(s);
  }
  if (out.length < 50)
    throw new KvtcError('DATA_INVALID', 'the filler text for the long-context tasks has fewer than 50 sentences', {
      fix: 'Restore data/wikitext-2/wiki.test.raw from the repository.',
    });
  return out;
}

function number4(rand: () => number): number {
  return 1000 + Math.floor(rand() * 9000);
}

/** Three distinct distractor numbers whose continuation has the same token count as the answer's. */
function candidates(
  tok: ModelTokenizer,
  answer: number,
  rand: () => number,
  include: number[] = [],
): { continuations: string[]; gold: number } {
  const len = (n: number) => tok.encode(` ${n}.`, { addBos: false }).length;
  const want = len(answer);
  const picked = new Set<number>([answer]);
  for (const n of include) if (len(n) === want) picked.add(n);
  for (let tries = 0; picked.size < 4 && tries < 10_000; tries++) {
    const n = number4(rand);
    if (len(n) === want) picked.add(n);
  }
  if (picked.size < 4) throw new KvtcError('INTERNAL', 'could not find distractor numbers of equal token length');
  const nums = [...picked].slice(0, 4);
  // Shuffle so the answer's position carries no signal.
  for (let i = nums.length - 1; i > 0; i--) {
    const j = Math.floor(rand() * (i + 1));
    [nums[i], nums[j]] = [nums[j], nums[i]];
  }
  return { continuations: nums.map((n) => ` ${n}.`), gold: nums.indexOf(answer) };
}

function varName(rand: () => number, used: Set<string>): string {
  for (;;) {
    const v = LETTERS[Math.floor(rand() * LETTERS.length)] + LETTERS[Math.floor(rand() * LETTERS.length)];
    if (!used.has(v)) {
      used.add(v);
      return v;
    }
  }
}

/**
 * Builds the tasks. Filler is taken from a seeded start in `filler` until the prompt reaches
 * `contextTokens`; inserted sentences sit at seeded depths (10%–90% of the filler).
 */
export function buildLongContextTasks(tok: ModelTokenizer, filler: readonly string[], opts: LongContextOptions): LongContextTask[] {
  const budget = Math.min(opts.contextTokens, opts.maxPositions - 8);
  if (budget < 64)
    throw new KvtcError('USAGE', `--long-context-tokens ${opts.contextTokens}: long-context prompts need at least 64 tokens`, {
      fix: 'Use --long-context-tokens 64 or more (or --long-context 0 to skip).',
    });
  const rand = mulberry32(opts.seed ^ 0x1c7a5);
  const tasks: LongContextTask[] = [];
  for (const kind of LONG_CONTEXT_KINDS) {
    for (let index = 0; index < opts.perKind; index++) {
      const inserts: string[] = [];
      let query: string;
      let answer: number;
      let include: number[] = [];
      if (kind === 'needle') {
        answer = number4(rand);
        inserts.push(`The special magic number is ${answer}.`);
        query = 'What is the special magic number mentioned in the text above? The special magic number is';
      } else {
        const used = new Set<string>();
        const chains = [0, 1].map(() => {
          const value = number4(rand);
          const names = [varName(rand, used), varName(rand, used), varName(rand, used)];
          return { value, names };
        });
        if (chains[1].value === chains[0].value) chains[1].value = chains[0].value === 9999 ? 1000 : chains[0].value + 1;
        for (const c of chains) {
          inserts.push(`VAR ${c.names[0]} = ${c.value}.`);
          for (let k = 1; k < c.names.length; k++) inserts.push(`VAR ${c.names[k]} = VAR ${c.names[k - 1]}.`);
        }
        const asked = chains[0];
        answer = asked.value;
        include = [chains[1].value];
        query = `What number does VAR ${asked.names[asked.names.length - 1]} hold? VAR ${asked.names[asked.names.length - 1]} =`;
      }
      const { continuations, gold } = candidates(tok, answer, rand, include);
      // Filler up to the budget (the query and inserts included), then the inserts at seeded depths.
      const fixed = tok.encode(`${inserts.join(' ')}\n${query}${continuations[0]}`, { addBos: true }).length;
      let at = Math.floor(rand() * filler.length);
      const body: string[] = [];
      let have = fixed;
      // Sentences that would overflow are skipped (a shorter one may still fit), within reason.
      for (let misses = 0; have < budget && misses < 200;) {
        const s = filler[at++ % filler.length];
        const n = tok.encode(` ${s}`, { addBos: false }).length;
        if (have + n > budget) {
          misses++;
          continue;
        }
        body.push(s);
        have += n;
      }
      // Depths in order, so chains read forwards.
      const depths = inserts.map(() => 0.1 + 0.8 * rand()).sort((a, b) => a - b);
      for (let k = inserts.length - 1; k >= 0; k--) body.splice(Math.round(depths[k] * body.length), 0, inserts[k]);
      const prompt = `${body.join(' ')}\n${query}`;
      tasks.push({ kind, index, prompt, continuations, gold, request: encodeRequest(tok, prompt, continuations, opts.maxPositions) });
    }
  }
  // Generated kind by kind (the seeded stream fixes each task), scored round robin over the kinds:
  // needle 0, variable tracking 0, needle 1, … so a run stopped by the clock has both kinds.
  return tasks.sort((a, b) => a.index - b.index || LONG_CONTEXT_KINDS.indexOf(a.kind) - LONG_CONTEXT_KINDS.indexOf(b.kind));
}

/** The journal key of a long-context task: its kind and index, not its place in the scoring order. */
export function longContextKey(task: Pick<LongContextTask, 'kind' | 'index'>): string {
  return `long_context/${task.kind}/${task.index}`;
}
