// Tested by test/convert/random-llama.test.ts, test/convert/stories260k.test.ts (byte for byte), test/rope/families-graph.test.ts (per-layer RoPE, q/k norms, fused qkv, cache windows) and test/convert/gguf-gemma3.test.ts (the Gemma options).
/**
 * Builds a Llama decoder as a standard-ops ONNX graph (opset 17) in the Optimum
 * decoder-with-past layout:
 *   inputs   input_ids [batch, seq] int64, attention_mask [batch, past+seq] int64,
 *            position_ids [batch, seq] int64, past_key_values.{i}.key|value [batch, kvHeads, past, headDim]
 *   outputs  logits [batch, seq, vocab] float32, present.{i}.key|value [batch, kvHeads, past+seq, headDim]
 * Keys are stored with RoPE applied, as transformers does: by default spec.rope (one RoPE or
 * none per layer, kvtc's reading of a config); `layerRope` gives each layer explicit frequencies,
 * in either layout, with an attention factor on cos/sin and longrope's length switch, and
 * `qkNorm` adds the q/k RMSNorm some families apply before RoPE. This is how the family
 * fixtures (test/rope/family-fixtures.ts) reproduce Qwen3, Gemma 3, SmolLM3, Phi-3, OLMo 2, ...
 * The Gemma options (embedScale, normPlusOne, sandwichNorms, attentionScale, hiddenAct
 * 'gelu_tanh', attentionWindow) make the full Gemma 3 text decoder that convert-gguf writes.
 * Compute is float32; with kvDtype 'float16' only the cache inputs/outputs are float16.
 */
import { KvtcError } from '../errors.js';
import { GraphBuilder } from '../onnx/builder.js';
import { ropeInvFreq } from '../rope/freqs.js';
import type { LayerRope } from '../rope/types.js';
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
  /** q/k RMSNorm weights, required with LlamaGraphOptions.qkNorm: [headDim] for 'head', [heads*headDim] / [kvHeads*headDim] for 'projection'. */
  qNorm?: Float32Array;
  kNorm?: Float32Array;
  /** Gemma's sandwich norms (LlamaGraphOptions.sandwichNorms): before and after the MLP, [hidden] each. */
  preFeedforwardNorm?: Float32Array;
  postFeedforwardNorm?: Float32Array;
}

export interface LlamaWeights {
  embedTokens: Float32Array; // [vocab, hidden]
  layers: LlamaLayerWeights[];
  finalNorm: Float32Array; // [hidden]
  /** [vocab, hidden]; undefined = tied to embedTokens. */
  lmHead?: Float32Array;
}

export type LlamaGraphSpec = Pick<ModelSpec, 'layers' | 'heads' | 'kvHeads' | 'headDim' | 'hidden' | 'vocabSize' | 'kvDtype' | 'rope'>;

/**
 * RoPE of one layer as the graph applies it (transformers' `apply_rotary_pos_emb` with the
 * rotary embedding's cos/sin): pair i of the first rotaryDim dims turns by position * invFreq[i].
 */
export interface GraphLayerRope {
  /** Inverse frequency of each rotated pair, length rotaryDim/2; stored float32 like transformers' inv_freq buffer. */
  invFreq: ArrayLike<number>;
  rotaryDim: number;
  /** 'half': pairs (i, i + rotaryDim/2) (rotate_half); 'interleaved': pairs (2i, 2i + 1) (GPT-J). */
  layout: 'half' | 'interleaved';
  /** cos and sin are multiplied by this (transformers' `attention_scaling`: yarn, longrope); default 1. */
  attentionFactor?: number;
  /**
   * longrope: `invFreq` (short factors) is used while max(position_ids) + 1 <= above and
   * `invFreq` here (long factors) beyond, chosen per forward pass as transformers'
   * `longrope_frequency_update` does.
   */
  long?: { invFreq: ArrayLike<number>; above: number };
}

