// The CLI as a real process (like bin/kvtc.js, on the TypeScript sources): for tests that need
// to see the process exit by itself (no thread or handle left alive after an error).
import { endQuietlyOnClosedPipe } from '../../src/cli/io.js';
import { main } from '../../src/cli/main.js';

endQuietlyOnClosedPipe();

process.exitCode = await main(process.argv);
