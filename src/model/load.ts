/**
 * Loads a model directory: Optimum / transformers.js exports (config.json, onnx/model*.onnx)
 * and onnxruntime-genai exports (genai_config.json, model.onnx + model.onnx.data). Produces a
 * normalized ModelSpec, the ONNX session, the tokenizer and a fingerprint.
 *
 * RoPE must be known exactly (keys are un-rotated before PCA). For genai exports the config
 * has no RoPE settings, so they are read from the graph: the com.microsoft RotaryEmbedding /
 * GroupQueryAttention nodes give the layout (`interleaved` / `rotary_interleaved`), and theta
 * is fitted to the cos/sin cache initializers, then checked against every entry.
 */
import { existsSync, statSync } from 'node:fs';
import { open, readFile, readdir } from 'node:fs/promises';
import { basename, dirname, join, resolve } from 'node:path';
import onnxProto from 'onnx-proto';
import { KvtcError } from '../errors.js';
import { halfToFloat } from '../io/fp16.js';
import { createSession, ort, type Device } from '../onnx/session.js';
import { DEFAULT_MODEL_DIR } from '../paths.js';
import { normalizeGenaiConfig, normalizeHfConfig, type ConfigSpec } from './config.js';
import { fingerprintModel, type ModelFingerprint } from './fingerprint.js';
import { ropeInvFreq } from './rope-freqs.js';
import { loadTokenizer, type ModelTokenizer } from './tokenizer.js';
import type { KvDtype, ModelSpec, RopeSpec } from './types.js';

const { onnx } = onnxProto;

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

/** Input and output names of the decoder graph. `%d` in a name is the layer index. */
export interface ModelIONames {
  inputIds: string;
  attentionMask?: string;
  positionIds?: string;
  /** Optimum's merged decoders switch branches on this bool input. */
  useCacheBranch?: string;
  pastKey: string;
  pastValue: string;
  logits: string;
  presentKey: string;
  presentValue: string;
  /** Integer type of input_ids / attention_mask / position_ids. */
  idsType: 'int64' | 'int32';
}

export interface ModelDescription {
  dir: string;
  /** Directory name, used in file names and metadata. */
  name: string;
  spec: ModelSpec;
  files: ModelFiles;
  fingerprint: ModelFingerprint;
  /** How RoPE settings were obtained (config keys, or the graph's cos/sin cache fit). */
  ropeSource: string;
  notes: string[];
}

export interface LoadedModel extends ModelDescription {
  session: ort.InferenceSession;
  tokenizer: ModelTokenizer;
  io: ModelIONames;
  device: Device;
}

export interface LoadOptions {
  device?: Device;
  threads?: number;
}

const NO_KV_FIX =
  'Export the decoder with its KV cache, e.g. `optimum-cli export onnx --task text-generation-with-past`, ' +
  'or onnxruntime-genai\'s builder; kvtc needs past_key_values.N.key/value inputs and present.N.key/value outputs.';

function modelInvalid(message: string, context: Record<string, unknown>, fix = 'Re-export the model.'): KvtcError {
  return new KvtcError('MODEL_INVALID', message, { fix, context });
}

async function readJson(path: string): Promise<Record<string, unknown>> {
  try {
    const v = JSON.parse(await readFile(path, 'utf8'));
    if (!v || typeof v !== 'object' || Array.isArray(v)) throw new Error('not a JSON object');
    return v as Record<string, unknown>;
  } catch (e) {
    throw modelInvalid(`${path} is not a valid JSON object: ${(e as Error).message}`, { file: path });
  }
}

// ---------------------------------------------------------------- file discovery

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

// ---------------------------------------------------------------- graph reading

type Graph = onnxProto.onnx.IGraphProto;
type TensorProto = onnxProto.onnx.ITensorProto;

async function decodeGraph(path: string): Promise<onnxProto.onnx.ModelProto> {
  const bytes = await readFile(path);
  try {
    const m = onnx.ModelProto.decode(bytes);
    if (!m.graph || !m.graph.node?.length) throw new Error('no graph nodes');
    return m;
  } catch (e) {
    throw new KvtcError('MODEL_INVALID', `${path} is not a valid ONNX model: ${(e as Error).message}`, {
      fix: 'The ONNX file is corrupt or truncated; re-export or re-download the model.',
      context: { file: path },
      cause: e,
    });
  }
}

