// Tested by test/codec/codec.test.ts and test/codec/range.test.ts.
/**
 * Runs the codec's encode/decode graphs. Inline: sessions on the calling thread. Threaded:
 * the sessions live on a worker thread, so the ONNX Runtime matmuls of one basis overlap the
 * host stages (gather, quantize, dequantize, scatter) of the others — onnxruntime-node runs a
 * session on the thread that calls it, so this is how a second core gets used. Both produce
 * the same bits (same graphs, one intra-op thread each).
 */
import type { Worker } from 'node:worker_threads';
import type * as ortTypes from 'onnxruntime-node';
import { CODEC_SESSION, createSession, ort, type Device } from '../onnx/session.js';
import { InternalError, KvtcError, type ErrorCode } from '../errors.js';
import { movable, spawnWorker } from '../worker.js';

export interface Feed {
  /** float32, or uint8 (quantization codes). */
  data: Float32Array | Uint8Array;
  dims: number[];
}
export type Feeds = Record<string, Feed>;
/** A graph's outputs by name. */
export type Outputs = Record<string, Float32Array | Uint8Array>;
export type Direction = 'encode' | 'decode';

export interface TransformRunner {
  /** Runs graph `i` of `dir`; resolves to its outputs. Feeds' buffers may be transferred. */
  run(dir: Direction, i: number, feeds: Feeds): Promise<Outputs>;
  /**
   * A float32 input buffer of `length` elements to hand to run(): threaded, a buffer an earlier
   * run handed back (no fresh 4 MB allocation and page faults per plan); contents are stale.
   */
  take?(length: number): Float32Array;
  release(): Promise<void>;
}

/**
 * A codec's graphs, built on demand: graph `i` of `dir` (null where a plan stores nothing).
 * Built one at a time, just before its session, because a basis over all layers of an 8B model
 * is 300+ MB per graph: building every graph first held them all beside the sessions' copies.
 */
export interface GraphSource {
  count: number;
  build(dir: Direction, i: number): Uint8Array | null;
}

export interface SessionOpts {
  device?: Device;
  threads?: number;
}

const DIRECTIONS: Direction[] = ['encode', 'decode'];

/** Creates the sessions of a graph source one at a time (null graphs stay null); each graph's bytes are garbage once its session holds the weights. */
export async function createSessions(
  graphs: GraphSource,
  so: SessionOpts,
): Promise<Record<Direction, (ortTypes.InferenceSession | null)[]>> {
  const out: Record<Direction, (ortTypes.InferenceSession | null)[]> = { encode: [], decode: [] };
  try {
    for (const dir of DIRECTIONS)
      for (let i = 0; i < graphs.count; i++) {
        const g = graphs.build(dir, i);
        out[dir].push(g ? await createSession(g, { ...so, ...CODEC_SESSION }) : null);
      }
  } catch (e) {
    await Promise.all([...out.encode, ...out.decode].map((s) => s?.release()));
    throw e;
  }
  return out;
}

export async function runSession(session: ortTypes.InferenceSession, feeds: Feeds): Promise<Outputs> {
  const t: Record<string, ortTypes.Tensor> = {};
  for (const [k, f] of Object.entries(feeds))
    t[k] = f.data instanceof Uint8Array ? new ort.Tensor('uint8', f.data, f.dims) : new ort.Tensor('float32', f.data, f.dims);
  const out = await session.run(t);
  const res: Outputs = {};
  for (const name of session.outputNames) res[name] = out[name].data as Float32Array | Uint8Array;
  return res;
}

export class InlineTransform implements TransformRunner {
  private constructor(private readonly sessions: Record<Direction, (ortTypes.InferenceSession | null)[]>) {}

  static async create(graphs: GraphSource, so: SessionOpts): Promise<InlineTransform> {
    return new InlineTransform(await createSessions(graphs, so));
  }

  run(dir: Direction, i: number, feeds: Feeds): Promise<Outputs> {
    return runSession(this.sessions[dir][i]!, feeds);
  }

