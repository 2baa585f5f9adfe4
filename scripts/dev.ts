// Runs the CLI from source without building: npx tsx scripts/dev.ts <command> ...
import { main } from '../src/cli/main.js';

process.exitCode = await main(process.argv);
