/**
 * A client of the Admin API for tools (our qvm-* commands), with the two
 * transports qubesadmin has (qubesadmin/app.py):
 *
 * - local (dom0): the qubesd socket, src `dom0`, one connection per call;
 * - qrexec (inside a qube): `qrexec-client-vm DEST METHOD[+ARG]` with the
 *   payload on stdin and the reply on stdout; qubesd then sees the calling
 *   qube as the source, as the qrexec daemon knows it.
 *
 * The socket is QUBESD_SOCKET if set; else QREXEC_CLIENT_VM, if set,
 * names the qrexec client to call through; else the socket of the host
 * `npm start` runs (src/common/local-host.ts) if it runs, else
 * /var/run/qubesd.sock; if no socket exists and `qrexec-client-vm` is on
 * PATH, calls go through qrexec.
 *
 * Replies are parsed as qubesadmin's _parse_qubesd_response does; an
 * exception's message gets the `%` formatting the Python client applies
 * (`%%` → `%`).
 */
import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as path from 'node:path';
import { describeSystemError, PeerError, QrexecError } from '../common/errors.js';
import { localHost } from '../common/local-host.js';

export const SYSTEM_QUBESD_SOCKET = '/var/run/qubesd.sock';

/** qubesd raised an exception. */
export class AdminError extends QrexecError {
  override name = 'AdminError';
  constructor(
    readonly excType: string,
    message: string,
  ) {
    super(message);
  }
}

/** No valid answer (cannot connect, empty reply, the qrexec call failed: `status` is then qrexec-client-vm's exit status). */
export class AdminTransportError extends PeerError {
  override name = 'AdminTransportError';
}

export interface AdminTransport {
  /** One call; resolves with the reply's data, rejects with AdminError / AdminTransportError. */
  call(dest: string, method: string, arg?: string, payload?: Buffer | string): Promise<string>;
  /** Where calls go, for messages. */
  readonly describe: string;
}

/** The reply's data (`0\0...`), or the exception it carries. */
export function parseAdminReply(reply: Buffer): string {
  if (reply.length === 0) throw new AdminTransportError('Got empty response from qubesd. See journalctl in dom0 for details.');
  if (reply.length >= 2 && reply[1] === 0 && reply[0] === 0x30) return reply.subarray(2).toString('utf8');
  if (reply.length >= 2 && reply[1] === 0 && reply[0] === 0x32) {
    const fields = reply.subarray(2).toString('utf8').split('\0');
    return throwIt(new AdminError(fields[0] ?? 'QubesException', (fields[2] ?? '').replace(/%%/g, '%')));
  }
  return throwIt(new AdminTransportError('Invalid response format'));
}

function throwIt(e: Error): never {
  throw e;
}

/**
 * The system calls a blocking socket transport makes (the native addon's,
 * src/native/addon.ts, passed in by the command that may block).
 */
export interface BlockingSockets {
  /** A connected non-blocking unix stream socket, or an error code. */
  connectUnix(path: string): number | string;
  setBlocking(fd: number, blocking: boolean): void;
  shutdown(fd: number, how: number): number;
}

/** What blocking reads read into (a reply is copied out of it: a large buffer per reply costs the GC dearly). */
const READ_BUFFER = Buffer.allocUnsafe(65536);

/** A request sent with blocking system calls whose reply is still to be read. */
interface PendingCall {
  readonly fd: number;
  readonly resolve: (v: string) => void;
  readonly reject: (e: Error) => void;
}

export class SocketTransport implements AdminTransport {
  private pending: PendingCall[] = [];

  /**
   * @param blocking when given, calls are made with blocking system calls
   *   instead of a net.Socket each: the request is sent at once (connect,
   *   write, shutdown), and the replies of every call sent meanwhile are
   *   read together, in order, in the next turn of the event loop (so calls
   *   made concurrently are in flight together). The process then waits
   *   for qubesd with nothing else running: only for a command that has
   *   nothing else to do, and never in a process that serves qubesd itself.
   */
  constructor(
    readonly socketPath: string,
    private readonly src = 'dom0',
    private readonly blocking?: BlockingSockets,
  ) {}

