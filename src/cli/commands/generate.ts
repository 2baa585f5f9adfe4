import { z } from 'zod';
import { loadModel, modelDirFromOption } from '../../model/load.js';
import { ModelRunner } from '../../model/runner.js';
import { checkDevice } from '../../onnx/session.js';
import { parseOptions } from '../../validation.js';
import type { CliIO } from '../io.js';
import { printJson } from '../json.js';
import { wholeNumber, decimal, deviceSchema } from '../options.js';

const schema = z.object({
  model: z.string().min(1),
  onnx: z.string().min(1).optional(),
  prompt: z.string().min(1, 'must not be empty'),
  maxNewTokens: wholeNumber(0, 100_000),
  temperature: decimal(0, 100),
  seed: wholeNumber(0),
  device: deviceSchema,
  json: z.boolean(),
});

export default async function generate(raw: Record<string, unknown>, io: CliIO): Promise<void> {
  const opts = parseOptions(schema, raw);
  checkDevice(opts.device);
  const model = await loadModel(modelDirFromOption(opts.model, opts.onnx), { device: opts.device });
  const runner = new ModelRunner(model);
  const promptIds = model.tokenizer.encode(opts.prompt);
  const r = await runner.generate(promptIds, { maxNewTokens: opts.maxNewTokens, temperature: opts.temperature, seed: opts.seed });
  // Decoded with the prompt so the joining space comes out as the tokenizer means it.
  const prompt = model.tokenizer.decode(promptIds);
  const full = model.tokenizer.decode([...promptIds, ...r.ids]);
  const continuation = full.startsWith(prompt) ? full.slice(prompt.length) : model.tokenizer.decode(r.ids);
  const tokensPerSecond = r.ids.length > 1 ? (r.ids.length - 1) / (r.decodeMs / 1000) : undefined;
  if (opts.json) {
    printJson(io, {
      model: model.name,
      prompt: opts.prompt,
      continuation,
      promptTokens: promptIds.length,
      ids: r.ids,
      stopReason: r.stopReason,
      prefillMs: r.prefillMs,
      decodeMs: r.decodeMs,
      tokensPerSecond,
    });
    return;
  }
  io.out(continuation);
  io.err(`(${r.ids.length} new tokens, stop: ${r.stopReason}${tokensPerSecond ? `, ${tokensPerSecond.toFixed(0)} tokens/s` : ''})`);
}
