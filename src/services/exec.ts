/**
 * Starting what a command line asks for, as the reference agent does
 * (agent/qrexec-agent.c do_exec, libqrexec/exec.c): an executable service with
 * its argument and QREXEC_* environment, a unix-socket or /dev/tcp service
 * with its descriptor header, or a plain command through `/bin/sh -c`.
 */
import { spawn } from 'node:child_process';
import { EventEmitter } from 'node:events';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';
import { PassThrough, type Readable, type Writable } from 'node:stream';
import { ExitCode, parseCommand, ProtocolError, type ParsedCommand } from '../protocol/index.js';
import { defaultServiceConfig, forceUserClash, type ServiceConfig } from './config.js';
import {
  connectService,
  DEFAULT_CONFIG_PATH,
  DEFAULT_SERVICE_PATH,
  findFile,
  findQrexecService,
  loadServiceConfig,
  warnIgnoredOptions,
  type ServiceTarget,
} from './lookup.js';
import { loadNative, nativePipe, nativeSocketpair } from '../native/addon.js';
import { pipeReader, spawnHeld } from '../native/spawn-held.js';
import { connectedPair } from '../vchan/socket-pair.js';
import { decodeVmExecArg, VMEXEC_SERVICES, VmExecDecodeError } from './vmexec.js';

/** What the agent needs to know about its environment to run services. */
export interface ExecContext {
  /** The environment services inherit (the agent's own, normally). */
  readonly env: NodeJS.ProcessEnv;
  /** QREXEC_SERVICE_PATH, or the reference default. */
  readonly servicePath: string;
  /** QUBES_RPC_CONFIG_PATH, or the reference default. */
  readonly configPath: string;
  /** Value of QREXEC_AGENT_PID given to every child. */
  readonly agentPid: number;
  /** The agent's effective uid and user name. */
  readonly uid: number;
  readonly userName: string;
  readonly log: (msg: string) => void;
  /** Spawns executable services outside this process, when set and able (see ServiceSpawner). */
  readonly spawner?: ServiceSpawner;
  /** The call's own QREXEC_AGENT_PID for an executable service, instead of agentPid (asked only when one is spawned). */
  readonly agentPidFor?: () => Promise<number | undefined> | number | undefined;
}

/** A child process: its pid and its 'exit' (code, signal) event, as a ChildProcess has. */
export interface SpawnedService {
  readonly pid?: number | undefined;
  once(event: 'exit', cb: (code: number | null, signal: NodeJS.Signals | null) => void): unknown;
  once(event: 'error', cb: (e: NodeJS.ErrnoException) => void): unknown;
}

/** What a spawner runs: execve(file, [argv0, ...args], env) with `stdio` as 0-2. */
export interface SpawnRequest {
  readonly file: string;
  readonly args: readonly string[];
  readonly argv0: string;
  readonly env: NodeJS.ProcessEnv;
  readonly uid?: number;
  readonly gid?: number;
  readonly cwd?: string;
  /** Descriptors for the child's 0, 1, 2 (still the caller's to close). */
  readonly stdio: readonly [number, number, number];
}

/**
 * Spawns services from a small process of its own (the agent's relay server,
 * src/agent/sigrelay.ts): Node's spawn forks the whole agent, which blocks
 * its event loop for as long as copying its page tables takes.
 */
export interface ServiceSpawner {
  readonly canSpawn: boolean;
  /** Resolves once execve ran; rejects with an errno error (code ENOENT, EACCES...). */
  spawn(req: SpawnRequest): Promise<SpawnedService>;
}

/** Builds the context from the agent's process environment. */
export function execContextFromEnv(env: NodeJS.ProcessEnv, log: (msg: string) => void): ExecContext {
  const uid = process.geteuid?.() ?? os.userInfo().uid;
  let userName: string;
  try {
    userName = os.userInfo().username;
  } catch {
    userName = String(uid);
  }
  return {
    env,
    servicePath: env['QREXEC_SERVICE_PATH'] ?? DEFAULT_SERVICE_PATH,
    configPath: env['QUBES_RPC_CONFIG_PATH'] ?? DEFAULT_CONFIG_PATH,
    agentPid: process.pid,
    uid,
    userName,
    log,
  };
}

/** A command line parsed and, for service calls, with its configuration loaded. */
export interface PreparedCall {
  readonly cmd: ParsedCommand;
  /** The user to run as: dom0's, or `force-user` from the configuration. */
  readonly user: string;
  readonly config: ServiceConfig;
}

