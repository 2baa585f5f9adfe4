/**
 * Runs a loaded decoder with a KV cache (batch 1): forward, chunked prefill, generation and
 * KV capture. Caches are float32 in memory (KvCache); fp16 models get fp16 tensors, which
 * Node's ONNX Runtime represents as Uint16Array bits (Node 20 has no Float16Array).
 *
 * Hot path: a KvCache returned by forward() remembers the ORT tensors it came from, so
 * feeding it back as `past` (generation, or scoring several continuations of one restored
 * prompt) converts nothing; a cache built elsewhere is converted once and remembered too.
 * Treat a KvCache as immutable once it has been passed to forward().
 */
import { KvtcError, invariant } from '../errors.js';
import { floatArrayToHalf, halfArrayToFloat } from '../io/fp16.js';
import { ort } from '../onnx/session.js';
import type { ProgressFn } from '../progress.js';
import { layerName, type LoadedModel } from './load.js';
import type { KvCache } from './types.js';
import { mulberry32 } from '../random.js';

export interface ForwardResult {
  logits: Float32Array; // [seq, vocab] (or [1, vocab] with lastLogitsOnly)
  present: KvCache;
}

export interface ForwardOptions {
  /** Convert only the last position's logits (prefill); `logits` is then [1, vocab]. */
  lastLogitsOnly?: boolean;
  /** Absolute position of ids[0] when past is null (default 0). */
  startPosition?: number;
}

export interface PrefillOptions {
  chunk?: number;
  onProgress?: ProgressFn;
  /** Continue from this cache instead of an empty one. */
  past?: KvCache | null;
}

export interface GenerateOptions {
  maxNewTokens?: number;
  /** 0 = greedy. */
  temperature?: number;
  seed?: number;
  /** Stop token(s); default the model's EOS. Pass [] to never stop early. */
  eos?: number | number[];
  onToken?: (id: number) => void;
}

export interface GenerateResult {
  /** New tokens only. */
  ids: number[];
  stopReason: 'eos' | 'length' | 'context';
  prefillMs: number;
  decodeMs: number;
}

export interface CaptureOptions {
  maxTokens?: number;
  chunk?: number;
  onProgress?: ProgressFn;
}

export interface CaptureResult {
  ids: number[];
  cache: KvCache;
  ms: number;
}

type Feeds = Record<string, ort.Tensor>;

/** ORT tensors behind a cache: [key, value] per layer. */
const ortTensors = new WeakMap<KvCache, ort.Tensor[]>();

function toFloat32(t: ort.Tensor): Float32Array {
  const d = t.data;
  if (d instanceof Float32Array) return d;
  if (d instanceof Uint16Array) return halfArrayToFloat(d);
  // ORT hands out Float16Array where the runtime has one (Node >= 24).
  if (ArrayBuffer.isView(d)) return Float32Array.from(d as unknown as ArrayLike<number>);
  throw new KvtcError('INTERNAL', `unexpected ORT tensor data for type ${t.type}`);
}

function argmax(a: Float32Array, from = 0, to = a.length): number {
  let best = from;
  for (let i = from + 1; i < to; i++) if (a[i] > a[best]) best = i;
  return best - from;
}

export class ModelRunner {
  readonly model: LoadedModel;
  private readonly dtype: 'float16' | 'float32';
  private readonly emptyPast: ort.Tensor;
  private multiTokenPast: boolean | undefined;

  constructor(model: LoadedModel) {
    this.model = model;
    this.dtype = model.spec.kvDtype;
    const { kvHeads, headDim } = model.spec;
    this.emptyPast =
      this.dtype === 'float16'
        ? new ort.Tensor('float16', new Uint16Array(0), [1, kvHeads, 0, headDim])
        : new ort.Tensor('float32', new Float32Array(0), [1, kvHeads, 0, headDim]);
  }

  get spec() {
    return this.model.spec;
  }

  private ids(values: ArrayLike<number>, dims: number[]): ort.Tensor {
    if (this.model.io.idsType === 'int32') return new ort.Tensor('int32', Int32Array.from(values), dims);
    const a = new BigInt64Array(values.length);
    for (let i = 0; i < values.length; i++) a[i] = BigInt(values[i]);
    return new ort.Tensor('int64', a, dims);
  }

