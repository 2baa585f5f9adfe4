// Tested by test/api/package.test.ts.
/**
 * kvtc as a library: the same functions the CLI calls, typed (docs/api.md). Everything here takes
 * options and returns results; nothing prints or exits. Errors are KvtcError with a stable `code`,
 * a `fix` and a `context`. Codecs hold ONNX Runtime sessions (and, for large caches, a worker
 * thread): the helpers below release them; a codec from codecFromProfile must be release()d.
 */
export { VERSION } from './version.js';
export { KvtcError, UsageError, InterruptedError, InternalError, type ErrorCode } from './errors.js';
export { CALIBRATE_DEFAULTS, EVALUATE_DEFAULTS } from './defaults.js';
export type { ProgressEvent, ProgressFn } from './progress.js';

// Profiles
export { readProfile, readManifest, type Profile } from './profile/read.js';
export { validateProfile, type Check, type ValidateResult } from './profile/validate.js';
export { checkProfileForModel } from './profile/compat.js';
export type { Manifest } from './profile/schema.js';

// Caches and blobs
export type { KvCache, KvDtype } from './model/types.js';
export { readKvCache, writeKvCache, serializeKvCache, kvCacheFromSafetensors, type KvFile, type KvFileMeta } from './model/kv-io.js';
export { readBlobHeader, type BlobHeader } from './codec/blob.js';
export type { KvtcCodec, EncodeStats, DecodeStats } from './codec/codec.js';
export { codecFromProfile } from './profile/codec-from-profile.js';
export {
  encodeFile,
  decodeFile,
  withCodec,
  encodeCache,
  decodeBlob,
  type FileJobOptions,
  type EncodeFileResult,
  type DecodeFileResult,
  type CodecRunOptions,
} from './files.js';

// Calibration and models
export {
  calibrate,
  withCalibrateDefaults,
  MIN_RATIO,
  MAX_RATIO,
  type CalibrateInput,
  type CalibrateOptions,
  type CalibrateResult,
} from './calibrate/calibrate.js';
export { calibrateKv, type KvCalibrateInput, type KvCalibrateResult } from './calibrate/calibrate-kv.js';
export { openKvDump, readDumpSequence, type KvDump } from './calibrate/kv-dump.js';
export { parseShards, ppIndices, type ShardRequest } from './calibrate/kv-shards.js';
export { loadModel, describeModel, type LoadedModel } from './model/load.js';
export { ModelRunner } from './model/runner.js';
export type { Device } from './onnx/devices.js';

// Evaluation: what `kvtc evaluate` does (profile discovery, codec choice, the --max-drop gate), without printing
export { evaluate, checkEvaluateOptions, type EvaluateModelOptions, type ModelEvaluation } from './evaluate/evaluate.js';
export { checkMaxDrop, maxDropError, guardedCodecs, type MaxDropVerdict, type MaxDropCheck } from './evaluate/gate.js';
export { profileCandidates, findProfiles } from './evaluate/profiles.js';
export { CODEC_NAMES, defaultCodecNames, type CodecName } from './evaluate/codecs.js';
export type { EvaluateResult } from './evaluate/run.js';
