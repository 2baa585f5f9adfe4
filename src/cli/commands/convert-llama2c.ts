import { z } from 'zod';
import { convertLlama2c } from '../../convert/convert-llama2c.js';
import { parseOptions } from '../../validation.js';
import type { CliIO } from '../io.js';
import { printJson } from '../json.js';

const Options = z.object({
  checkpoint: z.string().min(1),
  tokenizer: z.string().min(1),
  out: z.string().min(1),
  name: z.string().optional(),
  force: z.boolean().default(false),
  json: z.boolean().default(false),
});

export default async function convertLlama2cCommand(raw: Record<string, unknown>, io: CliIO): Promise<void> {
  const opts = parseOptions(Options, raw);
  const r = await convertLlama2c({
    checkpoint: opts.checkpoint,
    tokenizer: opts.tokenizer,
    out: opts.out,
    name: opts.name,
    force: opts.force,
  });
  const s = r.spec;
  if (opts.json) {
    printJson(io, { out: r.dir, format: r.source.format, parameters: r.parameters, spec: s, files: r.files });
    return;
  }
  io.out(`Converted ${opts.checkpoint} (llama2.c ${r.source.format}, ${r.parameters.toLocaleString('en-US')} parameters)`);
  io.out(
    `  LlamaForCausalLM: ${s.layers} layers, hidden ${s.hidden}, ${s.heads} heads / ${s.kvHeads} KV heads, head_dim ${s.headDim}, vocab ${s.vocabSize}, ${s.maxPositions} positions`,
  );
  io.out('  q/k projection rows permuted from llama2.c interleaved RoPE to Hugging Face rotate_half');
  io.out(`Wrote ${r.dir}:`);
  for (const f of r.files) io.out(`  ${f.path.padEnd(24)} ${f.bytes.toLocaleString('en-US').padStart(12)} bytes`);
}
// Tested by test/convert/stories260k.test.ts ("convert-llama2c").
