// Tested by test/model/cli.test.ts (bad model directories).
/** The decoder graph's inputs and outputs: their names (Optimum or genai), the KV dtype and the ids type, checked against the config. */
import onnxProto from 'onnx-proto';
import { KvtcError } from '../errors.js';
import type { ConfigSpec } from './config.js';
import { type Graph } from './graph-read.js';
import { modelInvalid } from './model-files.js';
import type { KvDtype } from './types.js';

const { onnx } = onnxProto;

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

const NO_KV_FIX =
  'Export the decoder with its KV cache, e.g. `optimum-cli export onnx --task text-generation-with-past`, ' +
  "or onnxruntime-genai's builder; kvtc needs past_key_values.N.key/value inputs and present.N.key/value outputs.";

export function elemDtype(t: number | null | undefined): KvDtype | undefined {
  return t === onnx.TensorProto.DataType.FLOAT16 ? 'float16' : t === onnx.TensorProto.DataType.FLOAT ? 'float32' : undefined;
}

export function ioNames(genaiCfg: Record<string, unknown> | undefined, inputs: Set<string>): Omit<ModelIONames, 'idsType'> {
  const dec = ((genaiCfg?.model as Record<string, unknown> | undefined)?.decoder ?? {}) as {
    inputs?: Record<string, string>;
    outputs?: Record<string, string>;
  };
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
export function checkGraphIO(
  g: Graph,
  names: Omit<ModelIONames, 'idsType'>,
  cs: ConfigSpec,
  onnxPath: string,
): { kvDtype: KvDtype; idsType: 'int64' | 'int32' } {
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
    throw new KvtcError(
      'MODEL_INVALID',
      `${onnxPath} lacks ${noKv ? 'KV cache inputs/outputs: ' : ''}${missing.slice(0, 4).join(', ')}${missing.length > 4 ? ` and ${missing.length - 4} more` : ''} (the config says ${cs.layers} layers).`,
      {
        fix: noKv ? NO_KV_FIX : 'Re-export the model with standard input/output names.',
        context: { file: onnxPath, missing },
      },
    );
  }
  // Every input must be one kvtc feeds: ORT would otherwise stop at the first forward pass with
  // an error that names neither kvtc's inputs nor a way out.
  const fed = new Set(
    [names.inputIds, names.attentionMask, names.positionIds, names.useCacheBranch].filter((n): n is string => n !== undefined),
  );
  for (let l = 0; l < cs.layers; l++) fed.add(layerName(names.pastKey, l)).add(layerName(names.pastValue, l));
  const init = new Set((g.initializer ?? []).map((t) => t.name ?? ''));
  const unknown = [...inputs.keys()].filter((n) => !fed.has(n) && !init.has(n));
  if (unknown.length) {
    throw modelInvalid(
      `${onnxPath} has input${unknown.length > 1 ? 's' : ''} kvtc does not feed: ${unknown.slice(0, 6).join(', ')}${unknown.length > 6 ? ` and ${unknown.length - 6} more` : ''} (kvtc feeds ${[...fed].filter((n) => !/past/.test(n)).join(', ')} and ${cs.layers} layers of past key/value).`,
      { file: onnxPath, inputs: unknown },
      unknown.some((n) => /past|present|key|value/i.test(n))
        ? `The graph has more KV inputs than the config's ${cs.layers} layers, or names them differently; check that config.json belongs to this graph.`
        : 'Use the text decoder graph of the export (for a multimodal model, the decoder that takes input_ids; with --onnx, pick model.onnx or decoder_model_merged.onnx), or re-export it with `optimum-cli export onnx --task text-generation-with-past`.',
    );
  }
  if (names.useCacheBranch) {
    const t = inputs.get(names.useCacheBranch)!.type?.tensorType?.elemType;
    if (t !== onnx.TensorProto.DataType.BOOL) {
      throw modelInvalid(
        `${onnxPath}: input ${names.useCacheBranch} has element type ${t}; Optimum's merged decoders declare it bool [1].`,
        { file: onnxPath, elemType: t },
        'Re-export the merged decoder with optimum, or export a single decoder with past (`optimum-cli export onnx --task text-generation-with-past`).',
      );
    }
  }
  const pk = inputs.get(layerName(names.pastKey, 0))!.type?.tensorType;
  const kvDtype = elemDtype(pk?.elemType);
  if (!kvDtype) {
    throw new KvtcError(
      'UNSUPPORTED_ARCHITECTURE',
      `${onnxPath}: KV cache element type ${pk?.elemType} is not float16 or float32 (Node's ONNX Runtime has no bf16 tensors).`,
      {
        fix: 'Export the model with fp16 or fp32 KV cache.',
        context: { file: onnxPath },
      },
    );
  }
  const dims = (pk?.shape?.dim ?? []).map((d) => (d.dimValue != null && Number(d.dimValue) > 0 ? Number(d.dimValue) : undefined));
  if (dims.length === 4 && ((dims[1] !== undefined && dims[1] !== cs.kvHeads) || (dims[3] !== undefined && dims[3] !== cs.headDim))) {
    throw modelInvalid(
      `${onnxPath}: past key shape [${dims.map((d) => d ?? '?')}] does not match the config (kv_heads ${cs.kvHeads}, head_dim ${cs.headDim}).`,
      { file: onnxPath },
      'The config file does not belong to this ONNX graph; re-export the model.',
    );
  }
  const idsType = inputs.get(names.inputIds)!.type?.tensorType?.elemType === onnx.TensorProto.DataType.INT32 ? 'int32' : 'int64';
  return { kvDtype, idsType };
}
