// Tested by test/dynamo/calibrate-export.test.ts.
/**
 * `kvtc export --format dynamo`: a dynamo profile → what NVIDIA Dynamo's KVTC kernels load.
 *
 *   dynamo-kvtc.safetensors  per (layer, kind): `layers.{l}.{key|value}.mean` F32 [features] and
 *                            `layers.{l}.{key|value}.projection` F32 [features, pca_components],
 *                            row-major — KvtcConfig's `mean` and `projection` (kvtc_kernels.rs).
 *   dynamo-kvtc.json         one entry per KvtcConfig: features, pca_components, tensor names and
 *                            `ranges` with KvtcTypeRange's own fields (start_idx, end_idx,
 *                            quant_type "Fp8" | "IntX", int_bits); block size, layout, provenance.
 *   README.md                what the files are and how to load them into KvtcConfig::new.
 *
 * loadDynamoExport reads only those files (not the profile), validates them as untrusted input,
 * and returns the configs the emulated kernels run.
 */
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { KvtcError } from '../errors.js';
import { writeFileAtomic } from '../io/atomic.js';
import { checkOutputDir } from '../io/output.js';
import { f32, serializeSafetensors, type TensorEntry } from '../io/safetensors.js';
import { formatZodIssues } from '../validation.js';
import { PRODUCER, VERSION } from '../version.js';
import { basisConfig, type DynamoSetup } from './dynamo-codec.js';
import { checkRanges, rowBytes, type KvtcTypeRange } from './kernels.js';
import {
  basisTensorNames,
  checkProjection,
  expectedTensorBytes,
  getF32,
  readBoundedJson,
  readDynamoProfile,
  readTensorsFile,
} from './profile.js';
import { sha256 as sha256Hex } from '../io/hash.js';
import {
  DYNAMO_EXPORT_FORMAT,
  DYNAMO_EXPORT_VERSION,
  DynamoExportSchema,
  EXPORT_CONFIG_FILE,
  EXPORT_README_FILE,
  EXPORT_TENSORS_FILE,
  type DynamoExport,
} from './schema.js';

export const KERNELS_SOURCE = {
  repository: 'ai-dynamo/dynamo',
  folder: 'lib/kvbm-kernels',
  api: 'kvbm_kernels::kvtc_kernels::KvtcConfig (feature "kvtc_kernels")',
};

export interface ExportResult {
  out: string;
  profile: string;
  profile_id: string;
  files: string[];
  configs: number;
  tokens_per_block: number;
  features: number;
  tensor_bytes: number;
}

