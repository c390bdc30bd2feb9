/**
 * Exact-length reads from a stream, for the qfile receiver and sender: the
 * stream is consumed as it arrives and never buffered beyond what was asked
 * for plus one chunk.
 */
import type { Readable } from 'node:stream';

export class ByteReader {
  private chunks: Buffer[] = [];
  private have = 0;
  private ended = false;
  private failed: Error | null = null;
  private wake: (() => void) | null = null;

  constructor(private readonly input: Readable) {
    input.on('data', (c: Buffer) => {
      this.chunks.push(c);
      this.have += c.length;
      if (this.have > 1 << 20) input.pause();
      this.poke();
    });
    input.on('end', () => {
      this.ended = true;
      this.poke();
    });
    input.on('error', (e) => {
      this.failed = e;
      this.ended = true;
      this.poke();
    });
  }

  private poke(): void {
    const w = this.wake;
    this.wake = null;
    w?.();
  }

  /** Something is buffered (a receiver's early answer). */
  get available(): number {
    return this.have;
  }

  get atEnd(): boolean {
    return this.ended && this.have === 0;
  }

  private async fill(n: number): Promise<void> {
    while (this.have < n && !this.ended) {
      if (this.input.isPaused()) this.input.resume();
      await new Promise<void>((r) => (this.wake = r));
    }
  }

  private take(n: number): Buffer {
    const out = Buffer.allocUnsafe(n);
    let off = 0;
    while (off < n) {
      const c = this.chunks[0] as Buffer;
      const k = Math.min(c.length, n - off);
      c.copy(out, off, 0, k);
      off += k;
      if (k === c.length) this.chunks.shift();
      else this.chunks[0] = c.subarray(k);
    }
    this.have -= n;
    if (this.have <= 1 << 20 && this.input.isPaused()) this.input.resume();
    return out;
  }

  /** Exactly `n` bytes, or null when the stream ended first (what came is dropped). */
  async exactly(n: number): Promise<Buffer | null> {
    await this.fill(n);
    if (this.have < n) return null;
    return this.take(n);
  }

  /** Up to `max` bytes (at least one), or null at the end. */
  async some(max: number): Promise<Buffer | null> {
    await this.fill(1);
    if (this.have === 0) return null;
    return this.take(Math.min(max, this.have, (this.chunks[0] as Buffer).length));
  }

  /** The error that ended the stream, if any. */
  get error(): Error | null {
    return this.failed;
  }
}
