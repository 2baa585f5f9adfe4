// calibrate → encode → decode on family fixtures whose layers share one RoPE, part 2
// (test/rope/family-codec.ts): partial rotary, llama3 and linear scaling, interleaved layout.
import { family } from './family-fixtures.js';
import { codecRoundTrips } from './family-codec.js';

codecRoundTrips(['mixtral', 'gpt_neox', 'llama-llama3', 'llama-interleaved-linear'].map(family));
