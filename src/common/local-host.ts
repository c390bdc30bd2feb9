/**
 * Where the host `npm start` runs (bin/qubes-host) keeps its data and
 * sockets, so dom0 tools (qvm-*, qrexec-client) find it without options:
 * DATA = $XDG_DATA_HOME/qrexec-ts or ~/.local/share/qrexec-ts, RUN = DATA/run,
 * and RUN/host.json names its sockets while it runs. QREXEC_HOST_DIR names
 * another RUN (a host started with --data-dir or --run-dir).
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';

/** RUN/host.json. */
export const HOST_INFO_FILE = 'host.json';

/** What a running host writes to RUN/host.json. */
export interface HostInfo {
  readonly pid: number;
  readonly dataDir: string;
  readonly runDir: string;
  readonly runtime: string;
  readonly qubesdSocket: string;
  readonly qrexecSocketDir: string;
  readonly vchanDir: string;
  readonly vchanLayout: 'flat' | 'per-domain';
  readonly policySocket: string;
  readonly policyApiSocket: string;
  readonly policyDir: string;
}

export function defaultDataDir(env: NodeJS.ProcessEnv = process.env): string {
  const xdg = env['XDG_DATA_HOME'];
  return path.join(xdg && path.isAbsolute(xdg) ? xdg : path.join(os.homedir(), '.local', 'share'), 'qrexec-ts');
}

/** A host's RUN for its DATA. */
export function runDirOf(dataDir: string): string {
  return path.join(dataDir, 'run');
}

/** The RUN dom0 tools look at: QREXEC_HOST_DIR, else the default host's. */
export function localRunDir(env: NodeJS.ProcessEnv = process.env): string {
  return env['QREXEC_HOST_DIR'] || runDirOf(defaultDataDir(env));
}

/** The info of the host running with `runDir`, if its file is there and its process lives. */
export function readHostInfo(runDir: string): HostInfo | undefined {
  let info: HostInfo;
  try {
    info = JSON.parse(fs.readFileSync(path.join(runDir, HOST_INFO_FILE), 'utf8')) as HostInfo;
  } catch {
    return undefined;
  }
  if (typeof info !== 'object' || info === null || !Number.isSafeInteger(info.pid) || info.pid <= 0) return undefined;
  return processAlive(info.pid) ? info : undefined;
}

/** A process that exists and is not a zombie (a host killed with -9 its parent has not reaped yet). */
function processAlive(pid: number): boolean {
  try {
    return !/^\d+ \(.*\) Z/s.test(fs.readFileSync(`/proc/${pid}/stat`, 'latin1'));
  } catch {
    try {
      process.kill(pid, 0);
      return true;
    } catch (e) {
      return (e as NodeJS.ErrnoException).code === 'EPERM';
    }
  }
}

/** The local host dom0 tools use, if one runs (see the module comment). */
export function localHost(env: NodeJS.ProcessEnv = process.env): HostInfo | undefined {
  return readHostInfo(localRunDir(env));
}
