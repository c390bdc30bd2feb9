import type * as net from 'node:net';
import { spawn } from 'node:child_process';
import { PassThrough, Writable } from 'node:stream';
import { connectService, DEFAULT_CONFIG_PATH, DEFAULT_SERVICE_PATH, findFile, findQrexecService, loadServiceConfig, warnIgnoredOptions } from '../services/lookup.js';
import { forceUserClash, type ServiceConfig } from '../services/config.js';
import { ExitCode, parseCommand, ProtocolError, type RpcCommand } from '../protocol/index.js';
import { startPump, type Channel, type PumpOptions } from '../vchan/index.js';
import { spawnHeld, type HeldChild } from '../native/spawn-held.js';

export { DEFAULT_SERVICE_PATH };

/**
 * Runs a service call addressed to dom0 on the host, over an already connected
 * data vchan (we are the service end). `cmd` is the reference's
 * `QUBESRPC SERVICE+ARG SOURCE name|keyword TARGET`. The service is looked up
 * as the agent looks its services up (findQrexecService, QREXEC_SERVICE_PATH
 * as `servicePath`): executables get the reference's environment and
 * argument; a unix socket or a `/dev/tcp/HOST/PORT` symlink (host and port
 * may come from the argument) is connected and gets the header
 * `SERVICE+ARG SOURCE name|keyword TARGET\0` then the data. A call that
 * cannot start ends with 127 (not found) or 125, logged as the reference
 * logs it.
 */
export async function runDom0Service(
  channel: Channel,
  cmd: string,
  servicePath: readonly string[],
  log: (m: string) => void,
  configPath: string = process.env['QUBES_RPC_CONFIG_PATH'] ?? DEFAULT_CONFIG_PATH,
  inProcess?: InProcessServices,
): Promise<Dom0ServiceResult> {
  // a call that could not start: stderr and stdout EOF, then the status (reference handle_failed_exec)
  const failed = async (status: number): Promise<Dom0ServiceResult> => {
    log(`failed to spawn process for service (exited ${status}): ${cmd}`);
    const sent = await serve(channel, { sink: null, source: null, exitOnly: Promise.resolve({ code: status, eofs: true, stderrFirst: true }) }, log);
    return { status: sent < 0 ? status : sent, started: false };
  };
  let parsed: ReturnType<typeof parseCommand> | undefined;
  try {
    parsed = parseCommand(cmd, false);
  } catch (e) {
    log(`${e instanceof ProtocolError ? e.message : String(e)}`);
  }
  if (!parsed) return failed(ExitCode.PROBLEM);
  const rpc: RpcCommand | undefined = parsed.rpc;
  if (!rpc) {
    // a plain command, through bash as the reference's qrexec-client does (not
    // /bin/sh: commands may use bash's syntax); its stderr stays ours
    const held = spawnHeld('/bin/bash', ['-c', parsed.command], { stdio: ['pipe', 'pipe', 'inherit'] });
    log(`executed: ${parsed.command} (pid ${held.child.pid ?? '?'})`);
    return run(channel, held, log);
  }
  if (rpc.rest.length !== 0 && rpc.rest.length !== 2) {
    // the reference's exec step wants SERVICE+ARG SOURCE [name|keyword TARGET]
    log(`invalid number of arguments: ${rpc.rest.length + 3}`);
    return failed(ExitCode.PROBLEM);
  }
  const handler = inProcess?.get(rpc.serviceName);
  if (handler) return runInProcess(channel, rpc, handler, log);
  // the per-service configuration, before anything runs (reference wait_for_session_maybe)
  const config = loadDom0ServiceConfig(configPath, rpc, log);
  if (typeof config === 'string') {
    log(config);
    return failed(ExitCode.PROBLEM);
  }
  if (config.waitForSession) await waitForSession(servicePath, rpc.sourceDomain, log);
  const found = findQrexecService(servicePath.join(':'), rpc, true);
  if ('code' in found) {
    log(found.reason);
    return failed(found.code);
  }
  const remote = rpc.sourceDomain;
  if (found.kind === 'socket' || found.kind === 'tcp') {
    let sock: net.Socket;
    try {
      sock = await connectService(found);
    } catch (e) {
      log((e as Error).message);
      return failed(ExitCode.PROBLEM);
    }
    // One socket both ways, as the agent's socket services: the pump writes the
    // descriptor first, ends the call at the service's or the caller's EOF when
    // configured, and notices a service that closes (or stops reading) after its
    // output ended (the reference's POLLHUP). EPIPE/ECONNRESET are an end, not logged.
    const sent = await serve(
      channel,
      {
        sink: sock,
        source: sock,
        single: true,
        ...(config.sendServiceDescriptor ? { sinkPrefix: Buffer.from(`${parsed.command}\0`, 'utf8') } : {}),
        exitOnClientEof: config.exitOnClientEof,
        exitOnServiceEof: config.exitOnServiceEof,
      },
      log,
    );
    // nothing runs but the socket: the reference reports 0 unless the vchan failed
    return { status: sent < 0 ? ExitCode.PROBLEM : sent, started: true };
  }
  warnIgnoredOptions(config, found.path, log);
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
  // its stdout is held until the data vchan's handshake is done (spawnHeld)
  const held = spawnHeld(found.path, args, { env, stdio: ['pipe', 'pipe', 'inherit'] });
  log(`executed: ${cmd} (pid ${held.child.pid ?? '?'})`);
  return run(channel, held, log);
}

