/**
 * Codec names of a ratio sweep (src/evaluate/codecs.ts sweepNames): one codec per profile, the
 * directory name added where two profiles share a target ratio, the profile id where the
 * directory names are the same too; the same profile twice is a usage error naming both paths.
 */
import { describe, expect, it } from 'vitest';
import { sweepNames } from '../../src/evaluate/codecs.js';
import { KvtcError } from '../../src/errors.js';
import type { Profile } from '../../src/profile/read.js';

/** Only the fields naming reads: the target ratio, the id and the directory. */
const profile = (dir: string, ratio: number, id: string) =>
  ({ dir, manifest: { settings: { ratio_target: ratio }, profile_id: id } }) as unknown as Profile;

describe('sweepNames', () => {
  it('names by target ratio, then directory, then profile id', () => {
    expect(sweepNames([profile('/a/m-r16', 16, '1111111111111111')])).toEqual(['kvtc']);
    expect(sweepNames([profile('/a/m-r8', 8, '1111111111111111'), profile('/a/m-r16', 16, '2222222222222222')])).toEqual([
      'kvtc@8x',
      'kvtc@16x',
    ]);
    expect(sweepNames([profile('/a/m-r16', 16, '1111111111111111'), profile('/a/g4-r16', 16, '2222222222222222')])).toEqual([
      'kvtc@16x:m-r16',
      'kvtc@16x:g4-r16',
    ]);
    expect(
      sweepNames([
        profile('/a/m-r16', 16, 'aaaaaaaabbbbbbbb'),
        profile('/b/m-r16', 16, 'ccccccccdddddddd'),
        profile('/a/m-r8', 8, 'eeeeeeeeffffffff'),
      ]),
    ).toEqual(['kvtc@16x:m-r16#aaaaaaaa', 'kvtc@16x:m-r16#cccccccc', 'kvtc@8x']);
  });

  it('refuses the same profile twice, naming both directories', () => {
    let err: unknown;
    try {
      sweepNames([profile('/a/m-r16', 16, '1111111111111111'), profile('/b/copy', 16, '1111111111111111')]);
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(KvtcError);
    expect((err as KvtcError).code).toBe('USAGE');
    expect((err as KvtcError).message).toContain('/a/m-r16');
    expect((err as KvtcError).message).toContain('/b/copy');
  });
});
