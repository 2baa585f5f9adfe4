// Tested by test/cli/contract.test.ts.
/** The ONNX Runtime execution providers kvtc can use (no native code here: --help imports it). */
export type Device = 'cpu' | 'cuda';
export const DEVICES: readonly Device[] = ['cpu', 'cuda'];