  private kvTensor(data: Float32Array, tokens: number): ort.Tensor {
    const dims = [1, this.spec.kvHeads, tokens, this.spec.headDim];
    return this.dtype === 'float16' ? new ort.Tensor('float16', floatArrayToHalf(data), dims) : new ort.Tensor('float32', data, dims);
  }

  private pastTensors(past: KvCache): ort.Tensor[] {
    const known = ortTensors.get(past);
    if (known) return known;
    const { layers, kvHeads, headDim } = this.spec;
    if (past.layers !== layers || past.kvHeads !== kvHeads || past.headDim !== headDim) {
      throw new KvtcError(
        'KV_INVALID',
        `KV cache shape (layers ${past.layers}, kv_heads ${past.kvHeads}, head_dim ${past.headDim}) does not match the model (${layers}, ${kvHeads}, ${headDim}).`,
        {
          fix: 'Use a cache captured from this model.',
          context: { cache: { layers: past.layers, kvHeads: past.kvHeads, headDim: past.headDim }, model: { layers, kvHeads, headDim } },
        },
      );
    }
    const size = kvHeads * past.tokens * headDim;
    const out: ort.Tensor[] = [];
    for (let l = 0; l < layers; l++) {
      invariant(
        past.keys[l].length === size && past.values[l].length === size,
        `forward: past layer ${l} has ${past.keys[l].length}/${past.values[l].length} values, expected [${kvHeads}, ${past.tokens}, ${headDim}] = ${size}`,
      );
      out.push(this.kvTensor(past.keys[l], past.tokens), this.kvTensor(past.values[l], past.tokens));
    }
    ortTensors.set(past, out);
    return out;
  }

  /**
   * Whether the graph accepts several new tokens on top of a non-empty past. onnxruntime-genai's
   * older builders make a square [seq, seq] causal mask, which only works for a prompt with no
   * past or one token with past; such graphs are run one token at a time after the prompt.
   * Probed once with two tiny runs (token id 0), errors silenced.
   */
  async multiTokenWithPast(): Promise<boolean> {
    if (this.multiTokenPast === undefined) {
      try {
        const a = await this.run([0, 0], null, {}, true);
        await this.run([0, 0], a.present, {}, true);
        this.multiTokenPast = true;
      } catch {
        this.multiTokenPast = false;
      }
    }
    return this.multiTokenPast;
  }

  /**
   * One forward pass. ids: new tokens; past: cache of everything before them (or null).
   * logits: Float32Array // [seq, vocab]; present: cache of past + ids.
   */
  async forward(ids: ArrayLike<number>, past: KvCache | null, opts: ForwardOptions = {}): Promise<ForwardResult> {
    if (past && past.tokens > 0 && ids.length > 1 && !(await this.multiTokenWithPast())) {
      const rows: Float32Array[] = [];
      let cache = past;
      for (let i = 0; i < ids.length; i++) {
        const r = await this.run([ids[i]], cache, { lastLogitsOnly: true });
        if (!opts.lastLogitsOnly || i === ids.length - 1) rows.push(r.logits);
        cache = r.present;
      }
      const logits = new Float32Array(rows.length * this.spec.vocabSize);
      rows.forEach((r, i) => logits.set(r, i * this.spec.vocabSize));
      return { logits, present: cache };
    }
    return this.run(ids, past, opts);
  }

