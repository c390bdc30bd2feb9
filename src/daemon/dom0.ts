import * as net from 'node:net';
import { spawn } from 'node:child_process';
import { lstat, stat, access, constants as fsc } from 'node:fs/promises';
import { join } from 'node:path';
import { ExitCode, parseCommand, ProtocolError, type RpcCommand } from '../protocol/index.js';
import { runDataStream, type Channel, type DataStreamResult } from '../vchan/index.js';

/** Reference default service path. */
export const DEFAULT_SERVICE_PATH = '/run/qubes-rpc:/usr/local/etc/qubes-rpc:/etc/qubes-rpc';

type Found = { kind: 'exec'; path: string } | { kind: 'socket'; path: string } | { kind: 'none' };

/** Looks a service up like find_qrexec_service: `SERVICE+ARG`, then `SERVICE`, in each directory. */
export async function findService(dirs: readonly string[], rpc: RpcCommand): Promise<Found> {
  for (const name of [rpc.descriptor, rpc.serviceName]) {
    for (const dir of dirs) {
      const p = join(dir, name);
      const l = await lstat(p).catch(() => undefined);
      if (!l) continue;
      const st = l.isSymbolicLink() ? await stat(p).catch(() => undefined) : l;
      if (!st) continue;
      if (st.isSocket()) return { kind: 'socket', path: p };
      return { kind: 'exec', path: p };
    }
  }
  return { kind: 'none' };
}

/**
 * Runs a service call addressed to dom0 on the host, over an already connected
 * data vchan (we are the service end). `cmd` is the reference's
 * `QUBESRPC SERVICE+ARG SOURCE name|keyword TARGET`. Executables get the
 * reference's environment and argument; a socket gets the header
 * `SERVICE+ARG SOURCE name|keyword TARGET\0` then the data.
 */
export async function runDom0Service(
  channel: Channel,
  cmd: string,
  servicePath: readonly string[],
  log: (m: string) => void,
): Promise<DataStreamResult> {
  let rpc: RpcCommand | undefined;
  try {
    rpc = parseCommand(cmd, false).rpc;
  } catch (e) {
    log(`${e instanceof ProtocolError ? e.message : String(e)}`);
  }
  if (!rpc) return runDataStream({ channel, role: 'service', exitStatus: Promise.resolve(ExitCode.PROBLEM), log });
  const found = await findService(servicePath, rpc);
  if (found.kind === 'none') {
    log(`Service not found: ${rpc.descriptor}`);
    return runDataStream({ channel, role: 'service', exitStatus: Promise.resolve(ExitCode.NOT_FOUND), log });
  }
  const remote = rpc.sourceDomain;
  if (found.kind === 'socket') {
    const sock = net.createConnection({ path: found.path, allowHalfOpen: true });
    const ok = await new Promise<boolean>((r) => {
      sock.once('connect', () => r(true));
      sock.once('error', (e) => {
        log(`connect ${found.path}: ${e.message}`);
        r(false);
      });
    });
    if (!ok) return runDataStream({ channel, role: 'service', exitStatus: Promise.resolve(ExitCode.PROBLEM), log });
    sock.write(Buffer.from(`${parseCommand(cmd, false).command}\0`, 'utf8'));
    const closed = new Promise<number>((r) => sock.once('close', () => r(0)));
    return runDataStream({ channel, role: 'service', input: sock, output: sock, exitStatus: closed, log });
  }
  if ((await access(found.path, fsc.X_OK).then(() => true, () => false)) === false) {
    log(`Service not executable: ${found.path}`);
    return runDataStream({ channel, role: 'service', exitStatus: Promise.resolve(ExitCode.PROBLEM), log });
  }
  const env: NodeJS.ProcessEnv = {};
  for (const [k, v] of Object.entries(process.env)) {
    if (!k.startsWith('QREXEC') || k === 'QREXEC_SERVICE_PATH' || k === 'QREXEC_AGENT_PID') env[k] = v;
  }
  const rt = rpc.requestedTarget;
  env['QREXEC_REQUESTED_TARGET_TYPE'] = rt ? rt.type : '';
  if (rt?.type === 'name') env['QREXEC_REQUESTED_TARGET'] = rt.value;
  if (rt?.type === 'keyword') env['QREXEC_REQUESTED_TARGET_KEYWORD'] = rt.value;
  env['QREXEC_SERVICE_FULL_NAME'] = rpc.descriptor;
  env['QREXEC_REMOTE_DOMAIN'] = remote;
  if (rpc.arg !== undefined) env['QREXEC_SERVICE_ARGUMENT'] = rpc.arg;
  const args = rpc.arg ? [rpc.arg] : [];
  const child = spawn(found.path, args, { env, stdio: ['pipe', 'pipe', 'pipe'] });
  const exitStatus = new Promise<number>((resolve) => {
    child.on('error', (e: NodeJS.ErrnoException) => {
      log(`exec ${found.path}: ${e.message}`);
      resolve(e.code === 'ENOENT' ? ExitCode.NOT_FOUND : ExitCode.PROBLEM);
    });
    child.on('exit', (code, sig) => resolve(code ?? 128 + (sig ? (osSignal(sig) ?? 0) : 0)));
  });
  child.stdin.on('error', () => undefined);
  log(`executed: ${cmd} (pid ${child.pid ?? '?'})`);
  return runDataStream({ channel, role: 'service', input: child.stdout, errInput: child.stderr, output: child.stdin, exitStatus, log });
}

function osSignal(sig: NodeJS.Signals): number | undefined {
  const map: Partial<Record<NodeJS.Signals, number>> = { SIGHUP: 1, SIGINT: 2, SIGKILL: 9, SIGPIPE: 13, SIGTERM: 15 };
  return map[sig];
}
