/**
 * How the policy daemon reaches `policy.Ask` / `policy.Notify` in a qube's
 * GUI domain (the reference's call_socket_service, qrexec/server.py).
 *
 * The daemon only sees {@link GuiServiceCaller}; tests plug in a fake. The
 * production implementation, {@link SocketServiceCaller}, routes a call:
 *
 * - to a unix socket named for that GUI domain with --agent-socket
 *   GUIVM=PATH (our addition, for development and tests);
 * - when the GUI domain is dom0 (the host), to the socket service
 *   `RPC_DIR/<service>` (default /etc/qubes-rpc), exactly as the reference
 *   calls it locally: header `<service> dom0 name dom0\0`, the JSON, end of
 *   input, then the reply until EOF;
 * - otherwise through qrexec, by running `qrexec-client -d GUIVM
 *   "DEFAULT:QUBESRPC <service> dom0"` with the JSON on its stdin and the
 *   reply on its stdout (what the reference does via qrexec.client.call_async).
 *
 * Every call has a deadline; on expiry the socket is destroyed or the child
 * killed and the promise rejects. Replies are bounded (4 KiB).
 */
import { spawn } from 'node:child_process';
import * as net from 'node:net';
import * as path from 'node:path';

export type GuiService = 'policy.Ask' | 'policy.Notify';

export interface GuiServiceCaller {
  /** Call `service` in `guivm` with JSON `params`; resolves with the reply text. */
  call(guivm: string, service: GuiService, params: unknown, timeoutMs: number): Promise<string>;
}

/** Largest reply accepted from an agent. */
export const MAX_AGENT_REPLY = 4096;

/** Call a socket service over a unix socket: header, JSON, EOF; read the reply to EOF. */
export function callSocketService(
  socketPath: string,
  service: GuiService,
  params: unknown,
  timeoutMs: number,
): Promise<string> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let len = 0;
    let settled = false;
    const sock = net.connect({ path: socketPath, allowHalfOpen: true });
    const finish = (err: Error | null, value?: string): void => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      sock.destroy();
      if (err) reject(err);
      else resolve(value ?? '');
    };
    const timer = setTimeout(() => finish(new Error(`${service}: no answer within ${timeoutMs} ms`)), timeoutMs);
    sock.on('connect', () => {
      sock.write(`${service} dom0 name dom0\0`);
      sock.end(JSON.stringify(params));
    });
    sock.on('data', (c: Buffer) => {
      len += c.length;
      if (len > MAX_AGENT_REPLY) finish(new Error(`${service}: reply longer than ${MAX_AGENT_REPLY} bytes`));
      else chunks.push(c);
    });
    sock.on('end', () => finish(null, Buffer.concat(chunks, len).toString('latin1')));
    sock.on('error', (e) => finish(new Error(`${service} via ${socketPath}: ${e.message}`)));
  });
}

/** Run `qrexec-client -d GUIVM "DEFAULT:QUBESRPC SERVICE dom0"` with the JSON on stdin. */
export function callViaQrexecClient(
  qrexecClient: string,
  guivm: string,
  service: GuiService,
  params: unknown,
  timeoutMs: number,
): Promise<string> {
  return new Promise((resolve, reject) => {
    const child = spawn(qrexecClient, ['-d', guivm, `DEFAULT:QUBESRPC ${service} dom0`], {
      stdio: ['pipe', 'pipe', 'ignore'],
    });
    const chunks: Buffer[] = [];
    let len = 0;
    let settled = false;
    const finish = (err: Error | null, value?: string): void => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
      if (err) reject(err);
      else resolve(value ?? '');
    };
    const timer = setTimeout(() => finish(new Error(`${service} in ${guivm}: no answer within ${timeoutMs} ms`)), timeoutMs);
    child.on('error', (e) => finish(new Error(`${service} in ${guivm}: ${e.message}`)));
    child.stdin.on('error', () => {});
    child.stdout.on('data', (c: Buffer) => {
      len += c.length;
      if (len > MAX_AGENT_REPLY) finish(new Error(`${service} in ${guivm}: reply too long`));
      else chunks.push(c);
    });
    child.on('close', (code) => {
      if (code === 0) finish(null, Buffer.concat(chunks, len).toString('latin1'));
      else finish(new Error(`${service} in ${guivm}: qrexec-client exited with ${code}`));
    });
    child.stdin.end(JSON.stringify(params));
  });
}

export interface SocketServiceCallerOptions {
  /** Where dom0's socket services live (default /etc/qubes-rpc). */
  readonly rpcDir?: string;
  /** GUI domain name → agent socket (overrides the other routes). */
  readonly agentSockets?: ReadonlyMap<string, string>;
  /** qrexec-client for other GUI domains; null disables that route (such calls fail). */
  readonly qrexecClient?: string | null;
}

/** The production caller (see the module comment for the routes). */
export class SocketServiceCaller implements GuiServiceCaller {
  constructor(private readonly opts: SocketServiceCallerOptions = {}) {}

  call(guivm: string, service: GuiService, params: unknown, timeoutMs: number): Promise<string> {
    const direct = this.opts.agentSockets?.get(guivm);
    if (direct !== undefined) return callSocketService(direct, service, params, timeoutMs);
    if (guivm === 'dom0') {
      return callSocketService(path.join(this.opts.rpcDir ?? '/etc/qubes-rpc', service), service, params, timeoutMs);
    }
    const client = this.opts.qrexecClient === undefined ? '/usr/lib/qubes/qrexec-client' : this.opts.qrexecClient;
    if (client === null) return Promise.reject(new Error(`no route to ${service} in ${guivm}`));
    return callViaQrexecClient(client, guivm, service, params, timeoutMs);
  }
}