export interface LlamaGraphOptions {
  rmsNormEps: number;
  /** Graph name and ONNX doc string. */
  name?: string;
  /** RoPE of each layer (null: the layer applies none). Default: spec.rope on every layer. */
  layerRope?: (GraphLayerRope | null)[];
  /**
   * RMSNorm on q and k before RoPE: 'head' over each head's headDim (Qwen3 `q_norm`/`k_norm` on
   * the `.view(hidden_shape)` projection, Gemma 3), 'projection' over the whole q_proj / k_proj
   * output (OLMo 2's `q_norm(q_proj(x))`). Weights come from LlamaLayerWeights.qNorm/kNorm.
   */
  qkNorm?: 'head' | 'projection';
  /** Learned absolute position embeddings [positions, hidden] added to the token embeddings (GPT-2's wpe). */
  positionEmbeddings?: Float32Array;
  /**
   * Per layer, a window W: present.{l}.key/value hold only the last W tokens, as some exports of
   * sliding-window layers (Gemma 2/3) cache them; null or absent: every token. Attention inside
   * the pass still sees every cached and new token; this only shapes the cache outputs.
   */
  cacheWindow?: (number | null)[];
  /** One fused q/k/v projection (Phi-3's qkv_proj) instead of three; the same keys and values. */
  fusedQkv?: boolean;
  // Gemma 3 text (transformers models/gemma3/modeling_gemma3.py); each defaults to Llama's behaviour.
  /**
   * Token embeddings are multiplied by this (Gemma3TextScaledWordEmbedding: hidden_size**0.5 as
   * a tensor cast to the embedding's dtype, so float32 here); a tied lm_head still uses the
   * unscaled embedding matrix.
   */
  embedScale?: number;
  /** Every RMSNorm (layer, q/k and final) computes x·(1 + w) with w as stored (Gemma3RMSNorm), not x·w. */
  normPlusOne?: boolean;
  /**
   * Gemma 2/3's four norms per layer: x += post_attention_layernorm(attn(input_layernorm(x))),
   * then x += post_feedforward_layernorm(mlp(pre_feedforward_layernorm(x))); the weights'
   * postAttentionNorm is then the norm of the attention output, not the pre-MLP norm.
   */
  sandwichNorms?: boolean;
  /** Attention scores are scaled by this instead of headDim^-0.5 (Gemma: query_pre_attn_scalar**-0.5). */
  attentionScale?: number;
  /** MLP activation on gate_proj: 'silu' (default, SwiGLU) or 'gelu_tanh' (Gemma's gelu_pytorch_tanh). */
  hiddenAct?: 'silu' | 'gelu_tanh';
  /**
   * Per layer, a sliding attention window W: query i sees key j iff i - W < j <= i
   * (transformers' sliding_window_overlay), null or absent: all earlier keys. Unlike cacheWindow
   * this masks attention only; the cache keeps every token.
   */
  attentionWindow?: (number | null)[];
}

const FLOAT = 1;
const FLOAT16 = 10;
const BOOL = 9;
/** torch.finfo(float32).min, what transformers puts in masked attention scores. */
const F32_MIN = -3.4028234663852886e38;

/** nn.Linear weights stacked by output rows: [a; b; c]. */
function concatRows(...ws: Float32Array[]): Float32Array {
  const out = new Float32Array(ws.reduce((n, w) => n + w.length, 0));
  let o = 0;
  for (const w of ws) {
    out.set(w, o);
    o += w.length;
  }
  return out;
}

/** [rows, cols] → [cols, rows]: nn.Linear [out, in] to MatMul's [in, out]. */
function transpose(w: Float32Array, rows: number, cols: number): Float32Array {
  const out = new Float32Array(w.length);
  for (let r = 0; r < rows; r++) for (let c = 0; c < cols; c++) out[c * rows + r] = w[r * cols + c];
  return out;
}

