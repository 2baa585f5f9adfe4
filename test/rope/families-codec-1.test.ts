// calibrate → encode → decode on family fixtures whose layers share one RoPE, part 1
// (test/rope/family-codec.ts; families-codec-3 has per-layer, yarn, longrope and NoPE).
import { family } from './family-fixtures.js';
import { codecRoundTrips } from './family-codec.js';

codecRoundTrips(['qwen3', 'gemma2', 'olmo2', 'granite'].map(family));
