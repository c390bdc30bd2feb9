/**
 * Finding services and their configuration files along colon-separated search
 * paths, as the reference's find_file / find_qrexec_service do, and connecting
 * to socket and /dev/tcp services. One lookup for both ends that run services:
 * the agent in a qube and dom0 (src/daemon/dom0.ts, qrexec-client).
 */
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as path from 'node:path';
import { ExitCode, NAME_MAX, type RpcCommand } from '../protocol/index.js';
import { connectStream } from '../vchan/index.js';
import { defaultServiceConfig, parseServiceConfig, ServiceConfigError, type ServiceConfig } from './config.js';

/** The reference's default QREXEC_SERVICE_PATH. */
export const DEFAULT_SERVICE_PATH = '/run/qubes-rpc:/usr/local/etc/qubes-rpc:/etc/qubes-rpc';
/** The reference's default QUBES_RPC_CONFIG_PATH. */
export const DEFAULT_CONFIG_PATH = '/run/qubes/rpc-config:/usr/local/etc/qubes/rpc-config:/etc/qubes/rpc-config';
/** The reference's path buffer size (QUBES_SOCKADDR_UN_MAX_PATH_LEN). */
const PATH_BUFFER = 1024;

/** Result of a search: found, definitely absent, or an error that stops the search. */
export type FindResult =
  | { readonly kind: 'found'; readonly path: string; readonly stat: fs.Stats }
  | { readonly kind: 'tcp'; readonly path: string; readonly target: string }
  | { readonly kind: 'absent' }
  | { readonly kind: 'error'; readonly reason: string };

/**
 * Looks `name` up in each directory of `pathList` in order. The first entry
 * that `lstat` finds ends the search; a symlink is followed (a dangling one
 * counts as absent when the target does not exist, an error otherwise). With
 * `tcpLinks`, a symlink to `/dev/tcp[/…]` is reported as such, not followed.
 */
export function findFile(pathList: string, name: string, tcpLinks: boolean): FindResult {
  if (Buffer.byteLength(name) > NAME_MAX) return { kind: 'absent' };
  let start = 0;
  while (start < pathList.length) {
    let end = pathList.indexOf(':', start);
    if (end < 0) end = pathList.length;
    const dir = pathList.slice(start, end);
    const path = `${dir}/${name}`;
    if (Buffer.byteLength(path) >= PATH_BUFFER) {
      return { kind: 'error', reason: 'find_qrexec_service_file: buffer too small for file path' };
    }
    let st: fs.Stats | undefined;
    let err: NodeJS.ErrnoException | undefined;
    try {
      st = fs.lstatSync(path);
      if (st.isSymbolicLink()) {
        if (tcpLinks) {
          const target = fs.readlinkSync(path);
          if (target === '/dev/tcp' || target.startsWith('/dev/tcp/')) {
            if (target === '/dev/tcp/') return { kind: 'error', reason: '/dev/tcp/ not followed by host' };
            return { kind: 'tcp', path, target };
          }
        }
        st = fs.statSync(path);
      }
    } catch (e) {
      err = e as NodeJS.ErrnoException;
    }
    if (err === undefined && st !== undefined) return { kind: 'found', path, stat: st };
    if (err !== undefined && err.code !== 'ENOENT') return { kind: 'error', reason: `stat/lstat(${path}): ${err.message}` };
    start = end;
    while (pathList[start] === ':') start++;
  }
  return { kind: 'absent' };
}

/** Looks `descriptor` (`SERVICE+ARG`) up first, then `serviceName`, as the reference does (the same for configuration files). */
export function findServiceFile(pathList: string, descriptor: string, serviceName: string, tcpLinks: boolean): FindResult {
  const r = findFile(pathList, descriptor, tcpLinks);
  return r.kind === 'absent' ? findFile(pathList, serviceName, tcpLinks) : r;
}

/** True when the agent may execute `path` (the reference uses euidaccess(X_OK)). */
export function isExecutable(path: string): boolean {
  try {
    fs.accessSync(path, fs.constants.X_OK);
    return true;
  } catch {
    return false;
  }
}

