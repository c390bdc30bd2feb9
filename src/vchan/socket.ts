import * as net from 'node:net';
import * as fs from 'node:fs';
import { basename, join } from 'node:path';
import { describeSystemError, QrexecError } from '../common/errors.js';
import { loadNative } from '../native/addon.js';

/** Default directory of vchan sockets (qubes-core-vchan-socket). */
export const DEFAULT_VCHAN_SOCKET_DIR = '/var/run/vchan';

/**
 * Where vchan sockets live and which domain we are, from VCHAN_SOCKET_DIR /
 * VCHAN_DOMAIN / VCHAN_SOCKET_LAYOUT.
 *
 * Layouts: `flat` (the reference's: every socket in `dir`) and `per-domain`,
 * used by a host whose qubes are sandboxes: dom0's sockets with qube N live in
 * `dir/N/`, the directory that is qube N's whole vchan directory (its
 * VCHAN_SOCKET_DIR inside the sandbox, flat), so a qube sees only the sockets
 * of its own channels. Only dom0 (ownDomain 0) uses `per-domain`; a qube's
 * view is always flat.
 */
export interface VchanEnv {
  readonly dir: string;
  readonly ownDomain: number;
  readonly layout?: 'flat' | 'per-domain';
}

/** Reads VCHAN_SOCKET_DIR (default /var/run/vchan), VCHAN_DOMAIN (default 0, like atoi) and VCHAN_SOCKET_LAYOUT (flat or per-domain). */
export function vchanEnvFrom(env: NodeJS.ProcessEnv = process.env): VchanEnv {
  const d = Number.parseInt(env['VCHAN_DOMAIN'] ?? '0', 10);
  const ownDomain = Number.isFinite(d) ? d : 0;
  const layout = env['VCHAN_SOCKET_LAYOUT'] === 'per-domain' && ownDomain === 0 ? 'per-domain' : 'flat';
  return { dir: env['VCHAN_SOCKET_DIR'] || DEFAULT_VCHAN_SOCKET_DIR, ownDomain, ...(layout === 'per-domain' ? { layout } : {}) };
}

/** `<dir>/vchan.<server>.<client>.<port>.sock` */
export function vchanPath(dir: string, serverDomain: number, clientDomain: number, port: number): string {
  return join(dir, `vchan.${serverDomain}.${clientDomain}.${port}.sock`);
}

/** The directory holding the vchan sockets between us and `peerDomain` in `env`'s layout. */
export function vchanDirFor(env: VchanEnv, peerDomain: number): string {
  return env.layout === 'per-domain' && env.ownDomain === 0 && peerDomain !== 0 ? join(env.dir, String(peerDomain)) : env.dir;
}

export class VchanError extends QrexecError {
  override name = 'VchanError';
  constructor(
    readonly code: 'TIMEOUT' | 'ABORTED' | 'LISTEN' | 'CONNECT',
    message: string,
  ) {
    super(message);
  }
}

/** A vchan server waiting for its one client. */
export interface VchanListener {
  readonly path: string;
  /** Resolves with the first (and only) connection. */
  readonly accepted: Promise<net.Socket>;
  /** Stop waiting (rejects `accepted` with ABORTED if still pending). */
  close(): void;
}

/**
 * Server side of a vchan: like libvchan_server_init(remoteDomain, port) of
 * qubes-core-vchan-socket — unlink a stale socket, listen at
 * vchan.<own>.<remote>.<port>.sock, accept exactly one client. Differences:
 * the listener is closed and the socket file removed once the client is in
 * (the reference keeps a dead listener open until close), so no second
 * client can queue on it; late clients see ENOENT and keep retrying, as they
 * would against the reference's listener.
 */
export async function vchanListen(env: VchanEnv, remoteDomain: number, port: number): Promise<VchanListener> {
  const path = vchanPath(vchanDirFor(env, remoteDomain), env.ownDomain, remoteDomain, port);
  // synchronous: one cheap system call, instead of a thread-pool round trip on every call
  try {
    fs.unlinkSync(path);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw e;
  }
  const server = net.createServer();
  await new Promise<void>((resolve, reject) => {
    server.once('error', (e) => reject(new VchanError('LISTEN', `cannot listen on vchan ${path}: ${describeSystemError(e, path)}`)));
    server.listen({ path, backlog: 1 }, () => resolve());
  });
  return acceptOne(server, path);
}

