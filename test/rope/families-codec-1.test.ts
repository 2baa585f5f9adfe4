// calibrate → encode → decode on family fixtures whose layers share one RoPE, part 1
// (test/rope/family-codec.ts; families-codec-3 and -4 have per-layer, NoPE, yarn and longrope).
import { family } from './family-fixtures.js';
import { codecRoundTrips } from './family-codec.js';

codecRoundTrips(['qwen3', 'gemma2', 'olmo2', 'granite'].map(family));