function externalLocation(t: TensorProto): { location: string; offset: number; length?: number } | undefined {
  if (t.dataLocation !== onnx.TensorProto.DataLocation.EXTERNAL) return undefined;
  const kv = Object.fromEntries((t.externalData ?? []).map((e) => [e.key, e.value]));
  if (!kv.location) return undefined;
  return { location: kv.location, offset: Number(kv.offset ?? 0), length: kv.length === undefined ? undefined : Number(kv.length) };
}

/** Reads a float16/float32 initializer (inline or external) as float64. */
async function readInitializer(t: TensorProto, onnxPath: string): Promise<Float64Array> {
  const count = (t.dims ?? []).reduce((a: number, d) => a * Number(d), 1);
  const width = t.dataType === onnx.TensorProto.DataType.FLOAT16 ? 2 : t.dataType === onnx.TensorProto.DataType.FLOAT ? 4 : 0;
  if (!width) throw modelInvalid(`initializer ${t.name} has data type ${t.dataType}; expected float16 or float32`, { tensor: t.name });
  let raw: Uint8Array;
  const ext = externalLocation(t);
  if (ext) {
    const fh = await open(join(dirname(onnxPath), ext.location), 'r');
    try {
      raw = new Uint8Array(count * width);
      await fh.read(raw, 0, raw.byteLength, ext.offset);
    } finally {
      await fh.close();
    }
  } else if (t.rawData && t.rawData.byteLength) {
    raw = Uint8Array.from(t.rawData);
  } else if (width === 4 && t.floatData?.length) {
    return Float64Array.from(t.floatData);
  } else if (width === 2 && t.int32Data?.length) {
    return Float64Array.from(t.int32Data, (h) => halfToFloat(h));
  } else {
    throw modelInvalid(`initializer ${t.name} has no data`, { tensor: t.name });
  }
  const dv = new DataView(raw.buffer, raw.byteOffset, raw.byteLength);
  const out = new Float64Array(count);
  for (let i = 0; i < count; i++) out[i] = width === 2 ? halfToFloat(dv.getUint16(2 * i, true)) : dv.getFloat32(4 * i, true);
  return out;
}

interface RotaryNode {
  op: string;
  interleaved: boolean;
  /** 0 = whole head */
  rotaryDim: number;
  cos: string;
  sin: string;
}

/** com.microsoft RotaryEmbedding and GroupQueryAttention(do_rotary=1) nodes. */
function rotaryNodes(g: Graph): RotaryNode[] {
  const out: RotaryNode[] = [];
  for (const n of g.node ?? []) {
    const attr = (name: string) => Number(n.attribute?.find((a) => a.name === name)?.i ?? 0);
    const inputs = n.input ?? [];
    if (n.opType === 'RotaryEmbedding' && inputs.length >= 4) {
      out.push({ op: 'RotaryEmbedding', interleaved: attr('interleaved') === 1, rotaryDim: attr('rotary_embedding_dim'), cos: inputs[2], sin: inputs[3] });
    } else if (n.opType === 'GroupQueryAttention' && attr('do_rotary') === 1 && inputs.length >= 9) {
      out.push({ op: 'GroupQueryAttention', interleaved: attr('rotary_interleaved') === 1, rotaryDim: 0, cos: inputs[7], sin: inputs[8] });
    }
  }
  return out;
}

/**
 * Fits RoPE inverse frequencies to a cos/sin cache [positions, rotaryDim/2]: the angle at
 * position 1 seeds each frequency, then doubling positions refine it (unwrapping by the
 * prediction), so fp16 rounding of the cache costs ~5e-4/p rad at the last p.
 */
function fitInvFreq(cos: Float64Array, sin: Float64Array, rows: number, half: number): Float64Array {
  const inv = new Float64Array(half);
  for (let i = 0; i < half; i++) {
    let f = Math.atan2(sin[half + i], cos[half + i]);
    for (let p = 2; p < rows; p *= 2) {
      const a = Math.atan2(sin[p * half + i], cos[p * half + i]);
      const unwrapped = a + 2 * Math.PI * Math.round((p * f - a) / (2 * Math.PI));
      f = unwrapped / p;
    }
    inv[i] = f;
  }
  return inv;
}

