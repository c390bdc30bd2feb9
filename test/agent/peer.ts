/**
 * A fake host peer for agent tests, written from libqrexec/qrexec.h and
 * qubes-core-vchan-socket: it frames messages itself (u32 type, u32 length,
 * little-endian) and does not import the codec under test.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';

import { T, fixed, msg, u32 } from '../wire.js';

export { T, fixed, msg, u32 };

export const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..', '..');

/** exec_params + NUL-terminated command line. */
export const execPayload = (domain: number, port: number, cmd: string): Buffer =>
  Buffer.concat([u32(domain), u32(port), Buffer.from(cmd), Buffer.from([0])]);

export interface Message {
  type: number;
  data: Buffer;
}

/** A socket with exact-length reads. */
export class Conn {
  private buf: Buffer = Buffer.alloc(0);
  private ended = false;
  private waiter: (() => void) | undefined;
  constructor(readonly sock: net.Socket) {
    sock.on('data', (b: Buffer) => {
      this.buf = Buffer.concat([this.buf, b]);
      this.waiter?.();
    });
    sock.on('end', () => {
      this.ended = true;
      this.waiter?.();
    });
    sock.on('close', () => {
      this.ended = true;
      this.waiter?.();
    });
    sock.on('error', () => undefined);
  }
  /** Exactly n bytes, or fewer when the peer closed. */
  async read(n: number, timeoutMs = 20000): Promise<Buffer> {
    const deadline = Date.now() + timeoutMs;
    while (this.buf.length < n && !this.ended) {
      await new Promise<void>((resolve, reject) => {
        const t = setTimeout(() => reject(new Error(`timeout reading ${n} bytes (have ${this.buf.length})`)), deadline - Date.now());
        this.waiter = () => {
          clearTimeout(t);
          this.waiter = undefined;
          resolve();
        };
      });
    }
    const out = this.buf.subarray(0, n);
    this.buf = this.buf.subarray(out.length);
    return out;
  }
  async recv(timeoutMs = 20000): Promise<Message | undefined> {
    const h = await this.read(8, timeoutMs);
    if (h.length < 8) return undefined;
    const data = await this.read(h.readUInt32LE(4));
    return { type: h.readUInt32LE(0), data };
  }
  /** All messages until the peer closes. */
  async recvAll(): Promise<Message[]> {
    const out: Message[] = [];
    for (;;) {
      const m = await this.recv();
      if (!m) return out;
      out.push(m);
    }
  }
  send(b: Buffer): void {
    this.sock.write(b);
  }
  async handshake(version = 4): Promise<number> {
    this.send(msg(T.HELLO, u32(version)));
    const m = await this.recv();
    if (!m || m.type !== T.HELLO || m.data.length !== 4) throw new Error(`bad HELLO: ${JSON.stringify(m)}`);
    return m.data.readUInt32LE(0);
  }
  close(): void {
    this.sock.destroy();
  }
}

export async function connectRetry(p: string, timeoutMs = 20000): Promise<Conn> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    try {
      const s = await new Promise<net.Socket>((resolve, reject) => {
        const c = net.connect({ path: p, allowHalfOpen: true });
        c.once('error', reject);
        c.once('connect', () => {
          c.off('error', reject);
          resolve(c);
        });
      });
      return new Conn(s);
    } catch (e) {
      if (Date.now() > deadline) throw e;
      await new Promise((r) => setTimeout(r, 1));
    }
  }
}

/** Listens at a vchan path and resolves with the first connection. */
export function vchanServer(p: string): { conn: Promise<Conn>; close: () => void } {
  try {
    fs.unlinkSync(p);
  } catch {
    /* none */
  }
  const server = net.createServer({ allowHalfOpen: true });
  const conn = new Promise<Conn>((resolve) => {
    server.once('connection', (s) => {
      server.close();
      resolve(new Conn(s));
    });
  });
  server.listen(p);
  return { conn, close: () => server.close() };
}

/** Sorts messages by type, keeping order within a type (like the reference tests' sort_messages). */
export function sortMessages(ms: Message[]): Message[] {
  return ms.map((m, i) => ({ m, i })).sort((a, b) => a.m.type - b.m.type || a.i - b.i).map((x) => x.m);
}

