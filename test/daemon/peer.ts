// A test peer written from the spec (libqrexec/qrexec.h): it frames messages
// itself and does not import the code under test.
import * as net from 'node:net';
import { unlink } from 'node:fs/promises';

import { T, fixed, msg, u32 } from '../wire.js';

export { T, msg, u32 };
export const pad = fixed;
export const trigger4 = (target: string, ident: string | Buffer, service: string | Buffer, source = ''): Buffer =>
  msg(T.TRIGGER_SERVICE4, Buffer.concat([pad(source, 64), pad(target, 64), pad(ident, 32), typeof service === 'string' ? Buffer.from(`${service}\0`, 'latin1') : service]));

/**
 * Every message in `b` as [type, payload text] (the exit code as its number);
 * `b` may start with the peer's MSG_HELLO.
 */
export function decodeMessages(b: Buffer, encoding: BufferEncoding = 'utf8'): [number, string][] {
  const out: [number, string][] = [];
  for (let off = 0; off + 8 <= b.length; ) {
    const type = b.readUInt32LE(off);
    const len = b.readUInt32LE(off + 4);
    const body = b.subarray(off + 8, off + 8 + len);
    out.push([type, type === T.DATA_EXIT_CODE ? String(body.readInt32LE(0)) : body.toString(encoding)]);
    off += 8 + len;
  }
  return out;
}

/** `p`, or a rejection naming `what` after `ms`: a call that never ends fails instead of hanging the test. */
export function within<V>(p: Promise<V>, what: string, ms: number): Promise<V> {
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what}: nothing after ${ms} ms`)), ms);
  });
  return Promise.race([p, late]).finally(() => clearTimeout(timer));
}

/** Reads exact byte counts / whole messages from a socket. */
export class Reader {
  private buf = Buffer.alloc(0);
  private waiters: (() => void)[] = [];
  closed = false;
  constructor(readonly sock: net.Socket) {
    sock.on('data', (d: Buffer) => {
      this.buf = Buffer.concat([this.buf, d]);
      this.wake();
    });
    sock.on('close', () => {
      this.closed = true;
      this.wake();
    });
    sock.on('error', () => undefined);
  }
  private wake(): void {
    const w = this.waiters;
    this.waiters = [];
    for (const f of w) f();
  }
  async bytes(n: number, timeoutMs = 10000): Promise<Buffer> {
    const deadline = Date.now() + timeoutMs;
    while (this.buf.length < n) {
      if (this.closed) throw new Error(`closed after ${this.buf.length}/${n} bytes`);
      if (Date.now() > deadline) throw new Error(`timeout waiting for ${n} bytes (have ${this.buf.length})`);
      await new Promise<void>((r) => {
        this.waiters.push(r);
        setTimeout(r, 100);
      });
    }
    const out = this.buf.subarray(0, n);
    this.buf = this.buf.subarray(n);
    return out;
  }
  async message(timeoutMs = 10000): Promise<{ type: number; data: Buffer }> {
    const h = await this.bytes(8, timeoutMs);
    const data = await this.bytes(h.readUInt32LE(4), timeoutMs);
    return { type: h.readUInt32LE(0), data };
  }
  /** Resolves true when the peer closes within the time, false otherwise. */
  async waitClosed(timeoutMs = 10000): Promise<boolean> {
    const deadline = Date.now() + timeoutMs;
    while (!this.closed && Date.now() < deadline) await new Promise<void>((r) => {
      this.waiters.push(r);
      setTimeout(r, 100);
    });
    return this.closed;
  }
  get pending(): number {
    return this.buf.length;
  }
}

/** A fake agent: the vchan server side of port 512 for domain `domid`, as qrexec-agent is. */
export async function fakeAgentListen(dir: string, domid: number): Promise<{ accepted: Promise<Reader>; close: () => void }> {
  const path = `${dir}/vchan.${domid}.0.512.sock`;
  await unlink(path).catch(() => undefined);
  const server = net.createServer();
  await new Promise<void>((r) => server.listen(path, () => r()));
  const accepted = new Promise<Reader>((resolve) => server.once('connection', (s) => resolve(new Reader(s))));
  return { accepted, close: () => server.close() };
}

/** A fake policy daemon: answers each request with `reply(request)`; records the requests. */
export async function fakePolicyDaemon(path: string, reply: (req: string) => string | null): Promise<{ requests: string[]; close: () => void }> {
  const requests: string[] = [];
  const server = net.createServer((s) => {
    let text = '';
    s.on('data', (d: Buffer) => {
      text += d.toString();
      if (text.endsWith('\n\n')) {
        requests.push(text);
        const r = reply(text);
        if (r !== null) s.end(r);
      }
    });
    s.on('error', () => undefined);
  });
  await new Promise<void>((r) => server.listen(path, () => r()));
  return { requests, close: () => server.close() };
}

/** Connects to a daemon's local socket and does the client handshake (expects HELLO v3, answers v3). */
export async function daemonClient(path: string): Promise<Reader> {
  const s = net.createConnection(path);
  await new Promise<void>((r, j) => {
    s.once('connect', () => r());
    s.once('error', j);
  });
  const rd = new Reader(s);
  const h = await rd.bytes(12);
  if (!h.equals(u32(T.HELLO, 4, 3))) throw new Error(`bad daemon hello ${h.toString('hex')}`);
  s.write(u32(T.HELLO, 4, 3));
  return rd;
}
