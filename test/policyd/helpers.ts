/**
 * Test helpers for the policy daemon: a raw-socket client that does its own
 * framing, a spawned daemon process with its log captured, temp dirs.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';
import { after } from 'node:test';
import { fileURLToPath } from 'node:url';

/** Repository root (this file runs from dist/test/policyd/). */
export const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..', '..');
export const BIN = (name: string): string => path.join(ROOT, 'bin', name);

export function tmpDir(prefix = 'policyd-test-'): string {
  return fs.mkdtempSync(path.join(os.tmpdir(), prefix));
}

/** A maker of temp dirs that are all removed after the calling file's tests (call at top level). */
export function tmpDirs(prefix?: string): () => string {
  const dirs: string[] = [];
  after(() => {
    for (const d of dirs) fs.rmSync(d, { recursive: true, force: true });
  });
  return () => {
    const d = tmpDir(prefix);
    dirs.push(d);
    return d;
  };
}

/**
 * Send `data` (all at once, or as given chunks), half-close, and read to
 * EOF. Resolves with the reply text, or `null` if the daemon closed the
 * connection with an error (reset) before any reply.
 */
export function exchange(
  socketPath: string,
  data: string | Buffer | readonly (string | Buffer)[],
  opts: { halfClose?: boolean; timeoutMs?: number } = {},
): Promise<string> {
  return new Promise((resolve, reject) => {
    const sock = net.connect({ path: socketPath, allowHalfOpen: true });
    const chunks: Buffer[] = [];
    const timer = setTimeout(() => {
      sock.destroy();
      reject(new Error('exchange timed out'));
    }, opts.timeoutMs ?? 10_000);
    sock.on('connect', () => {
      const parts = Array.isArray(data) ? data : [data as string | Buffer];
      for (const p of parts) sock.write(p);
      if (opts.halfClose) sock.end();
    });
    sock.on('data', (c: Buffer) => chunks.push(c));
    sock.on('end', () => sock.destroy());
    sock.on('error', () => {
      // EPIPE/ECONNRESET when the daemon drops a bad request: the reply is what we got.
    });
    sock.on('close', () => {
      clearTimeout(timer);
      resolve(Buffer.concat(chunks).toString('latin1'));
    });
  });
}

/** Wait until a unix socket accepts connections. */
export async function waitForSocket(p: string, timeoutMs = 10_000): Promise<void> {
  const t0 = Date.now();
  for (;;) {
    const ok = await new Promise<boolean>((resolve) => {
      const s = net.connect(p);
      s.on('connect', () => {
        s.destroy();
        resolve(true);
      });
      s.on('error', () => resolve(false));
    });
    if (ok) return;
    if (Date.now() - t0 > timeoutMs) throw new Error(`socket ${p} not ready after ${timeoutMs} ms`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

export interface DaemonProcess {
  readonly proc: ChildProcess;
  readonly socket: string;
  /** Everything written to stderr so far. */
  log(): string;
  /** Wait until stderr contains `text` (or matches). */
  waitForLog(text: string | RegExp, timeoutMs?: number): Promise<void>;
  stop(signal?: NodeJS.Signals): Promise<void>;
}

/** Start bin/qrexec-policy-daemon with `args` (its --socket-path is added). */
export async function spawnDaemon(dir: string, args: readonly string[], socketName = 'policy.sock'): Promise<DaemonProcess> {
  const socket = path.join(dir, socketName);
  const proc = spawn(process.execPath, [BIN('qrexec-policy-daemon'), '--socket-path', socket, ...args], {
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  let err = '';
  proc.stderr?.setEncoding('utf8');
  proc.stderr?.on('data', (c: string) => {
    err += c;
    if (err.length > 4_000_000) err = err.slice(-2_000_000);
  });
  const exited = new Promise<void>((resolve) => proc.on('exit', () => resolve()));
  const d: DaemonProcess = {
    proc,
    socket,
    log: () => err,
    async waitForLog(text, timeoutMs = 10_000) {
      const t0 = Date.now();
      while (!(typeof text === 'string' ? err.includes(text) : text.test(err))) {
        if (Date.now() - t0 > timeoutMs) throw new Error(`log never showed ${String(text)}; log:\n${err.slice(-3000)}`);
        await new Promise((r) => setTimeout(r, 10));
      }
    },
    async stop(signal = 'SIGTERM') {
      if (proc.exitCode === null && proc.signalCode === null) proc.kill(signal);
      await exited;
    },
  };
  try {
    await Promise.race([
      waitForSocket(socket),
      exited.then(() => {
        throw new Error(`daemon exited early: ${err}`);
      }),
    ]);
  } catch (e) {
    await d.stop('SIGKILL');
    throw e;
  }
  return d;
}

/** Reply lines as the qrexec daemon reads them: split at \n, one trailing \n dropped, order free. */
export function replyLines(reply: string): string[] {
  const r = reply.endsWith('\n') ? reply.slice(0, -1) : reply;
  return r === '' ? [] : r.split('\n').sort();
}

/** The `result=` value of a reply ('' if none). */
export function replyResult(reply: string): string {
  for (const l of replyLines(reply)) if (l.startsWith('result=')) return l.slice(7);
  return '';
}

/** Run `fn` over items with at most `n` at once. */
export async function pool<T, R>(items: readonly T[], n: number, fn: (t: T, i: number) => Promise<R>): Promise<R[]> {
  const out: R[] = new Array<R>(items.length);
  let next = 0;
  const worker = async (): Promise<void> => {
    while (next < items.length) {
      const i = next++;
      out[i] = await fn(items[i] as T, i);
    }
  };
  await Promise.all(Array.from({ length: Math.min(n, items.length) }, worker));
  return out;
}
