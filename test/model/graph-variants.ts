/**
 * Rewrites of a float decoder graph (from the project's graph builder, src/convert/llama-graph.ts)
 * into the forms model directories come in, for the loader and runner tests:
 *
 * - quantizeMatMulNBits: every MatMul with a 2-D float weight initializer becomes ONNX Runtime's
 *   com.microsoft MatMulNBits (block-wise 4-bit weights), as onnxruntime's
 *   `MatMulNBitsQuantizer` / transformers.js' `model_q4.onnx` do;
 * - quantizeMatMulInt8: the same MatMuls become DynamicQuantizeLinear + MatMulInteger (int8
 *   weights per output column, uint8 activations quantized at run time), the graph
 *   onnxruntime's `quantize_dynamic` writes (transformers.js' `model_quantized.onnx` / int8);
 * - mergeDecoder: Optimum's `decoder_model_merged.onnx`, one If on a `use_cache_branch` bool
 *   input choosing between the with-past decoder and a no-past one that ignores the past inputs.
 *
 * Formats: MatMulNBits per onnxruntime docs/ContribOperators.md (com.microsoft.MatMulNBits):
 * B uint8 [N, k_blocks, block_size * bits / 8], codes packed low nibble first along K; scales
 * [N * k_blocks] of A's type; zero_points uint8 [N * ceil(k_blocks * bits / 8)], packed the same
 * way (absent: 2^(bits-1)); y = A @ ((code - zero_point) * scale)^T. MatMulInteger and
 * DynamicQuantizeLinear per the ONNX operator specs (opset 10 / 11). If per ONNX If (opset 16+):
 * branch graphs have no inputs and may read the outer graph's inputs and initializers.
 */
import onnxProto from 'onnx-proto';
import { tensorProto } from '../../src/onnx/builder.js';

const { onnx } = onnxProto;
type Model = onnxProto.onnx.ModelProto;
type Node = onnxProto.onnx.INodeProto;
type Tensor = onnxProto.onnx.ITensorProto;

const FLOAT = onnx.TensorProto.DataType.FLOAT;

function floatsOf(t: Tensor): Float32Array {
  const raw = t.rawData!;
  const copy = new Uint8Array(raw.byteLength);
  copy.set(raw);
  return new Float32Array(copy.buffer);
}

function addDomain(m: Model, domain: string, version: number): void {
  if (!(m.opsetImport ?? []).some((o) => (o.domain ?? '') === domain)) m.opsetImport.push({ domain, version });
}

const attrInt = (name: string, i: number) => ({ name, type: onnx.AttributeProto.AttributeType.INT, i });

/** MatMul nodes whose B is a 2-D float32 initializer [K, N] used by that node only. */
function weightMatMuls(m: Model): { node: Node; w: Tensor; K: number; N: number }[] {
  const g = m.graph!;
  const init = new Map((g.initializer ?? []).map((t) => [t.name!, t]));
  const uses = new Map<string, number>();
  for (const n of g.node ?? []) for (const i of n.input ?? []) uses.set(i, (uses.get(i) ?? 0) + 1);
  const out: { node: Node; w: Tensor; K: number; N: number }[] = [];
  for (const node of g.node ?? []) {
    if (node.opType !== 'MatMul' || (node.domain ?? '') !== '') continue;
    const w = init.get(node.input![1]);
    if (!w || w.dataType !== FLOAT || (w.dims ?? []).length !== 2 || uses.get(w.name!) !== 1) continue;
    out.push({ node, w, K: Number(w.dims![0]), N: Number(w.dims![1]) });
  }
  return out;
}

function dropInitializers(m: Model, names: Set<string>): void {
  m.graph!.initializer = (m.graph!.initializer ?? []).filter((t) => !names.has(t.name!));
}

export interface NBitsOptions {
  /** Default 4 (the only width this writer packs). */
  bits?: 4;
  /** Default 32. */
  blockSize?: number;
  /** Symmetric codes around 8 without a zero_points input (default: asymmetric, with zero points, as onnxruntime's quantizer writes by default). */
  symmetric?: boolean;
}

/**
 * 4-bit block quantization of one [K, N] weight (row-major, MatMul's B), per column n and block
 * b of blockSize rows: asymmetric uses the block's [min(0, lo), max(0, hi)] range in 15 steps
 * with an integer zero point; symmetric uses scale = max|w| / 7 around code 8.
 */
