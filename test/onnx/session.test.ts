import { describe, expect, it } from 'vitest';
import { GraphBuilder } from '../../src/onnx/builder.js';
import { createSession } from '../../src/onnx/session.js';

describe('createSession on a graph ONNX Runtime cannot load', () => {
  it('names the operator it has no kernel for, instead of calling the file corrupt', async () => {
    const g = new GraphBuilder('unknown-op');
    const x = g.input('x', 'float32', [2]);
    g.output(g.op('NoSuchOp', [x]), 'y', 'float32', [2]);
    await expect(createSession(g.toModel())).rejects.toMatchObject({
      code: 'MODEL_INVALID',
      message: expect.stringMatching(/No Op registered for NoSuchOp/),
      fix: expect.stringMatching(/has no kernel for the operator NoSuchOp at opset \d+: re-export/),
    });
  });

  it("calls a graph that breaks an operator's schema corrupt or incomplete", async () => {
    const g = new GraphBuilder('bad-topk');
    const x = g.input('x', 'float32', [2]);
    g.output(g.op('TopK', [x]), 'y', 'float32', [2]);
    await expect(createSession(g.toModel())).rejects.toMatchObject({
      code: 'MODEL_INVALID',
      fix: expect.stringMatching(/corrupt or incomplete/),
    });
  });
});