  private async run(ids: ArrayLike<number>, past: KvCache | null, opts: ForwardOptions, quiet = false): Promise<ForwardResult> {
    const seq = ids.length;
    invariant(seq > 0, 'forward: ids is empty');
    const { layers, vocabSize } = this.spec;
    const io = this.model.io;
    const pastLen = past?.tokens ?? 0;
    const start = past ? past.startPosition + past.tokens : (opts.startPosition ?? 0);
    if (start + seq > this.spec.maxPositions) {
      throw new KvtcError('DATA_INVALID', `positions up to ${start + seq} exceed the model's ${this.spec.maxPositions} positions.`, {
        fix: `Use at most ${this.spec.maxPositions} tokens (e.g. --max-tokens).`,
        context: { positions: start + seq, maxPositions: this.spec.maxPositions },
      });
    }
    const feeds: Feeds = { [io.inputIds]: this.ids(ids, [1, seq]) };
    if (io.attentionMask) feeds[io.attentionMask] = this.ids(new Array<number>(pastLen + seq).fill(1), [1, pastLen + seq]);
    if (io.positionIds)
      feeds[io.positionIds] = this.ids(
        Array.from({ length: seq }, (_, i) => start + i),
        [1, seq],
      );
    // Optimum's merged decoder (decoder_model_merged.onnx) runs its no-past branch when
    // use_cache_branch is false, which ignores the past inputs (fed empty), and its with-past
    // branch when true; so false exactly when there is no past to extend, as optimum's
    // ORTModelForCausalLM and transformers.js feed it.
    if (io.useCacheBranch) feeds[io.useCacheBranch] = new ort.Tensor('bool', new Uint8Array([pastLen > 0 ? 1 : 0]), [1]);
    const pastT = past ? this.pastTensors(past) : undefined;
    for (let l = 0; l < layers; l++) {
      feeds[layerName(io.pastKey, l)] = pastT ? pastT[2 * l] : this.emptyPast;
      feeds[layerName(io.pastValue, l)] = pastT ? pastT[2 * l + 1] : this.emptyPast;
    }
    const out = await this.model.session.run(feeds, quiet ? { logSeverityLevel: 4 } : {});
    const logitsT = out[io.logits];
    const rows = logitsT.dims.length === 3 ? Number(logitsT.dims[1]) : 1;
    let logits: Float32Array;
    if (opts.lastLogitsOnly || rows !== seq) {
      const raw = logitsT.data as Float32Array | Uint16Array;
      const last = raw.subarray((rows - 1) * vocabSize, rows * vocabSize);
      logits =
        last instanceof Uint16Array
          ? halfArrayToFloat(last)
          : last instanceof Float32Array
            ? last
            : Float32Array.from(last as ArrayLike<number>);
    } else {
      logits = toFloat32(logitsT);
    }
    const tokens = pastLen + seq;
    const keys: Float32Array[] = [];
    const values: Float32Array[] = [];
    const tensors: ort.Tensor[] = [];
    for (let l = 0; l < layers; l++) {
      const k = out[layerName(io.presentKey, l)];
      const v = out[layerName(io.presentValue, l)];
      if (Number(k.dims[2]) !== tokens || Number(v.dims[2]) !== tokens) {
        // A graph that caches only a window on some layers (sliding-window exports of Gemma 2/3,
        // Mistral): kvtc's cache format and codec assume every layer holds every token.
        throw new KvtcError(
          'UNSUPPORTED_ARCHITECTURE',
          `the ONNX graph returns ${k.dims[2]} tokens for ${layerName(io.presentKey, l)} after ${pastLen} + ${seq} tokens: this export caches only a window on some layers (sliding-window attention), and kvtc's cache format needs every layer to hold every token`,
          {
            fix: 'Export the model with a full cache on every layer (for transformers / Optimum exports, a static or full-length cache rather than a sliding-window cache), or keep prompts within the sliding window.',
            context: { layer: l, returned: Number(k.dims[2]), expected: tokens },
          },
        );
      }
      keys.push(toFloat32(k));
      values.push(toFloat32(v));
      tensors.push(k, v);
    }
    const present: KvCache = {
      layers,
      kvHeads: this.spec.kvHeads,
      headDim: this.spec.headDim,
      tokens,
      dtype: this.dtype,
      keys,
      values,
      startPosition: past?.startPosition ?? opts.startPosition ?? 0,
    };
    ortTensors.set(present, tensors);
    return { logits, present };
  }

