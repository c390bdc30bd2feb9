/**
 * The policy daemon's socket server: one request per connection (see
 * request.ts), one reply, then EOF.
 *
 * Every connection is independent: requests are parsed as bytes arrive,
 * decided synchronously when the policy and system info are at hand (the
 * common case), and a connection waiting for anything (a slow client, an
 * ask, qubesd) holds no one else up. A connection that has not completed
 * its request within `requestTimeoutMs` is closed with a log line; one that
 * sends something malformed is closed at once, without a reply, as the
 * reference does. Before a reply is written its audit record is committed.
 */
import * as net from 'node:net';
import type { SystemInfo } from '../policy/index.js';
import type { AuditLog } from '../audit/index.js';
import { decide, DENY_REPLY, type DecideContext, type Origin, type Outcome } from './decide.js';

import { RequestParser, type DaemonRequest } from './request.js';
import type { SystemInfoSource } from './system-info-source.js';
import { listenUnix } from './listen.js';

export interface ServerContext extends DecideContext {
  readonly systemInfo: SystemInfoSource;
  /** null: no audit log. */
  readonly audit: AuditLog | null;
  /** Close a connection whose request is not complete after this long (default 5000 ms). */
  readonly requestTimeoutMs?: number;
}

/** Get system info, or the error that prevents it, without throwing. */
export function systemInfoOrError(src: SystemInfoSource): SystemInfo | Error | Promise<SystemInfo | Error> {
  try {
    const v = src.get();
    if (v instanceof Promise) return v.catch((e: unknown) => (e instanceof Error ? e : new Error(String(e))));
    return v;
  } catch (e) {
    return e instanceof Error ? e : new Error(String(e));
  }
}

/**
 * Decide, audit, and hand the reply to `send` once the audit record is
 * committed (or at once without an audit log). If the record cannot be
 * written the reply becomes a deny: nothing is allowed unaudited.
 */
export function decideAndRecord(
  req: DaemonRequest,
  ctx: ServerContext,
  send: (reply: string) => void,
  origin?: Origin,
): void {
  const finish = (o: Outcome): void => {
    if (ctx.audit === null) {
      send(o.reply);
      return;
    }
    ctx.audit.append(o.record, (err) => {
      if (err) {
        ctx.log.error(`cannot write the audit log, denying: ${err.message}`);
        send(DENY_REPLY);
      } else {
        send(o.reply);
      }
    });
  };
  const fail = (e: unknown): void => {
    ctx.log.error(`internal error, denying: ${(e as Error).stack ?? String(e)}`);
    send(DENY_REPLY);
  };
  const run = (info: SystemInfo | Error): void => {
    const o = decide(req, info, ctx, origin);
    if (o instanceof Promise) o.then(finish, fail);
    else finish(o);
  };
  try {
    const info = systemInfoOrError(ctx.systemInfo);
    if (info instanceof Promise) info.then(run, fail);
    else run(info);
  } catch (e) {
    fail(e);
  }
}

interface Pending {
  readonly sock: net.Socket;
  readonly since: number;
}

/** The policy request server (the reference's --socket-path). */
export class PolicyServer {
  private readonly server: net.Server;
  private readonly reading = new Set<Pending>();
  private readonly sweeper: NodeJS.Timeout;
  private readonly requestTimeoutMs: number;
  /** Connections served so far (tests, stats). */
  connections = 0;

  constructor(private readonly ctx: ServerContext) {
    this.requestTimeoutMs = ctx.requestTimeoutMs ?? 5000;
    this.server = net.createServer({ allowHalfOpen: true }, (sock) => this.accept(sock));
    // a failed listen is the caller's to report (listenUnix rejects); later errors are logged
    this.server.on('error', (e) => {
      if (this.server.listening) ctx.log.error(`policy socket: ${e.message}`);
    });
    this.sweeper = setInterval(() => this.sweep(), Math.min(1000, Math.max(50, this.requestTimeoutMs / 4)));
    this.sweeper.unref();
  }