/**
 * Loads the configuration of a service called in dom0 (QUBES_RPC_CONFIG_PATH,
 * `SERVICE+ARG` then `SERVICE`) with the agent's parser. A string is the
 * reason the call must fail with 125: an unreadable or invalid file, or
 * `force-user` together with an option it cannot go with. As in the
 * reference, `force-user` is otherwise accepted and has no effect in dom0
 * (services run as the daemon's user).
 */
export function loadDom0ServiceConfig(configPath: string, rpc: RpcCommand, log: (m: string) => void): ServiceConfig | string {
  const config = loadServiceConfig(configPath, rpc.descriptor, rpc.serviceName, log);
  if (typeof config === 'string') return config;
  const clash = forceUserClash(config);
  return clash ? `Cannot load service configuration: ${rpc.descriptor}: Cannot set explicit username if ${clash}=true` : config;
}

/**
 * Runs qubes.WaitForSession from the service path with QREXEC_REMOTE_DOMAIN
 * set and no stdin, and waits for it, as the reference does in dom0
 * (exec_wait_for_session). Missing: logged, and the call goes on.
 */
async function waitForSession(servicePath: readonly string[], source: string, log: (m: string) => void): Promise<void> {
  const found = findFile(servicePath.join(':'), 'qubes.WaitForSession', false);
  if (found.kind !== 'found') {
    log('Service not found: qubes.WaitForSession');
    return;
  }
  const prog = found.path;
  const child = spawn(prog, [], { argv0: 'qubes.WaitForSession', env: { ...process.env, QREXEC_REMOTE_DOMAIN: source }, stdio: ['ignore', 'inherit', 'inherit'] });
  await new Promise<void>((resolve) => {
    child.once('error', (e) => {
      log(`qubes.WaitForSession: ${e.message}`);
      resolve();
    });
    child.once('exit', (code, sig) => {
      if (code !== 0) log(`wait-for-session exited with status ${code ?? sig ?? '?'}`);
      resolve();
    });
  });
}

/**
 * A dom0 service served by this process instead of an executable (the
 * Policy API): it gets the argument ('' when none), the calling qube and all
 * of stdin, and answers with an exit status, stdout and stderr, which the
 * caller receives as from a process.
 */
export type InProcessService = (call: { readonly service: string; readonly arg: string; readonly source: string; readonly payload: Buffer }) => InProcessReply | Promise<InProcessReply>;
export interface InProcessReply {
  readonly code: number;
  readonly stdout: Buffer;
  readonly stderr: string;
}
/** In-process services by service name (without argument). */
export type InProcessServices = ReadonlyMap<string, InProcessService>;

