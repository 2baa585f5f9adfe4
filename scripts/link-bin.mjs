// Makes `npx kvtc` work inside a clone: npm links the bins of dependencies, not the
// package's own, so link node_modules/.bin/kvtc to bin/kvtc.js (run by `npm ci` via prepare).
import { chmodSync, mkdirSync, rmSync, symlinkSync } from 'node:fs';
import { dirname, join, relative } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const binDir = join(root, 'node_modules', '.bin');
const target = join(root, 'bin', 'kvtc.js');
mkdirSync(binDir, { recursive: true });
rmSync(join(binDir, 'kvtc'), { force: true });
symlinkSync(relative(binDir, target), join(binDir, 'kvtc'));
chmodSync(target, 0o755);
