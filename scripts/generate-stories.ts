/**
 * In-domain text for the bundled model's perplexity check: stories stories260K writes itself
 * (seeded sampling at temperature 1 from "Once upon a time"), so a perplexity change under
 * compression measures the codec, not a story model's confusion on encyclopedia text.
 *
 *   npx tsx scripts/generate-stories.ts [--out data/stories260k-generated/stories.txt] [--chars 40000]
 */
import { writeFileSync } from 'node:fs';
import { parseArgs } from 'node:util';
import { loadModel } from '../src/model/load.js';
import { ModelRunner } from '../src/model/runner.js';
import { DEFAULT_MODEL_DIR } from '../src/paths.js';

const { values } = parseArgs({
  options: { out: { type: 'string', default: 'data/stories260k-generated/stories.txt' }, chars: { type: 'string', default: '40000' } },
});
const model = await loadModel(DEFAULT_MODEL_DIR);
try {
  const runner = new ModelRunner(model);
  const prompt = 'Once upon a time';
  let text = '';
  for (let seed = 0; text.length < Number(values.chars); seed++) {
    const r = await runner.generate(model.tokenizer.encode(prompt), { maxNewTokens: 480, temperature: 1.0, seed });
    text += `${prompt}${model.tokenizer.decode(r.ids)}\n\n`;
  }
  writeFileSync(values.out!, text);
  console.log(`wrote ${text.length} characters to ${values.out}`);
} finally {
  await model.session.release();
}
