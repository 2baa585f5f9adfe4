// Tested by test/model/runner.test.ts and test/model/cli.test.ts.
/** Reading an ONNX graph and its initializers (weights beside the graph included). */
import { open, readFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import onnxProto from 'onnx-proto';
import { KvtcError } from '../errors.js';
import { halfToFloat } from '../io/fp16.js';
import { modelInvalid } from './model-files.js';

const { onnx } = onnxProto;

export type Graph = onnxProto.onnx.IGraphProto;
export type TensorProto = onnxProto.onnx.ITensorProto;

export async function decodeGraph(path: string): Promise<onnxProto.onnx.ModelProto> {
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

export function externalLocation(t: TensorProto): { location: string; offset: number; length?: number } | undefined {
  if (t.dataLocation !== onnx.TensorProto.DataLocation.EXTERNAL) return undefined;
  const kv = Object.fromEntries((t.externalData ?? []).map((e) => [e.key, e.value]));
  if (!kv.location) return undefined;
  return { location: kv.location, offset: Number(kv.offset ?? 0), length: kv.length === undefined ? undefined : Number(kv.length) };
}

/** Reads a float16/float32 initializer (inline or external) as float64. */
export async function readInitializer(t: TensorProto, onnxPath: string): Promise<Float64Array> {
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

/** Every node of the graph, those inside If / Loop / Scan bodies included. */
export function allNodes(g: Graph): onnxProto.onnx.INodeProto[] {
  const out: onnxProto.onnx.INodeProto[] = [];
  const walk = (x: Graph) => {
    for (const n of x.node ?? []) {
      out.push(n);
      for (const a of n.attribute ?? []) {
        if (a.g) walk(a.g);
        for (const sg of a.graphs ?? []) walk(sg);
      }
    }
  };
  walk(g);
  return out;
}

/**
 * The decoder computation of a graph, for readers that look at its nodes (RoPE recovery): the
 * graph itself, or for Optimum's merged decoder (its only node an If on `use_cache_branch`,
 * optimum's `merge_decoders`) the with-past branch (then_branch), with the outer graph's
 * inputs, outputs and initializers, which the branch reads from the enclosing scope.
 */
export function decoderBody(g: Graph, useCacheBranch: string | undefined): Graph {
  const nodes = g.node ?? [];
  if (!useCacheBranch || nodes.length !== 1 || nodes[0].opType !== 'If' || nodes[0].input?.[0] !== useCacheBranch) return g;
  const then = (nodes[0].attribute ?? []).find((a) => a.name === 'then_branch')?.g;
  if (!then) return g;
  return { ...then, input: g.input, output: g.output, initializer: [...(g.initializer ?? []), ...(then.initializer ?? [])] };
}

/**
 * Weight-quantized operators, with what each holds (ONNX Runtime docs/ContribOperators.md and the
 * ONNX operator list), so a loaded model can say its KV cache comes from quantized weights.
 */
const QUANTIZED_OPS: Record<string, string> = {
  MatMulNBits: 'block-quantized 2/4/8-bit weights (com.microsoft MatMulNBits)',
  MatMulBnb4: '4-bit bitsandbytes weights (com.microsoft MatMulBnb4)',
  GatherBlockQuantized: 'block-quantized embeddings (com.microsoft GatherBlockQuantized)',
  MatMulInteger: 'int8 weights with activations quantized at run time (DynamicQuantizeLinear + MatMulInteger)',
  DynamicQuantizeMatMul: 'int8 weights with activations quantized at run time (com.microsoft DynamicQuantizeMatMul)',
  QLinearMatMul: 'int8 weights and activations (QLinearMatMul)',
  DequantizeLinear: 'weights stored quantized and dequantized in the graph (DequantizeLinear)',
};

/** "MatMulNBits ×15 (block-quantized ...)" for each weight-quantized operator the graph uses. */
export function quantizedOps(g: Graph): string[] {
  const counts = new Map<string, number>();
  for (const n of allNodes(g)) if (n.opType && QUANTIZED_OPS[n.opType]) counts.set(n.opType, (counts.get(n.opType) ?? 0) + 1);
  return [...counts].map(([op, c]) => `${op} ×${c}: ${QUANTIZED_OPS[op]}`);
}
