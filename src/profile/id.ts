// Tested by test/profile/id.test.ts.
/**
 * The profile id (docs/profile-format.md §2.1): a canonical text of every manifest field decoding
 * uses plus the tensor file's sha256, hashed. Blobs carry it, so a blob decodes only with the
 * profile it was encoded with.
 */
import { sha256 } from '../io/hash.js';
import { ropeIdLines } from './rope.js';
import { TENSOR_ROLES, type Manifest, type PlanEntry } from './schema.js';

/** The manifest fields the profile id covers (everything decoding uses, plus the tensor file hash). */
export interface ProfileIdFields {
  model: Pick<
    Manifest['model'],
    'layers' | 'kv_heads' | 'head_dim' | 'kv_dtype' | 'rope' | 'value_head_dim' | 'cache' | 'model_layers' | 'cache_layers'
  >;
  shard?: Manifest['shard'];
  settings: Pick<Manifest['settings'], 'sink' | 'window' | 'entropy'>;
  plans: PlanEntry[];
  tensors: Pick<Manifest['tensors'], 'sha256'>;
}

/** IEEE 754 binary64 bit pattern, big-endian, 16 lowercase hex digits. */
function f64Hex(x: number): string {
  const b = Buffer.alloc(8);
  b.writeDoubleBE(x);
  return b.toString('hex');
}

/**
 * The canonical text the profile id hashes (docs/profile-format.md §2.1): one `key value` line
 * per field, each ending in "\n"; integers in decimal, reals as their float64 bit pattern in hex.
 */
export function profileIdText(m: ProfileIdFields): string {
  const L: string[] = ['kvtc-profile-id 1', `tensors.sha256 ${m.tensors.sha256}`];
  const md = m.model;
  L.push(`model.layers ${md.layers}`, `model.kv_heads ${md.kv_heads}`, `model.head_dim ${md.head_dim}`, `model.kv_dtype ${md.kv_dtype}`);
  // Format 3's fields, each only when present: a format-2 profile's text (and id) is unchanged.
  if (md.value_head_dim !== undefined) L.push(`model.value_head_dim ${md.value_head_dim}`);
  if (md.cache !== undefined) L.push(`model.cache ${md.cache}`);
  if (md.model_layers !== undefined) L.push(`model.model_layers ${md.model_layers}`);
  if (md.cache_layers !== undefined) L.push(`model.cache_layers ${md.cache_layers.join(',')}`);
  const sh = m.shard;
  if (sh !== undefined) L.push(`shard ${sh.tp_rank} ${sh.tp_size} ${sh.pp_rank} ${sh.pp_size}`, `shard.kv_heads ${sh.kv_heads.join(',')}`);
  L.push(...ropeIdLines(m, f64Hex));
  L.push(`settings.sink ${m.settings.sink}`, `settings.window ${m.settings.window}`, `settings.entropy ${m.settings.entropy}`);
  L.push(`plans ${m.plans.length}`);
  for (const [i, p] of m.plans.entries()) {
    L.push(
      `plan ${i} index ${p.index}`,
      `plan ${i} kind ${p.kind}`,
      `plan ${i} layers ${p.layers.join(',')}`,
      `plan ${i} dim ${p.dim}`,
      `plan ${i} rank ${p.rank}`,
      `plan ${i} budget_bits ${p.budget_bits}`,
      `plan ${i} bits_per_token ${p.bits_per_token}`,
      `plan ${i} groups ${p.groups.length}`,
    );
    for (const [g, q] of p.groups.entries()) L.push(`plan ${i} group ${g} ${q.start} ${q.end} ${q.type} ${q.mode}`);
    for (const role of TENSOR_ROLES) L.push(`plan ${i} tensor ${role} ${p.tensors[role]}`);
  }
  return L.map((l) => `${l}\n`).join('');
}

/** profile_id: the first 16 hex digits of the sha256 of profileIdText. */
export function computeProfileId(m: ProfileIdFields): string {
  return sha256(profileIdText(m)).slice(0, 16);
}