  get describe(): string {
    return this.socketPath;
  }

  call(dest: string, method: string, arg = '', payload: Buffer | string = ''): Promise<string> {
    if (this.blocking) {
      const fd = this.blocking.connectUnix(this.socketPath);
      // a failed connect (no qubesd, a full backlog) goes the usual way, which reports or waits as it does
      if (typeof fd === 'number') return this.sendBlocking(fd, Buffer.concat([Buffer.from(`${method}+${arg} ${this.src} name ${dest}\0`), Buffer.from(payload)]));
    }
    return this.callAsync(dest, method, arg, payload);
  }

  private sendBlocking(fd: number, request: Buffer): Promise<string> {
    const b = this.blocking as BlockingSockets;
    return new Promise((resolve, reject) => {
      try {
        b.setBlocking(fd, true);
        for (let off = 0; off < request.length; ) off += fs.writeSync(fd, request, off);
        b.shutdown(fd, 1);
      } catch (e) {
        fs.closeSync(fd);
        reject(this.connectError(e));
        return;
      }
      this.pending.push({ fd, resolve, reject });
      if (this.pending.length === 1) setImmediate(() => this.readReplies());
    });
  }

  /** Read every pending reply to its EOF, in the order the requests went out. */
  private readReplies(): void {
    const calls = this.pending;
    this.pending = [];
    for (const c of calls) {
      const chunks: Buffer[] = [];
      let failure: unknown = null;
      try {
        for (;;) {
          const n = fs.readSync(c.fd, READ_BUFFER, 0, READ_BUFFER.length, null);
          if (n === 0) break;
          chunks.push(Buffer.from(READ_BUFFER.subarray(0, n)));
        }
      } catch (e) {
        failure = e;
      } finally {
        fs.closeSync(c.fd);
      }
      if (failure !== null) {
        c.reject(this.connectError(failure));
        continue;
      }
      try {
        c.resolve(parseAdminReply(chunks.length === 1 ? (chunks[0] as Buffer) : Buffer.concat(chunks)));
      } catch (e) {
        c.reject(e as Error);
      }
    }
  }

  private connectError(e: unknown): AdminTransportError {
    return new AdminTransportError(`Failed to connect to qubesd service: ${describeSystemError(e, this.socketPath)}`);
  }

  private callAsync(dest: string, method: string, arg: string, payload: Buffer | string): Promise<string> {
    return new Promise((resolve, reject) => {
      const chunks: Buffer[] = [];
      const s = net.connect({ path: this.socketPath, allowHalfOpen: true });
      let failed = false;
      s.on('connect', () => {
        s.write(`${method}+${arg} ${this.src} name ${dest}\0`);
        s.end(payload);
      });
      s.on('data', (c: Buffer) => chunks.push(c));
      s.on('error', (e) => {
        failed = true;
        reject(this.connectError(e));
      });
      s.on('close', () => {
        if (failed) return;
        try {
          resolve(parseAdminReply(Buffer.concat(chunks)));
        } catch (e) {
          reject(e as Error);
        }
      });
    });
  }

  /** admin.Events: calls `onEvent` per event until `signal` aborts or qubesd goes. */
  events(dest: string, onEvent: (subject: string, event: string, kwargs: Map<string, string>) => void, signal?: AbortSignal): Promise<void> {
    return new Promise((resolve, reject) => {
      const s = net.connect({ path: this.socketPath, allowHalfOpen: true });
      let buf: Buffer = Buffer.alloc(0);
      signal?.addEventListener('abort', () => s.destroy());
      s.on('connect', () => s.end(`admin.Events+ ${this.src} name ${dest}\0`));
      s.on('data', (c: Buffer) => {
        buf = buf.length ? Buffer.concat([buf, c]) : c;
        for (;;) {
          const end = frameEnd(buf);
          if (end < 0) break;
          const fields = buf.subarray(2, end - 1).toString('latin1').split('\0');
          buf = buf.subarray(end);
          const kw = new Map<string, string>();
          for (let i = 2; i + 1 < fields.length; i += 2) kw.set(fields[i] as string, fields[i + 1] as string);
          onEvent(fields[0] ?? '', fields[1] ?? '', kw);
        }
      });
      s.on('error', (e) => reject(new AdminTransportError(e.message)));
      s.on('close', () => resolve());
    });
  }
}

