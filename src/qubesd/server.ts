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
import { dispatch, type ApiContext, type MethodTable } from './admin-api.js';
import { RequestBuffer, encodeEvent, encodeException, encodeOk } from './protocol.js';

export type ServerLog = (level: 'info' | 'warning' | 'error', msg: string) => void;

export interface ApiServer {
  readonly path: string;
  /** Stop listening, end open connections (event streams), remove the socket file. */
  close(): Promise<void>;
  /** Connections open now. */
  readonly connections: number;
}

/** Serve one API on an existing listening server or a new one at `socketPath`. */
export async function serveApi(socketPath: string, ctx: ApiContext, table: MethodTable, log: ServerLog): Promise<ApiServer> {
  await removeStaleSocket(socketPath);
  const conns = new Set<net.Socket>();
  const server = net.createServer({ allowHalfOpen: true }, (sock) => {
    conns.add(sock);
    sock.on('close', () => conns.delete(sock));
    handleConnection(sock, ctx, table, log);
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    const old = process.umask(0o117);
    try {
      server.listen({ path: socketPath, backlog: 4096 }, () => {
        server.off('error', reject);
        resolve();
      });
    } finally {
      process.umask(old);
    }
  });
  fs.chmodSync(socketPath, 0o660);
  server.on('error', (e) => log('error', `${socketPath}: ${e.message}`));
  return {
    path: socketPath,
    get connections() {
      return conns.size;
    },
    close: () =>
      new Promise<void>((resolve) => {
        server.close(() => resolve());
        for (const c of conns) c.destroy();
        try {
          fs.unlinkSync(socketPath);
        } catch {
          // already gone
        }
      }),
  };
}

function handleConnection(sock: net.Socket, ctx: ApiContext, table: MethodTable, log: ServerLog): void {
  const buf = new RequestBuffer();
  let closedResolve: () => void = () => undefined;
  const closed = new Promise<void>((r) => (closedResolve = r));
  let gone = false;
  let eof = false;
  sock.on('close', () => {
    gone = true;
    closedResolve();
  });
  sock.on('error', () => undefined);
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
    const req = buf.finish();
    if (req === null) {
      log('warning', 'framing error');
      sock.destroy();
      return;
    }
    let events = false;
    const sendEvent = (subject: string, event: string, kwargs: readonly (readonly [string, string])[]): void => {
      if (gone) return;
      events = true;
      sock.write(encodeEvent(subject, event, kwargs));
    };
    void dispatch(ctx, table, req, sendEvent, closed).then((out) => {
      if (gone) return;
      if ('ok' in out) {
        if (events) sock.end();
        else sock.end(encodeOk(out.ok));
      } else if ('error' in out) {
        const e = out.error;
        if (e.abort) log('warning', `failed call ${req.method}+${req.arg}: ${e.excType}: ${e.message}`);
        const frame = encodeException(e.excType, e.message);
        if (e.abort) sock.write(frame, () => sock.destroy());
        else sock.end(frame);
      } else {
        log('error', `failed call ${req.method}+${req.arg}: unhandled error`);
        sock.destroy();
      }
    });
  });
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