/** Largest stdin an in-process service takes; more ends the call with status 1. */
export const IN_PROCESS_MAX_PAYLOAD = 64 * 1024 * 1024;

async function runInProcess(channel: Channel, rpc: RpcCommand, handler: InProcessService, log: (m: string) => void): Promise<Dom0ServiceResult> {
  const chunks: Buffer[] = [];
  let size = 0;
  const stdout = new PassThrough();
  const stderr = new PassThrough();
  let resolveExit: (code: number) => void = () => undefined;
  const exit = new Promise<number>((r) => (resolveExit = r));
  let answered = false;
  const answer = (r: InProcessReply): void => {
    if (answered) return;
    answered = true;
    stderr.end(Buffer.from(r.stderr, 'utf8'));
    stdout.end(r.stdout);
    resolveExit(r.code);
  };
  const sink = new Writable({
    write(chunk: Buffer, _enc, cb) {
      size += chunk.length;
      if (size > IN_PROCESS_MAX_PAYLOAD) answer({ code: 1, stdout: Buffer.alloc(0), stderr: `payload larger than ${IN_PROCESS_MAX_PAYLOAD} bytes` });
      else chunks.push(chunk);
      cb();
    },
    final(cb) {
      cb();
      if (answered) return;
      Promise.resolve()
        .then(() => handler({ service: rpc.serviceName, arg: rpc.arg ?? '', source: rpc.sourceDomain, payload: Buffer.concat(chunks) }))
        .then(answer, (e: unknown) => {
          log(`${rpc.descriptor}: ${e instanceof Error ? e.message : String(e)}`);
          answer({ code: 2, stdout: Buffer.alloc(0), stderr: 'Internal error.' });
        });
    },
  });
  sink.on('error', () => undefined);
  log(`served in process: ${rpc.descriptor} from ${rpc.sourceDomain}`);
  const sent = await serve(channel, { sink, source: stdout, errSource: stderr, localExit: exit }, log);
  return { status: sent < 0 ? (answered ? await exit : ExitCode.PROBLEM) : sent, started: true };
}

/** What happened to a dom0 service call. */
export interface Dom0ServiceResult {
  /** The exit status sent to the caller; when none could be sent, the service's own status. */
  readonly status: number;
  /** False when the call failed before anything ran (not found, bad command: status 127/125). */
  readonly started: boolean;
}

/** Runs the service end of the data vchan; resolves with the exit code sent, or -1 when none was. */
function serve(channel: Channel, io: Omit<PumpOptions, 'channel' | 'role' | 'single' | 'log'> & { single?: boolean }, log: (m: string) => void): Promise<number> {
  return startPump({ channel, role: 'service', single: false, ...io, log }).done;
}

async function run(channel: Channel, held: HeldChild, log: (m: string) => void): Promise<Dom0ServiceResult> {
  const { child } = held;
  const stdin = held.stdin as Writable;
  const exitStatus = new Promise<number>((resolve) => {
    child.on('error', (e: NodeJS.ErrnoException) => {
      log(`exec: ${e.message}`);
      resolve(e.code === 'ENOENT' ? ExitCode.NOT_FOUND : ExitCode.PROBLEM);
    });
    child.on('exit', (code, sig) => resolve(code ?? 128 + (sig ? (osSignal(sig) ?? 0) : 0)));
  });
  stdin.on('error', () => undefined);
  const sent = await serve(channel, { sink: stdin, source: held.stdout, localExit: exitStatus }, log);
  // the pump waits for the process: its status is known even when the vchan broke
  return { status: sent < 0 ? await exitStatus : sent, started: true };
}

function osSignal(sig: NodeJS.Signals): number | undefined {
  const map: Partial<Record<NodeJS.Signals, number>> = { SIGHUP: 1, SIGINT: 2, SIGKILL: 9, SIGPIPE: 13, SIGTERM: 15 };
  return map[sig];
}
