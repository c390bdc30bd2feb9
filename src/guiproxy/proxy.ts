/**
 * The only GUI code on the host: a TCP listener on a loopback address where
 * each browser connection becomes one qrexec call from dom0 into the GUI
 * domain's `gui.Http` socket service. The call is decided by the policy
 * daemon (and so audited) like any other: `source=dom0`,
 * `intended_target=GUIVM`, `service_and_arg=gui.Http+`. The proxy reads no
 * byte of the traffic: HTTP, login and everything else happen in the GUI
 * domain.
 */
import * as net from 'node:net';
import { Readable, Writable } from 'node:stream';
import { askPolicy, DaemonClient, type PolicyOutcome, type PolicyQuery } from '../daemon/index.js';
import { startPump, vchanListen, type VchanEnv } from '../vchan/index.js';
import { QrexecError } from '../common/errors.js';

export const HTTP_SERVICE = 'gui.Http';
export const TOKEN_SERVICE = 'gui.Token';

export class GuiProxyError extends QrexecError {
  override name = 'GuiProxyError';
}

export interface Dom0CallOptions {
  /** The GUI domain (the intended target). */
  readonly guivm: string;
  /** Directory of the qrexec daemons' `qrexec.<name>` sockets. */
  readonly socketDir: string;
  readonly vchan: VchanEnv;
  /** Decides the call: by default the policy daemon's socket. */
  readonly decide: (q: PolicyQuery) => Promise<PolicyOutcome>;
  readonly log?: (m: string) => void;
}

/** A decider asking the policy daemon at `socketPath` (no fallback program). */
export function policySocketDecider(socketPath: string, log: (m: string) => void = () => undefined): (q: PolicyQuery) => Promise<PolicyOutcome> {
  return (q) => askPolicy(q, { socketPath, program: '/nonexistent/qrexec-policy-exec', log });
}

/**
 * One call from dom0 to `service` in the GUI domain: `source` is sent to
 * the service, its output goes to `sink` (one socket for both: `single`).
 * Resolves with the call's exit status once it ends; rejects when the
 * policy refuses it or it cannot be set up.
 */
export async function dom0Call(o: Dom0CallOptions, service: string, sink: Writable, source: Readable, single: boolean): Promise<number> {
  const d = await o.decide({ source: 'dom0', intendedTarget: o.guivm, serviceAndArg: `${service}+` });
  if (d.result === 'error') throw new GuiProxyError(`${service} to ${o.guivm}: no policy decision: ${d.reason}`);
  if (d.result === 'deny') throw new GuiProxyError(`${service} to ${o.guivm}: refused by the policy`);
  return dom0Exec(o, d.target, `${d.user}:QUBESRPC ${service}+ dom0`, { sink, source, single });
}

/**
 * Runs `cmdline` (`USER:COMMAND`) in qube `target` from dom0, as
 * qrexec-client does (with `justExec`: started and left running, as
 * `qrexec-client -e`); resolves with its exit status.
 */
export async function dom0Exec(
  o: Pick<Dom0CallOptions, 'socketDir' | 'vchan' | 'log'>,
  target: string,
  cmdline: string,
  io: { sink: Writable; source: Readable; single: boolean; justExec?: boolean; errSink?: Writable },
): Promise<number> {
  const client = await DaemonClient.connect(o.socketDir, target);
  try {
    const ep = await client.exec(cmdline, 0, io.justExec === true);
    const listener = await vchanListen(o.vchan, ep.domain, ep.port);
    const timer = setTimeout(() => listener.close(), 10_000);
    let ch: net.Socket;
    try {
      ch = await listener.accepted;
    } catch (e) {
      throw new GuiProxyError(`${cmdline.split(' ')[0] ?? ''} in ${target}: data connection not made: ${(e as Error).message}`);
    } finally {
      clearTimeout(timer);
    }
    const pump = startPump({ channel: ch, role: 'client', sink: io.sink, source: io.source, single: io.single, errSink: io.errSink ?? null, ...(o.log ? { log: o.log } : {}) });
    return await pump.done;
  } finally {
    client.close();
  }
}

/** The login token of the GUI domain (`gui.Token`). */
export async function fetchToken(o: Dom0CallOptions): Promise<string> {
  const out: Buffer[] = [];
  const sink = new Writable({
    write(c: Buffer, _e, cb) {
      out.push(c);
      cb();
    },
  });
  const status = await dom0Call(o, TOKEN_SERVICE, sink, Readable.from([]), false);
  const token = Buffer.concat(out).toString('utf8').trim();
  if (status !== 0 || !/^[A-Za-z0-9_-]{16,200}$/.test(token)) throw new GuiProxyError(`${TOKEN_SERVICE} in ${o.guivm}: no token (exit status ${status})`);
  return token;
}

export interface GuiProxyOptions extends Dom0CallOptions {
  /** Loopback address to listen on (default 127.0.0.1). */
  readonly host?: string;
  /** 0: a free port. */
  readonly port?: number;
}

/** The listening proxy. */
export class GuiProxy {
  private readonly server: net.Server;
  private readonly conns = new Set<net.Socket>();

  private constructor(private readonly o: GuiProxyOptions) {
    this.server = net.createServer({ allowHalfOpen: true }, (s) => this.accept(s));
  }

  static async start(o: GuiProxyOptions): Promise<GuiProxy> {
    const host = o.host ?? '127.0.0.1';
    if (!/^127\.\d{1,3}\.\d{1,3}\.\d{1,3}$|^::1$/.test(host)) throw new GuiProxyError(`${host}: the GUI proxy listens on loopback addresses only`);
    const p = new GuiProxy(o);
    await new Promise<void>((resolve, reject) => {
      p.server.once('error', (e) => reject(new GuiProxyError(`listen ${host}:${o.port ?? 0}: ${e.message}`)));
      p.server.listen({ host, port: o.port ?? 0 }, () => resolve());
    });
    return p;
  }

  /** `http://HOST:PORT` */
  get url(): string {
    const a = this.server.address() as net.AddressInfo;
    return `http://${a.family === 'IPv6' ? `[${a.address}]` : a.address}:${a.port}`;
  }

  private accept(s: net.Socket): void {
    this.conns.add(s);
    s.on('error', () => undefined);
    s.on('close', () => this.conns.delete(s));
    dom0Call(this.o, HTTP_SERVICE, s, s, true).then(
      () => s.destroy(),
      (e: Error) => {
        this.o.log?.(e.message);
        // a plain answer for the browser, then close
        if (!s.destroyed) s.end('HTTP/1.1 502 Bad Gateway\r\ncontent-type: text/plain\r\nconnection: close\r\n\r\n' + e.message.replace(/[^\x20-\x7e]/g, '?') + '\n');
      },
    );
  }

  async close(): Promise<void> {
    for (const s of this.conns) s.destroy();
    await new Promise<void>((r) => this.server.close(() => r()));
  }
}