export function quantizeBlocks4(w: Float32Array, K: number, N: number, blockSize: number, symmetric: boolean) {
  const kBlocks = Math.ceil(K / blockSize);
  const blob = blockSize / 2;
  const B = new Uint8Array(N * kBlocks * blob);
  const scales = new Float32Array(N * kBlocks);
  const zpBytes = Math.ceil(kBlocks / 2);
  const zeroPoints = new Uint8Array(N * zpBytes);
  const dequant = new Float32Array(K * N);
  for (let n = 0; n < N; n++) {
    for (let b = 0; b < kBlocks; b++) {
      let lo = 0;
      let hi = 0;
      let amax = 0;
      for (let k = b * blockSize; k < Math.min(K, (b + 1) * blockSize); k++) {
        const v = w[k * N + n];
        lo = Math.min(lo, v);
        hi = Math.max(hi, v);
        amax = Math.max(amax, Math.abs(v));
      }
      let scale: number;
      let zp: number;
      if (symmetric) {
        scale = amax / 7 || 1;
        zp = 8;
      } else {
        scale = (hi - lo) / 15 || 1;
        zp = Math.min(15, Math.max(0, Math.round(-lo / scale)));
      }
      scale = Math.fround(scale);
      scales[n * kBlocks + b] = scale;
      zeroPoints[n * zpBytes + (b >> 1)] |= zp << ((b & 1) * 4);
      for (let j = 0; j < blockSize; j++) {
        const k = b * blockSize + j;
        const code = k < K ? Math.min(15, Math.max(0, Math.round(w[k * N + n] / scale) + zp)) : zp;
        B[(n * kBlocks + b) * blob + (j >> 1)] |= code << ((j & 1) * 4);
        if (k < K) dequant[k * N + n] = (code - zp) * scale;
      }
    }
  }
  return { B, scales, zeroPoints, kBlocks, blob, dequant };
}

/** Rewrites the model's weight MatMuls into MatMulNBits; returns the new bytes and how many were rewritten. */
export function quantizeMatMulNBits(bytes: Uint8Array, opts: NBitsOptions = {}): { bytes: Uint8Array; rewritten: number } {
  const blockSize = opts.blockSize ?? 32;
  const m = onnx.ModelProto.decode(bytes);
  const targets = weightMatMuls(m);
  const drop = new Set<string>();
  for (const { node, w, K, N } of targets) {
    const q = quantizeBlocks4(floatsOf(w), K, N, blockSize, opts.symmetric ?? false);
    const base = w.name!;
    const inputs = [node.input![0], `${base}_Q4`, `${base}_scales`];
    m.graph!.initializer.push(
      tensorProto(`${base}_Q4`, q.B, [N, q.kBlocks, q.blob], 'uint8'),
      tensorProto(`${base}_scales`, q.scales, [N * q.kBlocks]),
    );
    if (!opts.symmetric) {
      inputs.push(`${base}_zero_points`);
      m.graph!.initializer.push(tensorProto(`${base}_zero_points`, q.zeroPoints, [q.zeroPoints.length], 'uint8'));
    }
    node.opType = 'MatMulNBits';
    node.domain = 'com.microsoft';
    node.input = inputs;
    node.attribute = [attrInt('K', K), attrInt('N', N), attrInt('bits', 4), attrInt('block_size', blockSize), attrInt('accuracy_level', 0)];
    drop.add(base);
  }
  dropInitializers(m, drop);
  addDomain(m, 'com.microsoft', 1);
  return { bytes: onnx.ModelProto.encode(m).finish(), rewritten: targets.length };
}

/**
 * Rewrites the model's weight MatMuls into DynamicQuantizeLinear(A) → MatMulInteger(A_q, W_q,
 * A_zp, W_zp) → Cast → Mul(A_scale * W_scale): int8 weights, symmetric per output column.
 */
