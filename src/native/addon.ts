/**
 * The optional native helper (native/qrexec_native.c, built at install time),
 * used by the agent and the vchan transport: receiving file descriptors over a
 * unix socket (SCM_RIGHTS), pipe2(), socketpair(), dup(), O_NONBLOCK control,
 * shutdown(), a connect(2) without an event-loop round trip, a readability
 * watch that reads nothing, and a signal watch that knows the sender.
 * Everything works without it except the fast qrexec-client-vm launcher
 * (which needs fd passing), services' stderr being a pipe rather than a
 * socket, a service's SIGUSR1 to qrexec-agent (the single-socket switch: without
 * the addon it is logged and ignored) and keeping a socket service's unread
 * output when a write to it fails.
 */
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';
import * as path from 'node:path';

/** The addon's functions. */
export interface NativeHelper {
  /**
   * recvmsg(fd, MSG_DONTWAIT | MSG_CMSG_CLOEXEC) of up to `maxBytes` bytes and
   * `maxFds` descriptors. Returns null when nothing is available yet (EAGAIN);
   * throws on errors and when more descriptors arrived than allowed (all closed).
   */
  recvFds(fd: number, maxBytes: number, maxFds: number): { data: Buffer; fds: number[] } | null;
  /** pipe2(O_CLOEXEC): [read end, write end]. */
  pipe(): [number, number];
  /** Sets or clears O_NONBLOCK. */
  setBlocking(fd: number, blocking: boolean): void;
  /** shutdown(fd, how): 0 = SHUT_RD, 1 = SHUT_WR. Errors are ignored (returns errno or 0). */
  shutdown(fd: number, how: number): number;
  /**
   * Calls `cb(true)` once `fd` is readable (data, EOF or an error) or `cb(false)`
   * after `timeoutMs`, without reading anything: a dup of `fd` is watched in the
   * event loop. Throws when `fd` cannot be watched.
   */
  /**
   * A non-blocking unix stream socket connected to `path` with one connect(2),
   * no event-loop round trip: its descriptor, or the error code ("ENOENT",
   * "ECONNREFUSED", "EAGAIN", "EACCES", "ENOTDIR", else "EIO").
   */
  connectUnix(path: string): number | string;
  /** fcntl(F_DUPFD_CLOEXEC): a second descriptor of the same open file or socket. */
  dup(fd: number): number;
  waitReadable(fd: number, timeoutMs: number, cb: (readable: boolean) => void): void;
  /** socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC): two connected descriptors. */
  socketpair(): [number, number];
  /**
   * Installs an SA_SIGINFO handler for `signo` (replacing Node's, e.g. the
   * inspector's SIGUSR1, and any process.on listener's) and calls
   * `cb(senderPid, lineage)` in the event loop once per delivery: the sender's
   * pid (si_pid; 0 when the kernel raised it) and `lineage`, the sender, its
   * parent, its grandparent... (at most 16) as /proc/<pid>/stat showed them
   * when the signal arrived, up to but not including this process or pid 1;
   * it stops early where a process was already gone. Deliveries are queued
   * through a self-pipe; when it is full (hundreds pending) further ones are
   * dropped. The watch does not keep the process alive, cannot be removed,
   * and a later process.on(signo) would take the signal back. Throws for an
   * already watched signal, for SIGKILL/SIGSTOP and fault signals, and from a
   * worker thread once the main thread watches.
   */
  watchSignal(signo: number, cb: (senderPid: number, lineage: number[]) => void): void;
  /**
   * Delivers now, synchronously, the watched signals' records not handed to
   * their callbacks yet; returns how many. The handler runs before the main
   * thread can see anything the sender did after kill() (its exit, a pipe's
   * EOF), but the event loop may report such an event first: calling this
   * then hands on every signal sent before it. (Older builds lack it.)
   */
  drainSignals?(): number;
  /** One non-blocking sendmsg(2) of `data` with `fds` attached (SCM_RIGHTS); bytes sent. Throws (EAGAIN...) on failure. (Older builds lack it.) */
  sendFds?(fd: number, data: Buffer, fds: number[]): number;
  /**
   * A non-blocking, close-on-exec unix stream socket bound to `path` and
   * listening; the caller sets the umask. Throws an Error whose `code` is the
   * errno name (EADDRINUSE...). (Older builds lack it.)
   */
  listenUnix?(path: string, backlog: number): number;
  /**
   * Serves the listening `fd` (it owns it from now on) one request per
   * connection on the main loop, in C (native/request_server.c): accepts,
   * reads each connection to the client's EOF and calls `onRequest(id,
   * bytes)`; a request longer than `maxRequest` is aborted and reported as
   * `onRequest(id, null)`. (Older builds lack it.)
   */
  requestServer?(fd: number, maxRequest: number, onRequest: (id: number, request: Buffer | null) => void): NativeRequestServer;
}

/**
 * A running {@link NativeHelper.requestServer}. Keep the object itself
 * (its methods are bound to it); an id no longer held is ignored.
 */
export interface NativeRequestServer {
  /** Writes `data` (waiting for the socket as needed), then closes: the reply, then EOF. */
  reply(id: number, data: Buffer): void;
  /** Closes the connection without a reply. */
  drop(id: number): void;
  /** Hands the connection's descriptor over (a streaming reply); -1 when it is no longer held. */
  detach(id: number): number;
  /** Stops listening (closes the listening socket) and closes every connection it holds. */
  close(): void;
  /** Connections it holds now. */
  connections(): number;
}

let cached: NativeHelper | null | undefined;

/** Where the addon is built. */
export function nativeAddonPath(): string {
  const here = path.dirname(fileURLToPath(import.meta.url)); // dist/src/native
  return path.resolve(here, '..', '..', '..', 'native', 'build', 'qrexec_native.node');
}

/** The native helper, or null when it was not built. */
export function loadNative(): NativeHelper | null {
  if (cached !== undefined) return cached;
  if (process.env['QREXEC_TS_NO_NATIVE'] === '1') return (cached = null);
  try {
    const req = createRequire(import.meta.url);
    cached = req(nativeAddonPath()) as NativeHelper;
  } catch {
    cached = null;
  }
  return cached;
}

/** socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC) through the addon, or undefined without it. */
export function nativeSocketpair(): [number, number] | undefined {
  const n = loadNative();
  if (!n || typeof n.socketpair !== 'function') return undefined;
  try {
    return n.socketpair();
  } catch {
    return undefined;
  }
}

/**
 * Watches `signo` with the sender's pid (see NativeHelper.watchSignal).
 * Returns false, and installs nothing, when the addon is not built (or is an
 * older build without watchSignal) or the watch cannot be set up.
 */
export function watchSignalSender(signo: number, cb: (senderPid: number, lineage: number[]) => void): boolean {
  const n = loadNative();
  if (!n || typeof n.watchSignal !== 'function') return false;
  try {
    n.watchSignal(signo, cb);
    return true;
  } catch {
    return false;
  }
}

/**
 * Hands the watched signals' pending records to their callbacks now (see
 * NativeHelper.drainSignals); a no-op without the addon.
 */
export function drainSignalRecords(): void {
  loadNative()?.drainSignals?.();
}

/** pipe2(O_CLOEXEC) through the addon, or undefined without it. */
export function nativePipe(): [number, number] | undefined {
  const n = loadNative();
  if (!n) return undefined;
  try {
    return n.pipe();
  } catch {
    return undefined;
  }
}
