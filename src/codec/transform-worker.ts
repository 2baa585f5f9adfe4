/** Worker thread holding a codec's ONNX Runtime sessions (see transform.ts). */
import { parentPort } from 'node:worker_threads';
import type * as ortTypes from 'onnxruntime-node';
import { createSessions, runSession, type Direction, type Feeds, type GraphSet, type SessionOpts } from './transform.js';

let sessions: Record<Direction, (ortTypes.InferenceSession | null)[]> | undefined;

type Msg = { id: number; type: 'init'; graphs: GraphSet; so: SessionOpts } | { id: number; type: 'run'; dir: Direction; i: number; feeds: Feeds };

parentPort!.on('message', async (m: Msg) => {
  try {
    if (m.type === 'init') {
      sessions = await createSessions(m.graphs, m.so);
      parentPort!.postMessage({ id: m.id, out: new Float32Array(0) });
      return;
    }
    const out = await runSession(sessions![m.dir][m.i]!, m.feeds);
    // Copy out of ORT's buffer so it can be transferred whole.
    const copy = out.byteOffset === 0 && out.byteLength === out.buffer.byteLength ? out : out.slice();
    parentPort!.postMessage({ id: m.id, out: copy }, [copy.buffer as ArrayBuffer]);
  } catch (e) {
    const err = e as { message?: string; code?: string; fix?: string };
    parentPort!.postMessage({ id: m.id, error: { message: err.message ?? String(e), code: err.code, fix: err.fix } });
  }
});