export function quantizeMatMulInt8(bytes: Uint8Array): { bytes: Uint8Array; rewritten: number } {
  const m = onnx.ModelProto.decode(bytes);
  const g = m.graph!;
  const targets = weightMatMuls(m);
  const drop = new Set<string>();
  const nodes: Node[] = [];
  const byNode = new Map(targets.map((t) => [t.node, t]));
  for (const node of g.node ?? []) {
    const t = byNode.get(node);
    if (!t) {
      nodes.push(node);
      continue;
    }
    const { w, K, N } = t;
    const f = floatsOf(w);
    const scale = new Float32Array(N);
    for (let n = 0; n < N; n++) {
      let amax = 0;
      for (let k = 0; k < K; k++) amax = Math.max(amax, Math.abs(f[k * N + n]));
      scale[n] = Math.fround(amax / 127 || 1);
    }
    const q = new Int8Array(K * N);
    for (let k = 0; k < K; k++)
      for (let n = 0; n < N; n++) q[k * N + n] = Math.max(-127, Math.min(127, Math.round(f[k * N + n] / scale[n])));
    const b = w.name!;
    g.initializer.push(
      tensorProto(`${b}_quantized`, q, [K, N], 'int8'),
      tensorProto(`${b}_zero_point`, new Int8Array(N), [N], 'int8'),
      tensorProto(`${b}_scale`, scale, [N]),
    );
    const x = node.input![0];
    const y = node.output![0];
    const p = `${node.name ?? y}_int8`;
    nodes.push(
      { opType: 'DynamicQuantizeLinear', domain: '', name: `${p}_dql`, input: [x], output: [`${p}_xq`, `${p}_xs`, `${p}_xzp`] },
      {
        opType: 'MatMulInteger',
        domain: '',
        name: `${p}_mmi`,
        input: [`${p}_xq`, `${b}_quantized`, `${p}_xzp`, `${b}_zero_point`],
        output: [`${p}_acc`],
      },
      { opType: 'Cast', domain: '', name: `${p}_cast`, input: [`${p}_acc`], output: [`${p}_accf`], attribute: [attrInt('to', FLOAT)] },
      { opType: 'Mul', domain: '', name: `${p}_scale`, input: [`${p}_xs`, `${b}_scale`], output: [`${p}_s`] },
      { opType: 'Mul', domain: '', name: `${p}_out`, input: [`${p}_accf`, `${p}_s`], output: [y] },
    );
    drop.add(b);
  }
  g.node = nodes;
  dropInitializers(m, drop);
  return { bytes: onnx.ModelProto.encode(m).finish(), rewritten: targets.length };
}

/**
 * Optimum's merged decoder from a with-past decoder graph, laid out as optimum's
 * `merge_decoders` writes it (huggingface/optimum, optimum/onnx/graph_transformations.py): the
 * inputs plus `use_cache_branch` bool [1]; one If named `optimum::if` whose then-branch is the
 * with-past decoder and whose else-branch is the no-past one; both branches keep the graph's own
 * value and output names (the If's outputs are named like the branches' outputs) and the weights
 * stay in the outer graph, shared. The no-past branch here is the same decoder reading every
 * `past_key_values.*` input as an empty [batch, heads, 0, head_dim] slice: with use_cache_branch
 * false the past is ignored and present holds the new tokens only, as in a real merged export.
 */
export function mergeDecoder(bytes: Uint8Array): Uint8Array {
  const m = onnx.ModelProto.decode(bytes);
  const g = m.graph!;
  const pasts = new Set((g.input ?? []).map((v) => v.name!).filter((n) => n.startsWith('past_key_values.')));
  const branch = (name: string, noPast: boolean): onnxProto.onnx.IGraphProto => {
    const pre: Node[] = [];
    const rename = (n: string) => (noPast && pasts.has(n) ? `no_past/${n}` : n);
    if (noPast) {
      const c = (cname: string, v: number): Node => ({
        opType: 'Constant',
        domain: '',
        name: cname,
        input: [],
        output: [cname],
        attribute: [
          { name: 'value', type: onnx.AttributeProto.AttributeType.TENSOR, t: tensorProto('', BigInt64Array.of(BigInt(v)), [1]) },
        ],
      });
      pre.push(c('no_past/zero', 0), c('no_past/axis', 2));
      for (const p of pasts)
        pre.push({
          opType: 'Slice',
          domain: '',
          name: `no_past/${p}.slice`,
          input: [p, 'no_past/zero', 'no_past/zero', 'no_past/axis'],
          output: [`no_past/${p}`],
        });
    }
    const nodes = (g.node ?? []).map((n) => ({ ...n, input: (n.input ?? []).map(rename) }));
    return { name, node: [...pre, ...nodes], output: g.output };
  };
  const ifNode: Node = {
    opType: 'If',
    domain: '',
    name: 'optimum::if',
    input: ['use_cache_branch'],
    output: (g.output ?? []).map((o) => o.name!),
    attribute: [
      { name: 'then_branch', type: onnx.AttributeProto.AttributeType.GRAPH, g: branch('with_past', false) },
      { name: 'else_branch', type: onnx.AttributeProto.AttributeType.GRAPH, g: branch('no_past', true) },
    ],
  };
  g.input.push({
    name: 'use_cache_branch',
    type: { tensorType: { elemType: onnx.TensorProto.DataType.BOOL, shape: { dim: [{ dimValue: 1 }] } } },
  });
  g.node = [ifNode];
  return onnx.ModelProto.encode(m).finish();
}
