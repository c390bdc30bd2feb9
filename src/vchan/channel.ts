import { Duplex } from 'node:stream';

/**
 * The few stream operations qrexec code needs from a connection. A `net.Socket`
 * satisfies it; tests use `memoryPair()`. Flow control is Node's: `write`
 * returns false when the peer is slow, then wait for `'drain'`; `pause()` stops
 * `'data'` events.
 */
export interface Channel {
  write(chunk: Uint8Array, cb?: (err?: Error | null) => void): boolean;
  end(cb?: () => void): unknown;
  destroy(err?: Error): unknown;
  pause(): unknown;
  resume(): unknown;
  readonly destroyed: boolean;
  readonly writableNeedDrain: boolean;
  on(event: 'data', cb: (chunk: Buffer) => void): unknown;
  on(event: 'drain' | 'end' | 'close', cb: () => void): unknown;
  on(event: 'error', cb: (err: Error) => void): unknown;
  once(event: 'drain' | 'end' | 'close', cb: () => void): unknown;
  off(event: 'data', cb: (chunk: Buffer) => void): unknown;
  off(event: 'drain' | 'end' | 'close', cb: () => void): unknown;
}

/**
 * Two connected in-memory channels: what one writes, the other reads, with
 * backpressure (`highWaterMark` bytes buffered per direction) and half-close
 * (`end()` gives the peer `'end'`). For tests of protocol state machines.
 */
export function memoryPair(highWaterMark = 64 * 1024): [Duplex, Duplex] {
  const ends: MemEnd[] = [];
  const a = new MemEnd(highWaterMark, () => ends[1] as MemEnd);
  const b = new MemEnd(highWaterMark, () => ends[0] as MemEnd);
  ends.push(a, b);
  return [a, b];
}

class MemEnd extends Duplex {
  private pendingCb: (() => void) | undefined;
  constructor(
    highWaterMark: number,
    private readonly peer: () => MemEnd,
  ) {
    super({ highWaterMark, allowHalfOpen: true });
  }
  override _write(chunk: Buffer, _enc: BufferEncoding, cb: (e?: Error | null) => void): void {
    const p = this.peer();
    if (p.destroyed) {
      cb(new Error('EPIPE: peer closed'));
      return;
    }
    if (p.push(chunk)) cb();
    else p.pendingCb = () => cb();
  }
  override _final(cb: (e?: Error | null) => void): void {
    this.peer().push(null);
    cb();
  }
  override _read(): void {
    const cb = this.pendingCb;
    this.pendingCb = undefined;
    cb?.();
  }
  override _destroy(err: Error | null, cb: (e: Error | null) => void): void {
    const p = this.peer();
    if (!p.destroyed) {
      p.push(null);
      setImmediate(() => p.destroy());
    }
    const pc = this.pendingCb;
    this.pendingCb = undefined;
    pc?.();
    cb(err);
  }
}
