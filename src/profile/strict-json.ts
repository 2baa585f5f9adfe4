// Tested by test/profile/strict-json.test.ts.
/**
 * The two things JSON.parse lets through that a manifest must not have (docs/profile-format.md
 * §2.3): bytes that are not UTF-8 (Node's 'utf8' decoding silently turns them into U+FFFD) and a
 * key repeated in one object (JSON.parse silently keeps the last, so two readers could see two
 * different manifests in one file). Both scans are linear in the text and allocate at most one
 * frame per open bracket; the text is bounded by the caller (PROFILE_LIMITS.maxManifestBytes).
 */

/** Offset of the first byte that does not belong to a well-formed UTF-8 sequence (RFC 3629), or -1. */
export function firstInvalidUtf8(buf: Uint8Array): number {
  let i = 0;
  while (i < buf.length) {
    const b = buf[i];
    if (b < 0x80) {
      i++;
      continue;
    }
    // Lead byte: how many continuation bytes, and the range the first one must fall in
    // (excluding overlong forms, UTF-16 surrogates and code points past U+10FFFF).
    let n: number;
    let lo = 0x80;
    let hi = 0xbf;
    if (b >= 0xc2 && b <= 0xdf) n = 1;
    else if (b >= 0xe0 && b <= 0xef) {
      n = 2;
      if (b === 0xe0) lo = 0xa0;
      if (b === 0xed) hi = 0x9f;
    } else if (b >= 0xf0 && b <= 0xf4) {
      n = 3;
      if (b === 0xf0) lo = 0x90;
      if (b === 0xf4) hi = 0x8f;
    } else return i;
    for (let k = 1; k <= n; k++) {
      const c = buf[i + k];
      if (c === undefined || c < (k === 1 ? lo : 0x80) || c > (k === 1 ? hi : 0xbf)) return i;
    }
    i += n + 1;
  }
  return -1;
}

/** Decodes UTF-8 strictly: the text, or the byte offset of the first malformed sequence. A BOM is kept (JSON.parse then refuses it, as Python's json does). */
export function decodeUtf8Strict(buf: Uint8Array): { text: string } | { badOffset: number } {
  try {
    return { text: new TextDecoder('utf-8', { fatal: true, ignoreBOM: true }).decode(buf) };
  } catch {
    return { badOffset: Math.max(0, firstInvalidUtf8(buf)) };
  }
}

export interface DuplicateKey {
  /** Where the repeated key is, as a path: `settings.sink`, `calibration.sources[2].bytes`. */
  path: string;
  /** Byte offset (UTF-8) of the repeated key's opening quote. */
  offset: number;
}

interface Frame {
  keys: Set<string> | null; // null: an array
  /** The current member's key (object) or element index (array). */
  at: string | number;
  expectKey: boolean;
}

const IDENT = /^[A-Za-z_][A-Za-z0-9_]*$/;

function pathOf(frames: Frame[], key: string): string {
  let out = '';
  for (const f of [...frames.slice(0, -1).map((f) => f.at), key]) {
    if (typeof f === 'number') out += `[${f}]`;
    else out += IDENT.test(f) ? `${out ? '.' : ''}${f}` : `[${JSON.stringify(f)}]`;
  }
  return out;
}

/**
 * The first key that appears twice in one object of `text`, at any depth, or undefined. `text`
 * must be JSON that JSON.parse accepted: the scanner only follows strings and brackets. Keys are
 * compared decoded ("a" and "\u0061" are the same key).
 */
export function findDuplicateKey(text: string): DuplicateKey | undefined {
  const frames: Frame[] = [];
  let i = 0;
  const n = text.length;
  while (i < n) {
    const ch = text.charCodeAt(i);
    if (ch === 0x22 /* " */) {
      const start = i;
      i++;
      let escaped = false;
      while (i < n) {
        const c = text.charCodeAt(i);
        if (c === 0x5c /* \ */) {
          escaped = true;
          i += 2;
          continue;
        }
        if (c === 0x22) break;
        i++;
      }
      i++; // past the closing quote
      const top = frames[frames.length - 1];
      if (top?.keys && top.expectKey) {
        const raw = text.slice(start, i);
        const key = escaped ? (JSON.parse(raw) as string) : raw.slice(1, -1);
        if (top.keys.has(key)) return { path: pathOf(frames, key), offset: Buffer.byteLength(text.slice(0, start), 'utf8') };
        top.keys.add(key);
        top.at = key;
        top.expectKey = false;
      }
      continue;
    }
    if (ch === 0x7b /* { */) frames.push({ keys: new Set(), at: '', expectKey: true });
    else if (ch === 0x5b /* [ */) frames.push({ keys: null, at: 0, expectKey: false });
    else if (ch === 0x7d /* } */ || ch === 0x5d /* ] */) frames.pop();
    else if (ch === 0x2c /* , */) {
      const top = frames[frames.length - 1];
      if (top?.keys) top.expectKey = true;
      else if (top) top.at = (top.at as number) + 1;
    }
    i++;
  }
  return undefined;
}
