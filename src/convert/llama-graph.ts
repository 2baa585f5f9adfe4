// Tested by test/convert/random-llama.test.ts.
/**
 * Builds a Llama decoder as a standard-ops ONNX graph (opset 17) in the Optimum
 * decoder-with-past layout:
 *   inputs   input_ids [batch, seq] int64, attention_mask [batch, past+seq] int64,
 *            position_ids [batch, seq] int64, past_key_values.{i}.key|value [batch, kvHeads, past, headDim]
 *   outputs  logits [batch, seq, vocab] float32, present.{i}.key|value [batch, kvHeads, past+seq, headDim]
 * Keys are stored with RoPE applied (Hugging Face rotate_half layout), as transformers does.
 * Compute is float32; with kvDtype 'float16' only the cache inputs/outputs are float16.
 */
import { KvtcError } from '../errors.js';
import { GraphBuilder } from '../onnx/builder.js';
import { ropeInvFreq } from '../model/rope-freqs.js';
import type { ModelSpec } from '../model/types.js';

/** One decoder layer, PyTorch nn.Linear layout [out, in], row-major float32. */
export interface LlamaLayerWeights {
  inputNorm: Float32Array; // [hidden]
  qProj: Float32Array; // [heads*headDim, hidden], half-split RoPE rows
  kProj: Float32Array; // [kvHeads*headDim, hidden], half-split RoPE rows
  vProj: Float32Array; // [kvHeads*headDim, hidden]
  oProj: Float32Array; // [hidden, heads*headDim]
  postAttentionNorm: Float32Array; // [hidden]
  gateProj: Float32Array; // [intermediate, hidden]
  upProj: Float32Array; // [intermediate, hidden]
  downProj: Float32Array; // [hidden, intermediate]
}

export interface LlamaWeights {
  embedTokens: Float32Array; // [vocab, hidden]
  layers: LlamaLayerWeights[];
  finalNorm: Float32Array; // [hidden]
  /** [vocab, hidden]; undefined = tied to embedTokens. */
  lmHead?: Float32Array;
}

export type LlamaGraphSpec = Pick<ModelSpec, 'layers' | 'heads' | 'kvHeads' | 'headDim' | 'hidden' | 'vocabSize' | 'kvDtype' | 'rope'>;

export interface LlamaGraphOptions {
  rmsNormEps: number;
  /** Graph name and ONNX doc string. */
  name?: string;
}

const FLOAT = 1;
const FLOAT16 = 10;
const BOOL = 9;
/** torch.finfo(float32).min, what transformers puts in masked attention scores. */
const F32_MIN = -3.4028234663852886e38;

/** [rows, cols] → [cols, rows]: nn.Linear [out, in] to MatMul's [in, out]. */
function transpose(w: Float32Array, rows: number, cols: number): Float32Array {
  const out = new Float32Array(w.length);
  for (let r = 0; r < rows; r++) for (let c = 0; c < cols; c++) out[c * rows + r] = w[r * cols + c];
  return out;
}

function checkShapes(w: LlamaWeights, s: LlamaGraphSpec): number {
  const bad = (what: string, got: number, want: number) =>
    new KvtcError('MODEL_INVALID', `buildLlamaGraph: ${what} has ${got} values, expected ${want}`, {
      fix: 'The weights do not match the model spec (hidden, heads, kvHeads, headDim, vocab); check the conversion.',
      context: { what, got, want },
    });
  if (s.heads % s.kvHeads !== 0) throw new KvtcError('MODEL_INVALID', `buildLlamaGraph: heads ${s.heads} is not a multiple of kvHeads ${s.kvHeads}`, { fix: 'Use a kvHeads that divides heads.' });
  if (w.layers.length !== s.layers) throw bad('layers', w.layers.length, s.layers);
  if (w.embedTokens.length !== s.vocabSize * s.hidden) throw bad('embedTokens', w.embedTokens.length, s.vocabSize * s.hidden);
  if (w.lmHead && w.lmHead.length !== s.vocabSize * s.hidden) throw bad('lmHead', w.lmHead.length, s.vocabSize * s.hidden);
  const inter = w.layers[0].gateProj.length / s.hidden;
  w.layers.forEach((l, i) => {
    const want: [keyof LlamaLayerWeights, number][] = [
      ['inputNorm', s.hidden], ['postAttentionNorm', s.hidden],
      ['qProj', s.heads * s.headDim * s.hidden], ['kProj', s.kvHeads * s.headDim * s.hidden], ['vProj', s.kvHeads * s.headDim * s.hidden],
      ['oProj', s.hidden * s.heads * s.headDim], ['gateProj', inter * s.hidden], ['upProj', inter * s.hidden], ['downProj', inter * s.hidden],
    ];
    for (const [k, n] of want) if (l[k].length !== n) throw bad(`layers[${i}].${k}`, l[k].length, n);
  });
  const floats = w.embedTokens.length + (w.lmHead?.length ?? 0) + w.layers.reduce((n, l) => n + Object.values(l).reduce((m: number, a: Float32Array) => m + a.length, 0), 0);
  if (floats * 4 > 2_000_000_000) {
    throw new KvtcError('MODEL_INVALID', `buildLlamaGraph: ${(floats * 4 / 1e9).toFixed(2)} GB of weights exceed ONNX's 2 GB protobuf limit (external data is not written)`, {
      fix: 'Build a smaller model (fewer layers, smaller hidden/intermediate/vocab).',
      context: { bytes: floats * 4 },
    });
  }
  const r = s.rope.rotaryDim;
  if (s.rope.layout !== 'half') {
    throw new KvtcError('UNSUPPORTED_ARCHITECTURE', `buildLlamaGraph: RoPE layout "${s.rope.layout}" is not built; only "half" (Hugging Face rotate_half)`, {
      fix: 'Permute the q/k projection rows to the half-split layout (permuteRopeRows) before building the graph.',
    });
  }
  if (!(r > 0 && r <= s.headDim && r % 2 === 0)) throw new KvtcError('MODEL_INVALID', `buildLlamaGraph: rotaryDim ${r} must be even and in (0, headDim=${s.headDim}]`, { fix: 'Fix rope.rotaryDim.' });
  return inter;
}