/**
 * Parses a command line from dom0 and loads the service configuration, as
 * handle_server_exec_request_init does. Returns a reason string when the call
 * must fail with QREXEC_EXIT_PROBLEM.
 */
export function prepareCall(cmdline: string, ctx: ExecContext): PreparedCall | string {
  let cmd: ParsedCommand;
  try {
    cmd = parseCommand(cmdline, true);
  } catch (e) {
    return `Cannot parse command line: ${cmdline} (${e instanceof ProtocolError ? e.message : String(e)})`;
  }
  const user = cmd.username ?? '';
  if (!cmd.rpc) return { cmd, user, config: defaultServiceConfig() };
  const rpc = cmd.rpc;
  const config = loadServiceConfig(ctx.configPath, rpc.descriptor, rpc.serviceName, ctx.log);
  if (typeof config === 'string') return config;
  if (config.user !== undefined) {
    const clash = forceUserClash(config);
    if (clash) return `service ${rpc.descriptor}: Cannot set explicit username if ${clash}=true`;
    return { cmd, user: config.user, config };
  }
  return { cmd, user, config };
}

/** A started service: local streams to connect to the data vchan. */
export interface StartedService {
  readonly sink: Writable | null;
  readonly source: Readable | null;
  readonly errSource: Readable | null;
  readonly single: boolean;
  readonly sinkPrefix?: Buffer;
  readonly localExit?: Promise<number>;
  readonly exitOnClientEof: boolean;
  readonly exitOnServiceEof: boolean;
  /** For the log: what runs. */
  readonly what: string;
  /** The child, when there is one. */
  readonly child?: SpawnedService;
  /**
   * With the native addon: a second descriptor (close-on-exec) of our end of
   * the child's stdin socketpair, for reading. A service may ask, with
   * SIGUSR1 to QREXEC_AGENT_PID, that its output be read from its stdin
   * socket; this descriptor keeps that socket open (`sink` only shuts it down
   * at the caller's EOF, as the reference's close_stdio, and a failed write
   * closes only `sink`). The caller owns it: it wraps it in a stream at a
   * switch, or closes it when the call is over.
   */
  readonly stdinReadFd?: number;
  /**
   * Without the addon: closes our end of the child's stdin socket, which the
   * caller does once the call is over. Until then the service may write to
   * its stdin (nobody reads it) without dying of SIGPIPE, as in the
   * reference, whose descriptor stays open for the whole call.
   */
  readonly release?: () => void;
}

/** A service that could not be started: the exit code to report (125 or 127). */
export interface FailedService {
  readonly code: number;
  readonly reason: string;
}

type Target =
  | { kind: 'exec'; program: string | null }
  | { kind: 'vmexec'; argv: string[] | FailedService }
  | Exclude<ServiceTarget, { kind: 'exec' }>;

/** Finds what a call runs; a FailedService when it is missing (127) or unusable (125). */
function resolveTarget(call: PreparedCall, ctx: ExecContext): Target | FailedService {
  const rpc = call.cmd.rpc;
  if (!rpc) return { kind: 'exec', program: null };
  const r = findQrexecService(ctx.servicePath, rpc, true);
  if ('code' in r) {
    if (r.code === ExitCode.NOT_FOUND && VMEXEC_SERVICES.includes(rpc.serviceName)) return { kind: 'vmexec', argv: vmexecArgv(rpc.arg, ctx) };
    return r;
  }
  if (r.kind !== 'exec') return r;
  warnIgnoredOptions(call.config, r.path, ctx.log);
  return { kind: 'exec', program: r.path };
}

/**
 * Built-in qubes.VMExec(GUI) (used when no such file is in the service path):
 * decodes the argument strictly and logs the full command. Failures exit 1
 * with the reason on stderr, as qubes-core-agent-linux's script does.
 */
function vmexecArgv(arg: string | undefined, ctx: ExecContext): string[] | FailedService {
  if (arg === undefined || arg === '') return { code: 1, reason: 'This service requires exactly one argument' };
  try {
    const argv = decodeVmExecArg(arg);
    ctx.log(`qubes.VMExec: executing ${JSON.stringify(argv)}`);
    return argv;
  } catch (e) {
    if (!(e instanceof VmExecDecodeError)) throw e;
    ctx.log(`qubes.VMExec: rejected argument ${JSON.stringify(arg)}: ${e.message}`);
    return { code: 1, reason: `Decode error: ${e.message}` };
  }
}