/**
 * The configuration of a service (`SERVICE+ARG`, then `SERVICE`, along
 * `configPath`); defaults when there is none. A string is why the call must
 * fail with 125: an unreadable or invalid file.
 */
export function loadServiceConfig(configPath: string, descriptor: string, serviceName: string, log: (m: string) => void): ServiceConfig | string {
  const found = findServiceFile(configPath, descriptor, serviceName, false);
  if (found.kind === 'error') return `Cannot load service configuration: ${descriptor}: ${found.reason}`;
  if (found.kind !== 'found') return defaultServiceConfig();
  try {
    return parseServiceConfig(found.path, fs.readFileSync(found.path), log);
  } catch (e) {
    const why = e instanceof ServiceConfigError ? e.message : `Failed to load ${found.path}: ${(e as Error).message}`;
    return `Cannot load service configuration: ${descriptor}: ${why}`;
  }
}

/** What a service call runs, found as the reference's find_qrexec_service finds it. */
export type ServiceTarget =
  | { readonly kind: 'exec'; readonly path: string }
  | { readonly kind: 'socket'; readonly path: string }
  | { readonly kind: 'tcp'; readonly host: string; readonly port: number; readonly link: string };

/**
 * Why a service call cannot run: `code` is the status to report (127 when no
 * file is there, 125 otherwise) and `reason` the line to log.
 */
export interface ServiceLookupFailure {
  readonly code: number;
  readonly reason: string;
}

/**
 * Finds the service of `rpc` along `pathList` (`SERVICE+ARG`, then
 * `SERVICE`): an executable, a unix socket, or a symlink to
 * `/dev/tcp[/HOST[/PORT]]` whose missing parts come from the argument (see
 * parseTcpTarget). With `sockets` false (dom0 → dom0 calls, which have no
 * data stream to give a socket) sockets and /dev/tcp links fail with 125, as
 * in the reference. Does not connect, nor check the configuration options an
 * executable ignores (warnIgnoredOptions).
 */
export function findQrexecService(
  pathList: string,
  rpc: Pick<RpcCommand, 'descriptor' | 'serviceName' | 'arg'>,
  sockets: boolean,
): ServiceTarget | ServiceLookupFailure {
  const r = findServiceFile(pathList, rpc.descriptor, rpc.serviceName, true);
  const problem = (reason: string): ServiceLookupFailure => ({ code: ExitCode.PROBLEM, reason });
  switch (r.kind) {
    case 'absent':
      return { code: ExitCode.NOT_FOUND, reason: `Service not found: ${rpc.descriptor}` };
    case 'error':
      return problem(`Error finding service: ${rpc.descriptor}: ${r.reason}`);
    case 'tcp':
      if (!sockets) return problem(noSocketsHere(r.target));
      return parseTcpTarget(r.target, rpc.arg);
    case 'found':
      if (r.stat.isSocket()) return sockets ? { kind: 'socket', path: r.path } : problem(noSocketsHere(r.path));
      if (isExecutable(r.path)) return { kind: 'exec', path: r.path };
      return problem(`Unknown service type (not executable, not a socket): ${r.path}`);
  }
}

function noSocketsHere(what: string): string {
  return `Service ${what} is a socket or /dev/tcp symlink, but this is not supported for dom0 -> dom0 calls`;
}

/** Logs, as the reference does, the options of `config` that an executable service ignores. */
export function warnIgnoredOptions(config: ServiceConfig, servicePath: string, log: (m: string) => void): void {
  for (const [on, key] of [
    [!config.sendServiceDescriptor, 'skip-service-descriptor'],
    [config.exitOnServiceEof, 'exit-on-service-eof'],
    [config.exitOnClientEof, 'exit-on-client-eof'],
  ] as const) {
    if (on) log(`Warning: ignoring ${key}=true for executable service ${servicePath}`);
  }
}

/** The reference's validate_port: decimal 1..65535 without a leading zero (glibc accepts larger numbers). */
function validPort(p: string): boolean {
  return /^[1-9][0-9]{0,4}$/.test(p) && Number(p) <= 65535;
}