/** Writes the export of a dynamo profile into `outDir` (created if needed). */
export async function exportDynamo(profileDir: string, outDir: string, opts: { force?: boolean } = {}): Promise<ExportResult> {
  const profile = await readDynamoProfile(profileDir);
  checkOutputDir(outDir);
  const files = [EXPORT_TENSORS_FILE, EXPORT_CONFIG_FILE, EXPORT_README_FILE];
  const existing = files.filter((f) => existsSync(join(outDir, f)));
  if (existing.length > 0 && !opts.force) {
    throw new KvtcError('OUTPUT_EXISTS', `output ${outDir} already holds ${existing.join(', ')}`, {
      fix: 'Pass --force to overwrite those files (nothing else in the directory is touched), or choose another --out.',
      context: { out: outDir, files: existing },
    });
  }
  const m = profile.manifest;
  const entries = new Map<string, TensorEntry>();
  const configs = profile.bases.map((b) => {
    const names = basisTensorNames(b.layer, b.kind);
    entries.set(names.mean, f32(b.mean, [b.features]));
    entries.set(names.projection, f32(b.projection, [b.features, b.pca_components]));
    return {
      layer: b.layer,
      kind: b.kind,
      features: b.features,
      pca_components: b.pca_components,
      mean: names.mean,
      projection: names.projection,
      ranges: b.ranges.map((r) => ({ ...r })),
      bytes_per_block: b.bytes_per_block,
    };
  });
  const tensors = serializeSafetensors(entries, { producer: PRODUCER, format: DYNAMO_EXPORT_FORMAT, profile_id: m.profile_id });
  const doc: DynamoExport = {
    format: DYNAMO_EXPORT_FORMAT,
    format_version: DYNAMO_EXPORT_VERSION,
    producer: { name: PRODUCER, version: VERSION },
    profile_id: m.profile_id,
    kernels: { ...KERNELS_SOURCE, fp8_path: m.block.fp8_path },
    model: m.model,
    tokens_per_block: m.block.tokens_per_block,
    block_layout: m.block.layout,
    num_kv_heads: m.model.kv_heads,
    head_dim: m.model.head_dim,
    features: m.block.features,
    tensors: { file: EXPORT_TENSORS_FILE, sha256: sha256Hex(tensors), bytes: tensors.byteLength },
    configs: configs as DynamoExport['configs'],
    measured: {
      ratio_rows: m.measured.ratio_rows,
      ratio_calls: m.measured.ratio_calls,
      blocks_per_call: m.measured.blocks_per_call,
      rel_error: m.measured.rel_error,
    },
  };
  const parsed = DynamoExportSchema.safeParse(doc);
  if (!parsed.success)
    throw new KvtcError('INTERNAL', `kvtc produced a Dynamo export that fails its own schema:\n${formatZodIssues(parsed.error)}`);
  await writeFileAtomic(join(outDir, EXPORT_TENSORS_FILE), tensors);
  await writeFileAtomic(join(outDir, EXPORT_README_FILE), exportReadme(doc));
  await writeFileAtomic(join(outDir, EXPORT_CONFIG_FILE), `${JSON.stringify(doc, null, 2)}\n`);
  return {
    out: outDir,
    profile: profile.dir,
    profile_id: m.profile_id,
    files: files.map((f) => join(outDir, f)),
    configs: configs.length,
    tokens_per_block: doc.tokens_per_block,
    features: doc.features,
    tensor_bytes: tensors.byteLength,
  };
}

function invalidExport(dir: string, message: string, context: Record<string, unknown> = {}): KvtcError {
  return new KvtcError('PROFILE_INVALID', `Dynamo export ${dir}: ${message}`, {
    fix: 'Re-create it with `kvtc export --format dynamo PROFILE --out DIR` (it holds dynamo-kvtc.json, dynamo-kvtc.safetensors and README.md).',
    context: { export: dir, ...context },
  });
}

export interface LoadedExport {
  dir: string;
  doc: DynamoExport;
  setup: DynamoSetup;
}

/**
 * Reads an export as the Dynamo side would, trusting nothing: bounded JSON, schema, the ranges
 * the kernels can run, features = kv_heads · head_dim · tokens_per_block, tensor file size and
 * sha256, F32 shapes, finite values, orthonormal projections. `expect` (optional) must match.
 */
