// Tested by test/model/model-dir-option.test.ts and test/model/cli.test.ts.
/**
 * Finding a model directory's files: the --model option (a phrase for the bundled model, a
 * local path, never a Hub id), the model's name, and its config and ONNX graph for Optimum /
 * transformers.js exports (config.json, onnx/model*.onnx, decoder_model_merged.onnx) and
 * onnxruntime-genai exports (genai_config.json, model.onnx + model.onnx.data); which graph of
 * several (`--onnx`, or the default rule of chooseOnnx: unquantized first).
 */
import { existsSync, readdirSync, statSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { basename, dirname, isAbsolute, join, relative, resolve } from 'node:path';
import { KvtcError } from '../errors.js';
import { DEFAULT_MODEL_DIR } from '../paths.js';

/** The CLI's `--model` default is a phrase, not a path. */
export const DEFAULT_MODEL_OPTION = 'the bundled stories260K';

/**
 * Where the model of `--model` (and `--onnx`) is: its directory, or with `onnx` the graph file
 * chosen in it (see resolveOnnxOption), which loadModel / describeModel accept in place of the
 * directory. A missing --onnx file is reported here, with the graphs the directory holds.
 */
export function modelDirFromOption(model: string | undefined, onnx?: string): string {
  if (model === undefined || model === DEFAULT_MODEL_OPTION)
    return onnx === undefined ? DEFAULT_MODEL_DIR : resolveOnnxOption(DEFAULT_MODEL_DIR, onnx);
  const dir = resolve(model);
  // "org/name" that is not a local path: a Hugging Face Hub id. kvtc reads local exports only.
  if (!existsSync(dir) && /^[\w.-]+\/[\w.-]+$/.test(model) && !model.startsWith('.')) {
    throw new KvtcError(
      'MODEL_NOT_FOUND',
      `--model ${model} looks like a Hugging Face Hub id; kvtc reads local model directories and downloads nothing`,
      {
        fix:
          `Get a local ONNX export with KV inputs/outputs first, e.g. \`optimum-cli export onnx --model ${model} --task text-generation-with-past ${model.split('/')[1]}-onnx/\` ` +
          `(or \`huggingface-cli download onnx-community/${model.split('/')[1]}-ONNX --local-dir ${model.split('/')[1]}-onnx\` where such an export exists), then pass --model ${model.split('/')[1]}-onnx.`,
        context: { model },
      },
    );
  }
  return onnx === undefined ? dir : resolveOnnxOption(isFile(dir) ? dirname(dir) : dir, onnx);
}

/** Path components that name a layout, not a model ("llama/onnx" is the model "llama"). */
const GENERIC_DIR_NAMES = new Set(['onnx', 'model', 'models', 'export', 'exported', 'output', 'out', 'onnx-export']);

/** The model's name from its directory: the last component that is not a generic one. */
export function modelNameFromDir(dir: string): string {
  let d = resolve(dir);
  while (GENERIC_DIR_NAMES.has(basename(d).toLowerCase()) && dirname(d) !== d) d = dirname(d);
  return basename(d) || basename(resolve(dir));
}

/**
 * The name of a model as run from one of its graphs: the directory's name, with the variant of a
 * transformers.js-style file name appended (`qwen3-0.6b` + onnx/model_q4.onnx → `qwen3-0.6b-q4`),
 * so that the default profile directory (kvtc-profiles/<name>), the bench cache and evaluate's
 * default profile keep each quantization apart. model.onnx, decoder_model_merged.onnx and
 * names kvtc does not know keep the directory's name.
 */
export function modelNameFor(dir: string, onnxPath: string): string {
  const name = modelNameFromDir(dir);
  const c = classify(dirname(onnxPath), basename(onnxPath));
  const variant = c.base !== undefined && c.precision > 0 ? c.variant.replace(/[^\w.-]+/g, '-') : '';
  return variant ? `${name}-${variant}` : name;
}

export type ModelFormat = 'optimum' | 'genai';

export interface ModelFiles {
  format: ModelFormat;
  /** The model directory (config, tokenizer). */
  dir: string;
  /** How the graph was chosen: --onnx (or a .onnx path as the model), the default rule (chooseOnnx), or genai_config.json's decoder filename. */
  choice: 'option' | 'default' | 'genai_config';
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

function missingDir(dir: string): KvtcError {
  return new KvtcError('MODEL_NOT_FOUND', `model directory ${dir} does not exist${existsSync(dir) ? ' (it is a file)' : ''}.`, {
    fix: 'Pass --model with a directory holding config.json (Optimum export) or genai_config.json (onnxruntime-genai export) and the ONNX file.',
    context: { dir },
  });
}

const isDir = (p: string) => existsSync(p) && statSync(p).isDirectory();
const isFile = (p: string) => existsSync(p) && statSync(p).isFile();

/**
 * Graph file names of decoders exported with their KV cache, best first: Optimum's and
 * transformers.js' `model.onnx` (past_key_values inputs, one graph), Optimum's merged decoder
 * (`decoder_model_merged.onnx`: an If on `use_cache_branch` between the no-past and the
 * with-past graph), and the older with-past half (`decoder_with_past_model.onnx`, which needs
 * the no-past `decoder_model.onnx` for nothing kvtc does: it accepts an empty past).
 * Longest first, so `decoder_model_merged_fp16` is not read as `model` + a variant.
 */
const DECODER_BASES = ['decoder_with_past_model', 'decoder_model_merged', 'model'] as const;
const DECODER_RANK: Record<string, number> = { model: 0, decoder_model_merged: 1, decoder_with_past_model: 2 };

/**
 * transformers.js' variant suffixes (its `dtype` option: fp32, fp16, q8 = `_quantized`, int8,
 * uint8, q4, q4f16, bnb4), and what each holds. Precision 0 is the unquantized export, 1 fp16
 * weights, 2 quantized weights (the quantizations are not ordered among themselves).
 */
const VARIANTS: Record<string, { precision: 0 | 1 | 2; label: string }> = {
  '': { precision: 0, label: 'unquantized' },
  fp32: { precision: 0, label: 'unquantized' },
  fp16: { precision: 1, label: 'fp16 weights' },
  quantized: { precision: 2, label: '8-bit quantized weights' },
  q8: { precision: 2, label: '8-bit quantized weights' },
  int8: { precision: 2, label: 'int8 quantized weights' },
  uint8: { precision: 2, label: 'uint8 quantized weights' },
  q4: { precision: 2, label: '4-bit quantized weights' },
  q4f16: { precision: 2, label: '4-bit quantized weights, fp16 activations' },
  bnb4: { precision: 2, label: '4-bit bitsandbytes weights' },
  int4: { precision: 2, label: '4-bit quantized weights' },
  uint4: { precision: 2, label: '4-bit quantized weights' },
};

export interface OnnxCandidate {
  /** Absolute path. */
  path: string;
  /** Relative to the model directory, e.g. `onnx/model_q4.onnx`. */
  rel: string;
  /** Decoder kind (`model`, `decoder_model_merged`, `decoder_with_past_model`), or undefined for other graphs (encoders, decoder_model without past, embeddings). */
  base?: string;
  /** Suffix after the base name (`fp16`, `q4`, ...); '' for none. */
  variant: string;
  precision: 0 | 1 | 2;
  label: string;
}

function classify(dir: string, rel: string): OnnxCandidate {
  const name = basename(rel, '.onnx');
  const path = join(dir, rel);
  for (const base of DECODER_BASES) {
    if (name !== base && !name.startsWith(`${base}_`)) continue;
    const variant = name.slice(base.length + 1);
    const v = VARIANTS[variant] ?? { precision: 2 as const, label: `"${variant}" variant` };
    return { path, rel, base, variant, precision: v.precision, label: v.label };
  }
  return { path, rel, variant: '', precision: 2, label: 'not a decoder-with-KV file name' };
}

/** Every .onnx file in DIR/onnx and DIR (transformers.js and Optimum layouts), onnx/ first. */
export function listOnnxFiles(dir: string): OnnxCandidate[] {
  const out: OnnxCandidate[] = [];
  for (const sub of ['onnx', '']) {
    const d = join(dir, sub);
    if (!isDir(d)) continue;
    const names = readdirSync(d)
      .filter((f) => f.endsWith('.onnx') && isFile(join(d, f)))
      .sort();
    for (const n of names) out.push(classify(dir, sub ? `${sub}/${n}` : n));
  }
  return out;
}

const listing = (c: OnnxCandidate[]) => c.map((x) => `${x.rel} (${x.label})`).join(', ');

function onnxFix(dir: string, cands: OnnxCandidate[]): string {
  const eg = cands.find((c) => c.base && c.precision === 0) ?? cands[0];
  return cands.length
    ? `Pass --onnx with one of the graphs in ${dir}: ${cands.map((c) => c.rel).join(', ')} (a path relative to the model directory or its onnx/ folder, or a transformers.js dtype such as fp16 or q4)${eg ? `, e.g. --onnx ${eg.rel}` : ''}.`
    : `${dir} holds no .onnx file; export the model to ONNX first (e.g. \`optimum-cli export onnx --task text-generation-with-past\`).`;
}

/**
 * The graph a model directory is run with, when --onnx does not name one. Decoder-with-KV files
 * only (others are taken only when they are the only graph); the highest precision (unquantized,
 * then fp16, then a quantized variant); then `model` before `decoder_model_merged` before
 * `decoder_with_past_model`; then onnx/ before the directory itself. Several quantized variants
 * and nothing better is a choice kvtc does not make for the user: each quantization gives a
 * different KV cache, and a profile is tied to the graph it was calibrated on.
 */
export function chooseOnnx(dir: string, cands: OnnxCandidate[], notes: string[]): OnnxCandidate {
  const decoders = cands.filter((c) => c.base !== undefined);
  const pool = decoders.length ? decoders : cands;
  const sorted = [...pool].sort(
    (a, b) => a.precision - b.precision || DECODER_RANK[a.base ?? ''] - DECODER_RANK[b.base ?? ''] || cands.indexOf(a) - cands.indexOf(b),
  );
  const best = sorted[0];
  // Ambiguous: several quantizations and nothing unquantized or fp16, or several graphs none of which is a decoder-with-KV.
  const quantized = decoders.filter((c) => c.precision === 2);
  const ambiguous = decoders.length ? best.precision === 2 && quantized.some((c) => c.variant !== best.variant) : pool.length > 1;
  if (ambiguous) {
    throw new KvtcError(
      'USAGE',
      `${dir} holds several ONNX graphs and none is the obvious one to run: ${listing(decoders.length ? quantized : pool)}.`,
      {
        fix: onnxFix(dir, pool),
        context: { dir, candidates: pool.map((c) => c.rel) },
      },
    );
  }
  if (cands.length > 1) {
    const others = cands.filter((c) => c !== best).map((c) => c.rel);
    notes.push(
      `using ${best.rel} (${best.label}${best.precision > 0 && pool.length > 1 ? ', the highest precision present' : ''}) of ${cands.length} ONNX graphs; also present: ${others.join(', ')}. Pass --onnx <file> (e.g. --onnx ${others[0]}) to run another; a profile is tied to the graph it was calibrated on`,
    );
  }
  if (!best.base)
    notes.push(
      `${best.rel} is not named like a decoder exported with its KV cache (model.onnx, decoder_model_merged.onnx); using it as the only graph present`,
    );
  return best;
}

/**
 * The file `--onnx` names: an absolute path, or a path relative to the model directory, to its
 * onnx/ folder, or to the working directory (tried in that order); or a transformers.js dtype
 * name (fp32, fp16, q4, q4f16, quantized, ...) for the decoder graph with that suffix.
 */
export function resolveOnnxOption(dir: string, onnxOpt: string): string {
  if (!isDir(dir)) throw missingDir(dir);
  const cands = listOnnxFiles(dir);
  const tries = isAbsolute(onnxOpt) ? [onnxOpt] : [join(dir, onnxOpt), join(dir, 'onnx', onnxOpt), resolve(onnxOpt)];
  const found = tries.find(isFile);
  if (found) {
    if (/(\.onnx[._]data|_data|\.data)$/i.test(found)) {
      throw new KvtcError('USAGE', `--onnx ${onnxOpt} is an external weights file, not an ONNX graph.`, {
        fix: `Pass the .onnx graph that keeps its weights there (it sits beside it), e.g. --onnx ${basename(found).replace(/(\.onnx)?[._]?data$/i, '.onnx')}.`,
        context: { onnx: onnxOpt, file: found },
      });
    }
    return found;
  }
  const dir_ = tries.find(isDir);
  if (!dir_ && !/[\\/]/.test(onnxOpt) && !onnxOpt.endsWith('.onnx')) {
    const variant = onnxOpt.toLowerCase() === 'fp32' ? '' : onnxOpt.toLowerCase();
    const byDtype = cands.filter((c) => c.base && c.variant === variant).sort((a, b) => DECODER_RANK[a.base!] - DECODER_RANK[b.base!]);
    if (byDtype.length) return byDtype[0].path;
  }
  throw new KvtcError(
    'MODEL_NOT_FOUND',
    `--onnx ${onnxOpt}: ${dir_ ? `${dir_} is a directory, not an ONNX file` : `no such file in ${dir}${isDir(join(dir, 'onnx')) ? ` or ${join(dir, 'onnx')}` : ''}`}${cands.length ? `; the model directory holds ${listing(cands)}` : ''}.`,
    {
      fix: onnxFix(dir, cands),
      context: { dir, onnx: onnxOpt, candidates: cands.map((c) => c.rel) },
    },
  );
}

/** The directory of the model a graph belongs to: the graph's folder, or the one above an onnx/ folder, whichever holds the config. */
function modelDirOfGraph(onnxPath: string): string {
  const here = dirname(onnxPath);
  for (const d of [here, dirname(here)]) if (existsSync(join(d, 'config.json')) || existsSync(join(d, 'genai_config.json'))) return d;
  throw modelInvalid(
    `${onnxPath}: neither its folder nor the one above holds config.json or genai_config.json.`,
    { file: onnxPath },
    'Keep the ONNX graph inside its export directory (beside config.json, or in its onnx/ folder), and pass --model with that directory.',
  );
}

export interface FindOptions {
  /** The --onnx option: which graph of the directory to run (see resolveOnnxOption). */
  onnx?: string;
}

/**
 * Finds the config and the ONNX graph of a model. `location` is the model directory, or one of
 * its .onnx files (what `modelDirFromOption(model, onnx)` returns with --onnx); `notes` says
 * which graph was taken and why when there was a choice.
 */
export async function findModelFiles(location: string, notes: string[] = [], opts: FindOptions = {}): Promise<ModelFiles> {
  let dir = resolve(location);
  let chosen: string | undefined;
  let choice: ModelFiles['choice'] = 'option';
  if (isFile(dir)) {
    const name = basename(dir);
    if (name === 'config.json' || name === 'genai_config.json') dir = dirname(dir);
    else if (name.endsWith('.onnx')) {
      chosen = dir;
      dir = modelDirOfGraph(chosen);
    } else throw missingDir(dir);
  } else if (!isDir(dir)) {
    throw missingDir(dir);
  }
  if (opts.onnx !== undefined) chosen = resolveOnnxOption(dir, opts.onnx);
  const genai = join(dir, 'genai_config.json');
  const rel = (p: string) => (relative(dir, p).startsWith('..') ? p : relative(dir, p));
  if (existsSync(genai)) {
    const cfg = await readJson(genai);
    const decoder = (cfg.model as { decoder?: { filename?: unknown } } | undefined)?.decoder;
    const file = typeof decoder?.filename === 'string' ? decoder.filename : 'model.onnx';
    if (chosen) {
      if (resolve(chosen) !== resolve(dir, file))
        notes.push(`using ${rel(chosen)} (--onnx) instead of ${file}, the decoder genai_config.json names`);
      return { format: 'genai', dir, config: genai, onnx: chosen, choice };
    }
    const onnxPath = join(dir, file);
    if (!existsSync(onnxPath))
      throw modelInvalid(
        `${genai} names ${file}, which is missing from ${dir}.`,
        { dir, file },
        'Copy the whole export directory, including the .onnx and .onnx.data files, or pass --onnx with the decoder graph.',
      );
    return { format: 'genai', dir, config: genai, onnx: onnxPath, choice: 'genai_config' };
  }
  const config = join(dir, 'config.json');
  if (!existsSync(config)) {
    throw modelInvalid(
      `${dir} has neither config.json nor genai_config.json.`,
      { dir },
      'Point --model at an Optimum / transformers.js export (config.json, onnx/model.onnx) or an onnxruntime-genai export (genai_config.json, model.onnx).',
    );
  }
  if (chosen) {
    const c = classify(dir, rel(chosen));
    if (c.base === undefined && /^decoder_model(_|$)/.test(basename(chosen, '.onnx'))) {
      notes.push(
        `${rel(chosen)} is Optimum's decoder without past; kvtc needs the graph with past_key_values inputs (decoder_model_merged.onnx or decoder_with_past_model.onnx)`,
      );
    }
    return { format: 'optimum', dir, config, onnx: chosen, choice };
  }
  const cands = listOnnxFiles(dir);
  if (!cands.length) {
    throw modelInvalid(
      `${dir} has config.json but no ONNX graph (looked for onnx/*.onnx and *.onnx).`,
      { dir },
      'Export the model to ONNX (e.g. `optimum-cli export onnx --task text-generation-with-past`) into this directory.',
    );
  }
  choice = 'default';
  const pick = chooseOnnx(dir, cands, notes);
  return { format: 'optimum', dir, config, onnx: pick.path, choice };
}