function checkShapes(w: LlamaWeights, s: LlamaGraphSpec, o: LlamaGraphOptions): number {
  const bad = (what: string, got: number, want: number) =>
    new KvtcError('MODEL_INVALID', `buildLlamaGraph: ${what} has ${got} values, expected ${want}`, {
      fix: 'The weights do not match the model spec (hidden, heads, kvHeads, headDim, vocab); check the conversion.',
      context: { what, got, want },
    });
  if (s.heads % s.kvHeads !== 0)
    throw new KvtcError('MODEL_INVALID', `buildLlamaGraph: heads ${s.heads} is not a multiple of kvHeads ${s.kvHeads}`, {
      fix: 'Use a kvHeads that divides heads.',
    });
  if (w.layers.length !== s.layers) throw bad('layers', w.layers.length, s.layers);
  if (w.embedTokens.length !== s.vocabSize * s.hidden) throw bad('embedTokens', w.embedTokens.length, s.vocabSize * s.hidden);
  if (w.lmHead && w.lmHead.length !== s.vocabSize * s.hidden) throw bad('lmHead', w.lmHead.length, s.vocabSize * s.hidden);
  const inter = w.layers[0].gateProj.length / s.hidden;
  w.layers.forEach((l, i) => {
    const want: [keyof LlamaLayerWeights, number][] = [
      ['inputNorm', s.hidden],
      ['postAttentionNorm', s.hidden],
      ['qProj', s.heads * s.headDim * s.hidden],
      ['kProj', s.kvHeads * s.headDim * s.hidden],
      ['vProj', s.kvHeads * s.headDim * s.hidden],
      ['oProj', s.hidden * s.heads * s.headDim],
      ['gateProj', inter * s.hidden],
      ['upProj', inter * s.hidden],
      ['downProj', inter * s.hidden],
    ];
    if (o.qkNorm) {
      want.push(
        ['qNorm', o.qkNorm === 'head' ? s.headDim : s.heads * s.headDim],
        ['kNorm', o.qkNorm === 'head' ? s.headDim : s.kvHeads * s.headDim],
      );
    }
    if (o.sandwichNorms) want.push(['preFeedforwardNorm', s.hidden], ['postFeedforwardNorm', s.hidden]);
    for (const [k, n] of want) if (l[k]?.length !== n) throw bad(`layers[${i}].${k}`, l[k]?.length ?? 0, n);
  });
  if (o.positionEmbeddings && (o.positionEmbeddings.length === 0 || o.positionEmbeddings.length % s.hidden !== 0)) {
    throw bad(
      'positionEmbeddings',
      o.positionEmbeddings.length,
      s.hidden * Math.max(1, Math.round(o.positionEmbeddings.length / s.hidden)),
    );
  }
  const floats =
    w.embedTokens.length +
    (w.lmHead?.length ?? 0) +
    (o.positionEmbeddings?.length ?? 0) +
    w.layers.reduce((n, l) => n + Object.values(l).reduce((m: number, a: Float32Array | undefined) => m + (a?.length ?? 0), 0), 0);
  if (floats * 4 > 2_000_000_000) {
    throw new KvtcError(
      'MODEL_INVALID',
      `buildLlamaGraph: ${((floats * 4) / 1e9).toFixed(2)} GB of weights exceed ONNX's 2 GB protobuf limit (external data is not written)`,
      {
        fix: 'Build a smaller model (fewer layers, smaller hidden/intermediate/vocab).',
        context: { bytes: floats * 4 },
      },
    );
  }
  if (o.layerRope && o.layerRope.length !== s.layers) throw bad('layerRope', o.layerRope.length, s.layers);
  if (o.cacheWindow && (o.cacheWindow.length !== s.layers || o.cacheWindow.some((w) => w !== null && !(Number.isInteger(w) && w > 0)))) {
    throw new KvtcError(
      'MODEL_INVALID',
      `buildLlamaGraph: cacheWindow must give each of the ${s.layers} layers a positive window or null, got ${JSON.stringify(o.cacheWindow)}`,
      { fix: 'Fix cacheWindow.' },
    );
  }
  if (
    o.attentionWindow &&
    (o.attentionWindow.length !== s.layers || o.attentionWindow.some((w) => w !== null && !(Number.isInteger(w) && w > 0)))
  ) {
    throw new KvtcError(
      'MODEL_INVALID',
      `buildLlamaGraph: attentionWindow must give each of the ${s.layers} layers a positive window or null, got ${JSON.stringify(o.attentionWindow)}`,
      { fix: 'Fix attentionWindow.' },
    );
  }
  for (const [k, v] of [
    ['embedScale', o.embedScale],
    ['attentionScale', o.attentionScale],
  ] as const) {
    if (v !== undefined && !(Number.isFinite(v) && v > 0))
      throw new KvtcError('MODEL_INVALID', `buildLlamaGraph: ${k} must be a positive number, got ${v}`, { fix: `Fix ${k}.` });
  }
  if (o.hiddenAct !== undefined && o.hiddenAct !== 'silu' && o.hiddenAct !== 'gelu_tanh') {
    throw new KvtcError('MODEL_INVALID', `buildLlamaGraph: hiddenAct "${String(o.hiddenAct)}" must be "silu" or "gelu_tanh"`, {
      fix: 'Fix hiddenAct.',
    });
  }
  if (!o.layerRope && s.rope.length !== s.layers) throw bad('rope (one per layer)', s.rope.length, s.layers);
  layerRopes(s, o).forEach((r, i) => {
    if (!r) return;
    const at = o.layerRope ? `layerRope[${i}]` : 'rope';
    const R = r.rotaryDim;
    if (!(Number.isInteger(R) && R > 0 && R <= s.headDim && R % 2 === 0)) {
      throw new KvtcError('MODEL_INVALID', `buildLlamaGraph: ${at}.rotaryDim ${R} must be even and in (0, headDim=${s.headDim}]`, {
        fix: 'Fix the rotary dim.',
      });
    }
    if (r.layout !== 'half' && r.layout !== 'interleaved') {
      throw new KvtcError('MODEL_INVALID', `buildLlamaGraph: ${at}.layout "${String(r.layout)}" must be "half" or "interleaved"`, {
        fix: 'Fix the RoPE layout.',
      });
    }
    if (r.invFreq.length !== R / 2) throw bad(`${at}.invFreq`, r.invFreq.length, R / 2);
    if (r.long && r.long.invFreq.length !== R / 2) throw bad(`${at}.long.invFreq`, r.long.invFreq.length, R / 2);
  });
  return inter;
}

