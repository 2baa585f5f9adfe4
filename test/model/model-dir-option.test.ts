import { describe, expect, it } from 'vitest';
import { modelDirFromOption, modelNameFromDir } from '../../src/model/load.js';
import { DEFAULT_MODEL_DIR } from '../../src/paths.js';

describe('--model', () => {
  it('a Hugging Face Hub id gets a message saying kvtc reads local exports, and how to make one', () => {
    expect(() => modelDirFromOption('meta-llama/Llama-3.2-1B')).toThrow(/Hub id; kvtc reads local model directories/);
    try {
      modelDirFromOption('Qwen/Qwen3-0.6B');
    } catch (e) {
      expect((e as { code: string }).code).toBe('MODEL_NOT_FOUND');
      expect((e as { fix: string }).fix).toMatch(/optimum-cli export onnx --model Qwen\/Qwen3-0\.6B --task text-generation-with-past/);
    }
  });

  it('local paths resolve as given (existing or not: a missing one is reported by the loader)', () => {
    expect(modelDirFromOption(undefined)).toBe(DEFAULT_MODEL_DIR);
    expect(modelDirFromOption('./missing/dir')).toMatch(/missing\/dir$/);
    expect(modelDirFromOption('/abs/path')).toBe('/abs/path');
  });

  it('model names skip generic layout folders, so llama/onnx and qwen/onnx do not collide', () => {
    expect(modelNameFromDir('/m/llama/onnx')).toBe('llama');
    expect(modelNameFromDir('/m/qwen/onnx')).toBe('qwen');
    expect(modelNameFromDir('/m/qwen3-0.6b/model/onnx')).toBe('qwen3-0.6b');
    expect(modelNameFromDir('/m/stories260k')).toBe('stories260k');
  });
});