  /** Listen on a unix socket (an old socket file is removed first), mode 0660. */
  listen(socketPath: string): Promise<void> {
    return listenUnix(this.server, socketPath, { backlog: 4096, mode: 0o660 });
  }

  private accept(sock: net.Socket): void {
    this.connections++;
    const parser = new RequestParser();
    const pending: Pending = { sock, since: performance.now() };
    this.reading.add(pending);
    const ctx = this.ctx;
    let replying = false;
    const reject = (reason: string): void => {
      ctx.log.error(`error parsing policy request: ${reason}`);
      stop();
      sock.destroy();
    };
    const stop = (): void => {
      this.reading.delete(pending);
      sock.off('data', onData);
      sock.off('end', onEnd);
    };
    const start = (req: DaemonRequest): void => {
      stop();
      sock.pause();
      decideAndRecord(req, ctx, (reply) => {
        if (sock.destroyed) {
          ctx.log.info(`client left before the reply (${reply === DENY_REPLY ? 'deny' : 'allow'} not delivered)`);
          return;
        }
        replying = true;
        // The reply, then close: the client reads it, then EOF. Closing
        // at once (no shutdown first) saves a system call and a callback;
        // a reply the socket did not take at once is flushed first.
        sock.write(reply);
        const err = sock.errored; // a synchronous failure (EPIPE: the client has gone)
        if (err !== null) ctx.log.info(`client left before the reply (${err.message})`);
        if (err !== null || sock.writableLength === 0) sock.destroy();
        else sock.end(() => sock.destroy());
      });
    };
    const onData = (chunk: Buffer): void => {
      const step = parser.push(chunk);
      if (step.kind === 'done') start(step.request);
      else if (step.kind === 'error') reject(step.reason);
    };
    const onEnd = (): void => {
      const step = parser.end();
      if (step.kind === 'done') start(step.request);
      else if (step.kind === 'error') reject(step.reason);
      else reject('end of input'); // unreachable: end() is final
    };
    sock.on('data', onData);
    sock.on('end', onEnd);
    sock.on('error', (e) => {
      // A socket closed while still reading is dropped from `reading` by the sweeper.
      if (replying) ctx.log.info(`client left before the reply (${e.message})`);
      else ctx.log.debug(`policy connection: ${e.message}`);
    });
  }

  private sweep(): void {
    const now = performance.now();
    for (const p of this.reading) {
      if (p.sock.destroyed) {
        this.reading.delete(p);
      } else if (now - p.since > this.requestTimeoutMs) {
        this.reading.delete(p);
        this.ctx.log.error(`error parsing policy request: no complete request within ${this.requestTimeoutMs} ms, closing`);
        p.sock.destroy();
      }
    }
  }

  /**
   * Answers one request given as protocol text, exactly as a connection to
   * the socket would be answered (same parser and checks, decision, audit,
   * ask and notify), for a qrexec daemon in this process. Resolves with the
   * reply text, or null where the socket would close without a reply.
   */
  answer(request: string | Uint8Array): Promise<string | null> {
    const parser = new RequestParser();
    let step = parser.push(typeof request === 'string' ? Buffer.from(request, 'utf8') : request);
    if (step.kind === 'more') step = parser.end();
    if (step.kind !== 'done') {
      this.ctx.log.error(`error parsing policy request: ${step.kind === 'error' ? step.reason : 'end of input'}`);
      return Promise.resolve(null);
    }
    const req = step.request;
    return new Promise((resolve) => decideAndRecord(req, this.ctx, resolve));
  }

  /** Connections still sending their request. */
  get readingCount(): number {
    let n = 0;
    for (const p of this.reading) if (!p.sock.destroyed) n++;
    return n;
  }

  close(): Promise<void> {
    clearInterval(this.sweeper);
    for (const p of this.reading) p.sock.destroy();
    this.reading.clear();
    return new Promise((resolve) => this.server.close(() => resolve()));
  }
}