/**
 * Where a `/dev/tcp` service connects, from its link target and the call's
 * argument, as the reference's find_qrexec_service:
 *
 * - `/dev/tcp/HOST/PORT`: both from the link; an argument is refused;
 * - `/dev/tcp/HOST`: the argument is the port;
 * - `/dev/tcp`: the argument is `HOST+PORT`, each `+` in HOST standing for
 *   `:` (IPv6: `+ +1+22` for `::1` port 22); `_` is refused in HOST.
 *
 * HOST must be a numeric address (no name lookups: the reference passes
 * AI_NUMERICHOST); one with `:` or `%` must be IPv6. A failure is 125 with the
 * reference's log line.
 */
export function parseTcpTarget(link: string, arg: string | undefined): Extract<ServiceTarget, { kind: 'tcp' }> | ServiceLookupFailure {
  const bad = (reason: string): ServiceLookupFailure => ({ code: ExitCode.PROBLEM, reason });
  let host: string | undefined;
  let port: string | undefined;
  const rest = link.slice('/dev/tcp'.length);
  if (rest.startsWith('/')) {
    const slash = rest.indexOf('/', 1);
    if (slash < 0) host = rest.slice(1);
    else {
      host = rest.slice(1, slash);
      port = rest.slice(slash + 1);
    }
  }
  if (port === undefined) {
    if (arg === undefined || arg === '') return bad(`No or empty argument provided, cannot connect to ${link}`);
    if (host === undefined) {
      const plus = arg.lastIndexOf('+');
      if (plus < 0) return bad(`No port provided, cannot connect to ${arg}`);
      const h = arg.slice(0, plus);
      if (h.includes('_')) return bad(`Underscore not allowed in hostname ${h}`);
      host = h.replace(/\+/g, ':');
      port = arg.slice(plus + 1);
    } else {
      port = arg;
    }
  } else if (arg !== undefined && arg !== '') {
    return bad(`Unexpected argument ${arg} to service ${link}`);
  }
  if (host === undefined) return bad(`No host provided, cannot connect to ${link}`); // not reached: narrows the type
  if (!validPort(port)) return bad(`Invalid port number ${port}`);
  const v6 = host.includes(':') || host.includes('%');
  if (v6 ? !net.isIPv6(host) : net.isIP(host) === 0) return bad(`getaddrinfo(${host}, ${port}) failed: Name or service not known`);
  return { kind: 'tcp', host, port: Number(port), link };
}

/** strerror() texts for the errors a connect() commonly gives, for the reference's log lines. */
const STRERROR: Readonly<Record<string, string>> = {
  ECONNREFUSED: 'Connection refused',
  ENOENT: 'No such file or directory',
  EACCES: 'Permission denied',
  ETIMEDOUT: 'Connection timed out',
  ENETUNREACH: 'Network is unreachable',
  EHOSTUNREACH: 'No route to host',
  EADDRNOTAVAIL: 'Cannot assign requested address',
  ECONNRESET: 'Connection reset by peer',
  ENOTSOCK: 'Socket operation on non-socket',
};

/**
 * Connects to a socket or /dev/tcp service (allowHalfOpen: the call ends each
 * direction separately; TCP without Nagle's delay). Unix paths too long for
 * sockaddr_un go through a temporary symlink. Rejects with an Error whose
 * message is the line to log (`connect: Connection refused`); the call then
 * fails with 125. Sends nothing: the caller writes the descriptor.
 */
export async function connectService(target: Exclude<ServiceTarget, { kind: 'exec' }>): Promise<net.Socket> {
  try {
    if (target.kind === 'tcp') {
      const s = await connectStream({ host: target.host, port: target.port, allowHalfOpen: true });
      s.setNoDelay(true);
      return s;
    }
    if (Buffer.byteLength(target.path) < 108) return await connectStream({ path: target.path, allowHalfOpen: true });
    const dir = fs.mkdtempSync(path.join('/tmp', 'qrexec-'));
    const link = path.join(dir, 'qrexec-socket');
    try {
      fs.symlinkSync(target.path, link);
      return await connectStream({ path: link, allowHalfOpen: true });
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  } catch (e) {
    const err = e as NodeJS.ErrnoException;
    throw new Error(`connect: ${(err.code !== undefined ? STRERROR[err.code] : undefined) ?? err.message}`, { cause: e });
  }
}
