/**
 * qubesd's sockets (qubes-core-admin qubes/api/__init__.py
 * QubesDaemonProtocol and create_servers): one request per connection,
 * acted on at the client's EOF; the reply, then our EOF.
 *
 * Each socket is created mode 0660 (owner and group only: the local socket
 * trusts the `src` the client writes, as the reference's does, because only
 * dom0's own programs may reach it). A socket file left by a dead qubesd is
 * replaced; one a live qubesd still answers on is an error.
 */
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as path from 'node:path';
import { loadNative, type NativeHelper, type NativeRequestServer } from '../native/addon.js';
import { dispatch, type ApiContext, type MethodTable } from './admin-api.js';
import { MAX_REQUEST, RequestBuffer, encodeEvent, encodeException, encodeOk, parseRequest, type Request } from './protocol.js';

export type ServerLog = (level: 'info' | 'warning' | 'error', msg: string) => void;

export interface ApiServer {
  readonly path: string;
  /** The implementation serving it ({@link ServerKind}). */
  readonly kind: string;
  /** Stop listening, end open connections (event streams), remove the socket file. */
  close(): Promise<void>;
  /** Connections open now. */
  readonly connections: number;
}

/**
 * Which server implementation serves the sockets: `native`, the addon's
 * request/reply loop (native/request_server.c: accept, read to EOF and
 * reply in C on the main loop, a net.Socket only for an event stream), or
 * `net`, a net.Server with a net.Socket per connection. The default is
 * native when the addon has it; QUBESD_NET_SERVER=1 forces net. Both keep
 * the same protocol, limits and aborts.
 */
export type ServerKind = 'native' | 'net';

export function defaultServerKind(env: NodeJS.ProcessEnv = process.env): ServerKind {
  if (env['QUBESD_NET_SERVER'] === '1') return 'net';
  const n = loadNative();
  return n && typeof n.requestServer === 'function' && typeof n.listenUnix === 'function' ? 'native' : 'net';
}

/** Serve one API on a new socket at `socketPath` (mode 0660; a stale socket file is replaced). */
export async function serveApi(socketPath: string, ctx: ApiContext, table: MethodTable, log: ServerLog, kind: ServerKind = defaultServerKind()): Promise<ApiServer> {
  await removeStaleSocket(socketPath);
  return kind === 'native' ? serveNative(socketPath, ctx, table, log) : serveNet(socketPath, ctx, table, log);
}

/** One connection's way back to the client, whatever the server. */
interface Peer {
  /** The client has gone (or the server closed): nothing more is sent. */
  readonly gone: boolean;
  /** Resolves once the client has gone. */
  readonly closed: Promise<void>;
  /** An event frame (admin.Events); the connection stays open. */
  event(frame: Buffer): void;
  /** The last frame (none after events), then EOF. */
  end(frame: Buffer | null): void;
  /** The frame, if any, then the connection is closed at once. */
  abort(frame: Buffer | null): void;
}

/** Serve one request read to EOF (null: a framing error) on `peer`. */
function serveRequest(req: Request | null, peer: Peer, ctx: ApiContext, table: MethodTable, log: ServerLog): void {
  if (req === null) {
    log('warning', 'framing error');
    peer.abort(null);
    return;
  }
  let events = false;
  const sendEvent = (subject: string, event: string, kwargs: readonly (readonly [string, string])[]): void => {
    if (peer.gone) return;
    events = true;
    peer.event(encodeEvent(subject, event, kwargs));
  };
  void dispatch(ctx, table, req, sendEvent, peer.closed).then((out) => {
    if (peer.gone) return;
    if ('ok' in out) {
      peer.end(events ? null : encodeOk(out.ok));
    } else if ('error' in out) {
      const e = out.error;
      if (e.abort) log('warning', `failed call ${req.method}+${req.arg}: ${e.excType}: ${e.message}`);
      const frame = encodeException(e.excType, e.message);
      if (e.abort) peer.abort(frame);
      else peer.end(frame);
    } else {
      log('error', `failed call ${req.method}+${req.arg}: unhandled error`);
      peer.abort(null);
    }
  });
}

/** A net.Socket as a {@link Peer}. */
function socketPeer(sock: net.Socket): Peer {
  let gone = false;
  let closedResolve: () => void = () => undefined;
  const closed = new Promise<void>((r) => (closedResolve = r));
  sock.on('close', () => {
    gone = true;
    closedResolve();
  });
  sock.on('error', () => undefined);
  return {
    get gone() {
      return gone;
    },
    closed,
    event: (frame) => void sock.write(frame),
    end: (frame) => void (frame ? sock.end(frame) : sock.end()),
    abort: (frame) => void (frame ? sock.write(frame, () => sock.destroy()) : sock.destroy()),
  };
}

function listenServer(socketPath: string, kind: string, conns: () => number, stop: () => Promise<void>): ApiServer {
  fs.chmodSync(socketPath, 0o660);
  return {
    path: socketPath,
    kind,
    get connections() {
      return conns();
    },
    close: () => {
      const done = stop();
      try {
        fs.unlinkSync(socketPath);
      } catch {
        // already gone
      }
      return done;
    },
  };
}

