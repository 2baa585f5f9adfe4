/** One module of defaults (src/defaults.ts): the CLI's declared defaults and help text are its values; --heldout is --tuning-tokens. */
import type { Command } from 'commander';
import { describe, expect, it } from 'vitest';
import { memoryIO } from '../../src/cli/io.js';
import { createProgram, resolveAliases } from '../../src/cli/program.js';
import { DEFAULT_SINK, DEFAULT_WINDOW } from '../../src/evaluate/codecs.js';
import { CALIBRATE_DEFAULTS, EVALUATE_DEFAULTS, withCalibrateDefaults } from '../../src/index.js';

const command = (name: string): Command => createProgram(memoryIO()).commands.find((c) => c.name() === name)!;
/** The options a command would hand its action for these arguments (commander parses; no action runs). */
function parsed(name: string, args: string[]): Record<string, unknown> {
  const cmd = command(name);
  cmd.parseOptions(args);
  return resolveAliases(cmd);
}

describe('defaults', () => {
  it("kvtc calibrate declares the module's defaults", () => {
    const o = parsed('calibrate', []);
    expect(o).toMatchObject({
      tokens: String(CALIBRATE_DEFAULTS.tokens),
      tuningTokens: String(CALIBRATE_DEFAULTS.tuningTokens),
      reportTokens: String(CALIBRATE_DEFAULTS.reportTokens),
      sink: String(CALIBRATE_DEFAULTS.sink),
      window: String(CALIBRATE_DEFAULTS.window),
      grouping: CALIBRATE_DEFAULTS.grouping,
      chunk: String(CALIBRATE_DEFAULTS.chunk),
      seed: String(CALIBRATE_DEFAULTS.seed),
    });
    expect([CALIBRATE_DEFAULTS.reportTokens, CALIBRATE_DEFAULTS.sink, CALIBRATE_DEFAULTS.window]).toEqual([8192, 4, 128]);
    const help = command('calibrate').helpInformation().replace(/\s+/g, ' ');
    expect(help).toContain(`(default ${CALIBRATE_DEFAULTS.ratio})`);
    expect(help).toContain(`(default: "${CALIBRATE_DEFAULTS.reportTokens}")`);
    expect(help).toContain(`(default ${CALIBRATE_DEFAULTS.blockTokens})`);
  });

  it("kvtc evaluate declares the module's defaults; the baselines protect calibrate's sink and window", () => {
    expect(parsed('evaluate', [])).toMatchObject({
      shots: String(EVALUATE_DEFAULTS.shots),
      perplexityTokens: String(EVALUATE_DEFAULTS.perplexityTokens),
      longContext: String(EVALUATE_DEFAULTS.longContext),
      seed: String(EVALUATE_DEFAULTS.seed),
    });
    expect(command('evaluate').helpInformation().replace(/\s+/g, ' ')).toContain(`at most ${EVALUATE_DEFAULTS.longContextTokens})`);
    expect([DEFAULT_SINK, DEFAULT_WINDOW]).toEqual([CALIBRATE_DEFAULTS.sink, CALIBRATE_DEFAULTS.window]);
  });
});

describe('--tuning-tokens and its former name --heldout', () => {
  it.each([
    [['--tuning-tokens', '2048'], '2048'],
    [['--heldout', '1024'], '1024'],
    [['--heldout', '512', '--tuning-tokens', '512'], '512'],
  ])('%j → tuning tokens %s', (args, want) => {
    const o = parsed('calibrate', args);
    expect(o.tuningTokens).toBe(want);
    expect(o).not.toHaveProperty('heldout'); // commands see one name
  });

  it('the two names with different values are a usage error naming both', () => {
    expect(() => parsed('calibrate', ['--heldout', '512', '--tuning-tokens', '1024'])).toThrow(
      expect.objectContaining({ code: 'USAGE', message: '--heldout 512 and --tuning-tokens 1024 disagree' }),
    );
  });

  it('the help shows --tuning-tokens with its default and --heldout as its former name', () => {
    const help = command('calibrate').helpInformation().replace(/\s+/g, ' ');
    expect(help).toMatch(/--tuning-tokens <n> tuning tokens, held out from the fit.*\(default: "4096"\)/);
    expect(help).toContain('--heldout <n> the same as --tuning-tokens (its former name, kept for existing scripts)');
  });

  it('the library calibrate() needs only the model and the data; what it leaves out or sets undefined takes the module defaults', () => {
    const o = withCalibrateDefaults({ modelDir: 'm', data: ['d.txt'], seed: undefined, window: 64 });
    expect(o).toEqual({
      modelDir: 'm',
      data: ['d.txt'],
      ratios: [CALIBRATE_DEFAULTS.ratio],
      tokens: CALIBRATE_DEFAULTS.tokens,
      heldout: CALIBRATE_DEFAULTS.tuningTokens,
      report: CALIBRATE_DEFAULTS.reportTokens,
      sink: CALIBRATE_DEFAULTS.sink,
      window: 64,
      grouping: CALIBRATE_DEFAULTS.grouping,
      chunk: CALIBRATE_DEFAULTS.chunk,
      seed: CALIBRATE_DEFAULTS.seed,
      device: 'cpu',
      force: false,
    });
  });
});
