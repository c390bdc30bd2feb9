/** Local descriptors (a caller's stdin/stdout/stderr) as streams. */
import * as fs from 'node:fs';
import * as net from 'node:net';
import type { Readable, Writable } from 'node:stream';
import { loadNative } from './addon.js';

/**
 * A local descriptor wrapped in a stream: sockets and pipes become net.Socket
 * (event-driven), files and terminals fs streams. `release()` flushes, restores
 * blocking mode (the file description is shared with the caller's shell) and
 * closes it.
 */
export interface LocalStream {
  readonly kind: 'socket' | 'file';
  readonly stream: Readable | Writable | net.Socket;
  release(): void;
}

/**
 * Resolves once everything written to `w` so far has left the process (or
 * `w` failed or closed): a process must not exit before that, or it drops
 * what a slow reader of its stdout or stderr has not taken yet (writes to a
 * full pipe are queued in the process). An ended stream is waited for until
 * 'finish'; any other, such as process.stderr, until an empty write behind
 * the queued ones is done. Events, not stream.finished(): process.stdout
 * never reports writableFinished.
 */
export function flushed(w: Writable): Promise<void> {
  if (w.destroyed || w.writableFinished) return Promise.resolve();
  return new Promise((resolve) => {
    w.once('close', resolve);
    w.once('error', () => resolve());
    if (w.writableEnded) {
      w.once('finish', resolve);
      // an ended process.stdout on a file (SyncWriteStream) may never emit
      // 'finish'; with nothing buffered, everything is written
      if (w.writableLength === 0) setImmediate(resolve);
    } else if (w.writableLength === 0) resolve();
    else w.write(Buffer.alloc(0), () => resolve());
  });
}

/**
 * `inherited`: the descriptor is a caller's own stdout or stderr (what
 * qrexec-client-vm handed us, or our own fd 1): at its end it is flushed and
 * closed, never shut down, because the socket is shared with the caller's
 * shell, whose later writes a shutdown would break (EPIPE), as the
 * reference's close_stdio does for inherited descriptors.
 */
export function openLocal(fd: number, mode: 'read' | 'write' | 'duplex', opts: { inherited?: boolean } = {}): LocalStream {
  const native = loadNative();
  let st: fs.Stats | undefined;
  try {
    st = fs.fstatSync(fd);
  } catch {
    st = undefined;
  }
  if (st && st.isFIFO() && fd <= 2 && mode === 'write') {
    // libuv never closes descriptors 0-2, but a pipe's reader sees EOF only when
    // every writer is closed: move our end to a new descriptor we can close.
    try {
      const moved = fs.openSync(`/proc/self/fd/${fd}`, fs.constants.O_WRONLY);
      fs.closeSync(fd);
      const placeholder = fs.openSync('/dev/null', fs.constants.O_RDWR);
      if (placeholder !== fd) fs.closeSync(placeholder);
      fd = moved;
    } catch {
      /* keep the original */
    }
  }
  if (st && (st.isSocket() || st.isFIFO())) {
    const s = new net.Socket({ fd, readable: mode !== 'write', writable: mode !== 'read', allowHalfOpen: true });
    s.on('error', () => undefined);
    if (opts.inherited && mode === 'write' && st.isSocket()) {
      // end() = everything written, then 'finish'; no shutdown(SHUT_WR) of the shared socket
      (s as unknown as { _final: (cb: () => void) => void })._final = (cb) => cb();
    }
    // libuv made the descriptor non-blocking; the file description is shared
    // with the caller's shell, so restore blocking mode before letting go.
    const restore = (): void => {
      try {
        native?.setBlocking(fd, true);
      } catch {
        /* closed already */
      }
    };
    return {
      kind: 'socket',
      stream: s,
      release(): void {
        if (s.destroyed) return;
        if (mode !== 'read' && !s.writableFinished) {
          const done = (): void => {
            restore();
            s.destroy();
          };
          s.once('finish', done);
          s.once('error', done);
          if (!s.writableEnded) s.end();
        } else {
          restore();
          s.destroy();
        }
      },
    };
  }
  const stream: Readable | Writable =
    mode === 'read' ? fs.createReadStream('', { fd, autoClose: true }) : fs.createWriteStream('', { fd, autoClose: true });
  stream.on('error', () => undefined);
  return {
    kind: 'file',
    stream,
    release(): void {
      if (mode !== 'read') (stream as fs.WriteStream).end();
      else stream.destroy();
    },
  };
}