  async release(): Promise<void> {
    await Promise.all([...this.sessions.encode, ...this.sessions.decode].map((s) => s?.release()));
  }
}

interface Reply {
  id: number;
  out?: Outputs;
  /** The run's transferred input buffers, handed back for reuse. */
  returned?: ArrayBuffer[];
  error?: { message: string; code?: string; fix?: string };
}

export class ThreadedTransform implements TransformRunner {
  private nextId = 0;
  /** Input buffers handed back by the worker; a few cover the runs in flight. */
  private readonly pool: ArrayBuffer[] = [];
  private static readonly POOL = 4;
  private readonly waiting = new Map<number, { resolve: (a: Outputs) => void; reject: (e: unknown) => void }>();

  private released = false;

  private constructor(private readonly worker: Worker) {
    // The worker keeps the process alive only while a run is in flight: a command that fails
    // before release() (or forgets it) still exits instead of hanging on an idle thread.
    worker.unref();
    worker.on('message', (r: Reply) => {
      for (const b of r.returned ?? []) {
        this.pool.push(b);
        if (this.pool.length > ThreadedTransform.POOL) this.pool.shift(); // keep the most recent
      }
      const w = this.waiting.get(r.id);
      if (!w) return;
      this.waiting.delete(r.id);
      if (this.waiting.size === 0) this.worker.unref();
      if (r.error)
        w.reject(
          r.error.code
            ? new KvtcError(r.error.code as ErrorCode, r.error.message, { fix: r.error.fix })
            : new InternalError(`transform thread: ${r.error.message}`),
        );
      else w.resolve(r.out!);
    });
    const failAll = (e: unknown) => {
      for (const w of this.waiting.values()) w.reject(e);
      this.waiting.clear();
      this.worker.unref();
    };
    worker.on('error', failAll);
    worker.on('exit', (code) => {
      if (!this.released) failAll(new Error(`the codec's transform thread exited unexpectedly (code ${code})`));
    });
  }

  static async create(graphs: GraphSource, so: SessionOpts): Promise<ThreadedTransform> {
    const worker = spawnWorker(import.meta.url, './transform-worker');
    const t = new ThreadedTransform(worker);
    try {
      await t.call({ type: 'init', so }, []);
      // One graph at a time, built here and handed over (transferred) for the worker's session.
      for (const dir of DIRECTIONS)
        for (let i = 0; i < graphs.count; i++) {
          let g = graphs.build(dir, i);
          if (g && (g.byteOffset !== 0 || g.byteLength !== g.buffer.byteLength)) g = g.slice();
          await t.call({ type: 'add', dir, graph: g }, g ? [g.buffer as ArrayBuffer] : []);
        }
    } catch (e) {
      await t.release();
      throw e;
    }
    return t;
  }

  private call(msg: Record<string, unknown>, transfer: ArrayBuffer[]): Promise<Outputs> {
    const id = this.nextId++;
    if (this.released) return Promise.reject(new Error('transform used after release()'));
    return new Promise((resolve, reject) => {
      if (this.waiting.size === 0) this.worker.ref();
      this.waiting.set(id, { resolve, reject });
      this.worker.postMessage({ ...msg, id }, transfer);
    });
  }

  run(dir: Direction, i: number, feeds: Feeds): Promise<Outputs> {
    // The inputs are transferred (the caller hands them over); shared RoPE tables are copied.
    const transfer: ArrayBuffer[] = [];
    for (const [name, f] of Object.entries(feeds)) {
      if (name !== 'cos' && name !== 'sin' && movable(f.data)) transfer.push(f.data.buffer);
    }
    return this.call({ type: 'run', dir, i, feeds }, transfer);
  }

  take(length: number): Float32Array {
    const i = this.pool.findIndex((b) => b.byteLength === length * 4);
    return i >= 0 ? new Float32Array(this.pool.splice(i, 1)[0]) : new Float32Array(length);
  }

  async release(): Promise<void> {
    if (this.released) return;
    this.released = true;
    // Runs still in flight belong to a pipeline that already failed: nobody awaits them.
    this.waiting.clear();
    await this.worker.terminate();
  }
}
