/**
 * Facts about the local end of a data stream that only the descriptor under a
 * Node stream can tell: whether it is a real socket, and when the peer of a
 * socket stopped reading.
 */
import * as fs from 'node:fs';
import * as net from 'node:net';
import type { Readable } from 'node:stream';
import { loadNative } from '../native/addon.js';

/** The descriptor under a net.Socket (undefined for in-memory streams or once closed). */
function socketFd(s: object): number | undefined {
  const fd = (s as { _handle?: { fd?: unknown } })._handle?.fd;
  return typeof fd === 'number' && fd >= 0 ? fd : undefined;
}

/**
 * Whether `s` is a stream over a real socket (a socketpair or a connected unix
 * or TCP socket), not a FIFO or an in-memory stream. The reference only shuts
 * such a descriptor down when its direction ends (libqrexec/process_io.c
 * close_stdio), so it can still be read after a SIGUSR1 switch; a FIFO is closed.
 */
export function isSocketStream(s: object): boolean {
  const fd = socketFd(s);
  if (fd === undefined) return false;
  try {
    return fs.fstatSync(fd).isSocket();
  } catch {
    return false;
  }
}

/**
 * A second, write-only stream over the socket under `sock` (a dup of its
 * descriptor), or undefined without the native helper. Node closes a socket
 * whose write fails; written through this one, a failed write (the peer
 * closed) closes only the writing descriptor, and what the peer sent before
 * can still be read from `sock`, as the reference's poll loop does. Ending it
 * shuts the socket down for writing (SHUT_WR); destroying it closes only it.
 */
export function socketWriter(sock: object): net.Socket | undefined {
  const native = loadNative();
  const fd = socketFd(sock);
  if (!native || fd === undefined) return undefined;
  try {
    return new net.Socket({ fd: native.dup(fd), readable: false, writable: true, allowHalfOpen: true });
  } catch {
    return undefined;
  }
}

/**
 * What a paused stream we stop reading holds now: its buffered chunks, then
 * what waits in the pipe or socket under it (read until it would block or
 * ends). A stream switched away from (a SIGUSR1) keeps nothing its writer put
 * there before. Only FIFOs and sockets are read (libuv made them
 * non-blocking); the stream's own listeners must be gone: read() emits 'data'.
 */
export function takeReadable(r: Readable): Buffer[] {
  const out: Buffer[] = [];
  for (let c: unknown = r.read(); c !== null; c = r.read()) out.push(Buffer.isBuffer(c) ? c : Buffer.from(String(c)));
  const fd = socketFd(r);
  if (fd === undefined) return out;
  try {
    const st = fs.fstatSync(fd);
    if (!st.isFIFO() && !st.isSocket()) return out;
  } catch {
    return out;
  }
  const buf = Buffer.allocUnsafe(65536);
  for (;;) {
    let n: number;
    try {
      n = fs.readSync(fd, buf, 0, buf.length, null);
    } catch {
      break; // EAGAIN: nothing more now
    }
    if (n <= 0) break;
    out.push(Buffer.from(buf.subarray(0, n)));
  }
  return out;
}

const EMPTY = Buffer.alloc(0);
const PROBE_FIRST_MS = 10;
const PROBE_MAX_MS = 500;

/**
 * Calls `onHangup` once the peer of a stream socket stops reading (it closed
 * the connection or shut down its reading side) after our reading side saw
 * EOF. That is when the reference's poll() reports POLLHUP on a socket service
 * and the call ends without waiting for the caller's EOF. libuv reports no
 * such event, so while nothing is queued for writing an empty write probes
 * the socket: on a unix socket it fails with EPIPE once the peer stopped
 * reading (a TCP peer is never noticed this way, nor by the reference's poll).
 * Probes back off from 10 ms to 500 ms; they stop when we end or destroy the
 * socket (or `writer`, a second stream over it that we write through).
 * Returns a function that stops watching.
 */
export function onPeerHangup(sock: net.Socket, onHangup: () => void, writer: net.Socket = sock): () => void {
  let stopped = false;
  let timer: NodeJS.Timeout | undefined;
  let delay = PROBE_FIRST_MS;
  const stop = (): void => {
    stopped = true;
    sock.off('end', probe);
    if (timer !== undefined) clearTimeout(timer);
    timer = undefined;
  };
  const later = (): void => {
    timer = setTimeout(probe, delay);
    delay = Math.min(delay * 2, PROBE_MAX_MS);
  };
  function probe(): void {
    timer = undefined;
    if (stopped) return;
    if (writer.destroyed || writer.writableEnded) return stop();
    // a queued write reports a hang-up itself, through the socket's 'error'
    if (writer.writableLength > 0) return later();
    writer.write(EMPTY, (err) => {
      if (stopped) return;
      if (!err) return later();
      stop();
      onHangup();
    });
  }
  if (sock.readableEnded) queueMicrotask(probe);
  else sock.once('end', probe);
  return stop;
}
