// Tested by test/dynamo/calibrate-export.test.ts.
/**
 * The dynamo profile: a directory with kvtc-dynamo.json (schema.ts DynamoManifestSchema) and
 * kvtc-dynamo.safetensors (per basis, float32: `layers.{l}.{key|value}.mean` [features],
 * `.projection` [features, pca_components] row-major, `.variances` [pca_components]).
 * Everything is checked at read time — schema, bounds, the ranges the kernels can run, tensor
 * file size and sha256, shapes, finite values, orthonormal projection columns — so a profile
 * that reads is one the emulated (and the real) kernels can run.
 */
import { existsSync, statSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { readWholeFile } from '../io/read-whole.js';
import { basename, dirname, join } from 'node:path';
import { KvtcError } from '../errors.js';
import { sha256 } from '../io/hash.js';
import { f32, parseSafetensors, serializeSafetensors, toTypedArray, type SafetensorsFile, type TensorEntry } from '../io/safetensors.js';
import { formatZodIssues } from '../validation.js';
import { checkOrthonormal } from '../profile/orthonormality.js';
import { PROFILE_LIMITS } from '../profile/limits.js';
import { writeProfileFiles } from '../profile/write.js';
import type { KvKind } from '../codec/types.js';
import type { DynamoBasis } from './fit.js';
import { checkRanges, rowBytes, type KvtcTypeRange } from './kernels.js';
import {
  DYNAMO_MANIFEST_FILE,
  DYNAMO_PROFILE_FORMAT,
  DYNAMO_PROFILE_VERSION,
  DYNAMO_TENSORS_FILE,
  DynamoManifestSchema,
  LIMITS,
  type DynamoManifest,
  type DynamoManifestDraft,
} from './schema.js';

export interface DynamoProfile {
  dir: string;
  manifest: DynamoManifest;
  bases: DynamoBasis[];
}

/**
 * max |VᵀV − I| a projection may have. Looser than a kvtc profile's 1e-4 (PROFILE_LIMITS.orthoTolerance)
 * on purpose: it is the bound Dynamo profiles have been read with since their format version 1
 * (tightening it would refuse profiles that read today), and the kernels quantize every
 * coefficient to FP8 E4M3 or IntX, whose rounding (2^-4 relative for E4M3) dwarfs a 1e-3
 * departure from orthonormality, while kvtc's own codec keeps up to 16-bit coefficients.
 */
export const DYNAMO_ORTHO_TOLERANCE = 1e-3;

export function basisTensorNames(layer: number, kind: KvKind) {
  const p = `layers.${layer}.${kind}`;
  return { mean: `${p}.mean`, projection: `${p}.projection`, variances: `${p}.variances` };
}

function invalid(dir: string, message: string, context: Record<string, unknown> = {}): KvtcError {
  return new KvtcError('PROFILE_INVALID', `dynamo profile ${dir}: ${message}`, {
    fix: 'Re-create it with `kvtc calibrate --target dynamo` (a dynamo profile is a directory with kvtc-dynamo.json and kvtc-dynamo.safetensors).',
    context: { profile: dir, ...context },
  });
}

/** Builds the manifest and the tensors file (deterministic for the same inputs). */
export function serializeDynamoProfile(
  draft: DynamoManifestDraft,
  bases: DynamoBasis[],
): { manifest: DynamoManifest; tensors: Uint8Array } {
  const entries = new Map<string, TensorEntry>();
  const baseEntries = bases.map((b, index) => {
    const names = basisTensorNames(b.layer, b.kind);
    entries.set(names.mean, f32(b.mean, [b.features]));
    entries.set(names.projection, f32(b.projection, [b.features, b.pca_components]));
    entries.set(names.variances, f32(b.variances, [b.pca_components]));
    return {
      index,
      kind: b.kind,
      layer: b.layer,
      features: b.features,
      pca_components: b.pca_components,
      budget_bytes: b.budget_bytes,
      bytes_per_block: b.bytes_per_block,
      ranges: b.ranges.map((r) => ({ ...r })) as DynamoManifest['bases'][number]['ranges'],
      tensors: names,
    };
  });
  const tensors = serializeSafetensors(entries, { producer: draft.producer.name, format: DYNAMO_PROFILE_FORMAT });
  const digest = sha256(tensors);
  const manifest: DynamoManifest = {
    ...draft,
    profile_id: digest.slice(0, 16),
    bases: baseEntries,
    tensors: { file: DYNAMO_TENSORS_FILE, sha256: digest, bytes: tensors.byteLength },
  };
  const parsed = DynamoManifestSchema.safeParse(manifest);
  if (!parsed.success)
    throw new KvtcError('INTERNAL', `kvtc produced a dynamo manifest that fails its own schema:\n${formatZodIssues(parsed.error)}`);
  checkManifest('(new profile)', parsed.data);
  return { manifest, tensors };
}

export function isDynamoProfileDir(dir: string): boolean {
  return existsSync(join(dir, DYNAMO_MANIFEST_FILE));
}

/**
 * Writes the two files with the profile writer's same-job policy (src/profile/write.ts
 * writeProfileFiles: tensors first, then the manifest that names their sha256, each atomically;
 * nothing else in the directory is touched). An existing dynamo profile is replaced only with
 * `force` or when it is a run of the same job (model, block, settings, data); an identical one
 * is left as it is (`unchanged`).
 */
export async function writeDynamoProfile(
  dir: string,
  draft: DynamoManifestDraft,
  bases: DynamoBasis[],
  opts: { force?: boolean } = {},
): Promise<DynamoManifest & { unchanged?: boolean; replaced?: boolean }> {
  const { manifest, tensors } = serializeDynamoProfile(draft, bases);
  const out = await writeProfileFiles(
    dir,
    { manifestFile: DYNAMO_MANIFEST_FILE, tensorsFile: DYNAMO_TENSORS_FILE, manifest, tensors },
    {
      job: (m) => [m.model.fingerprint, m.block, m.settings, m.calibration.sources],
      readManifest: async (d) => (await readDynamoManifest(d)).manifest,
      describe: (existing) => `a dynamo profile${existing ? ' of another model, block size, data or settings' : ' that kvtc cannot read'}`,
    },
    opts.force,
  );
  return out.unchanged ? { ...manifest, unchanged: true } : { ...manifest, replaced: out.replaced };
}

/** Resolves a profile argument (directory or its manifest) to the directory. */
export function dynamoProfileDir(path: string): string {
  if (existsSync(path) && statSync(path).isFile() && basename(path) === DYNAMO_MANIFEST_FILE) return dirname(path);
  return path;
}

/** Reads a bounded JSON file, or throws `fail(message)`. */
export async function readBoundedJson(file: string, fail: (m: string) => KvtcError): Promise<unknown> {
  let size: number;
  try {
    size = statSync(file).size;
  } catch (e) {
    throw fail(`cannot read ${basename(file)} (${(e as NodeJS.ErrnoException).code ?? (e as Error).message})`);
  }
  if (size > LIMITS.jsonBytes) throw fail(`${basename(file)} is ${size} bytes, more than the ${LIMITS.jsonBytes} a manifest may have`);
  try {
    return JSON.parse(await readFile(file, 'utf8'));
  } catch (e) {
    throw fail(`${basename(file)} is not valid JSON (${(e as Error).message})`);
  }
}

/** Cross-field checks the schema cannot express. */
function checkManifest(dir: string, m: DynamoManifest): void {
  const b = m.block;
  const want = m.model.kv_heads * m.model.head_dim * b.tokens_per_block;
  if (b.features !== want)
    throw invalid(
      dir,
      `block.features is ${b.features}, but kv_heads × head_dim × tokens_per_block = ${m.model.kv_heads} × ${m.model.head_dim} × ${b.tokens_per_block} = ${want}`,
    );
  if (m.bases.length !== 2 * m.model.layers)
    throw invalid(dir, `${m.bases.length} bases for ${m.model.layers} layers (one per layer for keys and one for values expected)`);
  const seen = new Set<string>();
  for (const [i, e] of m.bases.entries()) {
    const where = `basis ${i} (layer ${e.layer} ${e.kind})`;
    if (e.index !== i) throw invalid(dir, `${where} has index ${e.index}`);
    if (e.layer >= m.model.layers) throw invalid(dir, `${where}: layer out of range [0, ${m.model.layers})`);
    const key = `${e.layer}:${e.kind}`;
    if (seen.has(key)) throw invalid(dir, `${where} is listed twice`);
    seen.add(key);
    if (e.features !== b.features)
      throw invalid(dir, `${where} has ${e.features} features; a block of ${b.tokens_per_block} tokens has ${b.features}`);
    if (e.pca_components > e.features) throw invalid(dir, `${where} has pca_components ${e.pca_components} > features ${e.features}`);
    try {
      checkRanges(e.ranges as KvtcTypeRange[], e.pca_components, where);
    } catch (err) {
      throw invalid(dir, (err as Error).message);
    }
    if (rowBytes(e.ranges as KvtcTypeRange[]) !== e.bytes_per_block)
      throw invalid(
        dir,
        `${where}: bytes_per_block ${e.bytes_per_block} does not match its ranges (${rowBytes(e.ranges as KvtcTypeRange[])})`,
      );
  }
}

/** Reads and validates the manifest only. */
export async function readDynamoManifest(pathArg: string): Promise<{ dir: string; manifest: DynamoManifest }> {
  const dir = dynamoProfileDir(pathArg);
  if (!existsSync(dir))
    throw new KvtcError('PROFILE_INVALID', `dynamo profile ${dir} does not exist`, {
      fix: 'Pass a directory written by `kvtc calibrate --target dynamo`.',
      context: { profile: dir },
    });
  const file = join(dir, DYNAMO_MANIFEST_FILE);
  if (!existsSync(file)) {
    if (existsSync(join(dir, 'kvtc-profile.json'))) {
      throw new KvtcError(
        'PROFILE_INVALID',
        `${dir} is a kvtc profile (for kvtc's own codec), not a dynamo profile: Dynamo's kernels cannot run its un-rotated keys, static ranges and fp16-scaled groups`,
        {
          fix: 'Calibrate one for the Dynamo kernels with `kvtc calibrate --target dynamo --model MODEL --out DIR`, then export that.',
          context: { profile: dir },
        },
      );
    }
    throw invalid(dir, `no ${DYNAMO_MANIFEST_FILE} in it`);
  }
  const raw = (await readBoundedJson(file, (m) => invalid(dir, m))) as {
    format?: unknown;
    format_version?: unknown;
    producer?: { version?: unknown };
  };
  if (raw?.format !== DYNAMO_PROFILE_FORMAT)
    throw invalid(
      dir,
      `${DYNAMO_MANIFEST_FILE} is not a dynamo profile (format is ${JSON.stringify(raw?.format)}, expected "${DYNAMO_PROFILE_FORMAT}")`,
    );
  if (raw.format_version !== DYNAMO_PROFILE_VERSION) {
    const v = raw.format_version;
    throw new KvtcError(
      'PROFILE_VERSION',
      `dynamo profile ${dir} has format version ${JSON.stringify(v)}; this kvtc reads version ${DYNAMO_PROFILE_VERSION}`,
      {
        fix:
          typeof v === 'number' && v > DYNAMO_PROFILE_VERSION
            ? `It was written by kvtc ${String(raw.producer?.version ?? 'newer')}: upgrade kvtc to read it.`
            : 'Re-calibrate with this kvtc (`kvtc calibrate --target dynamo`).',
        context: { profile: dir, format_version: v },
      },
    );
  }
  const parsed = DynamoManifestSchema.safeParse(raw);
  if (!parsed.success) throw invalid(dir, `${DYNAMO_MANIFEST_FILE} does not match the schema:\n${formatZodIssues(parsed.error)}`);
  checkManifest(dir, parsed.data);
  return { dir, manifest: parsed.data };
}

/** Upper bound of the tensors file size implied by a validated list of bases. */
export function expectedTensorBytes(bases: readonly { features: number; pca_components: number }[], withVariances: boolean): number {
  let s = 0;
  for (const b of bases) s += 4 * (b.features + b.features * b.pca_components + (withVariances ? b.pca_components : 0));
  return s;
}

/** Reads a tensors file whose size and sha256 a validated manifest gives (bounded before reading). */
export async function readTensorsFile(
  file: string,
  ref: { sha256: string; bytes: number },
  maxBytes: number,
  fail: (m: string) => KvtcError,
): Promise<SafetensorsFile> {
  if (!existsSync(file)) throw fail(`tensor file ${basename(file)} is missing`);
  const size = statSync(file).size;
  if (size !== ref.bytes) throw fail(`${basename(file)} is ${size} bytes, the manifest says ${ref.bytes} (truncated or replaced?)`);
  if (size > maxBytes) throw fail(`${basename(file)} is ${size} bytes, more than its tensors can take (${maxBytes})`);
  const buf = await readWholeFile(file);
  if (sha256(buf) !== ref.sha256) throw fail(`${basename(file)} does not match the sha256 in the manifest (modified or corrupt)`);
  try {
    return parseSafetensors(buf, file);
  } catch (e) {
    throw fail((e as Error).message);
  }
}

/** A float32 tensor of the given shape with finite values, or throws. */
export function getF32(st: SafetensorsFile, name: string, shape: number[], fail: (m: string) => KvtcError): Float32Array {
  const t = st.tensors.get(name);
  if (!t) throw fail(`tensor ${name} is missing`);
  if (t.dtype !== 'F32' || t.shape.join(',') !== shape.join(','))
    throw fail(`tensor ${name} is ${t.dtype}[${t.shape}], expected F32[${shape}]`);
  const a = toTypedArray(t) as Float32Array;
  for (let i = 0; i < a.length; i++) if (!Number.isFinite(a[i])) throw fail(`tensor ${name} has a non-finite value at ${i}`);
  return a;
}

/**
 * The projection's columns must be orthonormal: the kernels decode with the same matrix
 * transposed, so anything else reconstructs a distorted block. The profile reader's check
 * (src/profile/orthonormality.ts: the full Gram matrix up to its work bound, the sampled O(p·r)
 * check above it) at DYNAMO_ORTHO_TOLERANCE; `seed` picks the sampled pairs and probes.
 */
export function checkProjection(P: Float32Array, features: number, k: number, fail: (m: string) => KvtcError, seed = 0): void {
  const o = checkOrthonormal(P, features, k, { tolerance: DYNAMO_ORTHO_TOLERANCE, fullWork: PROFILE_LIMITS.fullOrthoWork, seed });
  if (!o.ok)
    throw fail(
      `projection columns are not orthonormal: |VᵀV − I| reaches ${o.error.toExponential(2)}${o.sampled ? ' (sampled)' : ''}, tolerance ${DYNAMO_ORTHO_TOLERANCE}`,
    );
}

/** Reads and checks a whole dynamo profile. */
export async function readDynamoProfile(pathArg: string): Promise<DynamoProfile> {
  const { dir, manifest } = await readDynamoManifest(pathArg);
  const fail = (m: string) => invalid(dir, m);
  const st = await readTensorsFile(
    join(dir, manifest.tensors.file),
    manifest.tensors,
    expectedTensorBytes(manifest.bases, true) + 2 ** 20,
    fail,
  );
  const bases = manifest.bases.map((e): DynamoBasis => {
    const mean = getF32(st, e.tensors.mean, [e.features], fail);
    const projection = getF32(st, e.tensors.projection, [e.features, e.pca_components], fail);
    checkProjection(projection, e.features, e.pca_components, (m) => fail(`basis ${e.index} (layer ${e.layer} ${e.kind}): ${m}`), e.index);
    return {
      kind: e.kind,
      layer: e.layer,
      features: e.features,
      pca_components: e.pca_components,
      mean,
      projection,
      ranges: e.ranges.map((r) => ({ ...r })),
      variances: getF32(st, e.tensors.variances, [e.pca_components], fail),
      budget_bytes: e.budget_bytes,
      bytes_per_block: e.bytes_per_block,
    };
  });
  return { dir, manifest, bases };
}