/** Looks a user up in /etc/passwd (name → uid, gid, home, shell). */
export function getpwnam(name: string): { uid: number; gid: number; home: string; shell: string } | undefined {
  let text: string;
  try {
    text = fs.readFileSync('/etc/passwd', 'utf8');
  } catch {
    return undefined;
  }
  for (const line of text.split('\n')) {
    const f = line.split(':');
    if (f.length >= 7 && f[0] === name) {
      const uid = Number(f[2]);
      const gid = Number(f[3]);
      if (!Number.isInteger(uid) || !Number.isInteger(gid) || !f[5]) return undefined;
      return { uid, gid, home: f[5], shell: f[6] || '/bin/sh' };
    }
  }
  return undefined;
}

interface SpawnPlan {
  file: string;
  args: string[];
  argv0: string;
  env: NodeJS.ProcessEnv;
  uid?: number;
  gid?: number;
  cwd?: string;
}

/** Environment of a service: QREXEC* stripped (but QREXEC_SERVICE_PATH, QREXEC_AGENT_PID), then the call's variables. */
function serviceEnv(base: NodeJS.ProcessEnv, words: string[]): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {};
  for (const [k, v] of Object.entries(base)) {
    if (k.startsWith('QREXEC') && k !== 'QREXEC_SERVICE_PATH' && k !== 'QREXEC_AGENT_PID') continue;
    env[k] = v;
  }
  const [full, remote, ttype, target] = words as [string, string, string?, string?];
  if (words.length === 4 && ttype !== undefined && target !== undefined) {
    env['QREXEC_REQUESTED_TARGET_TYPE'] = ttype;
    if (ttype === 'name') env['QREXEC_REQUESTED_TARGET'] = target;
    else if (ttype === 'keyword') env['QREXEC_REQUESTED_TARGET_KEYWORD'] = target;
  } else {
    env['QREXEC_REQUESTED_TARGET_TYPE'] = '';
  }
  env['QREXEC_SERVICE_FULL_NAME'] = full;
  env['QREXEC_REMOTE_DOMAIN'] = remote;
  const plus = full.indexOf('+');
  if (plus >= 0) env['QREXEC_SERVICE_ARGUMENT'] = full.slice(plus + 1);
  return env;
}

/**
 * How to run a call: a FailedService-like string when the child would fail
 * before exec (the reference's forked child logs the reason to its stderr and
 * exits 125).
 */
function planSpawn(call: PreparedCall, program: string | null, ctx: ExecContext, execArgv?: string[]): SpawnPlan | string {
  const baseEnv: NodeJS.ProcessEnv = { ...ctx.env, QREXEC_AGENT_PID: String(ctx.agentPid) };
  let uid: number | undefined;
  let gid: number | undefined;
  let cwd: string | undefined;
  let loginEnv: NodeJS.ProcessEnv | undefined;
  let shell = '/bin/sh';
  if (ctx.uid !== 0) {
    if (call.user !== ctx.userName) {
      return `requested user ${call.user}, but qrexec-agent is running as user ${ctx.userName}`;
    }
  } else if (call.user !== ctx.userName) {
    const pw = getpwnam(call.user);
    if (!pw) return `user ${call.user} does not exist`;
    uid = pw.uid;
    gid = pw.gid;
    shell = pw.shell;
    if (fs.existsSync(pw.home)) cwd = pw.home;
    else ctx.log(`chdir(${pw.home}): No such file or directory`);
    loginEnv = {
      PATH: ctx.env['PATH'] ?? '/usr/local/bin:/usr/bin:/bin',
      QREXEC_AGENT_PID: String(ctx.agentPid),
      HOME: pw.home,
      SHELL: pw.shell,
      USER: call.user,
      LOGNAME: call.user,
      // the vchan transport's settings (where a Xen qube's vchan library asks
      // the hypervisor): the agent library in a service needs them for its calls
      ...Object.fromEntries(Object.entries(ctx.env).filter(([k]) => k === 'VCHAN_SOCKET_DIR' || k === 'VCHAN_DOMAIN')),
    };
  }
  const who = { ...(uid !== undefined ? { uid } : {}), ...(gid !== undefined ? { gid } : {}), ...(cwd ? { cwd } : {}) };
  if (program !== null) {
    const words = call.cmd.command.split(' ').filter((w) => w.length > 0);
    if (words.length !== 2 && words.length !== 4) return `invalid number of arguments: ${words.length + 1}`;
    const env = serviceEnv(loginEnv ?? baseEnv, words);
    if (execArgv) {
      const [file, ...args] = execArgv as [string, ...string[]];
      return { file, args, argv0: file, env, ...who };
    }
    const full = words[0] as string;
    const plus = full.indexOf('+');
    const arg = plus >= 0 ? full.slice(plus + 1) : '';
    return { file: program, args: arg !== '' ? [arg] : [], argv0: program, env, ...who };
  }
  if (loginEnv) {
    return { file: shell, args: ['-c', call.cmd.command], argv0: `-${path.basename(shell)}`, env: loginEnv, ...who };
  }
  return { file: '/bin/sh', args: ['-c', call.cmd.command], argv0: 'sh', env: baseEnv, ...who };
}

