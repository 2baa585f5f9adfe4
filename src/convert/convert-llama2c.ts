// Tested by test/convert/stories260k.test.ts.
/**
 * llama2.c checkpoint + tokenizer.bin → Optimum-layout ONNX model directory
 * (how models/stories260k was made).
 */
import { readLlama2cCheckpoint, toHfLlamaWeights, type Llama2cConfig } from './llama2c.js';
import { BOS_ID, EOS_ID, hfTokenizerConfig, hfTokenizerJson, readLlama2cTokenizer } from './llama2c-tokenizer.js';
import { checkOutput, writeLlamaModelDir, type LlamaDirSpec, type WrittenModelDir } from './model-dir.js';
import { uniformModelRope } from '../rope/types.js';

/** llama2.c's run.c hard-codes these. */
export const LLAMA2C_RMS_NORM_EPS = 1e-5;
export const LLAMA2C_ROPE_THETA = 10000;

export interface ConvertLlama2cOptions {
  checkpoint: string;
  tokenizer: string;
  out: string;
  name?: string;
  force?: boolean;
}

export interface ConvertLlama2cResult extends WrittenModelDir {
  source: Llama2cConfig;
  spec: LlamaDirSpec;
  parameters: number;
}

export function llama2cSpec(c: Llama2cConfig): LlamaDirSpec {
  const headDim = c.dim / c.heads;
  return {
    layers: c.layers,
    heads: c.heads,
    kvHeads: c.kvHeads,
    headDim,
    hidden: c.dim,
    vocabSize: c.vocabSize,
    kvDtype: 'float32',
    rope: uniformModelRope({ theta: LLAMA2C_ROPE_THETA, rotaryDim: headDim, layout: 'half' }, c.layers),
    maxPositions: c.seqLen,
    bosTokenId: BOS_ID,
    eosTokenId: EOS_ID,
  };
}

export async function convertLlama2c(opts: ConvertLlama2cOptions): Promise<ConvertLlama2cResult> {
  checkOutput(opts.out, opts.force);
  const ckpt = await readLlama2cCheckpoint(opts.checkpoint);
  const vocab = await readLlama2cTokenizer(opts.tokenizer, ckpt.config.vocabSize);
  const spec = llama2cSpec(ckpt.config);
  const weights = toHfLlamaWeights(ckpt);
  const written = await writeLlamaModelDir(opts.out, {
    weights,
    spec,
    rmsNormEps: LLAMA2C_RMS_NORM_EPS,
    tokenizerJson: hfTokenizerJson(vocab),
    tokenizerConfig: hfTokenizerConfig({ modelMaxLength: ckpt.config.seqLen }),
    name: opts.name ?? 'stories260k',
    force: opts.force,
  });
  const parameters =
    weights.embedTokens.length +
    weights.finalNorm.length +
    (weights.lmHead?.length ?? 0) +
    weights.layers.reduce((n, l) => n + Object.values(l).reduce((m, a: Float32Array) => m + a.length, 0), 0);
  return { ...written, source: ckpt.config, spec, parameters };
}
