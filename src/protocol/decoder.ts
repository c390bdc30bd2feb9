import { HEADER_SIZE, msgTypeName } from './constants.js';
import { ProtocolError } from './errors.js';

/** One complete message: its type and its payload (exactly `len` bytes). */
export interface Frame {
  readonly type: number;
  readonly payload: Buffer;
  /** Stream offset of the frame's header (for error messages). */
  readonly offset: number;
}

/** Inclusive bounds on the payload length of one message type. */
export interface LengthBounds {
  readonly min: number;
  readonly max: number;
}

/**
 * Which message types a channel accepts in its current state, and the payload
 * length bounds of each. Returns undefined for a type that is not allowed.
 */
export type LengthRules = (type: number) => LengthBounds | undefined;

/**
 * Push-based decoder of `msg_header`-framed messages.
 *
 * `push(chunk)` returns (lazily) the frames the chunk completed. The declared length of
 * every header is checked against the rules for its type *before* any of the
 * body is buffered, so the decoder never holds more than one maximum message
 * plus a header. Chunks are kept in a list and joined only when a frame spans
 * several of them; a frame that lies inside one chunk is a zero-copy view
 * (`subarray`) of that chunk — callers must not reuse pushed buffers.
 *
 * After the first error every later `push` throws `DECODER_FAILED`: a peer
 * that broke framing cannot be resynchronised and its channel must be closed.
 * The decoder does not validate payload contents; see the `parse*` functions.
 */
export class FrameDecoder {
  private chunks: Buffer[] = [];
  private head = 0; // read position inside chunks[0]
  private buffered = 0;
  private type = -1;
  private len = -1; // -1: waiting for a header
  private frameOffset = 0;
  private consumed = 0;
  private failed: ProtocolError | undefined;

  constructor(private rules: LengthRules) {}

  /** Switch to other rules, e.g. after the handshake. Applies from the next header on. */
  setRules(rules: LengthRules): void {
    this.rules = rules;
  }

  /** Bytes held, waiting for the rest of a frame. */
  get bufferedBytes(): number {
    return this.buffered;
  }

  /** True when no partial frame is pending (a clean place for the stream to end). */
  get idle(): boolean {
    return this.buffered === 0 && this.len < 0;
  }

  /**
   * Feed bytes; returns the frames they complete, decoded lazily as the
   * iterator is consumed, so a consumer may switch rules (`setRules`) between
   * two frames of the same chunk (e.g. right after MSG_HELLO). Consume the
   * iterator fully before the next push. Throws ProtocolError while iterating.
   */
  push(chunk: Uint8Array): IterableIterator<Frame> {
    if (this.failed) {
      throw new ProtocolError('DECODER_FAILED', `decoder already failed: ${this.failed.message}`, this.failed.offset);
    }
    if (chunk.length > 0) {
      const buf = Buffer.isBuffer(chunk) ? chunk : Buffer.from(chunk.buffer, chunk.byteOffset, chunk.length);
      this.chunks.push(buf);
      this.buffered += buf.length;
    }
    return this.frames();
  }

  /** Like push, but decodes eagerly with the current rules and returns an array. */
  pushAll(chunk: Uint8Array): Frame[] {
    return Array.from(this.push(chunk));
  }

  private *frames(): IterableIterator<Frame> {
    for (;;) {
      if (this.failed) return;
      const f = this.next();
      if (f === undefined) return;
      yield f;
    }
  }

  private next(): Frame | undefined {
    if (this.len < 0) {
      if (this.buffered < HEADER_SIZE) return undefined;
      const h = this.take(HEADER_SIZE);
      const type = h.readUInt32LE(0);
      const len = h.readUInt32LE(4);
      const offset = this.consumed - HEADER_SIZE;
      const bounds = this.rules(type);
      if (bounds === undefined) {
        this.fail(new ProtocolError('UNKNOWN_TYPE', `unexpected message type ${msgTypeName(type)} (length ${len})`, offset));
      } else if (len < bounds.min || len > bounds.max) {
        this.fail(
          new ProtocolError('BAD_LENGTH', `${msgTypeName(type)} with length ${len} outside [${bounds.min}, ${bounds.max}]`, offset),
        );
      }
      this.type = type;
      this.len = len;
      this.frameOffset = offset;
    }
    if (this.buffered < this.len) return undefined;
    const payload = this.len === 0 ? EMPTY : this.take(this.len);
    this.len = -1;
    return { type: this.type, payload, offset: this.frameOffset };
  }

  private fail(e: ProtocolError): never {
    this.failed = e;
    this.chunks = [];
    this.buffered = 0;
    throw e;
  }

  /** Remove n bytes (n ≤ buffered) from the front. */
  private take(n: number): Buffer {
    this.buffered -= n;
    this.consumed += n;
    const first = this.chunks[0] as Buffer;
    const avail = first.length - this.head;
    if (avail >= n) {
      const b = first.subarray(this.head, this.head + n);
      this.head += n;
      if (this.head === first.length) {
        this.chunks.shift();
        this.head = 0;
      }
      return b;
    }
    const out = Buffer.allocUnsafe(n);
    let filled = 0;
    while (filled < n) {
      const c = this.chunks[0] as Buffer;
      const want = Math.min(n - filled, c.length - this.head);
      c.copy(out, filled, this.head, this.head + want);
      filled += want;
      this.head += want;
      if (this.head === c.length) {
        this.chunks.shift();
        this.head = 0;
      }
    }
    return out;
  }
}

const EMPTY = Buffer.alloc(0);
