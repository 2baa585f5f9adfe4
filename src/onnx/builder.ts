// Tested by test/codec/codec.test.ts.
/**
 * A small ONNX graph builder on top of onnx-proto (protobufjs). Used for the bundled model
 * conversion, random-weight test models, and the codec's encode/decode graphs.
 *
 *   const g = new GraphBuilder('proj');
 *   const x = g.input('x', 'float32', ['tokens', 32]);
 *   const y = g.op('MatMul', [x, g.constant('V', basis, [32, 8])]);
 *   g.output(y, 'y', 'float32', ['tokens', 8]);
 *   const bytes = g.toModel();
 */
import onnxProto from 'onnx-proto';

const { onnx } = onnxProto;

export type OnnxDtype = 'float32' | 'float16' | 'float64' | 'int64' | 'int32' | 'uint8' | 'int8' | 'bool';

const DTYPE: Record<OnnxDtype, number> = {
  float32: onnx.TensorProto.DataType.FLOAT,
  float16: onnx.TensorProto.DataType.FLOAT16,
  float64: onnx.TensorProto.DataType.DOUBLE,
  int64: onnx.TensorProto.DataType.INT64,
  int32: onnx.TensorProto.DataType.INT32,
  uint8: onnx.TensorProto.DataType.UINT8,
  int8: onnx.TensorProto.DataType.INT8,
  bool: onnx.TensorProto.DataType.BOOL,
};

export type AttrValue =
  number | string | number[] | string[] | { float: number } | { floats: number[] } | { tensor: onnxProto.onnx.ITensorProto };

export type TensorData = Float32Array | Float64Array | BigInt64Array | Int32Array | Uint16Array | Uint8Array | Int8Array;

function valueInfo(name: string, dtype: OnnxDtype, shape: (number | string)[]): onnxProto.onnx.IValueInfoProto {
  return {
    name,
    type: {
      tensorType: {
        elemType: DTYPE[dtype],
        shape: { dim: shape.map((d) => (typeof d === 'number' ? { dimValue: d } : { dimParam: d })) },
      },
    },
  };
}

function attribute(name: string, v: AttrValue): onnxProto.onnx.IAttributeProto {
  const T = onnx.AttributeProto.AttributeType;
  if (typeof v === 'number') {
    if (!Number.isInteger(v)) return { name, type: T.FLOAT, f: v };
    return { name, type: T.INT, i: v };
  }
  if (typeof v === 'string') return { name, type: T.STRING, s: new TextEncoder().encode(v) };
  if (Array.isArray(v)) {
    if (v.length > 0 && typeof v[0] === 'string')
      return { name, type: T.STRINGS, strings: (v as string[]).map((s) => new TextEncoder().encode(s)) };
    return { name, type: T.INTS, ints: v as number[] };
  }
  if ('float' in v) return { name, type: T.FLOAT, f: v.float };
  if ('floats' in v) return { name, type: T.FLOATS, floats: v.floats };
  return { name, type: T.TENSOR, t: v.tensor };
}

export function tensorProto(name: string, data: TensorData, dims: number[], dtype?: OnnxDtype, owned = false): onnxProto.onnx.ITensorProto {
  const dt: OnnxDtype =
    dtype ??
    (data instanceof Float32Array
      ? 'float32'
      : data instanceof Float64Array
        ? 'float64'
        : data instanceof BigInt64Array
          ? 'int64'
          : data instanceof Int32Array
            ? 'int32'
            : data instanceof Uint16Array
              ? 'float16'
              : data instanceof Int8Array
                ? 'int8'
                : 'uint8');
  const view = new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
  const raw = owned ? view : view.slice();
  return { name, dims, dataType: DTYPE[dt], rawData: raw };
}

export class GraphBuilder {
  private readonly nodes: onnxProto.onnx.INodeProto[] = [];
  private readonly inputs: onnxProto.onnx.IValueInfoProto[] = [];
  private readonly outputs: onnxProto.onnx.IValueInfoProto[] = [];
  private readonly initializers: onnxProto.onnx.ITensorProto[] = [];
  private readonly used = new Set<string>();
  private counter = 0;
  private readonly domains = new Map<string, number>([['', 17]]);