export const DOMAIN = 42;
export const TARGET_DOMAIN = 43;

/** A temporary qube: directories, an agent process, and a dom0 peer. */
export class Fixture {
  readonly dir: string;
  agent: ChildProcess | undefined;
  agentLog = '';
  dom0: Conn | undefined;
  private port = 1024;

  constructor() {
    this.dir = fs.mkdtempSync(path.join(os.tmpdir(), 'qrexec-agent-test-'));
    for (const d of ['local-rpc', 'rpc', 'rpc-config']) fs.mkdirSync(path.join(this.dir, d));
  }

  get agentSocket(): string {
    return path.join(this.dir, 'agent.sock');
  }

  nextPort(): number {
    return this.port++;
  }

  service(dir: string, name: string, content: string): string {
    const p = path.join(this.dir, dir, name);
    fs.writeFileSync(p, content, { mode: 0o700 });
    return p;
  }

  config(name: string, content: string): void {
    fs.writeFileSync(path.join(this.dir, 'rpc-config', name), content);
  }

  env(extra: NodeJS.ProcessEnv = {}): NodeJS.ProcessEnv {
    return {
      ...process.env,
      VCHAN_DOMAIN: String(DOMAIN),
      VCHAN_SOCKET_DIR: this.dir,
      QREXEC_SERVICE_ARGUMENT: '%did_not_get_unset',
      QREXEC_REQUESTED_TARGET_KEYWORD: '%did_not_get_unset',
      QREXEC_REQUESTED_TARGET: '%did_not_get_unset',
      QREXEC_SERVICE_PATH: `${path.join(this.dir, 'local-rpc')}:${path.join(this.dir, 'rpc')}`,
      QUBES_RPC_CONFIG_PATH: path.join(this.dir, 'rpc-config'),
      ...extra,
    };
  }

  startAgent(extra: NodeJS.ProcessEnv = {}): void {
    this.agent = spawn(process.execPath, [path.join(ROOT, 'bin', 'qrexec-agent'), '--no-fork-server', `--agent-socket=${this.agentSocket}`], {
      env: this.env(extra),
      stdio: ['ignore', 'ignore', 'pipe'],
    });
    this.agent.stderr?.on('data', (d: Buffer) => (this.agentLog += d.toString()));
  }

  async connectDom0(version = 4): Promise<Conn> {
    const c = await connectRetry(path.join(this.dir, `vchan.${DOMAIN}.0.512.sock`));
    this.dom0 = c;
    const v = await c.handshake(version);
    if (v !== 4) throw new Error(`agent announced version ${v}`);
    // the agent socket appears right after the handshake
    const deadline = Date.now() + 10000;
    while (!fs.existsSync(this.agentSocket) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 10));
    return c;
  }

  /** The data vchan the agent connects to for a call to `port`. */
  target(port: number): { conn: Promise<Conn>; close: () => void } {
    return vchanServer(path.join(this.dir, `vchan.${TARGET_DOMAIN}.${DOMAIN}.${port}.sock`));
  }

  async exec(type: number, cmdline: string, user = os.userInfo().username): Promise<{ target: Conn; port: number }> {
    const port = this.nextPort();
    const srv = this.target(port);
    this.dom0?.send(msg(type, execPayload(TARGET_DOMAIN, port, `${user}:${cmdline}`)));
    const target = await srv.conn;
    await target.handshake();
    return { target, port };
  }

  async expectTerminated(port: number): Promise<void> {
    const m = await this.dom0?.recv();
    if (!m || m.type !== T.CONNECTION_TERMINATED || !m.data.equals(Buffer.concat([u32(TARGET_DOMAIN), u32(port)]))) {
      throw new Error(`expected MSG_CONNECTION_TERMINATED for port ${port}, got ${JSON.stringify(m)}`);
    }
  }

  async stop(): Promise<void> {
    this.dom0?.close();
    const a = this.agent;
    if (a && a.exitCode === null && a.signalCode === null) {
      await new Promise<void>((resolve) => {
        a.once('exit', () => resolve());
        a.kill('SIGTERM');
        setTimeout(() => a.kill('SIGKILL'), 3000).unref();
      });
    }
    fs.rmSync(this.dir, { recursive: true, force: true });
  }
}