export async function loadDynamoExport(
  dir: string,
  expect: { tokensPerBlock?: number; kvHeads?: number; headDim?: number; layers?: number } = {},
): Promise<LoadedExport> {
  const fail = (m: string, c: Record<string, unknown> = {}) => invalidExport(dir, m, c);
  if (!existsSync(dir))
    throw new KvtcError('PROFILE_INVALID', `Dynamo export ${dir} does not exist`, {
      fix: 'Pass the --out directory of `kvtc export --format dynamo`.',
      context: { export: dir },
    });
  const file = join(dir, EXPORT_CONFIG_FILE);
  if (!existsSync(file)) throw fail(`no ${EXPORT_CONFIG_FILE} in it`);
  const raw = (await readBoundedJson(file, (m) => fail(m))) as { format?: unknown; format_version?: unknown };
  if (raw?.format !== DYNAMO_EXPORT_FORMAT)
    throw fail(`${EXPORT_CONFIG_FILE} is not a Dynamo export (format ${JSON.stringify(raw?.format)}, expected "${DYNAMO_EXPORT_FORMAT}")`);
  if (raw.format_version !== DYNAMO_EXPORT_VERSION) {
    throw new KvtcError(
      'PROFILE_VERSION',
      `Dynamo export ${dir} has format version ${JSON.stringify(raw.format_version)}; this kvtc reads version ${DYNAMO_EXPORT_VERSION}`,
      { fix: 'Re-export it with this kvtc.', context: { export: dir } },
    );
  }
  const parsed = DynamoExportSchema.safeParse(raw);
  if (!parsed.success) throw fail(`${EXPORT_CONFIG_FILE} does not match the schema:\n${formatZodIssues(parsed.error)}`);
  const doc = parsed.data;
  const want = doc.num_kv_heads * doc.head_dim * doc.tokens_per_block;
  if (doc.features !== want)
    throw fail(
      `features is ${doc.features}, but num_kv_heads × head_dim × tokens_per_block = ${doc.num_kv_heads} × ${doc.head_dim} × ${doc.tokens_per_block} = ${want}`,
    );
  if (doc.num_kv_heads !== doc.model.kv_heads || doc.head_dim !== doc.model.head_dim)
    throw fail('num_kv_heads / head_dim disagree with the model entry');
  const mismatch = (what: string, got: number, exp: number) =>
    new KvtcError('PROFILE_MISMATCH', `Dynamo export ${dir} is for ${what} ${got}, expected ${exp}`, {
      fix: `Export a profile calibrated with that ${what} (\`kvtc calibrate --target dynamo${what === 'tokens_per_block' ? ` --block-tokens ${exp}` : ''}\`).`,
      context: { export: dir, [what]: got, expected: exp },
    });
  if (expect.tokensPerBlock !== undefined && expect.tokensPerBlock !== doc.tokens_per_block)
    throw mismatch('tokens_per_block', doc.tokens_per_block, expect.tokensPerBlock);
  if (expect.kvHeads !== undefined && expect.kvHeads !== doc.num_kv_heads) throw mismatch('num_kv_heads', doc.num_kv_heads, expect.kvHeads);
  if (expect.headDim !== undefined && expect.headDim !== doc.head_dim) throw mismatch('head_dim', doc.head_dim, expect.headDim);
  if (expect.layers !== undefined && expect.layers !== doc.model.layers) throw mismatch('layers', doc.model.layers, expect.layers);
  if (doc.configs.length !== 2 * doc.model.layers)
    throw fail(`${doc.configs.length} configs for ${doc.model.layers} layers (one per layer for keys and one for values expected)`);
  const seen = new Set<string>();
  for (const [i, c] of doc.configs.entries()) {
    const where = `config ${i} (layer ${c.layer} ${c.kind})`;
    if (c.layer >= doc.model.layers) throw fail(`${where}: layer out of range`);
    if (seen.has(`${c.layer}:${c.kind}`)) throw fail(`${where} is listed twice`);
    seen.add(`${c.layer}:${c.kind}`);
    if (c.features !== doc.features)
      throw fail(`${where} has ${c.features} features; blocks of ${doc.tokens_per_block} tokens have ${doc.features}`, { config: i });
    if (c.pca_components > c.features) throw fail(`${where}: pca_components ${c.pca_components} > features ${c.features}`);
    try {
      checkRanges(c.ranges as KvtcTypeRange[], c.pca_components, where);
    } catch (e) {
      throw fail((e as Error).message, { config: i });
    }
    if (rowBytes(c.ranges as KvtcTypeRange[]) !== c.bytes_per_block)
      throw fail(`${where}: bytes_per_block ${c.bytes_per_block} does not match its ranges`);
  }
  const st = await readTensorsFile(join(dir, doc.tensors.file), doc.tensors, expectedTensorBytes(doc.configs, false) + 2 ** 20, (m) =>
    fail(m),
  );
  const bases = doc.configs.map((c) => {
    const mean = getF32(st, c.mean, [c.features], (m) => fail(m));
    const projection = getF32(st, c.projection, [c.features, c.pca_components], (m) => fail(m));
    checkProjection(projection, c.features, c.pca_components, (m) => fail(`config ${c.layer} ${c.kind}: ${m}`));
    return {
      layer: c.layer,
      kind: c.kind,
      config: basisConfig({
        mean,
        projection,
        features: c.features,
        pca_components: c.pca_components,
        ranges: c.ranges as KvtcTypeRange[],
      }),
    };
  });
  return {
    dir,
    doc,
    setup: {
      shape: {
        layers: doc.model.layers,
        kvHeads: doc.num_kv_heads,
        headDim: doc.head_dim,
        blockTokens: doc.tokens_per_block,
        layout: doc.block_layout,
      },
      fp8Path: doc.kernels.fp8_path,
      bases,
    },
  };
}

