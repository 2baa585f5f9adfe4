#!/usr/bin/env node
/**
 * A multi-turn chat that keeps each turn's prompt cache on disk as a kvtc blob and restores it on
 * the next turn instead of re-running the prefill over the whole conversation — the restore flow a
 * serving stack runs when a user comes back. On the bundled stories260K model by default.
 *
 *   node examples/restore-chat.mjs [--model DIR] [--profile DIR] [--turns N] [--reply-tokens N] [--keep DIR]
 *
 * Per turn it prints the time to first token both ways (recompute: prefill of the whole
 * conversation; restore: read the blob + decode it + prefill only the new message), the bytes on
 * disk against the fp16 cache, and whether the greedy reply from the restored cache matches the
 * uncompressed run's (or where it diverges). Times are medians of --repeats runs.
 */
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { codecFromProfile, loadModel, ModelRunner, readProfile } from 'kvtc';

const { values: args } = parseArgs({
  options: {
    model: { type: 'string', default: new URL('../models/stories260k', import.meta.url).pathname },
    profile: { type: 'string', default: new URL('../kvtc-profiles/stories260k', import.meta.url).pathname },
    turns: { type: 'string', default: '3' },
    'reply-tokens': { type: 'string', default: '40' },
    repeats: { type: 'string', default: '5' },
    keep: { type: 'string' },
  },
});
const turns = Number(args.turns);
const replyTokens = Number(args['reply-tokens']);
const repeats = Number(args.repeats);
for (const [k, v] of [
  ['--turns', turns],
  ['--reply-tokens', replyTokens],
  ['--repeats', repeats],
]) {
  if (!Number.isInteger(v) || v < 1) {
    console.error(`error: ${k} must be a whole number ≥ 1`);
    process.exit(2);
  }
}

const MESSAGES = [
  'Once upon a time, there was a little girl named Lily. She loved to play in the park with her dog.',
  ' One day, Lily found a big red ball under a tree. She wanted to share it with her friend Tom.',
  ' Then the sun went down and it was time to go home. Lily said goodbye to the ball and the tree.',
  ' The next morning, Lily woke up early and ran to the window to see if the tree was still there.',
  ' Her mom made pancakes, and Lily told her all about the big red ball and her friend Tom.',
];

const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
const ms = (x) => `${x.toFixed(2)} ms`;
const kb = (n) => `${(n / 1024).toFixed(1)} KiB`;
const argmax = (a) => a.reduce((best, x, i) => (x > a[best] ? i : best), 0);

/** Greedy continuation from `logits` (the prompt's last logits) and `cache`. */
async function greedy(runner, logits, cache, n) {
  const out = [];
  for (let i = 0; i < n; i++) {
    const next = argmax(logits);
    out.push(next);
    if (i === n - 1 || cache.startPosition + cache.tokens + 1 > runner.model.spec.maxPositions) break;
    const r = await runner.forward([next], cache, { lastLogitsOnly: true });
    logits = r.logits;
    cache = r.present;
  }
  return { ids: out, cache };
}

const dir = args.keep ?? mkdtempSync(join(tmpdir(), 'kvtc-chat-'));
const model = await loadModel(args.model);
let codec;
try {
  const profile = await readProfile(args.profile);
  // One codec for the whole chat, as a server keeps it (its ONNX sessions cost ~10 ms to create).
  codec = await codecFromProfile(profile);
  const runner = new ModelRunner(model);
  const tok = model.tokenizer;
  let conversation = []; // token ids of everything said so far (messages and replies)
  let blobPath;
  console.log(
    `restore-chat on ${model.name} with profile ${profile.dir} (${profile.manifest.settings.ratio_target}x target), blobs in ${dir}`,
  );
  for (let t = 0; t < Math.min(turns, MESSAGES.length); t++) {
    const message = tok.encode(MESSAGES[t], { addBos: t === 0 });
    const prompt = [...conversation, ...message];
    if (prompt.length + replyTokens > model.spec.maxPositions) {
      console.log(`turn ${t + 1}: the conversation would exceed the model's ${model.spec.maxPositions} positions; stopping`);
      break;
    }
    // Recompute: the whole conversation again.
    const recompute = [];
    let ref;
    for (let r = 0; r < repeats; r++) {
      const t0 = performance.now();
      ref = await runner.prefill(prompt);
      argmax(ref.lastLogits);
      recompute.push(performance.now() - t0);
    }
    const refReply = await greedy(runner, ref.lastLogits, ref.cache, replyTokens);

    let line = `turn ${t + 1}: ${prompt.length} tokens of context, recompute TTFT ${ms(median(recompute))}`;
    if (blobPath) {
      // Restore: the previous turn's cache from disk, then only the new message.
      const restore = [];
      let restored;
      let blobBytes = 0;
      for (let r = 0; r < repeats; r++) {
        const t0 = performance.now();
        const blob = new Uint8Array(readFileSync(blobPath));
        blobBytes = blob.byteLength;
        const { cache } = await codec.decode(blob, blobPath);
        restored = await runner.prefill(message, { past: cache });
        argmax(restored.lastLogits);
        restore.push(performance.now() - t0);
      }
      const reply = await greedy(runner, restored.lastLogits, restored.cache, replyTokens);
      const at = reply.ids.findIndex((id, i) => id !== refReply.ids[i]);
      const match =
        at < 0
          ? `reply matches the uncompressed run (${reply.ids.length} tokens)`
          : `reply diverges from the uncompressed run at token ${at + 1} of ${reply.ids.length}`;
      line += `, restore TTFT ${ms(median(restore))} (${(median(recompute) / median(restore)).toFixed(2)}x; blob ${kb(blobBytes)} on disk); ${match}`;
    }
    console.log(line);
    console.log(`  assistant: ${JSON.stringify(tok.decode(refReply.ids).slice(0, 120))}`);
    // Save this turn's cache (conversation + reply) for the next turn, as the server would.
    conversation = [...prompt, ...refReply.ids];
    const full = await runner.prefill(refReply.ids, { past: ref.cache });
    const { blob, stats } = await codec.encode(full.cache);
    blobPath = join(dir, `turn-${t + 1}.kvtc`);
    writeFileSync(blobPath, blob);
    console.log(
      `  saved ${full.cache.tokens} tokens of cache: ${kb(blob.byteLength)} on disk vs ${kb(stats.fp16Bytes)} as fp16 (${stats.ratioBlob.toFixed(2)}x whole blob, ${stats.compressedTokens} tokens compressed)`,
    );
  }
} finally {
  await codec?.release();
  await model.session.release();
  if (!args.keep) rmSync(dir, { recursive: true, force: true });
}
