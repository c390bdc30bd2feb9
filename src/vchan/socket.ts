import * as net from 'node:net';
import { unlinkSync } from 'node:fs';
import { unlink } from 'node:fs/promises';
import { join } from 'node:path';
import { QrexecError } from '../common/errors.js';

/** Default directory of vchan sockets (qubes-core-vchan-socket). */
export const DEFAULT_VCHAN_SOCKET_DIR = '/var/run/vchan';

/** Where vchan sockets live and which domain we are, from VCHAN_SOCKET_DIR / VCHAN_DOMAIN. */
export interface VchanEnv {
  readonly dir: string;
  readonly ownDomain: number;
}

/** Reads VCHAN_SOCKET_DIR (default /var/run/vchan) and VCHAN_DOMAIN (default 0, like atoi). */
export function vchanEnvFrom(env: NodeJS.ProcessEnv = process.env): VchanEnv {
  const d = Number.parseInt(env['VCHAN_DOMAIN'] ?? '0', 10);
  return { dir: env['VCHAN_SOCKET_DIR'] || DEFAULT_VCHAN_SOCKET_DIR, ownDomain: Number.isFinite(d) ? d : 0 };
}

/** `<dir>/vchan.<server>.<client>.<port>.sock` */
export function vchanPath(dir: string, serverDomain: number, clientDomain: number, port: number): string {
  return join(dir, `vchan.${serverDomain}.${clientDomain}.${port}.sock`);
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
  const path = vchanPath(env.dir, env.ownDomain, remoteDomain, port);
  // synchronous: one cheap system call, instead of a thread-pool round trip on every call
  try {
    unlinkSync(path);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw e;
  }
  const server = net.createServer();
  await new Promise<void>((resolve, reject) => {
    server.once('error', (e) => reject(new VchanError('LISTEN', `listen ${path}: ${e.message}`)));
    server.listen({ path, backlog: 1 }, () => resolve());
  });
  let done = false;
  let rejectAccept: ((e: Error) => void) | undefined;
  const cleanup = (): void => {
    if (done) return;
    done = true;
    server.close();
    unlink(path).catch(() => undefined);
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

/** Options of a vchan client connection. */
export interface ConnectOptions {
  /** Give up after this many ms (default: wait forever, as libvchan_client_init). */
  readonly timeoutMs?: number;
  readonly signal?: AbortSignal;
}

/**
 * Client side of a vchan: like libvchan_client_init(remoteDomain, port) —
 * connect to vchan.<remote>.<own>.<port>.sock, retrying while the socket is
 * missing (ENOENT) or not listening (ECONNREFUSED).
 */
export async function vchanConnect(env: VchanEnv, remoteDomain: number, port: number, opts: ConnectOptions = {}): Promise<net.Socket> {
  const path = vchanPath(env.dir, remoteDomain, env.ownDomain, port);
  const deadline = opts.timeoutMs === undefined ? Infinity : Date.now() + opts.timeoutMs;
  let delay = 1;
  for (;;) {
    if (opts.signal?.aborted) throw new VchanError('ABORTED', `connect ${path} aborted`);
    try {
      return await connectOnce(path);
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code;
      if (code !== 'ENOENT' && code !== 'ECONNREFUSED') {
        throw new VchanError('CONNECT', `connect ${path}: ${(e as Error).message}`);
      }
    }
    if (Date.now() >= deadline) throw new VchanError('TIMEOUT', `vchan ${path}: no server after ${opts.timeoutMs} ms`);
    await new Promise((r) => setTimeout(r, Math.min(delay, Math.max(0, deadline - Date.now()))));
    delay = Math.min(delay * 2, 50);
  }
}

/** One connection attempt to a unix socket; rejects with the connect error. */
export function connectOnce(path: string, allowHalfOpen = false): Promise<net.Socket> {
  return new Promise((resolve, reject) => {
    const s = net.createConnection({ path, allowHalfOpen });
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