/** ONNX ModelProto bytes of a Llama decoder with KV cache; deterministic for equal inputs. */
export function buildLlamaGraph(weights: LlamaWeights, spec: LlamaGraphSpec, opts: LlamaGraphOptions): Uint8Array {
  const inter = checkShapes(weights, spec);
  const { hidden: H, heads, kvHeads: KV, headDim: D, vocabSize: V } = spec;
  const rep = heads / KV;
  const R = spec.rope.rotaryDim;
  const kvType = spec.kvDtype;
  const g = new GraphBuilder(opts.name ?? 'llama', 17);

  const inputIds = g.input('input_ids', 'int64', ['batch_size', 'sequence_length']);
  const attentionMask = g.input('attention_mask', 'int64', ['batch_size', 'total_sequence_length']);
  const positionIds = g.input('position_ids', 'int64', ['batch_size', 'sequence_length']);
  const past = Array.from({ length: spec.layers }, (_, l) => ({
    key: g.input(`past_key_values.${l}.key`, kvType, ['batch_size', KV, 'past_sequence_length', D]),
    value: g.input(`past_key_values.${l}.value`, kvType, ['batch_size', KV, 'past_sequence_length', D]),
  }));
  // Outputs in Optimum's order (logits first); their nodes are added below under these names.
  g.output('logits', 'logits', 'float32', ['batch_size', 'sequence_length', V]);
  for (let l = 0; l < spec.layers; l++) {
    for (const kind of ['key', 'value']) g.output(`present.${l}.${kind}`, `present.${l}.${kind}`, kvType, ['batch_size', KV, 'total_sequence_length', D]);
  }

  const i64 = (v: number[]) => g.i64(v);
  const scalarI64 = (v: number) => g.constant(g.fresh('s'), BigInt64Array.of(BigInt(v)), []);
  const embed = g.constant('model.embed_tokens.weight', weights.embedTokens, [V, H]);
  let x = g.op('Gather', [embed, inputIds], { axis: 0 }); // [B, S, H]

  // RoPE tables from position_ids: cos/sin [B, 1, S, R], pairs (i, i + R/2).
  const invFreq = g.constant('rope.inv_freq', Float32Array.from(ropeInvFreq(spec.rope)), [R / 2]);
  const posF = g.op('Unsqueeze', [g.op('Cast', [positionIds], { to: FLOAT }), i64([2])]); // [B, S, 1]
  const freqs = g.op('Mul', [posF, invFreq]); // [B, S, R/2]
  const angles = g.op('Concat', [freqs, freqs], { axis: -1 }); // [B, S, R]
  const cos = g.op('Unsqueeze', [g.op('Cos', [angles]), i64([1])]);
  const sin = g.op('Unsqueeze', [g.op('Sin', [angles]), i64([1])]);
  const halves = i64([R / 2, R / 2]);
  const rope = (t: string): string => {
    const rotPart = R === D ? t : g.op('Slice', [t, i64([0]), i64([R]), i64([-1])]);
    const [a, b] = g.opN('Split', [rotPart, halves], { axis: -1 }, { outputs: 2 });
    const rotated = g.op('Concat', [g.op('Neg', [b]), a], { axis: -1 });
    const out = g.op('Add', [g.op('Mul', [rotPart, cos]), g.op('Mul', [rotated, sin])]);
    return R === D ? out : g.op('Concat', [out, g.op('Slice', [t, i64([R]), i64([D]), i64([-1])])], { axis: -1 });
  };

  // Mask [B, 1, 1, S, T]: key j visible to query i iff j <= past + i and attention_mask[b, j] = 1.
  const total = g.op('Squeeze', [g.op('Shape', [attentionMask], { start: 1, end: 2 }), i64([0])]);
  const seq = g.op('Squeeze', [g.op('Shape', [inputIds], { start: 1, end: 2 }), i64([0])]);
  const pastLen = g.op('Sub', [total, seq]);
  const one = scalarI64(1);
  const rows = g.op('Range', [pastLen, total, one]); // [S] absolute query index
  const cols = g.op('Range', [scalarI64(0), total, one]); // [T]
  const causal = g.op('LessOrEqual', [g.op('Unsqueeze', [cols, i64([0])]), g.op('Unsqueeze', [rows, i64([1])])]); // [S, T]
  const padding = g.op('Unsqueeze', [g.op('Cast', [attentionMask], { to: BOOL }), i64([1, 2, 3])]); // [B, 1, 1, 1, T]
  const allowed = g.op('And', [causal, padding]);
  const masked = g.scalarF32(F32_MIN, 'mask_min');

  const eps = g.scalarF32(opts.rmsNormEps, 'rms_eps');
  const rmsNorm = (t: string, w: string) => {
    const ms = g.op('ReduceMean', [g.op('Mul', [t, t])], { axes: [-1], keepdims: 1 });
    return g.op('Mul', [g.op('Div', [t, g.op('Sqrt', [g.op('Add', [ms, eps])])]), w]);
  };
  const linear = (t: string, name: string, w: Float32Array, out: number, inp: number) =>
    g.op('MatMul', [t, g.constant(name, transpose(w, out, inp), [inp, out])]);
  const scale = g.scalarF32(1 / Math.sqrt(D), 'attn_scale');
  const splitHeads = (t: string, n: number) => g.op('Transpose', [g.op('Reshape', [t, i64([0, 0, n, D])])], { perm: [0, 2, 1, 3] }); // [B, n, S, D]

  weights.layers.forEach((lw, l) => {
    const p = `model.layers.${l}`;
    const h = rmsNorm(x, g.constant(`${p}.input_layernorm.weight`, lw.inputNorm, [H]));
    const q = rope(splitHeads(linear(h, `${p}.self_attn.q_proj.weight.T`, lw.qProj, heads * D, H), heads));
    const k = rope(splitHeads(linear(h, `${p}.self_attn.k_proj.weight.T`, lw.kProj, KV * D, H), KV));
    const v = splitHeads(linear(h, `${p}.self_attn.v_proj.weight.T`, lw.vProj, KV * D, H), KV);

    const cache = (t: string, pastName: string, kind: 'key' | 'value') => {
      const name = `present.${l}.${kind}`;
      const stored = kvType === 'float16' ? g.op('Cast', [t], { to: FLOAT16 }) : t;
      g.op('Concat', [pastName, stored], { axis: 2 }, { names: [name] });
      return kvType === 'float16' ? g.op('Cast', [name], { to: FLOAT }) : name; // [B, KV, T, D]
    };
    const kAll = cache(k, past[l].key, 'key');
    const vAll = cache(v, past[l].value, 'value');

    // GQA without copying: query heads grouped as [B, KV, rep, S, D] against keys [B, KV, 1, T, D].
    const q5 = g.op('Reshape', [g.op('Mul', [q, scale]), i64([0, KV, rep, -1, D])]);
    const kT = g.op('Transpose', [g.op('Unsqueeze', [kAll, i64([2])])], { perm: [0, 1, 2, 4, 3] }); // [B, KV, 1, D, T]
    const scores = g.op('Where', [allowed, g.op('MatMul', [q5, kT]), masked]); // [B, KV, rep, S, T]
    const probs = g.op('Softmax', [scores], { axis: -1 });
    const ctx = g.op('MatMul', [probs, g.op('Unsqueeze', [vAll, i64([2])])]); // [B, KV, rep, S, D]
    const merged = g.op('Reshape', [g.op('Transpose', [ctx], { perm: [0, 3, 1, 2, 4] }), i64([0, 0, heads * D])]); // [B, S, heads*D]
    x = g.op('Add', [x, linear(merged, `${p}.self_attn.o_proj.weight.T`, lw.oProj, H, heads * D)]);

    const h2 = rmsNorm(x, g.constant(`${p}.post_attention_layernorm.weight`, lw.postAttentionNorm, [H]));
    const gate = linear(h2, `${p}.mlp.gate_proj.weight.T`, lw.gateProj, inter, H);
    const up = linear(h2, `${p}.mlp.up_proj.weight.T`, lw.upProj, inter, H);
    const act = g.op('Mul', [g.op('Mul', [gate, g.op('Sigmoid', [gate])]), up]);
    x = g.op('Add', [x, linear(act, `${p}.mlp.down_proj.weight.T`, lw.downProj, H, inter)]);
  });

  const hf = rmsNorm(x, g.constant('model.norm.weight', weights.finalNorm, [H]));
  // Tied head: the transpose of the embedding is folded by ONNX Runtime at load, stored once.
  const head = weights.lmHead ? g.constant('lm_head.weight.T', transpose(weights.lmHead, V, H), [H, V]) : g.op('Transpose', [embed], { perm: [1, 0] });
  g.op('MatMul', [hf, head], {}, { names: ['logits'] });
  return g.toModel({ producer: 'kvtc', docString: `${opts.name ?? 'llama'}: Llama decoder with KV cache (kvtc convert)` });
}