/**
 * libuv falls back to /bin/sh when execve() fails with ENOEXEC (glibc execvp
 * semantics); the reference uses execve() and fails with 125. Accept what the
 * kernel runs directly: ELF binaries and `#!` scripts.
 */
function execFormatOk(file: string): boolean {
  let fd: number;
  try {
    fd = fs.openSync(file, 'r');
  } catch {
    return true; // execute-only file: let execve decide
  }
  try {
    const b = Buffer.alloc(4);
    const n = fs.readSync(fd, b, 0, 4, 0);
    return (n >= 2 && b[0] === 0x23 && b[1] === 0x21) || (n === 4 && b.readUInt32BE(0) === 0x7f454c46);
  } finally {
    fs.closeSync(fd);
  }
}

/** A stand-in for a child that fails before exec: prints `reason` on stderr and exits with `code`. */
function failedChild(reason: string, code: number, what: string): StartedService {
  const out = new PassThrough();
  out.end();
  const err = new PassThrough();
  err.end(`qrexec-agent: ${reason}\n`);
  const sink = new PassThrough();
  sink.resume();
  return {
    sink,
    source: out,
    errSource: err,
    single: false,
    localExit: Promise.resolve(code),
    exitOnClientEof: false,
    exitOnServiceEof: false,
    what,
  };
}

function exitStatusOf(child: SpawnedService, onSpawnError: (e: NodeJS.ErrnoException) => void): Promise<number> {
  return new Promise((resolve) => {
    child.once('error', (e: NodeJS.ErrnoException) => {
      if (child.pid === undefined) {
        onSpawnError(e);
        resolve(e.code === 'ENOENT' ? ExitCode.NOT_FOUND : ExitCode.PROBLEM);
      }
    });
    child.once('exit', (code, signal) => {
      if (signal) resolve(128 + (os.constants.signals[signal] ?? 0));
      else resolve(code ?? 255);
    });
  });
}

/**
 * Spawns `plan` through `spawner` with `stdin` and two pipes of ours as its
 * stdio (`stdin` is closed here). A failed spawn looks like Node's: a child
 * without a pid that emits 'error'. Undefined when no pipes could be made
 * (the caller then spawns itself).
 */
async function spawnRemote(spawner: ServiceSpawner, plan: SpawnPlan, stdin: number): Promise<{ child: SpawnedService; stdout: Readable; stderr: Readable } | undefined> {
  const out = nativePipe();
  const err = out ? nativePipe() : undefined;
  if (!out || !err) {
    if (out) for (const fd of out) fs.closeSync(fd);
    return undefined;
  }
  let child: SpawnedService;
  try {
    child = await spawner.spawn({
      file: plan.file,
      args: plan.args,
      argv0: plan.argv0,
      env: plan.env,
      ...(plan.uid !== undefined ? { uid: plan.uid } : {}),
      ...(plan.gid !== undefined ? { gid: plan.gid } : {}),
      ...(plan.cwd !== undefined ? { cwd: plan.cwd } : {}),
      stdio: [stdin, out[1], err[1]],
    });
  } catch (e) {
    const failed = new EventEmitter();
    const error = Object.assign(new Error(`spawn ${plan.file} ${(e as NodeJS.ErrnoException).code ?? 'EIO'}`), { code: (e as NodeJS.ErrnoException).code });
    process.nextTick(() => failed.emit('error', error));
    child = failed as SpawnedService;
  } finally {
    // the child has its copies (or never will): its exit is then our EOF
    for (const fd of [stdin, out[1], err[1]]) fs.closeSync(fd);
  }
  return { child, stdout: pipeReader(out[0]), stderr: pipeReader(err[0]) };
}