/** Largest |cos - cos_cache| and |sin - sin_cache| over every position and pair. */
function cacheError(rope: RopeSpec, cos: Float64Array, sin: Float64Array, rows: number): number {
  const inv = ropeInvFreq(rope);
  const half = inv.length;
  let worst = 0;
  for (let p = 0; p < rows; p++) {
    for (let i = 0; i < half; i++) {
      // float32 angles, as exporters compute them
      const ang = Math.fround(p * Math.fround(inv[i]));
      worst = Math.max(worst, Math.abs(Math.cos(ang) - cos[p * half + i]), Math.abs(Math.sin(ang) - sin[p * half + i]));
    }
  }
  return worst;
}

/** Rounds theta to 3 significant digits when that still explains the cache (10000, 500000, 1e6...). */
function snapTheta(theta: number): number {
  const mag = 10 ** (Math.floor(Math.log10(theta)) - 2);
  return Math.round(theta / mag) * mag;
}

interface GraphRope {
  rope: RopeSpec;
  maxPositions: number;
  source: string;
}

async function ropeFromGraph(g: Graph, onnxPath: string, headDim: number, base: RopeSpec): Promise<GraphRope | undefined> {
  const nodes = rotaryNodes(g);
  if (nodes.length === 0) return undefined;
  const first = nodes[0];
  if (nodes.some((n) => n.interleaved !== first.interleaved || n.cos !== first.cos)) {
    throw modelInvalid(`${onnxPath}: rotary nodes disagree on layout or cos cache; kvtc needs one RoPE for all layers`, { file: onnxPath });
  }
  const init = new Map((g.initializer ?? []).map((t) => [t.name ?? '', t]));
  const cosT = init.get(first.cos);
  const sinT = init.get(first.sin);
  if (!cosT || !sinT || (cosT.dims ?? []).length !== 2) {
    throw modelInvalid(`${onnxPath}: ${first.op} reads ${first.cos}/${first.sin}, which are not 2-D initializers; cannot determine RoPE`, { file: onnxPath });
  }
  const rows = Number(cosT.dims![0]);
  const half = Number(cosT.dims![1]);
  const rotaryDim = first.rotaryDim || 2 * half;
  if (rotaryDim !== 2 * half || rotaryDim > headDim) {
    throw modelInvalid(`${onnxPath}: cos cache [${rows}, ${half}] does not match rotary dim ${rotaryDim} (head dim ${headDim})`, { file: onnxPath });
  }
  const [cos, sin] = await Promise.all([readInitializer(cosT, onnxPath), readInitializer(sinT, onnxPath)]);
  const inv = fitInvFreq(cos, sin, rows, half);
  // invFreq[i] = theta^(-2i/d): least squares on the high frequencies, which no scaling touches.
  const k = Math.max(1, Math.ceil(half / 2));
  let num = 0;
  let den = 0;
  for (let i = 1; i < k + 1 && i < half; i++) {
    num += i * Math.log(inv[i] / inv[0]);
    den += i * i;
  }
  const fitted = half > 1 ? Math.exp((-num / den) * (rotaryDim / 2)) : base.theta;
  const layout = first.interleaved ? 'interleaved' : 'half';
  const tol = 2e-3;
  const candidates: RopeSpec[] = [snapTheta(fitted), fitted].flatMap((theta) => [
    { ...base, theta, rotaryDim, layout },
    ...(base.scaling ? [{ theta, rotaryDim, layout } as RopeSpec] : []),
  ]);
  let best: { rope: RopeSpec; err: number } | undefined;
  for (const rope of candidates) {
    const err = cacheError(rope, cos, sin, rows);
    if (!best || err < best.err) best = { rope, err };
    if (err <= tol) break;
  }
  if (!best || best.err > tol) {
    throw new KvtcError('UNSUPPORTED_ARCHITECTURE', `${onnxPath}: the rotary cos/sin cache is not plain RoPE with any theta (best fit theta ${fitted.toPrecision(6)}, max error ${best?.err.toExponential(2)}).`, {
      fix: 'kvtc must undo RoPE exactly; models with dynamic/yarn/longrope scaling are not supported.',
      context: { file: onnxPath, theta: fitted },
    });
  }
  return {
    rope: best.rope,
    maxPositions: rows,
    source: `${first.op}(${first.interleaved ? 'interleaved' : 'half-split'}) cos/sin cache [${rows}, ${half}] in ${basename(onnxPath)}: fitted theta ${fitted.toPrecision(7)} → ${best.rope.theta}, max |Δ| ${best.err.toExponential(1)} over all positions`,
  };
}

