import * as net from 'node:net';
import { spawn, type ChildProcessByStdio } from 'node:child_process';
import type { Readable, Writable } from 'node:stream';
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
): Promise<Dom0ServiceResult> {
  // a call that could not start: stderr and stdout EOF, then the status (reference handle_failed_exec)
  const failed = async (status: number): Promise<Dom0ServiceResult> => ({ ...(await runDataStream({ channel, role: 'service', exitStatus: Promise.resolve(status), log })), started: false });
  let parsed: ReturnType<typeof parseCommand> | undefined;
  try {
    parsed = parseCommand(cmd, false);
  } catch (e) {
    log(`${e instanceof ProtocolError ? e.message : String(e)}`);
  }
  if (!parsed) return failed(ExitCode.PROBLEM);
  const rpc: RpcCommand | undefined = parsed.rpc;
  if (!rpc) {
    // a plain command, through the shell as the reference does; its stderr stays ours
    const child = spawn('/bin/sh', ['-c', parsed.command], { stdio: ['pipe', 'pipe', 'inherit'] });
    log(`executed: ${parsed.command} (pid ${child.pid ?? '?'})`);
    return run(channel, child, log);
  }
  if (rpc.rest.length !== 0 && rpc.rest.length !== 2) {
    // the reference's exec step wants SERVICE+ARG SOURCE [name|keyword TARGET]
    log(`invalid number of arguments: ${rpc.rest.length + 3}`);
    return failed(ExitCode.PROBLEM);
  }
  const found = await findService(servicePath, rpc);
  if (found.kind === 'none') {
    log(`Service not found: ${rpc.descriptor}`);
    return failed(ExitCode.NOT_FOUND);
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
    if (!ok) return failed(ExitCode.PROBLEM);
    sock.write(Buffer.from(`${parsed.command}\0`, 'utf8'));
    const closed = new Promise<number>((r) => sock.once('close', () => r(0)));
    return { ...(await runDataStream({ channel, role: 'service', input: sock, output: sock, exitStatus: closed, log })), started: true };
  }
  if ((await access(found.path, fsc.X_OK).then(() => true, () => false)) === false) {
    log(`Service not executable: ${found.path}`);
    return failed(ExitCode.PROBLEM);
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
  // the service's stderr is not sent to the caller: it goes to our stderr (the reference's log)
  const child = spawn(found.path, args, { env, stdio: ['pipe', 'pipe', 'inherit'] });
  log(`executed: ${cmd} (pid ${child.pid ?? '?'})`);
  return run(channel, child, log);
}

/** What happened to a dom0 service call: the data stream's outcome, and whether the service started at all. */
export interface Dom0ServiceResult extends DataStreamResult {
  /** False when the call failed before anything ran (not found, bad command: status 127/125). */
  readonly started: boolean;
}

async function run(channel: Channel, child: ChildProcessByStdio<Writable, Readable, null>, log: (m: string) => void): Promise<Dom0ServiceResult> {
  const exitStatus = new Promise<number>((resolve) => {
    child.on('error', (e: NodeJS.ErrnoException) => {
      log(`exec: ${e.message}`);
      resolve(e.code === 'ENOENT' ? ExitCode.NOT_FOUND : ExitCode.PROBLEM);
    });
    child.on('exit', (code, sig) => resolve(code ?? 128 + (sig ? (osSignal(sig) ?? 0) : 0)));
  });
  child.stdin.on('error', () => undefined);
  return { ...(await runDataStream({ channel, role: 'service', input: child.stdout, output: child.stdin, exitStatus, log })), started: true };
}

function osSignal(sig: NodeJS.Signals): number | undefined {
  const map: Partial<Record<NodeJS.Signals, number>> = { SIGHUP: 1, SIGINT: 2, SIGKILL: 9, SIGPIPE: 13, SIGTERM: 15 };
  return map[sig];
}