/**
 * Starts an MSG_EXEC_CMDLINE call. Resolves with the local streams, or with a
 * FailedService when the call fails before anything runs (the caller then
 * sends stdout/stderr EOF and the code).
 *
 * `dataReady` resolves true once the data vchan is connected (false if it
 * failed): nothing is spawned before that, as in the reference; a socket
 * service is connected meanwhile (its descriptor is sent once the data vchan
 * is up), which takes that connection off a call's critical path.
 */
export async function startService(call: PreparedCall, ctx: ExecContext, dataReady: Promise<boolean> = Promise.resolve(true)): Promise<StartedService | FailedService> {
  const target = resolveTarget(call, ctx);
  if ('code' in target) return target;
  if (target.kind !== 'socket' && target.kind !== 'tcp' && !(await dataReady)) {
    return { code: ExitCode.PROBLEM, reason: 'data vchan connection failed' };
  }
  const desc = call.cmd.rpc ? Buffer.from(`${call.cmd.command}\0`) : undefined;
  if (target.kind === 'socket' || target.kind === 'tcp') {
    let sock: net.Socket;
    try {
      sock = await connectService(target);
    } catch (e) {
      return { code: ExitCode.PROBLEM, reason: (e as Error).message };
    }
    return {
      sink: sock,
      source: sock,
      errSource: null,
      single: true,
      ...(call.config.sendServiceDescriptor && desc ? { sinkPrefix: desc } : {}),
      exitOnClientEof: call.config.exitOnClientEof,
      exitOnServiceEof: call.config.exitOnServiceEof,
      what: target.kind === 'socket' ? `socket ${target.path}` : `tcp ${target.host}:${target.port}`,
    };
  }
  if (ctx.agentPidFor) {
    const own = await ctx.agentPidFor();
    if (own !== undefined) ctx = { ...ctx, agentPid: own };
  }
  let plan: SpawnPlan | string;
  let what: string;
  if (target.kind === 'vmexec') {
    if ('code' in target.argv) return failedChild(target.argv.reason, target.argv.code, call.cmd.command);
    what = `${call.cmd.command}: ${JSON.stringify(target.argv)}`;
    plan = planSpawn(call, '', ctx, target.argv);
    if (typeof plan === 'string') return failedChild(plan, ExitCode.PROBLEM, what);
  } else {
    what = target.program ? `${target.program} ${call.cmd.command}` : call.cmd.command;
    plan = planSpawn(call, target.program, ctx);
    if (typeof plan === 'string') return failedChild(plan, ExitCode.PROBLEM, what);
    if (target.program && !execFormatOk(target.program)) return failedChild('execve: Exec format error', ExitCode.PROBLEM, what);
  }
  // stdin: a socketpair as the reference's do_fork_exec. Node's 'pipe' is one
  // too, but its stream for our end cannot be read (ours can, after a
  // SIGUSR1), and it closes once ended: a service writing to its stdin after
  // the caller's EOF would die of SIGPIPE. Without the addon, a pair made
  // through a listener (connectedPair), kept open until the call is over.
  // stdout/stderr: pipes that are ours, not Node's (spawnHeld): the service may
  // write and exit before the data vchan's handshake is done, and Node would
  // discard output nobody reads yet.
  const inPair = nativeSocketpair();
  let jsPair: [net.Socket, net.Socket] | undefined;
  if (!inPair) {
    try {
      jsPair = await connectedPair();
    } catch (e) {
      return failedChild(`socketpair: ${(e as Error).message}`, ExitCode.PROBLEM, what);
    }
  }
  let spawnError = '';
  let held: { child: SpawnedService; stdout: Readable | null; stderr: Readable | null };
  const remote = inPair && ctx.spawner?.canSpawn ? await spawnRemote(ctx.spawner, plan, inPair[1]) : undefined;
  if (remote) {
    held = remote;
  } else try {
    held = spawnHeld(plan.file, plan.args, {
      argv0: plan.argv0,
      env: plan.env,
      stdio: [inPair ? inPair[1] : (jsPair as [net.Socket, net.Socket])[1], 'pipe', 'pipe'],
      ...(plan.uid !== undefined ? { uid: plan.uid } : {}),
      ...(plan.gid !== undefined ? { gid: plan.gid } : {}),
      ...(plan.cwd !== undefined ? { cwd: plan.cwd } : {}),
    });
  } finally {
    // the child has its copy (or never will)
    jsPair?.[1].destroy();
  }
  const { child, stdout, stderr } = held;
  let stdinSink: net.Socket | undefined;
  let stdinReadFd: number | undefined;
  if (inPair) {
    if (!remote) fs.closeSync(inPair[1]);
    try {
      stdinReadFd = loadNative()?.dup(inPair[0]);
    } catch {
      stdinReadFd = undefined; // no switch for this call
    }
    // nothing is read until a switch (then through stdinReadFd)
    stdinSink = new net.Socket({ fd: inPair[0], readable: false, writable: true });
  } else {
    stdinSink = (jsPair as [net.Socket, net.Socket])[0];
  }
  const localExit = exitStatusOf(child, (e) => {
    spawnError = `execve: ${e.message}`;
    ctx.log(`${spawnError}: ${what}`);
  });
  void spawnError;
  return {
    sink: stdinSink,
    source: stdout,
    errSource: stderr,
    single: false,
    localExit,
    exitOnClientEof: false,
    exitOnServiceEof: false,
    what: child.pid !== undefined ? `${what} (pid ${child.pid})` : what,
    child,
    ...(stdinReadFd !== undefined ? { stdinReadFd } : {}),
    ...(jsPair ? { release: () => jsPair?.[0].destroy() } : {}),
  };
}