function elemDtype(t: number | null | undefined): KvDtype | undefined {
  return t === onnx.TensorProto.DataType.FLOAT16 ? 'float16' : t === onnx.TensorProto.DataType.FLOAT ? 'float32' : undefined;
}

function ioNames(genaiCfg: Record<string, unknown> | undefined, inputs: Set<string>): Omit<ModelIONames, 'idsType'> {
  const dec = ((genaiCfg?.model as Record<string, unknown> | undefined)?.decoder ?? {}) as { inputs?: Record<string, string>; outputs?: Record<string, string> };
  const i = dec.inputs ?? {};
  const o = dec.outputs ?? {};
  const has = (n: string | undefined) => (n && inputs.has(n) ? n : undefined);
  return {
    inputIds: i.input_ids ?? 'input_ids',
    attentionMask: has(i.attention_mask ?? 'attention_mask'),
    positionIds: has(i.position_ids ?? 'position_ids'),
    useCacheBranch: has('use_cache_branch'),
    pastKey: i.past_key_names ?? 'past_key_values.%d.key',
    pastValue: i.past_value_names ?? 'past_key_values.%d.value',
    logits: o.logits ?? 'logits',
    presentKey: o.present_key_names ?? 'present.%d.key',
    presentValue: o.present_value_names ?? 'present.%d.value',
  };
}

export const layerName = (template: string, layer: number) => template.replace('%d', String(layer));

/** Checks the graph has every KV input/output the spec implies; returns the KV dtype. */
function checkGraphIO(g: Graph, names: Omit<ModelIONames, 'idsType'>, cs: ConfigSpec, onnxPath: string): { kvDtype: KvDtype; idsType: 'int64' | 'int32' } {
  const inputs = new Map((g.input ?? []).map((v) => [v.name ?? '', v]));
  const outputs = new Set((g.output ?? []).map((v) => v.name ?? ''));
  const missing: string[] = [];
  for (let l = 0; l < cs.layers; l++) {
    for (const n of [layerName(names.presentKey, l), layerName(names.presentValue, l)]) if (!outputs.has(n)) missing.push(n);
    for (const n of [layerName(names.pastKey, l), layerName(names.pastValue, l)]) if (!inputs.has(n)) missing.push(n);
  }
  if (!outputs.has(names.logits)) missing.push(names.logits);
  if (!inputs.has(names.inputIds)) missing.push(names.inputIds);
  if (missing.length) {
    const noKv = missing.some((m) => m.includes('present') || m.includes('past'));
    throw new KvtcError('MODEL_INVALID', `${onnxPath} lacks ${noKv ? 'KV cache inputs/outputs: ' : ''}${missing.slice(0, 4).join(', ')}${missing.length > 4 ? ` and ${missing.length - 4} more` : ''} (the config says ${cs.layers} layers).`, {
      fix: noKv ? NO_KV_FIX : 'Re-export the model with standard input/output names.',
      context: { file: onnxPath, missing },
    });
  }
  const pk = inputs.get(layerName(names.pastKey, 0))!.type?.tensorType;
  const kvDtype = elemDtype(pk?.elemType);
  if (!kvDtype) {
    throw new KvtcError('UNSUPPORTED_ARCHITECTURE', `${onnxPath}: KV cache element type ${pk?.elemType} is not float16 or float32 (Node's ONNX Runtime has no bf16 tensors).`, {
      fix: 'Export the model with fp16 or fp32 KV cache.',
      context: { file: onnxPath },
    });
  }
  const dims = (pk?.shape?.dim ?? []).map((d) => (d.dimValue != null && Number(d.dimValue) > 0 ? Number(d.dimValue) : undefined));
  if (dims.length === 4 && ((dims[1] !== undefined && dims[1] !== cs.kvHeads) || (dims[3] !== undefined && dims[3] !== cs.headDim))) {
    throw modelInvalid(`${onnxPath}: past key shape [${dims.map((d) => d ?? '?')}] does not match the config (kv_heads ${cs.kvHeads}, head_dim ${cs.headDim}).`, { file: onnxPath }, 'The config file does not belong to this ONNX graph; re-export the model.');
  }
  const idsType = inputs.get(names.inputIds)!.type?.tensorType?.elemType === onnx.TensorProto.DataType.INT32 ? 'int32' : 'int64';
  return { kvDtype, idsType };
}

// ---------------------------------------------------------------- public API

interface Described extends ModelDescription {
  io: ModelIONames;
}