/** Index after one complete event frame `1\0S\0E\0(K\0V\0)*\0`, or -1. */
function frameEnd(b: Buffer): number {
  if (b.length < 2) return -1;
  let i = 2;
  let fields = 0;
  for (;;) {
    const z = b.indexOf(0, i);
    if (z < 0) return -1;
    if (z === i && fields >= 2 && (fields - 2) % 2 === 0) return z + 1;
    fields++;
    i = z + 1;
  }
}

/** Calls through `qrexec-client-vm DEST METHOD[+ARG]` (qubesadmin QubesRemote). */
export class QrexecTransport implements AdminTransport {
  constructor(readonly program: string) {}

  get describe(): string {
    return `${this.program} (qrexec)`;
  }

  call(dest: string, method: string, arg = '', payload: Buffer | string = ''): Promise<string> {
    return new Promise((resolve, reject) => {
      // stderr is captured, as qubesadmin's QubesRemote does: a refusal is reported in the error, and a
      // refused GetAll that the tool falls back from prints nothing
      const p = spawn(this.program, [dest, arg ? `${method}+${arg}` : method], { stdio: ['pipe', 'pipe', 'pipe'] });
      const out: Buffer[] = [];
      const err: Buffer[] = [];
      p.stdout.on('data', (c: Buffer) => out.push(c));
      p.stderr.on('data', (c: Buffer) => err.push(c));
      p.stdin.on('error', () => undefined);
      p.stdin.end(payload);
      p.on('error', (e) => reject(new AdminTransportError(`Service call error: ${e.message}`)));
      p.on('close', (code) => {
        if (code !== 0) {
          const said = Buffer.concat(err).toString().trim();
          reject(new AdminTransportError(`Service call error: ${said || `${method}: ${path.basename(this.program)} exited with ${code}`}`, code));
          return;
        }
        try {
          resolve(parseAdminReply(Buffer.concat(out)));
        } catch (e) {
          reject(e as Error);
        }
      });
    });
  }
}

function onPath(prog: string, env: NodeJS.ProcessEnv): string | null {
  for (const dir of (env['PATH'] ?? '').split(':')) {
    if (!dir) continue;
    const p = path.join(dir, prog);
    try {
      fs.accessSync(p, fs.constants.X_OK);
      return p;
    } catch {
      // next
    }
  }
  return null;
}

/** The transport our tools use (see the module comment); `blocking`: see {@link SocketTransport}. */
export function defaultTransport(env: NodeJS.ProcessEnv = process.env, blocking?: BlockingSockets): AdminTransport {
  const explicit = env['QUBESD_SOCKET'];
  if (explicit) return new SocketTransport(explicit, 'dom0', blocking);
  const client = env['QREXEC_CLIENT_VM'];
  if (client) return new QrexecTransport(client);
  const host = localHost(env);
  if (host) return new SocketTransport(host.qubesdSocket, 'dom0', blocking);
  if (fs.existsSync(SYSTEM_QUBESD_SOCKET)) return new SocketTransport(SYSTEM_QUBESD_SOCKET, 'dom0', blocking);
  const vm = onPath('qrexec-client-vm', env);
  if (vm) return new QrexecTransport(vm);
  return new SocketTransport(SYSTEM_QUBESD_SOCKET, 'dom0', blocking);
}
