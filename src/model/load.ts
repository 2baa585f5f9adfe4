// Tested by test/model/runner.test.ts and test/model/cli.test.ts.
/**
 * Loads a model directory: finds its files (model-files.ts), reads the graph and checks its
 * inputs and outputs (graph-read.ts, graph-io.ts), recovers RoPE (src/rope/graph-rope.ts), and
 * produces a normalized ModelSpec, the ONNX session, the tokenizer and a fingerprint.
 */
import { existsSync } from 'node:fs';
import { basename, dirname, join, relative, resolve } from 'node:path';
import { createSession, ort, type Device } from '../onnx/session.js';
import { resolveModelRope, ropeFromGraph } from '../rope/graph-rope.js';
import { normalizeGenaiConfig, normalizeHfConfig } from './config.js';
import { fingerprintModel, type ModelFingerprint } from './fingerprint.js';
import { checkGraphIO, ioNames, layerName, type ModelIONames } from './graph-io.js';
import { decodeGraph, decoderBody, externalLocation, quantizedOps } from './graph-read.js';
import { findModelFiles, modelInvalid, modelNameFor, readJson, type ModelFiles } from './model-files.js';
import type { ModelTokenizer } from './tokenizer.js';
import { loadTokenizer } from './tokenizer.js';
import type { ModelSpec } from './types.js';

export {
  DEFAULT_MODEL_OPTION,
  listOnnxFiles,
  modelDirFromOption,
  modelNameFromDir,
  type ModelFiles,
  type ModelFormat,
  type OnnxCandidate,
} from './model-files.js';
export { layerName, type ModelIONames } from './graph-io.js';

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

export interface DescribeOptions {
  /** Which ONNX graph of the directory to use (the CLI's --onnx): see resolveOnnxOption. Default: chooseOnnx's rule (model.onnx, unquantized first). */
  onnx?: string;
}

export interface LoadOptions extends DescribeOptions {
  device?: Device;
  threads?: number;
}

interface Described extends ModelDescription {
  io: ModelIONames;
}

async function describe(location: string, opts: DescribeOptions): Promise<Described> {
  const notes: string[] = [];
  const files = await findModelFiles(resolve(location), notes, opts);
  const dir = files.dir;
  const rawCfg = await readJson(files.config);
  const norm = files.format === 'genai' ? normalizeGenaiConfig(rawCfg, files.config) : normalizeHfConfig(rawCfg, files.config);
  notes.push(...norm.notes);
  let cs = norm.spec;
  const model = await decodeGraph(files.onnx);
  const g = model.graph!;
  const locations = new Set(
    (g.initializer ?? [])
      .map(externalLocation)
      .filter((x) => x !== undefined)
      .map((x) => x.location),
  );
  for (const loc of locations) {
    if (!existsSync(join(dirname(files.onnx), loc))) {
      throw modelInvalid(
        `${files.onnx} keeps its weights in ${loc}, which is missing.`,
        { file: files.onnx, externalData: loc },
        `Copy ${loc} beside ${basename(files.onnx)}.`,
      );
    }
  }
  if (locations.size) files.externalData = join(dirname(files.onnx), [...locations][0]);
  const names = ioNames(files.format === 'genai' ? rawCfg : undefined, new Set((g.input ?? []).map((v) => v.name ?? '')));
  const { kvDtype, idsType } = checkGraphIO(g, names, cs, files.onnx);
  const graphName = relative(dir, files.onnx).startsWith('..') ? files.onnx : relative(dir, files.onnx);
  if (names.useCacheBranch)
    notes.push(
      `${graphName} is an Optimum merged decoder: kvtc feeds ${names.useCacheBranch} false on the first pass (no past) and true once there is a past`,
    );
  const quantized = quantizedOps(g);
  if (quantized.length)
    notes.push(
      `${graphName} has quantized weights (${quantized.join('; ')}): its KV cache differs from the float model's, so calibrate on the graph you serve (a profile is tied to it by the fingerprint)`,
    );
  // RoPE recovery reads the decoder's nodes: a merged decoder keeps them in its with-past branch.
  const body = decoderBody(g, names.useCacheBranch);

  // RoPE per layer: the config's, or the graph's rotary cache where it has one (src/rope/graph-rope.ts).
  const base = cs.rope.find((r) => r !== null);
  const fromGraph = base ? await ropeFromGraph(body, files.onnx, cs.headDim, base) : undefined;
  const resolved = resolveModelRope(cs.rope, fromGraph, { format: files.format, configFile: files.config, onnxPath: files.onnx, notes });
  cs = { ...cs, rope: resolved.rope, maxPositions: fromGraph ? Math.min(cs.maxPositions, fromGraph.maxPositions) : cs.maxPositions };
  const ropeSource = resolved.source;
  const fingerprint = await fingerprintModel({ spec: { ...cs, kvDtype }, onnx: files.onnx, externalData: files.externalData });
  return {
    dir,
    name: modelNameFor(dir, files.onnx),
    spec: { ...cs, kvDtype },
    files,
    fingerprint,
    ropeSource,
    notes,
    io: { ...names, idsType },
  };
}

/**
 * Spec, files and fingerprint of a model, without starting ONNX Runtime. `location` is the model
 * directory or one of its .onnx graphs (as modelDirFromOption returns with --onnx).
 */
export async function describeModel(location: string, opts: DescribeOptions = {}): Promise<ModelDescription> {
  const { io: _io, ...d } = await describe(location, opts);
  return d;
}

/** Loads a model (its directory, or one of its .onnx graphs): spec, tokenizer, ONNX Runtime session. */
export async function loadModel(location: string, opts: LoadOptions = {}): Promise<LoadedModel> {
  const d = await describe(location, { onnx: opts.onnx });
  const tokenizer = await loadTokenizer(d.dir);
  const device = opts.device ?? 'cpu';
  const session = await createSession(d.files.onnx, { device, threads: opts.threads });
  // The session's metadata is what ORT will actually demand; it must agree with the graph.
  const meta = session.inputMetadata.find((m) => m.name === layerName(d.io.pastKey, 0));
  const sessionDtype = meta?.isTensor ? meta.type : undefined;
  if (sessionDtype !== d.spec.kvDtype) {
    throw modelInvalid(`${d.files.onnx}: ONNX Runtime reports past key type ${sessionDtype}, the graph declares ${d.spec.kvDtype}.`, {
      file: d.files.onnx,
    });
  }
  if (tokenizer.bosTokenId !== undefined && d.spec.bosTokenId !== undefined && tokenizer.bosTokenId !== d.spec.bosTokenId) {
    d.notes.push(
      `the config's bos_token_id ${d.spec.bosTokenId} differs from the tokenizer's BOS ${tokenizer.bosTokenId}: prompts use the tokenizer's`,
    );
  }
  return { ...d, session, tokenizer, device };
}
