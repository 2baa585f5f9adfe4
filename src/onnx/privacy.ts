/**
 * ONNX Runtime 1.29's official builds collect telemetry: every process that creates a session
 * writes /tmp/mat-debug-<pid>.log, a device id and a growing SQLite event store under
 * ~/.cache/Microsoft/DeveloperTools/.onnxruntime, and uploads events. Its supported opt-out is
 * the ORT_DISABLE_TELEMETRY environment variable, read by the native library when it creates its
 * environment (measured: with it set, none of those files appear). kvtc sets it before the
 * binding loads unless the user set it themselves; worker threads share the process environment.
 * This module must be imported before 'onnxruntime-node' (ES modules evaluate in import order).
 */
export const TELEMETRY_ENV = 'ORT_DISABLE_TELEMETRY';

if (process.env[TELEMETRY_ENV] === undefined) process.env[TELEMETRY_ENV] = '1';