async function describe(dirArg: string): Promise<Described> {
  const dir = resolve(dirArg);
  const notes: string[] = [];
  const files = await findModelFiles(dir, notes);
  const rawCfg = await readJson(files.config);
  const norm = files.format === 'genai' ? normalizeGenaiConfig(rawCfg, files.config) : normalizeHfConfig(rawCfg, files.config);
  notes.push(...norm.notes);
  let cs = norm.spec;
  const model = await decodeGraph(files.onnx);
  const g = model.graph!;
  const locations = new Set((g.initializer ?? []).map(externalLocation).filter((x) => x !== undefined).map((x) => x.location));
  for (const loc of locations) {
    if (!existsSync(join(dirname(files.onnx), loc))) {
      throw modelInvalid(`${files.onnx} keeps its weights in ${loc}, which is missing.`, { file: files.onnx, externalData: loc }, `Copy ${loc} beside ${basename(files.onnx)}.`);
    }
  }
  if (locations.size) files.externalData = join(dirname(files.onnx), [...locations][0]);
  const names = ioNames(files.format === 'genai' ? rawCfg : undefined, new Set((g.input ?? []).map((v) => v.name ?? '')));
  const { kvDtype, idsType } = checkGraphIO(g, names, cs, files.onnx);

  let ropeSource: string;
  const fromGraph = await ropeFromGraph(g, files.onnx, cs.headDim, cs.rope);
  if (fromGraph) {
    if (files.format === 'optimum' && (fromGraph.rope.layout !== cs.rope.layout || Math.abs(fromGraph.rope.theta - cs.rope.theta) > 1e-6 * cs.rope.theta)) {
      notes.push(`config.json says RoPE theta ${cs.rope.theta} (${cs.rope.layout}) but the graph computes theta ${fromGraph.rope.theta} (${fromGraph.rope.layout}): using the graph's`);
    }
    cs = { ...cs, rope: fromGraph.rope, maxPositions: Math.min(cs.maxPositions, fromGraph.maxPositions) };
    ropeSource = fromGraph.source;
  } else if (files.format === 'genai') {
    notes.push('no RotaryEmbedding/GroupQueryAttention node with a cos/sin cache in the graph: assuming RoPE theta 10000, half-split');
    ropeSource = 'assumed (graph has no rotary cache to read)';
  } else {
    ropeSource = `${basename(files.config)}: theta ${cs.rope.theta}, rotary dim ${cs.rope.rotaryDim}, ${cs.rope.layout}${cs.rope.scaling ? `, ${cs.rope.scaling.type} scaling ×${cs.rope.scaling.factor}` : ''}`;
  }
  const fingerprint = await fingerprintModel({ spec: { ...cs, kvDtype }, onnx: files.onnx, externalData: files.externalData });
  return {
    dir,
    name: modelNameFromDir(dir),
    spec: { ...cs, kvDtype },
    files,
    fingerprint,
    ropeSource,
    notes,
    io: { ...names, idsType },
  };
}

/** Spec, files and fingerprint of a model directory, without starting ONNX Runtime. */
export async function describeModel(dir: string): Promise<ModelDescription> {
  const { io: _io, ...d } = await describe(dir);
  return d;
}

/** Loads a model: spec, tokenizer, ONNX Runtime session. */
export async function loadModel(dir: string, opts: LoadOptions = {}): Promise<LoadedModel> {
  const d = await describe(dir);
  const tokenizer = await loadTokenizer(d.dir);
  const device = opts.device ?? 'cpu';
  const session = await createSession(d.files.onnx, { device, threads: opts.threads });
  // The session's metadata is what ORT will actually demand; it must agree with the graph.
  const meta = session.inputMetadata.find((m) => m.name === layerName(d.io.pastKey, 0));
  const sessionDtype = meta?.isTensor ? meta.type : undefined;
  if (sessionDtype !== d.spec.kvDtype) {
    throw modelInvalid(`${d.files.onnx}: ONNX Runtime reports past key type ${sessionDtype}, the graph declares ${d.spec.kvDtype}.`, { file: d.files.onnx });
  }
  if (tokenizer.bosTokenId !== undefined && d.spec.bosTokenId !== undefined && tokenizer.bosTokenId !== d.spec.bosTokenId) {
    d.notes.push(`the config's bos_token_id ${d.spec.bosTokenId} differs from the tokenizer's BOS ${tokenizer.bosTokenId}: prompts use the tokenizer's`);
  }
  return { ...d, session, tokenizer, device };
}