/** Each layer's RoPE: options.layerRope, else spec.rope with kvtc's own frequencies (src/rope/freqs.ts). */
function layerRopes(s: LlamaGraphSpec, o: LlamaGraphOptions): (GraphLayerRope | null)[] {
  if (o.layerRope) return o.layerRope;
  const one = (r: LayerRope): GraphLayerRope | null => {
    if (!r) return null;
    const ok = Number.isInteger(r.rotaryDim) && r.rotaryDim > 0 && r.rotaryDim % 2 === 0;
    const sc = r.scaling;
    // longrope: short factors up to original_max_position_embeddings, long beyond (switched per forward pass).
    const long =
      ok && sc?.type === 'longrope'
        ? { invFreq: ropeInvFreq(r, sc.originalMaxPositionEmbeddings + 1), above: sc.originalMaxPositionEmbeddings }
        : undefined;
    return {
      invFreq: ok ? ropeInvFreq(r, 0) : [],
      rotaryDim: r.rotaryDim,
      layout: r.layout,
      attentionFactor: r.attentionFactor ?? 1,
      ...(long ? { long } : {}),
    };
  };
  return Array.from({ length: s.layers }, (_, l) => one(s.rope[l] ?? null));
}

/** ONNX ModelProto bytes of a Llama decoder with KV cache; deterministic for equal inputs. */
export function buildLlamaGraph(weights: LlamaWeights, spec: LlamaGraphSpec, opts: LlamaGraphOptions): Uint8Array {
  const inter = checkShapes(weights, spec, opts);
  const { hidden: H, heads, kvHeads: KV, headDim: D, vocabSize: V } = spec;
  const rep = heads / KV;
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
    for (const kind of ['key', 'value'])
      g.output(`present.${l}.${kind}`, `present.${l}.${kind}`, kvType, ['batch_size', KV, 'total_sequence_length', D]);
  }

  const i64 = (v: number[]) => g.i64(v);
  const scalarI64 = (v: number) => g.constant(g.fresh('s'), BigInt64Array.of(BigInt(v)), []);
  const embed = g.constant('model.embed_tokens.weight', weights.embedTokens, [V, H]);
  let x = g.op('Gather', [embed, inputIds], { axis: 0 }); // [B, S, H]
  if (opts.embedScale !== undefined) x = g.op('Mul', [x, g.scalarF32(Math.fround(opts.embedScale), 'embed_scale')]);
  if (opts.positionEmbeddings) {
    const wpe = g.constant('model.wpe.weight', opts.positionEmbeddings, [opts.positionEmbeddings.length / H, H]);
    x = g.op('Add', [x, g.op('Gather', [wpe, positionIds], { axis: 0 })]);
  }

  // RoPE tables from position_ids, one per distinct layer RoPE, built here in layer order
  // (transformers' rotary embedding: freqs = position * inv_freq in float32, cos/sin times
  // attention_scaling). The first table's nodes and names are those the single-RoPE builder
  // always wrote, so converted models stay byte-identical.
  //   half:        cos/sin [B, 1, S, R] of cat(freqs, freqs), pairs (i, i + R/2)
  //   interleaved: cos/sin [B, 1, S, R/2, 1], pairs (2i, 2i + 1)
  interface Table {
    cos: string;
    sin: string;
    halves?: string;
  }
  const ropes = layerRopes(spec, opts);
  const tables = new Map<string, Table>();
  const key = (r: GraphLayerRope) =>
    JSON.stringify([
      Array.from(r.invFreq, Math.fround),
      r.rotaryDim,
      r.layout,
      r.attentionFactor ?? 1,
      r.long ? [Array.from(r.long.invFreq, Math.fround), r.long.above] : null,
    ]);
  let posF: string | undefined; // [B, S, 1]
  for (const r of ropes) {
    if (!r || tables.has(key(r))) continue;
    const n = tables.size;
    const half = r.rotaryDim / 2;
    let invFreq = g.constant(n === 0 ? 'rope.inv_freq' : `rope.${n}.inv_freq`, Float32Array.from(r.invFreq), [half]);
    posF ??= g.op('Unsqueeze', [g.op('Cast', [positionIds], { to: FLOAT }), i64([2])]);
    if (r.long) {
      // seq_len = max(position_ids) + 1 > above → long factors (for this forward pass).
      const long = g.constant(`rope.${n}.long_inv_freq`, Float32Array.from(r.long.invFreq), [half]);
      const seqLen = g.op('Add', [g.op('ReduceMax', [posF], { keepdims: 0 }), g.scalarF32(1, `rope.${n}.one`)]);
      invFreq = g.op('Where', [g.op('Greater', [seqLen, g.scalarF32(r.long.above, `rope.${n}.above`)]), long, invFreq]);
    }
    const freqs = g.op('Mul', [posF, invFreq]); // [B, S, R/2]
    const scaled = (t: string) =>
      (r.attentionFactor ?? 1) === 1 ? t : g.op('Mul', [t, g.scalarF32(r.attentionFactor!, `rope.${n}.attention_factor`)]);
    if (r.layout === 'half') {
      const angles = g.op('Concat', [freqs, freqs], { axis: -1 }); // [B, S, R]
      const cos = g.op('Unsqueeze', [scaled(g.op('Cos', [angles])), i64([1])]);
      const sin = g.op('Unsqueeze', [scaled(g.op('Sin', [angles])), i64([1])]);
      tables.set(key(r), { cos, sin, halves: i64([half, half]) });
    } else {
      const cos = g.op('Unsqueeze', [scaled(g.op('Cos', [freqs])), i64([1, 4])]);
      const sin = g.op('Unsqueeze', [scaled(g.op('Sin', [freqs])), i64([1, 4])]);
      tables.set(key(r), { cos, sin });
    }
  }
  const rope = (t: string, r: GraphLayerRope | null): string => {
    if (!r) return t;
    const R = r.rotaryDim;
    const { cos, sin, halves } = tables.get(key(r))!;
    const rotPart = R === D ? t : g.op('Slice', [t, i64([0]), i64([R]), i64([-1])]);
    let out: string;
    if (r.layout === 'half') {
      const [a, b] = g.opN('Split', [rotPart, halves!], { axis: -1 }, { outputs: 2 });
      const rotated = g.op('Concat', [g.op('Neg', [b]), a], { axis: -1 });
      out = g.op('Add', [g.op('Mul', [rotPart, cos]), g.op('Mul', [rotated, sin])]);
    } else {
      const pairs = g.op('Reshape', [rotPart, i64([0, 0, 0, R / 2, 2])]); // [B, n, S, R/2, 2]
      const [a, b] = g.opN('Split', [pairs, i64([1, 1])], { axis: -1 }, { outputs: 2 });
      const ra = g.op('Sub', [g.op('Mul', [a, cos]), g.op('Mul', [b, sin])]);
      const rb = g.op('Add', [g.op('Mul', [b, cos]), g.op('Mul', [a, sin])]);
      out = g.op('Reshape', [g.op('Concat', [ra, rb], { axis: -1 }), i64([0, 0, 0, R])]);
    }
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
  // Sliding-window layers: also i - j < W (masking_utils' sliding_window_overlay: kv_idx > q_idx - W).
  const windowed = new Map<number, string>();
  const layerAllowed = (l: number): string => {
    const w = opts.attentionWindow?.[l];
    if (!w) return allowed;
    if (!windowed.has(w)) {
      const dist = g.op('Sub', [g.op('Unsqueeze', [rows, i64([1])]), g.op('Unsqueeze', [cols, i64([0])])]); // [S, T] = i - j
      windowed.set(w, g.op('And', [allowed, g.op('Less', [dist, scalarI64(w)])]));
    }
    return windowed.get(w)!;
  };

  const eps = g.scalarF32(opts.rmsNormEps, 'rms_eps');
  let normOne: string | undefined;
  const rmsNorm = (t: string, w: string) => {
    const ms = g.op('ReduceMean', [g.op('Mul', [t, t])], { axes: [-1], keepdims: 1 });
    // Gemma3RMSNorm: (1 + w) in float32; the stored w is transformers' parameter, ORT folds the Add.
    const scaleW = opts.normPlusOne ? g.op('Add', [w, (normOne ??= g.scalarF32(1, 'norm_one'))]) : w;
    return g.op('Mul', [g.op('Div', [t, g.op('Sqrt', [g.op('Add', [ms, eps])])]), scaleW]);
  };
  const linear = (t: string, name: string, w: Float32Array, out: number, inp: number) =>
    g.op('MatMul', [t, g.constant(name, transpose(w, out, inp), [inp, out])]);
  const scale = g.scalarF32(opts.attentionScale ?? 1 / Math.sqrt(D), 'attn_scale');
  // gelu_pytorch_tanh: 0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³))); opset 17 has no Gelu.
  const geluTanh = (t: string) => {
    const c = Math.sqrt(2 / Math.PI);
    const inner = g.op('Mul', [
      t,
      g.op('Add', [g.scalarF32(c, 'gelu_c'), g.op('Mul', [g.op('Mul', [t, t]), g.scalarF32(c * 0.044715, 'gelu_c3')])]),
    ]);
    return g.op('Mul', [g.op('Mul', [t, g.scalarF32(0.5, 'gelu_half')]), g.op('Add', [g.scalarF32(1, 'gelu_one'), g.op('Tanh', [inner])])]);
  };
  const splitHeads = (t: string, n: number) => g.op('Transpose', [g.op('Reshape', [t, i64([0, 0, n, D])])], { perm: [0, 2, 1, 3] }); // [B, n, S, D]

  weights.layers.forEach((lw, l) => {
    const p = `model.layers.${l}`;
    const h = rmsNorm(x, g.constant(`${p}.input_layernorm.weight`, lw.inputNorm, [H]));
    // Phi-3's qkv_proj: one [q; k; v] projection, split as modeling_phi3.py slices it.
    const fused = opts.fusedQkv
      ? g.opN(
          'Split',
          [
            linear(h, `${p}.self_attn.qkv_proj.weight.T`, concatRows(lw.qProj, lw.kProj, lw.vProj), (heads + 2 * KV) * D, H),
            i64([heads * D, KV * D, KV * D]),
          ],
          { axis: -1 },
          { outputs: 3 },
        )
      : undefined;
    // q/k as the attention module has them before RoPE, with the family's q/k norm.
    const proj = (kind: 'q' | 'k', w: Float32Array, n: number, norm: Float32Array | undefined) => {
      let t = fused ? fused[kind === 'q' ? 0 : 1] : linear(h, `${p}.self_attn.${kind}_proj.weight.T`, w, n * D, H);
      const normW = () => g.constant(`${p}.self_attn.${kind}_norm.weight`, norm!, [norm!.length]);
      if (opts.qkNorm === 'projection') t = rmsNorm(t, normW());
      t = splitHeads(t, n);
      if (opts.qkNorm === 'head') t = rmsNorm(t, normW());
      return rope(t, ropes[l]);
    };
    const q = proj('q', lw.qProj, heads, lw.qNorm);
    const k = proj('k', lw.kProj, KV, lw.kNorm);
    const v = splitHeads(fused ? fused[2] : linear(h, `${p}.self_attn.v_proj.weight.T`, lw.vProj, KV * D, H), KV);

    const window = opts.cacheWindow?.[l];
    const cache = (t: string, pastName: string, kind: 'key' | 'value') => {
      const name = `present.${l}.${kind}`;
      const stored = kvType === 'float16' ? g.op('Cast', [t], { to: FLOAT16 }) : t;
      const all = window
        ? g.op('Concat', [pastName, stored], { axis: 2 })
        : g.op('Concat', [pastName, stored], { axis: 2 }, { names: [name] });
      if (window) g.op('Slice', [all, i64([-window]), i64([Number.MAX_SAFE_INTEGER]), i64([2])], {}, { names: [name] });
      return kvType === 'float16' ? g.op('Cast', [all], { to: FLOAT }) : all; // [B, KV, T, D]
    };
    const kAll = cache(k, past[l].key, 'key');
    const vAll = cache(v, past[l].value, 'value');

    // GQA without copying: query heads grouped as [B, KV, rep, S, D] against keys [B, KV, 1, T, D].
    const q5 = g.op('Reshape', [g.op('Mul', [q, scale]), i64([0, KV, rep, -1, D])]);
    const kT = g.op('Transpose', [g.op('Unsqueeze', [kAll, i64([2])])], { perm: [0, 1, 2, 4, 3] }); // [B, KV, 1, D, T]
    const scores = g.op('Where', [layerAllowed(l), g.op('MatMul', [q5, kT]), masked]); // [B, KV, rep, S, T]
    const probs = g.op('Softmax', [scores], { axis: -1 });
    const ctx = g.op('MatMul', [probs, g.op('Unsqueeze', [vAll, i64([2])])]); // [B, KV, rep, S, D]
    const merged = g.op('Reshape', [g.op('Transpose', [ctx], { perm: [0, 3, 1, 2, 4] }), i64([0, 0, heads * D])]); // [B, S, heads*D]
    const attnOut = linear(merged, `${p}.self_attn.o_proj.weight.T`, lw.oProj, H, heads * D);
    const postAttnNorm = () => g.constant(`${p}.post_attention_layernorm.weight`, lw.postAttentionNorm, [H]);
    x = g.op('Add', [x, opts.sandwichNorms ? rmsNorm(attnOut, postAttnNorm()) : attnOut]);

    const h2 = opts.sandwichNorms
      ? rmsNorm(x, g.constant(`${p}.pre_feedforward_layernorm.weight`, lw.preFeedforwardNorm!, [H]))
      : rmsNorm(x, postAttnNorm());
    const gate = linear(h2, `${p}.mlp.gate_proj.weight.T`, lw.gateProj, inter, H);
    const up = linear(h2, `${p}.mlp.up_proj.weight.T`, lw.upProj, inter, H);
    const act = g.op('Mul', [opts.hiddenAct === 'gelu_tanh' ? geluTanh(gate) : g.op('Mul', [gate, g.op('Sigmoid', [gate])]), up]);
    const mlpOut = linear(act, `${p}.mlp.down_proj.weight.T`, lw.downProj, H, inter);
    x = g.op('Add', [
      x,
      opts.sandwichNorms ? rmsNorm(mlpOut, g.constant(`${p}.post_feedforward_layernorm.weight`, lw.postFeedforwardNorm!, [H])) : mlpOut,
    ]);
  });

  const hf = rmsNorm(x, g.constant('model.norm.weight', weights.finalNorm, [H]));
  // Tied head: the transpose of the embedding is folded by ONNX Runtime at load, stored once.
  const head = weights.lmHead
    ? g.constant('lm_head.weight.T', transpose(weights.lmHead, V, H), [H, V])
    : g.op('Transpose', [embed], { perm: [1, 0] });
  g.op('MatMul', [hf, head], {}, { names: ['logits'] });
  return g.toModel({ producer: 'kvtc', docString: `${opts.name ?? 'llama'}: Llama decoder with KV cache (kvtc convert)` });
}