  constructor(
    readonly name: string,
    opset = 17,
  ) {
    this.domains.set('', opset);
  }

  /** A fresh value name with the given hint. */
  fresh(hint = 'v'): string {
    let n: string;
    do n = `${hint}_${this.counter++}`;
    while (this.used.has(n));
    this.used.add(n);
    return n;
  }

  input(name: string, dtype: OnnxDtype, shape: (number | string)[]): string {
    this.used.add(name);
    this.inputs.push(valueInfo(name, dtype, shape));
    return name;
  }

  /** Marks `value` as a graph output named `name` (an Identity is inserted when the names differ). */
  output(value: string, name: string, dtype: OnnxDtype, shape: (number | string)[]): string {
    if (value !== name) {
      this.used.add(name);
      this.nodes.push({ opType: 'Identity', input: [value], output: [name], name: `out_${name}` });
    }
    this.outputs.push(valueInfo(name, dtype, shape));
    return name;
  }

  /** An initializer (weights or constants); the data is copied. */
  constant(hint: string, data: TensorData, dims: number[], dtype?: OnnxDtype): string {
    return this.addInitializer(hint, data, dims, dtype, false);
  }

  /**
   * An initializer that takes `data` without copying it: the caller hands it over and must not
   * change it before toModel(). For weights built only for this graph (a codec's basis over all
   * layers of an 8B model is 300+ MB: the copy was one more at the peak of building it).
   */
  constantOwned(hint: string, data: TensorData, dims: number[]): string {
    return this.addInitializer(hint, data, dims, undefined, true);
  }

  private addInitializer(hint: string, data: TensorData, dims: number[], dtype: OnnxDtype | undefined, owned: boolean): string {
    const name = this.used.has(hint) ? this.fresh(hint) : hint;
    this.used.add(name);
    this.initializers.push(tensorProto(name, data, dims, dtype, owned));
    return name;
  }

  i64(values: number[], hint = 'c'): string {
    return this.constant(this.fresh(hint), BigInt64Array.from(values.map(BigInt)), [values.length]);
  }

  scalarF32(value: number, hint = 'c'): string {
    return this.constant(this.fresh(hint), Float32Array.of(value), []);
  }

  /** Adds a node; returns its single output, or all outputs when `outputs` > 1. */
  op(
    opType: string,
    inputs: string[],
    attrs: Record<string, AttrValue> = {},
    opts: { outputs?: number; domain?: string; names?: string[] } = {},
  ): string {
    return this.opN(opType, inputs, attrs, { ...opts, outputs: 1 })[0];
  }

  opN(
    opType: string,
    inputs: string[],
    attrs: Record<string, AttrValue> = {},
    opts: { outputs?: number; domain?: string; names?: string[] } = {},
  ): string[] {
    const count = opts.names?.length ?? opts.outputs ?? 1;
    const outs = opts.names ?? Array.from({ length: count }, () => this.fresh(opType.toLowerCase()));
    for (const o of outs) this.used.add(o);
    if (opts.domain && !this.domains.has(opts.domain)) this.domains.set(opts.domain, 1);
    this.nodes.push({
      opType,
      domain: opts.domain ?? '',
      input: inputs,
      output: outs,
      name: `${opType}_${this.nodes.length}`,
      attribute: Object.entries(attrs).map(([k, v]) => attribute(k, v)),
    });
    return outs;
  }

  /** Serialized ModelProto bytes. */
  toModel(opts: { producer?: string; docString?: string; metadata?: Record<string, string> } = {}): Uint8Array {
    const model = onnx.ModelProto.create({
      irVersion: 8,
      producerName: opts.producer ?? 'kvtc',
      producerVersion: '1',
      docString: opts.docString ?? '',
      opsetImport: [...this.domains.entries()].map(([domain, version]) => ({ domain, version })),
      metadataProps: Object.entries(opts.metadata ?? {}).map(([key, value]) => ({ key, value })),
      graph: {
        name: this.name,
        node: this.nodes,
        input: this.inputs,
        output: this.outputs,
        initializer: this.initializers,
      },
    });
    return onnx.ModelProto.encode(model).finish();
  }
}
