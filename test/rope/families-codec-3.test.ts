// calibrate → encode → decode on family fixtures whose RoPE differs between layers
// (test/rope/family-codec.ts): Gemma 3 local/global bases and linear scaling on the global
// layers, SmolLM3's NoPE layers (profile format 2 records RoPE per layer).
import { family } from './family-fixtures.js';
import { codecRoundTrips } from './family-codec.js';

codecRoundTrips(['gemma3', 'smollm3'].map(family));
