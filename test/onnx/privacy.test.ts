import { mkdirSync, mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { REPO, runKvtc, runTs } from '../helpers/process.js';

/** Every file under `dir`, relative. */
function files(dir: string): string[] {
  return readdirSync(dir, { recursive: true, withFileTypes: true })
    .filter((d) => d.isFile())
    .map((d) => join(d.parentPath, d.name).slice(dir.length + 1));
}

describe('ONNX Runtime telemetry is off', () => {
  const root = mkdtempSync(join(tmpdir(), 'kvtc-privacy-'));
  afterAll(() => rmSync(root, { recursive: true, force: true }));

  /** A fresh HOME and TMPDIR, and an environment without the opt-out. */
  function freshEnv(name: string) {
    const home = join(root, name, 'home');
    const tmp = join(root, name, 'tmp');
    mkdirSync(home, { recursive: true });
    mkdirSync(tmp, { recursive: true });
    const env: NodeJS.ProcessEnv = { ...process.env, HOME: home, TMPDIR: tmp };
    delete env.ORT_DISABLE_TELEMETRY;
    // ONNX Runtime suppresses its telemetry by itself under CI: remove those markers, so these
    // tests see what a user's machine does (the control below proves it).
    for (const k of [
      'CI',
      'CONTINUOUS_INTEGRATION',
      'GITHUB_ACTIONS',
      'TF_BUILD',
      'BUILD_ID',
      'BUILD_NUMBER',
      'JENKINS_URL',
      'GITLAB_CI',
      'TRAVIS',
      'CIRCLECI',
      'BUILDKITE',
      'TEAMCITY_VERSION',
      'CODEBUILD_BUILD_ID',
    ])
      delete env[k];
    return { home, tmp, env, dir: join(root, name) };
  }

  it('a session created through kvtc writes no mat-debug log, device id or event store', async () => {
    const { env, dir } = freshEnv('session');
    const script = join(dir, 'session.mts');
    const { writeFileSync } = await import('node:fs');
    writeFileSync(
      script,
      `import { createSession } from ${JSON.stringify(join(REPO, 'src/onnx/session.ts'))};\n` +
        `const s = await createSession(${JSON.stringify(join(REPO, 'models/stories260k/onnx/model.onnx'))});\n` +
        `console.log(s.inputNames.length > 0 ? 'ok' : 'no inputs');\nawait s.release();\n`,
    );
    const r = await runTs(script, [], { env });
    expect(r.stderr).toBe('');
    expect(r.stdout.trim()).toBe('ok');
    expect(files(dir).filter((f) => f !== 'session.mts')).toEqual([]);
  });

  it('kvtc calibrate (sessions on the main thread and ORT graphs for fitting) leaves nothing under HOME or TMPDIR', async () => {
    const { env, dir } = freshEnv('calibrate');
    const out = join(dir, 'profile');
    const r = await runKvtc(
      ['calibrate', '--tokens', '512', '--heldout', '256', '--report-tokens', '256', '--grouping', 'layer', '--out', out, '--json'],
      { env, deadlineMs: 120_000 },
    );
    expect(r.code, r.stderr).toBe(0);
    expect(files(dir).sort()).toEqual(['profile/kvtc-profile.json', 'profile/kvtc-profile.safetensors']);
  });

  it('control: onnxruntime-node 1.29 used directly, without the opt-out, does write them (so the checks above can fail)', async () => {
    const { env, dir } = freshEnv('control');
    const script = join(dir, 'bare.mts');
    const { writeFileSync } = await import('node:fs');
    writeFileSync(
      script,
      `const ort = await import(${JSON.stringify(join(REPO, 'node_modules/onnxruntime-node/dist/index.js'))});\n` +
        `const s = await ort.InferenceSession.create(${JSON.stringify(join(REPO, 'models/stories260k/onnx/model.onnx'))});\nawait s.release();\n`,
    );
    const r = await runTs(script, [], { env, cwd: REPO });
    expect(r.code, r.stderr).toBe(0);
    expect(files(dir).some((f) => /mat-debug-\d+\.log$/.test(f) || f.includes('.onnxruntime'))).toBe(true);
  });

  it('a user who sets ORT_DISABLE_TELEMETRY themselves keeps their value', async () => {
    const { env, dir } = freshEnv('user');
    const script = join(dir, 'env.mts');
    const { writeFileSync } = await import('node:fs');
    writeFileSync(
      script,
      `await import(${JSON.stringify(join(REPO, 'src/onnx/privacy.ts'))});\nconsole.log(process.env.ORT_DISABLE_TELEMETRY);\n`,
    );
    expect((await runTs(script, [], { env: { ...env, ORT_DISABLE_TELEMETRY: '0' } })).stdout.trim()).toBe('0');
    expect((await runTs(script, [], { env })).stdout.trim()).toBe('1');
  });
});
