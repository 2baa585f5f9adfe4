// The CLI as a real process (like bin/kvtc.js, on the TypeScript sources): for tests that need
// to see the process exit by itself (no thread or handle left alive after an error).
import { main } from '../../src/cli/main.js';

process.exitCode = await main(process.argv);
