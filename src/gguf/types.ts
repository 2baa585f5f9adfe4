// Tested by test/gguf/read.test.ts and test/gguf/quants.test.ts.
/**
 * GGUF and ggml vocabulary: metadata value types, ggml tensor types with their block geometry,
 * and the parsed shapes that src/gguf/read.ts returns. Numbers follow ggml's `gguf.h` /
 * `ggml.h` and gguf-py's `constants.py` (GGUFValueType, GGMLQuantizationType, GGML_QUANT_SIZES).
 */

/** GGUF metadata value types, indexed by their on-disk id. */
export const GGUF_VALUE_TYPES = [
  'UINT8',
  'INT8',
  'UINT16',
  'INT16',
  'UINT32',
  'INT32',
  'FLOAT32',
  'BOOL',
  'STRING',
  'ARRAY',
  'UINT64',
  'INT64',
  'FLOAT64',
] as const;
export type GgufValueType = (typeof GGUF_VALUE_TYPES)[number];

/** A scalar metadata value: 64-bit integers are bigint, every other number a JS number. */
export type GgufScalar = number | bigint | boolean | string;
/** A metadata value as stored: a scalar or an array of scalars of one type (GGUF arrays are homogeneous). */
export type GgufValue = GgufScalar | number[] | bigint[] | boolean[] | string[];

export interface GgufEntry {
  type: GgufValueType;
  /** The element type when `type` is ARRAY. */
  itemType?: GgufValueType;
  value: GgufValue;
}

/** One ggml tensor type: id on disk, name, elements per block and bytes per block. */
export interface GgmlTypeInfo {
  id: number;
  name: string;
  blockSize: number;
  typeSize: number;
}

/**
 * Every ggml type id the format defines (ggml.h, GGML_QUANT_SIZES); ids 4, 5, 31-33, 36-38 are retired.
 * Q8_1 is ggml's 36-byte block (gguf-py's table says 40, from an older layout; no GGUF stores Q8_1).
 */
export const GGML_TYPES: readonly GgmlTypeInfo[] = [
  [0, 'F32', 1, 4],
  [1, 'F16', 1, 2],
  [2, 'Q4_0', 32, 18],
  [3, 'Q4_1', 32, 20],
  [6, 'Q5_0', 32, 22],
  [7, 'Q5_1', 32, 24],
  [8, 'Q8_0', 32, 34],
  [9, 'Q8_1', 32, 36],
  [10, 'Q2_K', 256, 84],
  [11, 'Q3_K', 256, 110],
  [12, 'Q4_K', 256, 144],
  [13, 'Q5_K', 256, 176],
  [14, 'Q6_K', 256, 210],
  [15, 'Q8_K', 256, 292],
  [16, 'IQ2_XXS', 256, 66],
  [17, 'IQ2_XS', 256, 74],
  [18, 'IQ3_XXS', 256, 98],
  [19, 'IQ1_S', 256, 50],
  [20, 'IQ4_NL', 32, 18],
  [21, 'IQ3_S', 256, 110],
  [22, 'IQ2_S', 256, 82],
  [23, 'IQ4_XS', 256, 136],
  [24, 'I8', 1, 1],
  [25, 'I16', 1, 2],
  [26, 'I32', 1, 4],
  [27, 'I64', 1, 8],
  [28, 'F64', 1, 8],
  [29, 'IQ1_M', 256, 56],
  [30, 'BF16', 1, 2],
  [34, 'TQ1_0', 256, 54],
  [35, 'TQ2_0', 256, 66],
  [39, 'MXFP4', 32, 17],
  [40, 'NVFP4', 64, 36],
  [41, 'Q1_0', 128, 18],
].map(([id, name, blockSize, typeSize]) => ({ id, name, blockSize, typeSize }) as GgmlTypeInfo);

const BY_ID = new Map(GGML_TYPES.map((t) => [t.id, t]));
const BY_NAME = new Map(GGML_TYPES.map((t) => [t.name, t]));

export function ggmlTypeById(id: number): GgmlTypeInfo | undefined {
  return BY_ID.get(id);
}

export function ggmlTypeByName(name: string): GgmlTypeInfo {
  const t = BY_NAME.get(name);
  if (!t) throw new Error(`unknown ggml type name ${name}`);
  return t;
}

/** ggml's GGML_MAX_DIMS: a GGUF tensor has at most 4 dimensions. */
export const GGML_MAX_DIMS = 4;

/**
 * One tensor's header entry, validated: its bytes lie inside the file and overlap no other tensor.
 * `ne` is ggml's dimension order (ne[0] varies fastest); `shape` is the same reversed, i.e. the
 * PyTorch/NumPy shape of the row-major array readTensor returns.
 */
export interface GgufTensorInfo {
  name: string;
  /** ggml dims, fastest first: a Llama `token_embd.weight` is [hidden, vocab]. */
  ne: number[];
  /** ne reversed (slowest first): the PyTorch shape, [vocab, hidden] for `token_embd.weight`. */
  shape: number[];
  type: GgmlTypeInfo;
  /** Offset of the tensor's bytes relative to the start of the data section, as stored. */
  offset: number;
  /** Absolute offset of the tensor's bytes in the file. */
  fileOffset: number;
  byteSize: number;
  elements: number;
}
