import { describe, expect, it } from 'vitest';
import { defaultProfileDir, profileOutDirs } from '../../src/calibrate/outputs.js';

describe('profile output names', () => {
  const cwd = '/work/here';
  it("default: kvtc-profiles/<model> in the working directory, not in kvtc's install", () => {
    expect(defaultProfileDir('llama', cwd)).toBe('/work/here/kvtc-profiles/llama');
    expect(profileOutDirs({ modelName: 'llama', ratios: [20], cwd })).toEqual(['/work/here/kvtc-profiles/llama']);
  });
  it('one rule for one ratio and several: an asked ratio is in the name, so --ratio 8 never lands on the default profile', () => {
    expect(profileOutDirs({ modelName: 'llama', ratios: [8], ratiosGiven: true, cwd })).toEqual(['/work/here/kvtc-profiles/llama-r8']);
    expect(profileOutDirs({ modelName: 'llama', ratios: [8, 16], ratiosGiven: true, cwd })).toEqual([
      '/work/here/kvtc-profiles/llama-r8',
      '/work/here/kvtc-profiles/llama-r16',
    ]);
  });
  it('an explicit --out is used as given for one ratio, suffixed for several', () => {
    expect(profileOutDirs({ out: '/m/llama', modelName: 'x', ratios: [8], ratiosGiven: true })).toEqual(['/m/llama']);
    expect(profileOutDirs({ out: '/m/p', modelName: 'x', ratios: [8, 20], ratiosGiven: true })).toEqual(['/m/p-r8', '/m/p-r20']);
  });
  it('a suffix (the dynamo target) keeps the names apart', () => {
    expect(profileOutDirs({ modelName: 'llama', ratios: [8], suffix: '-dynamo', cwd })).toEqual(['/work/here/kvtc-profiles/llama-dynamo']);
  });
});
