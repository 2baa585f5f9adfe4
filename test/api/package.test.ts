/**
 * kvtc as a consumer installs it: `npm pack`, `npm install` of the tarball into a fresh project,
 * `import ... from 'kvtc'` there, and a round trip that must equal `kvtc encode`/`kvtc decode`
 * byte for byte.
 */
import { execFileSync, spawnSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DEFAULT_PROFILES_DIR, WIKITEXT_TEST } from '../../src/paths.js';
import { REPO } from '../helpers/process.js';
import { kvtc } from '../model/helpers.js';

const PROFILE = join(DEFAULT_PROFILES_DIR, 'stories260k');
let root: string;
let project: string;

beforeAll(async () => {
  root = mkdtempSync(join(tmpdir(), 'kvtc-package-'));
  const env = { ...process.env, ONNXRUNTIME_NODE_INSTALL: 'skip', npm_config_loglevel: 'error' };
  const tgz = execFileSync('npm', ['pack', REPO, '--silent', '--pack-destination', root], { cwd: root, env, encoding: 'utf8' })
    .trim()
    .split('\n')
    .pop()!;
  project = join(root, 'consumer');
  mkdirSync(project);
  writeFileSync(join(project, 'package.json'), JSON.stringify({ name: 'consumer', version: '1.0.0', type: 'module', private: true }));
  execFileSync('npm', ['install', '--prefer-offline', '--no-audit', '--no-fund', join(root, tgz)], { cwd: project, env, stdio: 'ignore' });
  writeFileSync(join(root, 'text.txt'), readFileSync(WIKITEXT_TEST, 'utf8').slice(0, 20_000));
  const c = await kvtc('capture', '--text', join(root, 'text.txt'), '--max-tokens', '300', '--out', join(root, 'kv.safetensors'));
  expect(c.code, c.stderr).toBe(0);
}, 180_000);
afterAll(() => rmSync(root, { recursive: true, force: true }));

describe('the packed package', () => {
  it('imports in a fresh project and round-trips a cache bit-identically to kvtc encode/decode', async () => {
    const kv = join(root, 'kv.safetensors');
    expect((await kvtc('encode', '--profile', PROFILE, '--kv', kv, '--out', join(root, 'cli.kvtc'))).code).toBe(0);
    expect((await kvtc('decode', '--profile', PROFILE, '--in', join(root, 'cli.kvtc'), '--out', join(root, 'cli.safetensors'))).code).toBe(
      0,
    );
    const script = `
      import { VERSION, readProfile, readKvCache, encodeCache, decodeBlob, readBlobHeader, encodeFile, decodeFile, KvtcError } from 'kvtc';
      import { writeFileSync } from 'node:fs';
      const [profileDir, kv, root] = process.argv.slice(2);
      const profile = await readProfile(profileDir);
      const { cache } = await readKvCache(kv);
      const { blob, stats } = await encodeCache(profile, cache);
      writeFileSync(root + '/lib-mem.kvtc', blob);
      const header = readBlobHeader(blob);
      const back = await decodeBlob(profile, blob);
      await encodeFile(kv, { profile: profileDir, out: root + '/lib.kvtc' });
      await decodeFile(root + '/cli.kvtc', { profile: profileDir, out: root + '/lib.safetensors' });
      let typed = false;
      try { await readProfile(root + '/nope'); } catch (e) { typed = e instanceof KvtcError && e.code === 'PROFILE_INVALID'; }
      console.log(JSON.stringify({ version: VERSION, tokens: header.tokens, ratio: stats.ratioCompressed, decodedTokens: back.cache.tokens, typed }));
    `;
    writeFileSync(join(project, 'use.mjs'), script);
    const r = spawnSync(process.execPath, ['use.mjs', PROFILE, kv, root], { cwd: project, encoding: 'utf8' });
    expect(r.status, r.stderr).toBe(0);
    const out = JSON.parse(r.stdout);
    expect(out).toMatchObject({ tokens: 300, decodedTokens: 300, typed: true });
    expect(out.version).toBe(JSON.parse(readFileSync(join(REPO, 'package.json'), 'utf8')).version);
    const cliBlob = readFileSync(join(root, 'cli.kvtc'));
    expect(readFileSync(join(root, 'lib.kvtc')).equals(cliBlob)).toBe(true);
    expect(readFileSync(join(root, 'lib-mem.kvtc')).equals(cliBlob)).toBe(true);
    expect(readFileSync(join(root, 'lib.safetensors')).equals(readFileSync(join(root, 'cli.safetensors')))).toBe(true);
  });

  it('ships its types, and the bin runs from the installed package', () => {
    const pkg = join(project, 'node_modules', 'kvtc');
    expect(readFileSync(join(pkg, 'dist', 'index.d.ts'), 'utf8')).toMatch(/encodeCache/);
    const v = spawnSync(process.execPath, [join(pkg, 'bin', 'kvtc.js'), '--version'], { cwd: project, encoding: 'utf8' });
    expect(v.status, v.stderr).toBe(0);
    expect(v.stdout.trim()).toMatch(/^\d+\.\d+\.\d+/);
    // calibrate's external eigensolver (src/fit/eigen-python.ts) runs this script from the package.
    expect(readFileSync(join(pkg, 'src', 'fit', 'eigh.py'), 'utf8')).toMatch(/def solve\(/);
  });
});