function exportReadme(d: DynamoExport): string {
  const ex = d.configs[0];
  const ranges = ex.ranges
    .map((r) => `${r.quant_type}${r.quant_type === 'IntX' ? `(${r.int_bits})` : ''} [${r.start_idx}, ${r.end_idx})`)
    .join(', ');
  const layoutText =
    d.block_layout === 'NHD'
      ? "`[tokens_per_block, num_kv_heads, head_dim]` (vLLM's NHD)"
      : '`[num_kv_heads, tokens_per_block, head_dim]` (HND)';
  return `# KVTC configuration for NVIDIA Dynamo's KVTC kernels

Written by ${d.producer.name} ${d.producer.version} (\`kvtc export --format dynamo\`) from dynamo profile ${d.profile_id},
for model **${d.model.name}** (${d.model.layers} layers, ${d.num_kv_heads} KV heads × ${d.head_dim}, fingerprint ${d.model.fingerprint}).
Kernels: ${d.kernels.repository}, \`${d.kernels.folder}\` — \`${d.kernels.api}\`.

| file | what |
|---|---|
| \`${EXPORT_TENSORS_FILE}\` | per layer and K/V: \`layers.{l}.{key,value}.mean\` F32 \`[features]\`, \`layers.{l}.{key,value}.projection\` F32 \`[features, pca_components]\`, row-major (KvtcConfig's \`mean\` and \`projection\`) |
| \`${EXPORT_CONFIG_FILE}\` | one entry per KvtcConfig: \`layer\`, \`kind\`, \`features\`, \`pca_components\`, tensor names, \`ranges\` as KvtcTypeRange (\`start_idx\`, \`end_idx\`, \`quant_type\` = \`"Fp8"\` / \`"IntX"\` (KvtcQuantType 0 / 1), \`int_bits\`), \`bytes_per_block\` |

- One kernel row is one KV block of one layer's keys **or** values: \`features\` = num_kv_heads × head_dim ×
  tokens_per_block = ${d.num_kv_heads} × ${d.head_dim} × ${d.tokens_per_block} = **${d.features}** elements, in the order ${layoutText}.
  Keys are compressed as the engine stores them (RoPE applied); the kernels apply no RoPE.
- Use the config of layer \`l\`, kind \`k\` for the block pointers of that layer's K (or V) chunks; blocks of
  another size or layout need another calibration (\`kvtc calibrate --target dynamo --block-tokens N\`).
- FP8 ranges are measured with the ${d.kernels.fp8_path === 'sm89' ? 'SM89+ intrinsic cast (Ada, Hopper, Blackwell)' : "kernels' software FP8 cast (pre-SM89 GPUs such as A100)"}; on
  ${d.kernels.fp8_path === 'sm89' ? 'Ampere the software cast saturates every |x| ≥ 248 to 448' : 'SM89+ the cast differs (it rounds 256–448 correctly)'}, so calibrate for the GPU you serve on (\`--fp8-cast\`).
- Every IntX range is a multiple of 8 / int_bits wide: the kernels' \`kvtc_range_packed_size\` and their packing
  kernel disagree for other widths. Example (layer ${ex.layer} ${ex.kind}): ${ex.pca_components} components, ${ranges}; ${ex.bytes_per_block} bytes per block
  plus 40 bytes per range per \`kvtc_compress\` call.
- \`kvtc_compress\` writes, and \`kvtc_decompress\` reads, the range headers with host-side copies, so keep the
  compressed buffer in (pinned) host memory; decompress with the same \`num_blocks\` as the compress call
  (header sizes and the min/max arrays are per batch) and the same config (the range count comes from it).
- Measured by kvtc on held-out text through an emulation of these kernels: ${d.measured.ratio_rows}x on the blocks
  (${d.measured.ratio_calls}x with the range headers of calls of ${d.measured.blocks_per_call} blocks), relative error
  ‖x̂−x‖/‖x‖ K ${d.measured.rel_error.key_mean}, V ${d.measured.rel_error.value_mean} (mean over layers).
- Check the files: \`sha256sum ${EXPORT_TENSORS_FILE}\` = \`${d.tensors.sha256}\`.

## Load into the kernels (Rust)

\`\`\`rust
// Cargo.toml: kvbm-kernels (features = ["kvtc_kernels"]), cudarc, safetensors, serde (derive), serde_json
use cudarc::driver::DevicePtr;
use kvbm_kernels::kvtc_kernels::{KvtcConfig, KvtcQuantType, KvtcTypeRange};
use safetensors::SafeTensors;

#[derive(serde::Deserialize)]
struct Range { start_idx: usize, end_idx: usize, quant_type: String, int_bits: u32 }
#[derive(serde::Deserialize)]
struct Entry { layer: usize, kind: String, features: usize, pca_components: usize, mean: String, projection: String, ranges: Vec<Range> }
#[derive(serde::Deserialize)]
struct Export { tokens_per_block: usize, features: usize, configs: Vec<Entry> }

fn f32s(bytes: &[u8]) -> Vec<f32> {
    bytes.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect()
}

let export: Export = serde_json::from_slice(&std::fs::read("${EXPORT_CONFIG_FILE}")?)?;
let file = std::fs::read("${EXPORT_TENSORS_FILE}")?;
let tensors = SafeTensors::deserialize(&file)?;
for e in &export.configs {
    let mean = stream.clone_htod(&f32s(tensors.tensor(&e.mean)?.data()))?;             // [features]
    let proj = stream.clone_htod(&f32s(tensors.tensor(&e.projection)?.data()))?;       // [features, pca_components]
    let ranges = e.ranges.iter().map(|r| KvtcTypeRange {
        start_idx: r.start_idx,
        end_idx: r.end_idx,
        quant_type: if r.quant_type == "Fp8" { KvtcQuantType::Fp8 } else { KvtcQuantType::IntX },
        int_bits: r.int_bits,
    }).collect();
    let (mean_ptr, _gm) = mean.device_ptr(&stream);
    let (proj_ptr, _gp) = proj.device_ptr(&stream);
    let config = KvtcConfig::new(mean_ptr as *const f32, proj_ptr as *const f32, e.features, e.pca_components, ranges);
    // keep mean/proj alive, then per call: kvtc_compress(block_ptrs of layer e.layer's e.kind chunks, &config,
    // pinned_host_output, workspace, minmax, num_blocks, e.features, TensorDataType::BF16, cublas, stream)
}
\`\`\`

## Inspect (Python)

\`\`\`python
import json
from safetensors.numpy import load_file
cfg = json.load(open("${EXPORT_CONFIG_FILE}"))
t = load_file("${EXPORT_TENSORS_FILE}")
for e in cfg["configs"]:
    mean, proj = t[e["mean"]], t[e["projection"]]        # float32 [features], [features, pca_components]
    # block: one K or V block of layer e["layer"], flattened in the layout above ([features])
    # coeffs = (block.astype("float32") - mean) @ proj   is what the compress SGEMM computes for it
\`\`\`
`;
}
