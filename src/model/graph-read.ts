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

