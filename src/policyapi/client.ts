/**
 * Calling the Policy API (reference qrexec/policy/admin_client.py): in dom0
 * through the host's policy API socket, in a qube through
 * `qrexec-client-vm dom0 policy.X+ARG` (the policy decides). The reply is
 * the service's exit status, stdout and stderr; a `ClassName message`
 * stderr becomes that exception.
 */
import { localHost } from '../common/local-host.js';
import * as fs from 'node:fs';
import * as net from 'node:net';
import { spawn } from 'node:child_process';
import { exceptionFromStderr, type PolicyAdminException } from './errors.js';
import type { Reply } from './admin.js';
import type { ImpactDiff } from './diff.js';
import type { HistoryEntry } from './history.js';
import { decodeReply, DEFAULT_POLICY_API_SOCKET } from './server.js';
import { describeSystemError, QrexecError } from '../common/errors.js';

/** A call that failed without a Policy API error: the reference's CalledProcessError. */
export class PolicyCallFailed extends Error {
  override name = 'PolicyCallFailed';
  constructor(
    readonly code: number,
    readonly stdout: string,
    readonly stderr: string,
  ) {
    super(`call failed with status ${code}${stderr ? `: ${stderr.trim()}` : ''}`);
  }
}

export interface PolicyTransport {
  call(service: string, arg: string | null, payload: Buffer | string): Promise<Reply>;
}

/** The Policy API cannot be reached at all (no socket, no qrexec-client-vm). */
export class PolicyTransportError extends QrexecError {
  override name = 'PolicyTransportError';
}

/** dom0: the host's socket. */
export function socketTransport(socketPath: string): PolicyTransport {
  return {
    call: (service, arg, payload) =>
      new Promise((resolve, reject) => {
        const s = net.createConnection({ path: socketPath, allowHalfOpen: true });
        const chunks: Buffer[] = [];
        s.on('connect', () => {
          s.write(`${service}${arg !== null ? `+${arg}` : ''}\0`, 'latin1');
          s.end(typeof payload === 'string' ? Buffer.from(payload, 'utf8') : payload);
        });
        s.on('data', (c: Buffer) => chunks.push(c));
        s.on('error', (e) => reject(new PolicyTransportError(`cannot reach the Policy API at ${socketPath}: ${describeSystemError(e, socketPath)}`)));
        s.on('end', () => {
          try {
            resolve(decodeReply(Buffer.concat(chunks)));
          } catch (e) {
            reject(e as Error);
          }
        });
      }),
  };
}

/** A qube: qrexec-client-vm (from PATH unless given). */
export function qrexecTransport(clientVm = 'qrexec-client-vm', clientArgs: readonly string[] = []): PolicyTransport {
  return {
    call: (service, arg, payload) =>
      new Promise((resolve, reject) => {
        const p = spawn(clientVm, [...clientArgs, 'dom0', `${service}${arg !== null ? `+${arg}` : ''}`], { stdio: ['pipe', 'pipe', 'pipe'] });
        const out: Buffer[] = [];
        const err: Buffer[] = [];
        p.stdout.on('data', (c: Buffer) => out.push(c));
        p.stderr.on('data', (c: Buffer) => err.push(c));
        p.stdin.on('error', () => undefined);
        p.on('error', (e) => reject(new PolicyTransportError(`cannot reach the Policy API: ${describeSystemError(e)}`)));
        p.on('close', (code) => resolve({ code: code ?? 1, stdout: Buffer.concat(out), stderr: Buffer.concat(err).toString('utf8') }));
        p.stdin.end(payload);
      }),
  };
}

/**
 * The transport for where we run: $QUBES_POLICY_API_SOCKET, the socket of
 * the host `npm start` runs (src/common/local-host.ts), or the default
 * socket when it exists (dom0); else qrexec-client-vm ($QREXEC_CLIENT_VM: a command, words split at spaces).
 */
export function defaultTransport(env: NodeJS.ProcessEnv = process.env): PolicyTransport {
  const sock = env['QUBES_POLICY_API_SOCKET'];
  if (sock) return socketTransport(sock);
  const host = localHost(env);
  if (host) return socketTransport(host.policyApiSocket);
  if (fs.existsSync(DEFAULT_POLICY_API_SOCKET)) return socketTransport(DEFAULT_POLICY_API_SOCKET);
  const cmd = (env['QREXEC_CLIENT_VM'] || 'qrexec-client-vm').split(' ').filter((x) => x);
  return qrexecTransport(cmd[0] as string, cmd.slice(1));
}

/** The reference's PolicyClient. */
export class PolicyClient {
  constructor(private readonly transport: PolicyTransport = defaultTransport()) {}

  /** Calls `policy.[include.]SERVICE`; stdout on success. @throws PolicyAdminException | PolicyCallFailed */
  async call(service: string, arg: string | null = null, payload: Buffer | string = '', include = false): Promise<Buffer> {
    const name = `policy.${include ? 'include.' : ''}${service}`;
    const r = await this.transport.call(name, arg, payload);
    if (r.code === 0) return r.stdout;
    const e: PolicyAdminException | null = exceptionFromStderr(r.stderr);
    if (e) throw e;
    throw new PolicyCallFailed(r.code, r.stdout.toString('utf8'), r.stderr);
  }

  async list(include = false): Promise<string[]> {
    return (await this.call('List', null, '', include)).toString('utf8').replace(/\n+$/, '').split('\n');
  }

  /** [content, token] */
  async get(name: string, include = false): Promise<[string, string]> {
    const out = (await this.call('Get', name, '', include)).toString('utf8');
    const nl = out.indexOf('\n');
    return [out.slice(nl + 1), out.slice(0, nl)];
  }

  async replace(name: string, content: string, token = 'any', include = false): Promise<void> {
    await this.call('Replace', name, `${token}\n${content}`, include);
  }

  async remove(name: string, token = 'any', include = false): Promise<void> {
    await this.call('Remove', name, token, include);
  }

  /** Ours: the impact of replacing (content) or removing (null) a file; nothing is changed. */
  async diff(name: string, content: string | null, token = 'any', include = false): Promise<ImpactDiff> {
    const out = await this.call('Diff', name, content === null ? token : `${token}\n${content}`, include);
    return JSON.parse(out.toString('utf8')) as ImpactDiff;
  }

  /** Ours: how the policy decides a call (qrexec-policy-explain --json's object). */
  async eval(serviceAndArg: string, source: string, target: string): Promise<unknown> {
    return JSON.parse((await this.call('Eval', serviceAndArg, `${source} ${target}`)).toString('utf8')) as unknown;
  }

  /** Ours: the accepted changes of a file, oldest first. */
  async history(name: string, include = false): Promise<HistoryEntry[]> {
    const out = (await this.call('History', name, '', include)).toString('utf8');
    return out.split('\n').filter((l) => l).map((l) => JSON.parse(l) as HistoryEntry);
  }

  /** Ours: a kept version: [content, token]. */
  async show(token: string): Promise<[string, string]> {
    const out = (await this.call('Show', token.replace(/^sha256:/, ''))).toString('utf8');
    const nl = out.indexOf('\n');
    return [out.slice(nl + 1), out.slice(0, nl)];
  }

  async getFiles(service: string): Promise<string[]> {
    const r = (await this.call('GetFiles', service)).toString('utf8');
    return r === '' ? [] : r.replace(/\n+$/, '').split('\n');
  }
}
