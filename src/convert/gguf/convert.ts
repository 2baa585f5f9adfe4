// Tested by test/convert/gguf-llama.test.ts (synthetic GGUFs, refusals) and test/gguf/smollm2.test.ts (SmolLM2-135M against transformers).
/**
 * GGUF → Optimum-layout model directory: picks the family converter by `general.architecture`
 * and writes config.json, generation_config.json, tokenizer.json, tokenizer_config.json and
 * onnx/model.onnx (llama-graph.ts) atomically, file by file, as convert-llama2c does.
 */
import { basename, join } from 'node:path';
import { KvtcError } from '../../errors.js';
import { writeFileAtomic } from '../../io/atomic.js';
import { checkOutputDir } from '../../io/output.js';
import { DEQUANT_TYPES, openGguf, readTensor, type GgufFile } from '../../gguf/read.js';
import { ggufUnsupported } from '../../gguf/errors.js';
import { buildLlamaGraph } from '../llama-graph.js';
import { checkOutput, type WrittenModelDir } from '../model-dir.js';
import { noProgress, type ProgressFn } from '../../progress.js';
import type { ConvertedFamily, FamilyConverter, GgufModel } from './family.js';
import { llamaFamily } from './llama.js';
import { gemma3Family } from './gemma3.js';

/** Every family, in the order `kvtc convert-gguf --help` lists them. */
export const GGUF_FAMILIES: readonly FamilyConverter[] = [llamaFamily, gemma3Family];

export const SUPPORTED_GGUF_ARCHITECTURES: readonly string[] = GGUF_FAMILIES.flatMap((f) => f.architectures);

export function familyFor(g: Pick<GgufModel, 'architecture' | 'path'>): FamilyConverter {
  const f = GGUF_FAMILIES.find((x) => x.architectures.includes(g.architecture));
  if (!f) {
    throw new KvtcError(
      'UNSUPPORTED_ARCHITECTURE',
      `${g.path}: GGUF architecture "${g.architecture}" is not supported; kvtc converts: ${SUPPORTED_GGUF_ARCHITECTURES.join(', ')}`,
      {
        fix: 'Convert a model of a supported architecture, or export this one to ONNX with Optimum (optimum-cli export onnx) and pass its directory as --model.',
        context: { file: g.path, architecture: g.architecture, supported: SUPPORTED_GGUF_ARCHITECTURES },
      },
    );
  }
  return f;
}

export interface ConvertGgufModelOptions {
  out: string;
  /** config.json `_name_or_path` and graph name; default `general.name` or the file name. */
  name: string;
  force?: boolean;
  /** Stages: dequantize (tensors done/total), graph, write (files done/total). */
  onProgress?: ProgressFn;
}

export interface ConvertGgufResult extends WrittenModelDir {
  architecture: string;
  converted: Omit<ConvertedFamily, 'weights' | 'tokenizerJson'>;
}

const json = (v: unknown) => `${JSON.stringify(v, null, 2)}\n`;

/** Converts an opened GGUF and writes the model directory. */
export async function convertGgufModel(g: GgufModel, opts: ConvertGgufModelOptions): Promise<ConvertGgufResult> {
  checkOutput(opts.out, opts.force);
  const family = familyFor(g);
  const progress = opts.onProgress ?? noProgress;
  // Dequantizing is most of a conversion's time: count tensors as the family reads them.
  let read = 0;
  const counted: GgufModel = {
    ...g,
    read: async (name) => {
      progress({ stage: 'dequantize', done: read, total: g.tensors.size, unit: 'tensors', detail: name });
      const t = await g.read(name);
      read++;
      return t;
    },
  };
  const c = await family.convert(counted, { name: opts.name });
  progress({ stage: 'graph', detail: 'building the ONNX graph' });
  const onnx = buildLlamaGraph(c.weights, c.spec, { ...c.graph, name: c.graph.name ?? opts.name });
  const contents: [string, string | Uint8Array][] = [
    ['config.json', json(c.config)],
    ['generation_config.json', json(c.generationConfig)],
    ['tokenizer.json', json(c.tokenizerJson)],
    ['tokenizer_config.json', json(c.tokenizerConfig)],
    ['onnx/model.onnx', onnx],
  ];
  // Only the files a conversion writes are replaced: --force never deletes anything else in --out.
  checkOutputDir(opts.out);
  for (const [i, [rel, data]] of contents.entries()) {
    progress({ stage: 'write', done: i, total: contents.length, unit: 'files', detail: rel });
    await writeFileAtomic(join(opts.out, rel), data);
  }
  const { weights: _w, tokenizerJson: _t, ...converted } = c;
  return {
    dir: opts.out,
    files: contents.map(([path, data]) => ({ path, bytes: typeof data === 'string' ? Buffer.byteLength(data) : data.byteLength })),
    architecture: g.architecture,
    converted,
  };
}

/** The reader's file as the families read it. */
export function ggufModel(file: GgufFile): GgufModel {
  return {
    path: file.path,
    architecture: file.getString('general.architecture'),
    meta: (key) => file.get(key),
    tensors: new Map(file.tensors.map((t) => [t.name, { dims: t.ne, type: t.type.name }])),
    read: (name) => readTensor(file, name),
  };
}

/** Every tensor type is checked before any is read: a model is refused in a second, not after minutes of dequantizing. */
function checkTensorTypes(file: GgufFile): void {
  const bad = file.tensors.filter((t) => !(DEQUANT_TYPES as readonly string[]).includes(t.type.name));
  if (bad.length > 0) {
    const types = [...new Set(bad.map((t) => t.type.name))];
    throw ggufUnsupported(
      file.path,
      `tensor ${bad[0].name} is ${bad[0].type.name}${bad.length > 1 ? ` (and ${bad.length - 1} more tensors of ${types.join(', ')})` : ''}, which kvtc cannot dequantize; supported: ${DEQUANT_TYPES.join(', ')}`,
      'Re-quantize the model to one of those types (llama-quantize, e.g. Q8_0 or Q4_K_M), or convert the original Hugging Face checkpoint.',
      { tensor: bad[0].name, types },
    );
  }
}

export interface ConvertGgufOptions {
  file: string;
  out: string;
  /** Default: the file name without .gguf. */
  name?: string;
  force?: boolean;
  onProgress?: ProgressFn;
}

/** `kvtc convert-gguf`: opens and checks the GGUF, converts it, writes the model directory. */
export async function convertGguf(opts: ConvertGgufOptions): Promise<ConvertGgufResult> {
  checkOutput(opts.out, opts.force);
  const file = await openGguf(opts.file);
  const g = ggufModel(file);
  familyFor(g);
  checkTensorTypes(file);
  return convertGgufModel(g, {
    out: opts.out,
    name: opts.name ?? basename(opts.file).replace(/\.gguf$/i, ''),
    force: opts.force,
    onProgress: opts.onProgress,
  });
}
