/**
 * The optional native helper (native/qrexec_native.c, built at install time):
 * receiving file descriptors over a unix socket (SCM_RIGHTS), pipe2(),
 * O_NONBLOCK control and shutdown(). Everything works without it except the
 * fast qrexec-client-vm launcher (which needs fd passing) and services' stderr
 * being a pipe rather than a socket.
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
  waitReadable(fd: number, timeoutMs: number, cb: (readable: boolean) => void): void;
}

let cached: NativeHelper | null | undefined;

/** Where the addon is built. */
export function nativeAddonPath(): string {
  const here = path.dirname(fileURLToPath(import.meta.url)); // dist/src/agent
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
