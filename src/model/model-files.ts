// Tested by test/model/model-dir-option.test.ts and test/model/cli.test.ts.
/**
 * Finding a model directory's files: the --model option (a phrase for the bundled model, a
 * local path, never a Hub id), the model's name, and its config and ONNX graph for Optimum /
 * transformers.js exports (config.json, onnx/model*.onnx) and onnxruntime-genai exports
 * (genai_config.json, model.onnx + model.onnx.data).
 */
import { existsSync, statSync } from 'node:fs';
import { readFile, readdir } from 'node:fs/promises';
import { basename, dirname, join, resolve } from 'node:path';
import { KvtcError } from '../errors.js';
import { DEFAULT_MODEL_DIR } from '../paths.js';

/** The CLI's `--model` default is a phrase, not a path. */
export const DEFAULT_MODEL_OPTION = 'the bundled stories260K';

export function modelDirFromOption(model: string | undefined): string {
  if (model === undefined || model === DEFAULT_MODEL_OPTION) return DEFAULT_MODEL_DIR;
  const dir = resolve(model);
  // "org/name" that is not a local path: a Hugging Face Hub id. kvtc reads local exports only.
  if (!existsSync(dir) && /^[\w.-]+\/[\w.-]+$/.test(model) && !model.startsWith('.')) {
    throw new KvtcError('MODEL_NOT_FOUND', `--model ${model} looks like a Hugging Face Hub id; kvtc reads local model directories and downloads nothing`, {
      fix:
        `Get a local ONNX export with KV inputs/outputs first, e.g. \`optimum-cli export onnx --model ${model} --task text-generation-with-past ${model.split('/')[1]}-onnx/\` ` +
        `(or \`huggingface-cli download onnx-community/${model.split('/')[1]}-ONNX --local-dir ${model.split('/')[1]}-onnx\` where such an export exists), then pass --model ${model.split('/')[1]}-onnx.`,
      context: { model },
    });
  }
  return dir;
}

/** Path components that name a layout, not a model ("llama/onnx" is the model "llama"). */
const GENERIC_DIR_NAMES = new Set(['onnx', 'model', 'models', 'export', 'exported', 'output', 'out', 'onnx-export']);

/** The model's name from its directory: the last component that is not a generic one. */
export function modelNameFromDir(dir: string): string {
  let d = resolve(dir);
  while (GENERIC_DIR_NAMES.has(basename(d).toLowerCase()) && dirname(d) !== d) d = dirname(d);
  return basename(d) || basename(resolve(dir));
}


export type ModelFormat = 'optimum' | 'genai';

export interface ModelFiles {
  format: ModelFormat;
  /** config.json or genai_config.json */
  config: string;
  onnx: string;
  /** External weights file beside the graph, if any. */
  externalData?: string;
}


export function modelInvalid(message: string, context: Record<string, unknown>, fix = 'Re-export the model.'): KvtcError {
  return new KvtcError('MODEL_INVALID', message, { fix, context });
}

export async function readJson(path: string): Promise<Record<string, unknown>> {
  try {
    const v = JSON.parse(await readFile(path, 'utf8'));
    if (!v || typeof v !== 'object' || Array.isArray(v)) throw new Error('not a JSON object');
    return v as Record<string, unknown>;
  } catch (e) {
    throw modelInvalid(`${path} is not a valid JSON object: ${(e as Error).message}`, { file: path });
  }
}



/** Finds the config and the ONNX graph of a model directory; `notes` says which file was picked. */
export async function findModelFiles(dir: string, notes: string[] = []): Promise<ModelFiles> {
  if (!existsSync(dir) || !statSync(dir).isDirectory()) {
    throw new KvtcError('MODEL_NOT_FOUND', `model directory ${dir} does not exist${existsSync(dir) ? ' (it is a file)' : ''}.`, {
      fix: 'Pass --model with a directory holding config.json (Optimum export) or genai_config.json (onnxruntime-genai export) and the ONNX file.',
      context: { dir },
    });
  }
  const genai = join(dir, 'genai_config.json');
  if (existsSync(genai)) {
    const cfg = await readJson(genai);
    const decoder = (cfg.model as { decoder?: { filename?: unknown } } | undefined)?.decoder;
    const file = typeof decoder?.filename === 'string' ? decoder.filename : 'model.onnx';
    const onnxPath = join(dir, file);
    if (!existsSync(onnxPath)) throw modelInvalid(`${genai} names ${file}, which is missing from ${dir}.`, { dir, file }, 'Copy the whole export directory, including the .onnx and .onnx.data files.');
    return { format: 'genai', config: genai, onnx: onnxPath };
  }
  const config = join(dir, 'config.json');
  if (!existsSync(config)) {
    throw modelInvalid(`${dir} has neither config.json nor genai_config.json.`, { dir }, 'Point --model at an Optimum / transformers.js export (config.json, onnx/model.onnx) or an onnxruntime-genai export (genai_config.json, model.onnx).');
  }
  for (const sub of ['onnx', '.']) {
    const d = join(dir, sub);
    if (!existsSync(d)) continue;
    const names = (await readdir(d)).filter((f) => f.endsWith('.onnx')).sort();
    const pick = names.includes('model.onnx') ? 'model.onnx' : names.find((f) => f.startsWith('model')) ?? names.find((f) => f.startsWith('decoder_model_merged'));
    if (pick) {
      if (names.length > 1) notes.push(`using ${join(sub, pick)} (also present: ${names.filter((n) => n !== pick).join(', ')})`);
      return { format: 'optimum', config, onnx: join(d, pick) };
    }
  }
  throw modelInvalid(`${dir} has config.json but no ONNX graph (looked for onnx/model*.onnx and model.onnx).`, { dir }, 'Export the model to ONNX (e.g. `optimum-cli export onnx --task text-generation-with-past`) into this directory.');
}

