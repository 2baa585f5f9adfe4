// Tested by test/codec/codec.test.ts and test/codec/range.test.ts (threaded codecs).
/** Worker thread holding a codec's ONNX Runtime sessions (see transform.ts). */
import { parentPort } from 'node:worker_threads';
import type * as ortTypes from 'onnxruntime-node';
import { CODEC_SESSION, createSession } from '../onnx/session.js';
import { runSession, type Direction, type Feeds, type SessionOpts } from './transform.js';

const sessions: Record<Direction, (ortTypes.InferenceSession | null)[]> = { encode: [], decode: [] };
let so: SessionOpts = {};

type Msg =
  | { id: number; type: 'init'; so: SessionOpts }
  | { id: number; type: 'add'; dir: Direction; graph: Uint8Array | null }
  | { id: number; type: 'run'; dir: Direction; i: number; feeds: Feeds };

parentPort!.on('message', async (m: Msg) => {
  try {
    if (m.type === 'init' || m.type === 'add') {
      // Sessions are added in order, one graph per message (transform.ts builds them lazily).
      if (m.type === 'init') so = m.so;
      else sessions[m.dir].push(m.graph ? await createSession(m.graph, { ...so, ...CODEC_SESSION }) : null);
      parentPort!.postMessage({ id: m.id, out: {} });
      return;
    }
    const out = await runSession(sessions[m.dir][m.i]!, m.feeds);
    // Copy out of ORT's buffers where they are not whole, so each can be transferred.
    const transfer: ArrayBuffer[] = [];
    for (const [name, a] of Object.entries(out)) {
      const whole = a.byteOffset === 0 && a.byteLength === a.buffer.byteLength ? a : a.slice();
      out[name] = whole;
      transfer.push(whole.buffer as ArrayBuffer);
    }
    // Hand the float inputs the caller transferred back, for it to reuse.
    const returned: ArrayBuffer[] = [];
    for (const [name, f] of Object.entries(m.feeds)) {
      if (name === 'cos' || name === 'sin' || !(f.data instanceof Float32Array) || f.data.byteOffset !== 0) continue;
      const b = f.data.buffer as ArrayBuffer;
      if (b.byteLength === f.data.byteLength && !transfer.includes(b)) returned.push(b);
    }
    parentPort!.postMessage({ id: m.id, out, returned }, [...transfer, ...returned]);
  } catch (e) {
    const err = e as { message?: string; code?: string; fix?: string };
    parentPort!.postMessage({ id: m.id, error: { message: err.message ?? String(e), code: err.code, fix: err.fix } });
  }
});