/** The first connection of a listening vchan server: the listener and its file go at once. */
function acceptOne(server: net.Server, path: string): VchanListener {
  let done = false;
  let rejectAccept: ((e: Error) => void) | undefined;
  const cleanup = (): void => {
    if (done) return;
    done = true;
    // At once, not later: the port is reused once this call ends, and a late
    // unlink would remove the next call's socket file (its client then waits
    // for a file that never appears). Closing the listener can wait.
    unlinkQuiet(path);
    setImmediate(() => server.close());
  };
  const accepted = new Promise<net.Socket>((resolve, reject) => {
    rejectAccept = reject;
    server.once('connection', (sock: net.Socket) => {
      cleanup();
      resolve(sock);
    });
    server.on('error', (e) => {
      cleanup();
      reject(e);
    });
  });
  return {
    path,
    accepted,
    close: () => {
      if (!done) {
        cleanup();
        rejectAccept?.(new VchanError('ABORTED', `vchan server ${path} closed before a client connected`));
      }
    },
  };
}

function unlinkQuiet(path: string): void {
  try {
    fs.unlinkSync(path);
  } catch {
    /* gone already */
  }
}

/** Options of a vchan client connection. */
export interface ConnectOptions {
  /** Give up after this many ms (default: wait forever, as libvchan_client_init). */
  readonly timeoutMs?: number;
  readonly signal?: AbortSignal;
  /** The connected socket stays writable after the peer's EOF (data vchans). */
  readonly allowHalfOpen?: boolean;
}

/**
 * Client side of a vchan: like libvchan_client_init(remoteDomain, port) —
 * connect to vchan.<remote>.<own>.<port>.sock, retrying while the socket is
 * missing (ENOENT) or not listening (ECONNREFUSED). Instead of sleeping
 * between attempts it watches the socket directory (inotify) and retries as
 * soon as the file appears: a data vchan's server usually binds just after we
 * were told to connect. A socket that is bound but not listening yet gives no
 * file event, so that case (and a system without inotify) retries on timers
 * doubling from 1 ms to 50 ms.
 */
export async function vchanConnect(env: VchanEnv, remoteDomain: number, port: number, opts: ConnectOptions = {}): Promise<net.Socket> {
  const dir = vchanDirFor(env, remoteDomain);
  const path = vchanPath(dir, remoteDomain, env.ownDomain, port);
  const name = basename(path);
  const deadline = opts.timeoutMs === undefined ? Infinity : Date.now() + opts.timeoutMs;
  let watcher: fs.FSWatcher | undefined;
  let wake: (() => void) | undefined;
  // an event that arrives while a connect attempt is in flight must not be lost
  let poked = false;
  const poke = (): void => {
    poked = true;
    const w = wake;
    wake = undefined;
    w?.();
  };
  opts.signal?.addEventListener('abort', poke);
  try {
    let backoff = 1;
    for (let attempt = 0; ; attempt++) {
      if (opts.signal?.aborted) throw new VchanError('ABORTED', `connect ${path} aborted`);
      poked = false;
      let refused = false;
      try {
        return await connectOnce(path, opts.allowHalfOpen ?? false);
      } catch (e) {
        const code = (e as NodeJS.ErrnoException).code;
        if (code !== 'ENOENT' && code !== 'ECONNREFUSED') {
          throw new VchanError('CONNECT', `connect ${path}: ${(e as Error).message}`);
        }
        refused = code === 'ECONNREFUSED';
      }
      if (Date.now() >= deadline) throw new VchanError('TIMEOUT', `vchan ${path}: no server after ${opts.timeoutMs} ms`);
      if (refused && attempt < 50) {
        // bound but not listening yet: usually a matter of microseconds
        await new Promise((r) => setImmediate(r));
        continue;
      }
      if (!watcher) {
        try {
          watcher = fs.watch(dir, { persistent: false }, (_ev, f) => {
            if (f === null || f === name) poke();
          });
          watcher.on('error', () => poke());
          continue; // the file may have appeared before the watch started
        } catch {
          /* no inotify (or no directory yet): timers only */
        }
      }
      if (poked) continue;
      const delay = Math.min(refused || !watcher ? backoff : 50, Math.max(0, deadline - Date.now()));
      if (refused || !watcher) backoff = Math.min(backoff * 2, 50);
      await new Promise<void>((resolve) => {
        const t = setTimeout(resolve, delay);
        wake = () => {
          clearTimeout(t);
          resolve();
        };
      });
    }
  } finally {
    watcher?.close();
    opts.signal?.removeEventListener('abort', poke);
  }
}