/** With the process umask 0117 (the socket is created 0660, never wider, even for a moment). */
function withSocketUmask<T>(f: () => T): T {
  const old = process.umask(0o117);
  try {
    return f();
  } finally {
    process.umask(old);
  }
}

async function serveNet(socketPath: string, ctx: ApiContext, table: MethodTable, log: ServerLog): Promise<ApiServer> {
  const conns = new Set<net.Socket>();
  const server = net.createServer({ allowHalfOpen: true }, (sock) => {
    conns.add(sock);
    sock.on('close', () => conns.delete(sock));
    handleConnection(sock, ctx, table, log);
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    withSocketUmask(() =>
      server.listen({ path: socketPath, backlog: 4096 }, () => {
        server.off('error', reject);
        resolve();
      }),
    );
  });
  server.on('error', (e) => log('error', `${socketPath}: ${e.message}`));
  return listenServer(
    socketPath,
    'net',
    () => conns.size,
    () =>
      new Promise<void>((resolve) => {
        server.close(() => resolve());
        for (const c of conns) c.destroy();
      }),
  );
}

function handleConnection(sock: net.Socket, ctx: ApiContext, table: MethodTable, log: ServerLog): void {
  const buf = new RequestBuffer();
  let eof = false;
  const peer = socketPeer(sock);
  sock.on('data', (chunk: Buffer) => {
    if (eof) return;
    if (!buf.push(chunk)) {
      log('warning', 'request too long');
      eof = true;
      sock.destroy();
    }
  });
  sock.on('end', () => {
    if (eof) return;
    eof = true;
    serveRequest(buf.finish(), peer, ctx, table, log);
  });
}

const EMPTY = Buffer.alloc(0);

function serveNative(socketPath: string, ctx: ApiContext, table: MethodTable, log: ServerLog): ApiServer {
  const n = loadNative() as NativeHelper & Required<Pick<NativeHelper, 'listenUnix' | 'requestServer'>>;
  const fd = withSocketUmask(() => n.listenUnix(socketPath, 4096));
  /** Connections handed over to a net.Socket (event streams). */
  const streams = new Set<net.Socket>();
  /**
   * The connection as a Peer. It stays with the native server (reply: one
   * write and close, in C) unless it sends an event: then its descriptor is
   * handed to a net.Socket, which carries the stream.
   */
  const peerOf = (id: number): Peer => {
    let sock: net.Socket | null = null;
    let gone = false;
    let closedResolve: () => void = () => undefined;
    const closed = new Promise<void>((r) => (closedResolve = r));
    const stream = (): net.Socket | null => {
      if (sock || gone) return sock;
      const sfd = srv.detach(id);
      if (sfd < 0) {
        gone = true;
        closedResolve();
        return null;
      }
      const s = new net.Socket({ fd: sfd, allowHalfOpen: true, readable: true, writable: true });
      streams.add(s);
      s.on('error', () => undefined);
      s.on('close', () => {
        streams.delete(s);
        gone = true;
        closedResolve();
      });
      return (sock = s);
    };
    return {
      get gone() {
        return gone;
      },
      closed,
      event: (frame) => void stream()?.write(frame),
      end: (frame) => {
        if (sock) void (frame ? sock.end(frame) : sock.end());
        else srv.reply(id, frame ?? EMPTY);
      },
      abort: (frame) => {
        const s = sock;
        if (s) void (frame ? s.write(frame, () => s.destroy()) : s.destroy());
        else if (frame) srv.reply(id, frame);
        else srv.drop(id);
      },
    };
  };
  let srv: NativeRequestServer;
  try {
    srv = n.requestServer(fd, MAX_REQUEST, (id, bytes) => {
      if (bytes === null) log('warning', 'request too long');
      else serveRequest(parseRequest(bytes), peerOf(id), ctx, table, log);
    });
  } catch (e) {
    fs.closeSync(fd);
    throw e;
  }
  return listenServer(
    socketPath,
    'native',
    () => srv.connections() + streams.size,
    async () => {
      srv.close();
      for (const s of streams) s.destroy();
    },
  );
}

/** Remove a socket file nobody listens on; refuse one a live server answers on. */
export async function removeStaleSocket(socketPath: string): Promise<void> {
  let st: fs.Stats;
  try {
    st = fs.lstatSync(socketPath);
  } catch {
    fs.mkdirSync(path.dirname(socketPath), { recursive: true });
    return;
  }
  if (!st.isSocket()) throw new Error(`${socketPath} exists and is not a socket`);
  const live = await new Promise<boolean>((resolve) => {
    const c = net.connect(socketPath);
    c.on('connect', () => {
      c.destroy();
      resolve(true);
    });
    c.on('error', () => resolve(false));
  });
  if (live) throw new Error(`socket already exists: '${socketPath}' (another qubesd is running)`);
  fs.unlinkSync(socketPath);
}
