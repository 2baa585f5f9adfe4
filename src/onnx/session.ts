// Tested by test/onnx/session.test.ts, test/model/runner.test.ts and test/model/cli.test.ts (DEVICE_UNAVAILABLE).
/**
 * ONNX Runtime backend: execution-provider selection and session creation. A requested
 * provider that is not installed is a clear error, never a silent CPU fallback.
 */
import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
// Telemetry off before the native binding loads (see privacy.ts).
import './privacy.js';
import * as ort from 'onnxruntime-node';
import { KvtcError } from '../errors.js';

import { DEVICES, type Device } from './devices.js';

export { DEVICES, type Device };

export const CUDA_INSTALL_FIX =
  'Install the CUDA execution provider for onnxruntime-node: reinstall with ' +
  '`ONNXRUNTIME_NODE_INSTALL=cuda12 npm ci` (CUDA 12, downloads from NuGet), or copy ' +
  'libonnxruntime_providers_cuda.so and libonnxruntime_providers_shared.so of ONNX Runtime 1.29.0 ' +
  'into node_modules/onnxruntime-node/bin/napi-v6/linux/x64/ (see README "GPU"). Or use --device cpu.';

/** Directory holding onnxruntime-node's native binding and provider libraries. */
export function ortBinaryDir(): string {
  const require = createRequire(import.meta.url);
  const pkg = require.resolve('onnxruntime-node/package.json');
  return join(dirname(pkg), 'bin', 'napi-v6', process.platform, process.arch);
}

export function cudaProviderPath(): string {
  return join(ortBinaryDir(), 'libonnxruntime_providers_cuda.so');
}

/** Throws DEVICE_UNAVAILABLE unless `device` can run here. */
export function checkDevice(device: string): asserts device is Device {
  if (!DEVICES.includes(device as Device)) {
    throw new KvtcError('USAGE', `Unsupported device "${device}". Should be one of: ${DEVICES.join(', ')}.`);
  }
  if (device === 'cuda') {
    if (process.platform !== 'linux' || !existsSync(cudaProviderPath())) {
      throw new KvtcError(
        'DEVICE_UNAVAILABLE',
        `--device cuda: ONNX Runtime's CUDA execution provider is not installed (${cudaProviderPath()} is missing).`,
        {
          fix: CUDA_INSTALL_FIX,
          context: { device, expected: cudaProviderPath() },
        },
      );
    }
  }
}

export interface SessionOptions {
  device?: Device;
  /** Intra-op threads (0 = ORT default: all cores). */
  threads?: number;
  /**
   * ONNX Runtime's CPU memory arena (default on). The arena keeps every buffer a session has
   * used, at its largest size, until the session is released. That suits the model and the
   * calibration kernels (the same shapes chunk after chunk) but not the codec's transform graphs:
   * two per basis, seeing caches of every length and living as long as the run. With the arena,
   * one all-layer SmolLM2 profile held 2.3 GB more in 4,096-token long-context evaluation, and
   * seven of them pushed a run to 13 GB (docs/evaluation.md, "Memory"). The codec passes false.
   */
  memArena?: boolean;
}

/** Session options of the codec's transform graphs: no CPU arena (see SessionOptions.memArena). */
export const CODEC_SESSION = { memArena: false } as const;

/** Creates a session on the requested provider; a model ORT cannot load is MODEL_INVALID. */
export async function createSession(model: string | Uint8Array, opts: SessionOptions = {}): Promise<ort.InferenceSession> {
  const device = opts.device ?? 'cpu';
  checkDevice(device);
  const so: ort.InferenceSession.SessionOptions = {
    executionProviders: device === 'cuda' ? ['cuda'] : ['cpu'],
    graphOptimizationLevel: 'all',
    intraOpNumThreads: opts.threads ?? 0,
    logSeverityLevel: 3,
    ...(opts.memArena === false ? { enableCpuMemArena: false } : {}),
  };
  try {
    return typeof model === 'string' ? await ort.InferenceSession.create(model, so) : await ort.InferenceSession.create(model, so);
  } catch (e) {
    const msg = (e as Error).message ?? String(e);
    if (device === 'cuda' && /cuda|provider/i.test(msg)) {
      throw new KvtcError('DEVICE_UNAVAILABLE', `--device cuda: ONNX Runtime could not start the CUDA provider: ${msg}`, {
        fix: CUDA_INSTALL_FIX,
        cause: e,
      });
    }
    const where = typeof model === 'string' ? model : '<in-memory graph>';
    // An operator this ONNX Runtime build has no kernel for is not a corrupt file: say which.
    const op = /No Op registered for (\S+) with domain_version of (\d+)|Could not find an implementation for (\S+)/.exec(msg);
    throw new KvtcError('MODEL_INVALID', `ONNX Runtime cannot load ${where}: ${msg.split('\n')[0]}`, {
      fix: op
        ? `ONNX Runtime ${ort.env.versions?.common ?? ''} (${device} provider) has no kernel for the operator ${op[1] ?? op[3]}${op[2] ? ` at opset ${op[2]}` : ''}: re-export the model with standard operators (or another opset), or run it where that operator is supported.`
        : 'The ONNX file is corrupt or incomplete (check external data files beside it); re-export the model.',
      context: { model: where },
      cause: e,
    });
  }
}

export { ort };
