#!/usr/bin/env node
// kvtc needs Node 20.15+ (zlib.crc32, used by the blob format); say so instead of a TypeError.
const [major, minor] = process.versions.node.split('.').map(Number);
if (major < 20 || (major === 20 && minor < 15)) {
  process.stderr.write(
    `error [NODE_VERSION]: kvtc needs Node.js 20.15 or newer; this is ${process.version}\n  fix: install a current Node.js 20 LTS or newer (e.g. \`nvm install 20\`).\n`,
  );
  process.exit(1);
}
const { main } = await import('../dist/cli/main.js');
const { endQuietlyOnClosedPipe } = await import('../dist/cli/io.js');
endQuietlyOnClosedPipe();
process.exitCode = await main(process.argv);
