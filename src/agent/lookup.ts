/**
 * Finding services and their configuration files along colon-separated search
 * paths, as the reference's find_file / find_qrexec_service do.
 */
import * as fs from 'node:fs';
import { NAME_MAX } from '../protocol/index.js';
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

/** Looks `descriptor` (`SERVICE+ARG`) up first, then `serviceName`, as the reference does. */
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