/**
 * Runs an MSG_JUST_EXEC call: start and forget, stdio on /dev/null. Resolves
 * with the exit code to report (0 once started; 125/127 when it could not be).
 */
export async function justExec(call: PreparedCall, ctx: ExecContext): Promise<number> {
  const target = resolveTarget(call, ctx);
  if ('code' in target) {
    ctx.log(target.reason);
    return target.code;
  }
  if (target.kind === 'socket' || target.kind === 'tcp') {
    try {
      const sock = await connectService(target);
      sock.on('error', () => undefined);
      const desc = call.config.sendServiceDescriptor ? Buffer.from(`${call.cmd.command}\0`) : Buffer.alloc(0);
      await new Promise<void>((resolve, reject) => sock.end(desc, () => resolve()).once('error', reject));
      sock.destroySoon();
      return 0;
    } catch (e) {
      ctx.log(`socket service: ${(e as Error).message}`);
      return ExitCode.PROBLEM;
    }
  }
  if (target.kind === 'vmexec' && 'code' in target.argv) {
    ctx.log(target.argv.reason);
    return 0;
  }
  const plan =
    target.kind === 'vmexec' ? planSpawn(call, '', ctx, target.argv as string[]) : planSpawn(call, target.program, ctx);
  const what = target.kind === 'vmexec' ? call.cmd.command : target.program ? `${target.program} ${call.cmd.command}` : call.cmd.command;
  if (typeof plan === 'string') {
    ctx.log(plan);
    return 0; // the reference's child fails after the exit code was sent
  }
  if (target.kind === 'exec' && target.program && !execFormatOk(target.program)) {
    ctx.log(`execve: Exec format error: ${target.program}`);
    return 0;
  }
  const child = spawn(plan.file, plan.args, {
    argv0: plan.argv0,
    env: plan.env,
    stdio: ['ignore', 'ignore', call.cmd.rpc ? 'inherit' : 'ignore'],
    ...(plan.uid !== undefined ? { uid: plan.uid } : {}),
    ...(plan.gid !== undefined ? { gid: plan.gid } : {}),
    ...(plan.cwd !== undefined ? { cwd: plan.cwd } : {}),
  });
  child.on('error', (e) => ctx.log(`execve: ${e.message}: ${what}`));
  child.unref();
  ctx.log(`executed (nowait): ${what}${child.pid !== undefined ? ` (pid ${child.pid})` : ''}`);
  return 0;
}

/**
 * Starts qubes.WaitForSession for `source` with `user` on its stdin, as
 * exec_wait_for_session does. Resolves when it exits (at once when missing).
 */
export function waitForSession(source: string, user: string, ctx: ExecContext): Promise<void> {
  const found = findFile(ctx.servicePath, 'qubes.WaitForSession', false);
  if (found.kind !== 'found') {
    ctx.log('Service not found: qubes.WaitForSession');
    return Promise.resolve();
  }
  return new Promise((resolve) => {
    const child = spawn(found.path, [], {
      argv0: 'qubes.WaitForSession',
      env: { ...ctx.env, QREXEC_AGENT_PID: String(ctx.agentPid), QREXEC_REMOTE_DOMAIN: source },
      stdio: ['pipe', 'inherit', 'inherit'],
    });
    child.on('error', (e) => {
      ctx.log(`qubes.WaitForSession: ${e.message}`);
      resolve();
    });
    child.on('exit', () => resolve());
    child.stdin?.on('error', () => undefined);
    child.stdin?.end(`${user}\n`);
  });
}
