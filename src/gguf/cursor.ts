// Tested by test/gguf/read.test.ts and test/gguf/fuzz.test.ts.
/**
 * A forward-only little-endian reader over an open file for the GGUF header. It keeps a window of
 * the file in memory and refills it with positional reads, so a header of any size (vocabularies of
 * 262K strings) is read without loading the tensor data. Every read first checks that its bytes lie
 * inside the file, so a hostile length fails as "truncated" before anything is allocated; a caller
 * bounds lengths by `remaining()` before asking for them.
 */
import { readSync } from 'node:fs';
import { ggufInvalid } from './errors.js';

const WINDOW = 1 << 20;
const FATAL_UTF8 = new TextDecoder('utf-8', { fatal: true });

// Each read calls ensure() before touching this.buf: ensure may replace the buffer.
export class Cursor {
  pos = 0;
  private buf: Buffer = Buffer.alloc(0);
  private winStart = 0;
  private winEnd = 0;

  constructor(
    private readonly fd: number,
    readonly fileSize: number,
    readonly path: string,
  ) {}

  remaining(): number {
    return this.fileSize - this.pos;
  }

  /** Makes `n` bytes at `pos` available in the window; `what` names the field for the truncation error. */
  private ensure(n: number, what: string): number {
    if (n > this.fileSize - this.pos) {
      throw ggufInvalid(this.path, `truncated: ${what} needs ${n} bytes at offset ${this.pos}, but the file ends at ${this.fileSize}`, {
        offset: this.pos,
      });
    }
    if (this.pos + n > this.winEnd || this.pos < this.winStart) {
      const len = Math.min(Math.max(n, WINDOW), this.fileSize - this.pos);
      if (this.buf.length < len) this.buf = Buffer.allocUnsafe(len);
      let got = 0;
      while (got < len) {
        const r = readSync(this.fd, this.buf, got, len - got, this.pos + got);
        if (r === 0)
          throw ggufInvalid(this.path, `the file ended at ${this.pos + got} while reading ${what} (it shrank while being read?)`);
        got += r;
      }
      this.winStart = this.pos;
      this.winEnd = this.pos + len;
    }
    const at = this.pos - this.winStart;
    this.pos += n;
    return at;
  }

  u8(what: string): number {
    const at = this.ensure(1, what);
    return this.buf[at];
  }
  i8(what: string): number {
    const at = this.ensure(1, what);
    return this.buf.readInt8(at);
  }
  u16(what: string): number {
    const at = this.ensure(2, what);
    return this.buf.readUInt16LE(at);
  }
  i16(what: string): number {
    const at = this.ensure(2, what);
    return this.buf.readInt16LE(at);
  }
  u32(what: string): number {
    const at = this.ensure(4, what);
    return this.buf.readUInt32LE(at);
  }
  i32(what: string): number {
    const at = this.ensure(4, what);
    return this.buf.readInt32LE(at);
  }
  f32(what: string): number {
    const at = this.ensure(4, what);
    return this.buf.readFloatLE(at);
  }
  f64(what: string): number {
    const at = this.ensure(8, what);
    return this.buf.readDoubleLE(at);
  }
  u64(what: string): bigint {
    const at = this.ensure(8, what);
    return this.buf.readBigUInt64LE(at);
  }
  i64(what: string): bigint {
    const at = this.ensure(8, what);
    return this.buf.readBigInt64LE(at);
  }

  /** A u64 that must be at most `max` (a count or a length), as a number. */
  count(what: string, max: number, why: string): number {
    const at = this.pos;
    const v = this.u64(what);
    if (v > BigInt(max))
      throw ggufInvalid(this.path, `${what} is ${v} at offset ${at}, more than ${why} (${max})`, { offset: at, value: v.toString() });
    return Number(v);
  }

  /** A GGUF string: u64 byte length, then UTF-8 bytes (no terminator), at most `maxBytes`. */
  string(what: string, maxBytes: number): string {
    const len = this.count(
      `length of ${what}`,
      Math.min(maxBytes, this.remaining() - 8),
      maxBytes < this.remaining() - 8 ? 'the longest string kvtc reads' : 'the bytes left in the file',
    );
    const at = this.ensure(len, what);
    const s = this.buf.toString('utf8', at, at + len);
    // toString replaces bad UTF-8 with U+FFFD; only then pay for a strict decode, since U+FFFD is also a legal character.
    if (s.includes('\uFFFD')) {
      try {
        FATAL_UTF8.decode(this.buf.subarray(at, at + len));
      } catch {
        throw ggufInvalid(this.path, `${what} at offset ${this.winStart + at} is not valid UTF-8`, { offset: this.winStart + at });
      }
    }
    return s;
  }
}