  /** Runs ids through the model in chunks. lastLogits: Float32Array // [vocab] */
  async prefill(ids: ArrayLike<number>, opts: PrefillOptions = {}): Promise<{ lastLogits: Float32Array; cache: KvCache }> {
    const chunk = opts.chunk ?? 256;
    invariant(Number.isInteger(chunk) && chunk > 0, `prefill: chunk must be a positive integer, got ${chunk}`);
    invariant(ids.length > 0, 'prefill: ids is empty');
    const all = Array.from(ids);
    let cache = opts.past ?? null;
    // A graph that cannot extend a past by several tokens prefills the whole prompt at once.
    const step = !cache && all.length > chunk && !(await this.multiTokenWithPast()) ? all.length : chunk;
    let lastLogits: Float32Array = new Float32Array(0);
    for (let i = 0; i < all.length; i += step) {
      const r = await this.forward(all.slice(i, i + step), cache, { lastLogitsOnly: true });
      cache = r.present;
      lastLogits = r.logits;
      opts.onProgress?.({ stage: 'prefill', done: Math.min(i + step, all.length), total: all.length, unit: 'tok' });
    }
    return { lastLogits, cache: cache! };
  }

  /** Greedy (temperature 0) or seeded sampling. */
  async generate(promptIds: ArrayLike<number>, opts: GenerateOptions = {}): Promise<GenerateResult> {
    const max = opts.maxNewTokens ?? 100;
    const temperature = opts.temperature ?? 0;
    const eosOpt = opts.eos ?? this.model.tokenizer.eosTokenId ?? this.spec.eosTokenId;
    const eos = new Set(eosOpt === undefined ? [] : Array.isArray(eosOpt) ? eosOpt : [eosOpt]);
    const rand = mulberry32(opts.seed ?? 0);
    const t0 = performance.now();
    let { lastLogits: logits, cache } = await this.prefill(promptIds);
    const prefillMs = performance.now() - t0;
    const out: number[] = [];
    let stopReason: GenerateResult['stopReason'] = 'length';
    while (out.length < max) {
      const next = temperature > 0 ? this.sample(logits, temperature, rand) : argmax(logits);
      if (eos.has(next)) {
        stopReason = 'eos';
        break;
      }
      out.push(next);
      opts.onToken?.(next);
      if (out.length >= max) break;
      if (cache.startPosition + cache.tokens + 1 > this.spec.maxPositions) {
        stopReason = 'context';
        break;
      }
      const r = await this.forward([next], cache, { lastLogitsOnly: true });
      logits = r.logits;
      cache = r.present;
    }
    return { ids: out, stopReason, prefillMs, decodeMs: performance.now() - t0 - prefillMs };
  }

  private sample(logits: Float32Array, temperature: number, rand: () => number): number {
    let max = -Infinity;
    for (let i = 0; i < logits.length; i++) if (logits[i] > max) max = logits[i];
    const p = new Float64Array(logits.length);
    let sum = 0;
    for (let i = 0; i < logits.length; i++) sum += p[i] = Math.exp((logits[i] - max) / temperature);
    let r = rand() * sum;
    for (let i = 0; i < p.length; i++) if ((r -= p[i]) <= 0) return i;
    return p.length - 1;
  }

  /** Tokenizes (with BOS) and prefills text, returning the KV cache of the whole prompt. */
  async capture(input: string | ArrayLike<number>, opts: CaptureOptions = {}): Promise<CaptureResult> {
    let ids = typeof input === 'string' ? this.model.tokenizer.encode(input) : Array.from(input);
    if (opts.maxTokens !== undefined) ids = ids.slice(0, opts.maxTokens);
    if (ids.length === 0) throw new KvtcError('NOT_ENOUGH_TOKENS', 'the text has no tokens to capture.', { fix: 'Give a non-empty text.' });
    if (ids.length > this.spec.maxPositions) {
      throw new KvtcError('DATA_INVALID', `the text has ${ids.length} tokens, more than the model's ${this.spec.maxPositions} positions.`, {
        fix: `Pass --max-tokens ${this.spec.maxPositions} (or less), or a shorter text.`,
        context: { tokens: ids.length, maxPositions: this.spec.maxPositions },
      });
    }
    const t0 = performance.now();
    const { cache } = await this.prefill(ids, { chunk: opts.chunk, onProgress: opts.onProgress });
    return { ids, cache, ms: performance.now() - t0 };
  }
}
