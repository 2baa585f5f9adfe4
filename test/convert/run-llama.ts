/** Drives an exported decoder-with-past ONNX model through onnxruntime-node (tests only). */
import { ort } from '../../src/onnx/session.js';
import { halfArrayToFloat } from '../../src/io/fp16.js';

export interface CacheShape {
  layers: number;
  kvHeads: number;
  headDim: number;
  kvDtype: 'float32' | 'float16';
}

export type Past = Record<string, ort.Tensor>;

export function emptyPast(s: CacheShape, batch = 1): Past {
  const past: Past = {};
  for (let l = 0; l < s.layers; l++) {
    for (const kind of ['key', 'value']) {
      const data = s.kvDtype === 'float16' ? new Uint16Array(0) : new Float32Array(0);
      past[`past_key_values.${l}.${kind}`] = new ort.Tensor(s.kvDtype, data, [batch, s.kvHeads, 0, s.headDim]);
    }
  }
  return past;
}

export interface StepResult {
  logits: Float32Array; // [batch, seq, vocab]
  vocab: number;
  present: Past; // as past_key_values.* for the next step
  presentF32: Float32Array[]; // [layers*2] key, value of each layer: [batch, kvHeads, total, headDim]
}

const i64 = (rows: number[][]) => new ort.Tensor('int64', BigInt64Array.from(rows.flat().map(BigInt)), [rows.length, rows[0].length]);

/**
 * One forward pass. ids/positions: [batch][seq]; mask: [batch][past+seq] (default all ones);
 * positions default to past..past+seq-1.
 */
export async function step(
  session: ort.InferenceSession,
  s: CacheShape,
  ids: number[][],
  past: Past,
  opts: { mask?: number[][]; positions?: number[][] } = {},
): Promise<StepResult> {
  const pastLen = past['past_key_values.0.key'].dims[2];
  const seq = ids[0].length;
  const mask = opts.mask ?? ids.map(() => Array.from({ length: pastLen + seq }, () => 1));
  const positions = opts.positions ?? ids.map(() => Array.from({ length: seq }, (_, i) => pastLen + i));
  const out = await session.run({ input_ids: i64(ids), attention_mask: i64(mask), position_ids: i64(positions), ...past });
  const present: Past = {};
  const presentF32: Float32Array[] = [];
  for (let l = 0; l < s.layers; l++) {
    for (const kind of ['key', 'value']) {
      const t = out[`present.${l}.${kind}`];
      present[`past_key_values.${l}.${kind}`] = t;
      presentF32.push(t.type === 'float16' ? halfArrayToFloat(t.data as Uint16Array) : (t.data as Float32Array));
    }
  }
  const logits = out.logits;
  return { logits: logits.data as Float32Array, vocab: logits.dims[2], present, presentF32 };
}

/** Logits row [vocab] of batch b, position t. */
export function logitsAt(r: StepResult, seq: number, b: number, t: number): Float32Array {
  const o = (b * seq + t) * r.vocab;
  return r.logits.subarray(o, o + r.vocab);
}

export function argmax(a: ArrayLike<number>): number {
  let best = 0;
  for (let i = 1; i < a.length; i++) if (a[i] > a[best]) best = i;
  return best;
}

export function maxAbsDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  if (a.length !== b.length) throw new Error(`maxAbsDiff: lengths ${a.length} and ${b.length} differ`);
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i] - b[i]));
  return m;
}
