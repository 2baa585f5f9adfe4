import { resolve } from 'node:path';
import { z } from 'zod';
import { FETCH_SOURCES, fetchModel } from '../../convert/gguf/fetch.js';
import { parseOptions } from '../../validation.js';
import type { CliIO } from '../io.js';
import { printJson } from '../json.js';
import { createProgress } from '../progress.js';

const Options = z.object({
  _: z.array(z.string()).length(1, `name one model: ${FETCH_SOURCES.map((s) => s.id).join(', ')}`),
  cache: z.string().min(1).optional(),
  python: z.string().min(1).default('python3'),
  force: z.boolean().default(false),
  json: z.boolean().default(false),
  quiet: z.boolean().default(false),
});

export default async function fetchModelCommand(raw: Record<string, unknown>, io: CliIO): Promise<void> {
  const opts = parseOptions(Options, raw);
  const progress = createProgress(io, { quiet: opts.quiet || opts.json });
  const t0 = Date.now();
  let r;
  try {
    r = await fetchModel(opts._[0], {
      cache: opts.cache ? resolve(opts.cache) : undefined,
      python: opts.python,
      force: opts.force,
      onProgress: progress.fn,
    });
  } finally {
    progress.stop();
  }
  const seconds = (Date.now() - t0) / 1000;
  if (opts.json) {
    printJson(io, {
      model: r.source.id,
      dir: r.dir,
      gguf: r.gguf,
      cached: r.cached,
      downloaded: r.downloaded,
      converted: r.converted,
      licence: r.source.licence,
      files: r.files,
      seconds,
    });
    return;
  }
  io.err(r.source.licence);
  io.err(
    r.cached
      ? `${r.source.id}: the cached model verified (every file's sha256), nothing to do (${seconds.toFixed(1)} s)`
      : `${r.source.id}: ${r.downloaded ? 'downloaded, ' : ''}verified and converted in ${seconds.toFixed(1)} s`,
  );
  // stdout: the folder alone, so scripts can do --model "$(kvtc fetch-model smollm2)".
  io.out(r.dir);
}
// Tested by test/convert/gguf-fetch.test.ts ("fetch-model CLI").
