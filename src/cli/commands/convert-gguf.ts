import { resolve } from 'node:path';
import { z } from 'zod';
import { convertGguf } from '../../convert/gguf/convert.js';
import { parseOptions } from '../../validation.js';
import type { CliIO } from '../io.js';
import { printJson } from '../json.js';
import { createProgress } from '../progress.js';

const Options = z.object({
  _: z.array(z.string()).length(1, 'give one GGUF file: kvtc convert-gguf FILE --out DIR'),
  out: z.string().min(1),
  name: z.string().min(1).optional(),
  force: z.boolean().default(false),
  json: z.boolean().default(false),
  quiet: z.boolean().default(false),
});

export default async function convertGgufCommand(raw: Record<string, unknown>, io: CliIO): Promise<void> {
  const opts = parseOptions(Options, raw);
  const file = opts._[0];
  const t0 = Date.now();
  const progress = createProgress(io, { quiet: opts.quiet || opts.json });
  let r;
  try {
    r = await convertGguf({ file, out: resolve(opts.out), name: opts.name, force: opts.force, onProgress: progress.fn });
  } finally {
    progress.stop();
  }
  const seconds = (Date.now() - t0) / 1000;
  const c = r.converted;
  const s = c.spec;
  if (opts.json) {
    printJson(io, {
      out: r.dir,
      architecture: r.architecture,
      model_type: c.modelType,
      parameters: c.parameters,
      spec: s,
      config: c.config,
      notes: c.notes,
      files: r.files,
      seconds,
    });
    return;
  }
  io.out(
    `Converted ${file} (GGUF ${r.architecture} → ${String((c.config.architectures as string[] | undefined)?.[0] ?? c.modelType)}, ${c.parameters.toLocaleString('en-US')} parameters, ${seconds.toFixed(1)} s)`,
  );
  io.out(
    `  ${s.layers} layers, hidden ${s.hidden}, ${s.heads} heads / ${s.kvHeads} KV heads, head_dim ${s.headDim}, vocab ${s.vocabSize}, ${s.maxPositions} positions`,
  );
  for (const n of c.notes) io.out(`  ${n}`);
  io.out(`Wrote ${r.dir}:`);
  for (const f of r.files) io.out(`  ${f.path.padEnd(24)} ${f.bytes.toLocaleString('en-US').padStart(14)} bytes`);
}
// Tested by test/convert/gguf-llama.test.ts ("convert-gguf CLI").
