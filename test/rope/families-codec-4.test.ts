// calibrate → encode → decode on family fixtures with no RoPE or an attention factor
// (test/rope/family-codec.ts): GPT-2 (learned positions), Qwen3-MoE yarn, Phi-3 longrope.
import { family } from './family-fixtures.js';
import { codecRoundTrips } from './family-codec.js';

codecRoundTrips(['gpt2', 'qwen3_moe-yarn', 'phi3-longrope'].map(family));