/**
 * A stream socket connected to the unix socket `path` with one native
 * connect(2) in this turn (no event-loop round trip: what is written next goes
 * out at once); the error code ("ENOENT", "ECONNREFUSED"...) when that failed;
 * undefined without the native helper.
 */
export function connectUnixNow(path: string, allowHalfOpen: boolean): net.Socket | string | undefined {
  const r = loadNative()?.connectUnix(path);
  if (typeof r === 'number') return new net.Socket({ fd: r, readable: true, writable: true, allowHalfOpen });
  return r;
}

/**
 * Node's connect (unix path or TCP), resolved once connected; rejects with the
 * connect error. A unix socket whose listen backlog is full refuses a
 * non-blocking connect with EAGAIN, where the reference's blocking connect(2)
 * waits for room: we try again (1 ms, doubling to 50 ms) for up to a minute.
 */
export async function connectStream(opts: net.NetConnectOpts): Promise<net.Socket> {
  const end = Date.now() + 60_000;
  for (let delay = 1; ; delay = Math.min(delay * 2, 50)) {
    try {
      return await connectStreamOnce(opts);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'EAGAIN' || Date.now() + delay > end) throw e;
      await new Promise((r) => setTimeout(r, delay));
    }
  }
}

function connectStreamOnce(opts: net.NetConnectOpts): Promise<net.Socket> {
  return new Promise((resolve, reject) => {
    const s = net.connect(opts);
    const onErr = (e: Error): void => {
      s.destroy();
      reject(e);
    };
    s.once('error', onErr);
    s.once('connect', () => {
      s.off('error', onErr);
      resolve(s);
    });
  });
}

/** open(2)'s O_PATH on Linux (not in fs.constants): a descriptor naming a file without opening it. */
const O_PATH = 0o10000000;

function connectError(code: string, path: string, detail?: string): NodeJS.ErrnoException {
  const e = new Error(`connect ${code} ${path}${detail ? ` (${detail})` : ''}`) as NodeJS.ErrnoException;
  e.code = code;
  return e;
}

/**
 * One connection attempt to the unix socket `path`; rejects with the connect
 * error. The last component of `path` is never followed: a vchan socket sits
 * in a directory its peer can write (a qube's own vchan directory, for the
 * host), and connect(2) on a path follows a symlink the peer put there, to
 * any socket of the host (qubesd's, the policy daemon's, another qube's). So
 * the name is first opened with O_PATH|O_NOFOLLOW, which pins the inode it
 * names at that instant (a symlink is pinned as itself, and refused with
 * ELOOP); only a socket is accepted, and connect(2) goes to
 * /proc/self/fd/<that descriptor>, which reaches that very inode whatever the
 * name points to by then. Nothing to race: the check and the connect are on
 * one descriptor. The peer could still put a hard link to another socket
 * there, but only to one it can reach itself (links do not cross mounts, and
 * a sandbox's vchan directory is its own mount), so it gains nothing by it.
 */
export function connectOnce(path: string, allowHalfOpen = false): Promise<net.Socket> {
  let fd: number;
  try {
    fd = fs.openSync(path, O_PATH | fs.constants.O_NOFOLLOW);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code ?? 'EIO';
    return Promise.reject(connectError(code, path));
  }
  let pinned: string;
  try {
    const st = fs.fstatSync(fd);
    if (st.isSymbolicLink()) throw connectError('ELOOP', path, 'a symlink: not followed');
    // what connect(2) answers for a file that is not a socket: the caller retries
    if (!st.isSocket()) throw connectError('ECONNREFUSED', path, 'not a socket');
    pinned = `/proc/self/fd/${fd}`;
  } catch (e) {
    fs.closeSync(fd);
    return Promise.reject(e as Error);
  }
  const now = connectUnixNow(pinned, allowHalfOpen);
  if (now === undefined) {
    // Node's connect(2) is issued before connectStream's first turn returns, but
    // a retry (EAGAIN) comes later: the descriptor stays open until it settles
    return connectStream({ path: pinned, allowHalfOpen }).finally(() => fs.closeSync(fd));
  }
  fs.closeSync(fd);
  if (typeof now !== 'string') return Promise.resolve(now);
  return Promise.reject(connectError(now, path));
}
