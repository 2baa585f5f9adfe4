/**
 * Model fingerprint: identifies the exact model a profile or a KV capture was made from.
 * sha256 of the config file(s) and of the ONNX graph file, plus the external data's size
 * (hashing gigabytes of weights on every load would cost more than it buys).
 */
import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { stat } from 'node:fs/promises';
import { basename } from 'node:path';

export interface ModelFingerprint {
  /** First 16 hex digits of the combined digest: short enough to print, long enough not to collide. */
  id: string;
  /** sha256 of everything below, in order. */
  sha256: string;
  /** file name → sha256 (config.json / genai_config.json / tokenizer.json ...). */
  configs: Record<string, string>;
  onnx: { file: string; sha256: string; bytes: number };
  /** Size in bytes of the external data file beside the graph, if any. */
  externalDataBytes?: number;
}

export async function sha256File(path: string): Promise<string> {
  const h = createHash('sha256');
  for await (const chunk of createReadStream(path)) h.update(chunk as Buffer);
  return h.digest('hex');
}

export async function fingerprintModel(files: { configs: string[]; onnx: string; externalData?: string }): Promise<ModelFingerprint> {
  const configs: Record<string, string> = {};
  for (const f of files.configs) configs[basename(f)] = await sha256File(f);
  const onnx = { file: basename(files.onnx), sha256: await sha256File(files.onnx), bytes: (await stat(files.onnx)).size };
  const externalDataBytes = files.externalData ? (await stat(files.externalData)).size : undefined;
  const h = createHash('sha256');
  for (const [name, digest] of Object.entries(configs).sort()) h.update(`${name}:${digest}\n`);
  h.update(`onnx:${onnx.sha256}\n`);
  if (externalDataBytes !== undefined) h.update(`external:${externalDataBytes}\n`);
  const sha256 = h.digest('hex');
  return { id: sha256.slice(0, 16), sha256, configs, onnx, ...(externalDataBytes !== undefined ? { externalDataBytes } : {}) };
}
