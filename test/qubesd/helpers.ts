/**
 * Test helpers for qubesd: an in-process qubesd in a fresh temp directory,
 * and a raw client that does its own framing (it does not use the code
 * under test): it sends bytes, half-closes, and reads to the end, telling a
 * clean end from an abort.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { startQubesd, type Qubesd, type QubesdOptions } from '../../src/qubesd/index.js';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../..');

export interface TestQubesd {
  readonly dir: string;
  readonly qd: Qubesd;
  readonly sock: string;
  readonly internal: string;
  readonly misc: string;
  close(): Promise<void>;
}

export async function startTestQubesd(more: Partial<QubesdOptions> = {}): Promise<TestQubesd> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'qubesd-test-'));
  const qd = await startQubesd({ dataDir: path.join(dir, 'data'), runDir: path.join(dir, 'run'), runtime: null, synchronous: 'NORMAL', ...more });
  return {
    dir,
    qd,
    sock: path.join(dir, 'run', 'qubesd.sock'),
    internal: path.join(dir, 'run', 'qubesd.internal.sock'),
    misc: path.join(dir, 'run', 'qubesd.misc.sock'),
    close: async () => {
      await qd.close();
      fs.rmSync(dir, { recursive: true, force: true });
    },
  };
}

export interface RawReply {
  readonly data: Buffer;
  /** The server ended the connection without a clean EOF (destroy / abort), or sent nothing at all. */
  readonly empty: boolean;
}

/** Send `bytes`, shut down our side (unless `noEof`), read until the server closes. */
export function raw(sockPath: string, bytes: Buffer | string, opts: { noEof?: boolean; timeoutMs?: number } = {}): Promise<RawReply> {
  return new Promise((resolve, reject) => {
    const s = net.connect({ path: sockPath, allowHalfOpen: true });
    const chunks: Buffer[] = [];
    const timer = setTimeout(() => {
      s.destroy();
      reject(new Error('raw: timeout'));
    }, opts.timeoutMs ?? 5000);
    s.on('connect', () => {
      s.write(bytes);
      if (!opts.noEof) s.end();
    });
    s.on('data', (c: Buffer) => chunks.push(c));
    s.on('error', () => undefined);
    s.on('close', () => {
      clearTimeout(timer);
      const data = Buffer.concat(chunks);
      resolve({ data, empty: data.length === 0 });
    });
  });
}

/** A request as the Python client writes it (src dom0). */
export function req(method: string, dest = 'dom0', arg = '', payload = '', src = 'dom0'): string {
  return `${method}+${arg} ${src} name ${dest}\0${payload}`;
}

/** Call and return the reply as a latin1 string. */
export async function call(t: TestQubesd, method: string, dest = 'dom0', arg = '', payload = '', src = 'dom0'): Promise<string> {
  return (await raw(t.sock, req(method, dest, arg, payload, src))).data.toString('latin1');
}

/** `2\0TYPE\0\0MESSAGE\0` */
export function exc(type: string, message: string): string {
  return `2\0${type}\0\0${message}\0`;
}

/** Call and expect success; returns the data. */
export async function ok(t: TestQubesd, method: string, dest = 'dom0', arg = '', payload = '', src = 'dom0'): Promise<string> {
  const r = await call(t, method, dest, arg, payload, src);
  if (!r.startsWith('0\0')) throw new Error(`${method} ${dest} +${arg}: ${JSON.stringify(r)}`);
  return r.slice(2);
}

/** bin/qubesd as its own process on DIR/data and DIR/run, resolved once it answers admin.vm.List. */
export function startQubesdProcess(dir: string): Promise<ChildProcess> {
  const p = spawn(process.execPath, [path.join(ROOT, 'bin/qubesd'), '--data-dir', path.join(dir, 'data'), '--run-dir', path.join(dir, 'run')], {
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  let err = '';
  p.stderr?.on('data', (d: Buffer) => (err += d.toString()));
  const sock = path.join(dir, 'run', 'qubesd.sock');
  return new Promise((resolve, reject) => {
    const t0 = Date.now();
    const poll = (): void => {
      void raw(sock, req('admin.vm.List', 'dom0')).then(
        (r) => (r.data.length > 0 ? resolve(p) : retry()),
        () => retry(),
      );
    };
    const retry = (): void => {
      if (p.exitCode !== null) return reject(new Error(`qubesd exited: ${err}`));
      if (Date.now() - t0 > 15000) return reject(new Error('qubesd did not start'));
      setTimeout(poll, 50);
    };
    poll();
  });
}
