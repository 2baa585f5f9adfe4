import { convertLlama2c } from '../../convert/convert-llama2c.js';
import { UsageError } from '../../errors.js';
import type { CliIO } from '../io.js';

export default async function convertLlama2cCommand(opts: Record<string, unknown>, io: CliIO): Promise<void> {
  for (const k of ['checkpoint', 'tokenizer', 'out'] as const) {
    if (typeof opts[k] !== 'string' || opts[k] === '') throw new UsageError(`--${k} is required.`, `Pass --${k} <path>.`);
  }
  const r = await convertLlama2c({
    checkpoint: opts.checkpoint as string,
    tokenizer: opts.tokenizer as string,
    out: opts.out as string,
    name: typeof opts.name === 'string' ? opts.name : undefined,
    force: Boolean(opts.force),
  });
  const s = r.spec;
  io.out(`Converted ${opts.checkpoint} (llama2.c ${r.source.format}, ${r.parameters.toLocaleString('en-US')} parameters)`);
  io.out(`  LlamaForCausalLM: ${s.layers} layers, hidden ${s.hidden}, ${s.heads} heads / ${s.kvHeads} KV heads, head_dim ${s.headDim}, vocab ${s.vocabSize}, ${s.maxPositions} positions`);
  io.out('  q/k projection rows permuted from llama2.c interleaved RoPE to Hugging Face rotate_half');
  io.out(`Wrote ${r.dir}:`);
  for (const f of r.files) io.out(`  ${f.path.padEnd(24)} ${f.bytes.toLocaleString('en-US').padStart(12)} bytes`);
}
