import { spawn } from 'node:child_process';
import { spawnHeld } from '../native/spawn-held.js';
import type { Readable, Writable } from 'node:stream';
import * as net from 'node:net';
import { fstatSync, type Stats } from 'node:fs';
import { findQrexecService } from '../services/lookup.js';
import { flushed, openLocal } from '../native/local-stream.js';
import { parseCommand, targetRefersToDom0, ExitCode, MsgType } from '../protocol/index.js';
import { startPump, vchanConnect, vchanEnvFrom, vchanListen, type VchanEnv } from '../vchan/index.js';
import { DaemonClient, DEFAULT_SOCKET_DIR } from './client.js';
import { DEFAULT_SERVICE_PATH, runDom0Service } from './dom0.js';
import { DEFAULT_QUBESD_SOCKET, qubesdCall } from '../qubesd-client/call.js';
import { localHost } from '../common/local-host.js';
import { errorLine } from '../common/errors.js';

const USAGE = (name: string): string => `usage: ${name} [options] -d domain_name [-l local_prog|-c request_id,src_domain_name,src_domain_id|-e] user:remote_cmdline
Options:
  -h, --help - display usage
  -e - exit after sending cmd
  -E, --no-exit-code - always exit with 0 after command exits
  -t - enables replacing problematic bytes with '_' in command output, -T is the same for stderr
  -W - waits for connection end even in case of VM-VM (-c)
  -c - connect to existing process (response to trigger service call)
  -w timeout - override default connection timeout of 10s (set 0 for no timeout)
  -k - kill the domain right before exiting
  --socket-dir=PATH -  directory for qrexec socket, default: ${DEFAULT_SOCKET_DIR}
  -p PREFIX-DATA, --prefix-data=PREFIX-DATA - send the given data before the provided stdin (can only be used once)
  --use-stdin-socket - use fd 0 (which must be socket) for both stdin and stdout
  --qubesd-socket=PATH - qubesd Admin API socket for -k, default: $QREXEC_QUBESD_SOCKET or ${DEFAULT_QUBESD_SOCKET} ("none": -k does nothing)
`;

function die(code: number, msg: string): never {
  process.stderr.write(`qrexec-client: ${msg}\n`);
  process.exit(code);
}

interface Opts {
  domain?: string;
  local?: string;
  connect?: { ident: string; srcName: string; srcId: number };
  justExec: boolean;
  exitWithCode: boolean;
  t: boolean;
  T: boolean;
  timeout: number;
  waitEnd: boolean;
  kill: boolean;
  socketDir: string;
  qubesdSocket: string;
  /** Given on the command line (else the local host's, if one runs). */
  socketDirSet?: boolean;
  qubesdSet?: boolean;
  prefix?: string;
  stdinSocket: boolean;
  cmd?: string;
}

/** A usage error: the usage, then what was wrong; exit 2. */
function usageError(msg: string): never {
  process.stderr.write(`${USAGE('qrexec-client')}qrexec-client: ${msg}\n`);
  process.exit(2);
}

function parseIntArg(s: string, what: string): number {
  if (!/^[0-9]/.test(s)) usageError(`${what} '${s}' does not start with an ASCII digit`);
  const v = Number(s);
  if (!Number.isInteger(v) || v < 0 || v > 0x7fffffff) usageError(`invalid ${what} '${s}'`);
  return v;
}

/** Our stdout as a stream that closes fd 1 when ended, when it is a pipe or a socket; else process.stdout. */
function callerStdout(): Writable {
  let st: Stats;
  try {
    st = fstatSync(1);
  } catch {
    return process.stdout;
  }
  if (!st.isFIFO() && !st.isSocket()) return process.stdout;
  return openLocal(1, 'write', { inherited: true }).stream as Writable;
}

/** getopt_long-like parsing of the reference's options "hd:l:eEc:p:tTw:Wk". */
function parse(argv: string[]): Opts {
  const o: Opts = { justExec: false, exitWithCode: true, t: false, T: false, timeout: 10, waitEnd: false, kill: false, socketDir: DEFAULT_SOCKET_DIR, qubesdSocket: process.env['QREXEC_QUBESD_SOCKET'] || DEFAULT_QUBESD_SOCKET, stdinSocket: false };
  const withArg = new Set(['d', 'l', 'c', 'p', 'w']);
  const pos: string[] = [];
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i] as string;
    if (a === '--') {
      pos.push(...argv.slice(i + 1));
      break;
    }
    if (a.startsWith('--')) {
      const [k, v] = a.includes('=') ? [a.slice(2, a.indexOf('=')), a.slice(a.indexOf('=') + 1)] : [a.slice(2), undefined];
      const val = (): string => v ?? (argv[++i] as string | undefined) ?? usageError(`option '--${k}' requires an argument`);
      if (k === 'help') {
        process.stdout.write(USAGE('qrexec-client'));
        process.exit(0);
      } else if (k === 'socket-dir') {
        o.socketDir = val();
        o.socketDirSet = true;
      } else if (k === 'qubesd-socket') {
        o.qubesdSocket = val();
        o.qubesdSet = true;
      }
      else if (k === 'no-exit-code') o.exitWithCode = false;
      else if (k === 'prefix-data') {
        if (o.prefix !== undefined) usageError('-p/--prefix-data given twice');
        o.prefix = val();
      } else if (k === 'use-stdin-socket') {
        if (o.stdinSocket) usageError('--use-stdin-socket passed twice');
        o.stdinSocket = true;
      } else {
        usageError(`unrecognized option '${a}'`);
      }
      continue;
    }
    if (a.startsWith('-') && a.length > 1) {
      for (let j = 1; j < a.length; j++) {
        const f = a[j] as string;
        let val: string | undefined;
        if (withArg.has(f)) {
          val = j + 1 < a.length ? a.slice(j + 1) : argv[++i];
          if (val === undefined) usageError(`option requires an argument -- '${f}'`);
          j = a.length;
        }
        switch (f) {
          case 'd': o.domain = val as string; break;
          case 'l': o.local = val as string; break;
          case 'e': o.justExec = true; break;
          case 'E': o.exitWithCode = false; break;
          case 'c': {
            if (o.connect) usageError('ERROR: -c passed more than once');
            const m = /^([^,]*),([^,]*),(.*)$/.exec(val as string);
            if (!m) usageError('Invalid -c parameter (should be: "-c request_id,src_domain_name,src_domain_id")');
            if ((m[1] as string).length >= 32) usageError('Invalid -c parameter (request_id too long, max 31)');
            o.connect = { ident: m[1] as string, srcName: m[2] as string, srcId: parseIntArg(m[3] as string, 'source domain ID') };
            if (targetRefersToDom0(o.connect.srcName) || o.connect.srcId === 0) die(1, 'ERROR: -c cannot be used for requests to dom0');
            break;
          }
          case 'p':
            if (o.prefix !== undefined) usageError('-p/--prefix-data given twice');
            o.prefix = val as string;
            break;
          case 't': o.t = true; break;
          case 'T': o.T = true; break;
          case 'w': o.timeout = parseIntArg(val as string, 'connection timeout'); break;
          case 'W': o.waitEnd = true; break;
          case 'k': o.kill = true; break;
          case 'h':
            process.stdout.write(USAGE('qrexec-client'));
            process.exit(0);
            break;
          default:
            usageError(`invalid option -- '${f}'`);
        }
      }
      continue;
    }
    pos.push(a);
  }
  if (!o.domain) usageError('-d domain_name is required');
  if (pos.length < 1) usageError('the command (user:remote_cmdline) is missing');
  o.cmd = pos[0] as string;
  return o;
}

/** `qrexec-client` main (reference daemon/qrexec-client.c). */
export async function qrexecClientMain(argv: string[]): Promise<number> {
  const o = parse(argv);
  const domain = o.domain as string;
  const cmd = o.cmd as string;
  if (Number(o.justExec) + Number(!!o.connect) + Number(o.local !== undefined) > 1) {
    usageError('ERROR: only one of -e, -l, -c can be specified');
  }
  if (o.local !== undefined && o.stdinSocket) {
    usageError('ERROR: at most one of -l and --use-stdin-socket can be specified');
  }
  const servicePath = (process.env['QREXEC_SERVICE_PATH'] ?? DEFAULT_SERVICE_PATH).split(':').filter((x) => x);
  let venv = vchanEnvFrom();
  // no transport configured: the host `npm start` runs, if it does (src/common/local-host.ts)
  const host = !o.socketDirSet && !process.env['VCHAN_SOCKET_DIR'] ? localHost() : undefined;
  if (host) {
    o.socketDir = host.qrexecSocketDir;
    venv = { dir: host.vchanDir, ownDomain: 0, ...(host.vchanLayout === 'per-domain' ? { layout: 'per-domain' as const } : {}) };
    if (!o.qubesdSet && !process.env['QREXEC_QUBESD_SOCKET']) o.qubesdSocket = host.qubesdSocket;
  }
  const timeoutMs = o.timeout > 0 ? o.timeout * 1000 : undefined;
  let stdin: Readable = process.stdin;
  let stdout: Writable = process.stdout;
  if (o.stdinSocket) {
    const s = new net.Socket({ fd: 0, readable: true, writable: true, allowHalfOpen: true });
    stdin = s;
    stdout = s;
  }

  if (targetRefersToDom0(domain)) {
    if (o.connect) {
      if (o.connect.ident === '') die(1, 'ERROR: request ID cannot be empty');
      process.env['QREXEC_REMOTE_DOMAIN'] = o.connect.srcName;
      const c = await DaemonClient.connect(o.socketDir, String(o.connect.srcId)).catch((e: Error) => die(ExitCode.PROBLEM, e.message));
      const ident = Buffer.alloc(32);
      ident.write(o.connect.ident, 'latin1');
      const ep = await c.negotiate(MsgType.SERVICE_CONNECT, 0, ident);
      const ch = await vchanConnect(venv, ep.domain, ep.port, timeoutMs === undefined ? {} : { timeoutMs }).catch(() => die(ExitCode.PROBLEM, 'qrexec connection timeout'));
      const r = await runDom0Service(ch, cmd, servicePath, (m) => process.stderr.write(`qrexec-client: ${m}\n`));
      c.close();
      // a service that never started reports its status (125/127) even without -e, as the reference
      return o.exitWithCode || !r.started ? r.status : 0;
    }
    if (o.local !== undefined) die(ExitCode.PROBLEM, 'dom0 -> dom0 qrexec calls with LOCAL_COMMAND not yet implemented');
    if (!cmd.startsWith('DEFAULT:')) die(ExitCode.PROBLEM, 'dom0 -> dom0 commands must be prefixed with DEFAULT:');
    let rpc;
    try {
      rpc = parseCommand(cmd.slice('DEFAULT:'.length), false).rpc;
    } catch (e) {
      process.stderr.write(`qrexec-client: ${(e as Error).message}\n`);
      return ExitCode.PROBLEM;
    }
    if (!rpc) {
      process.stderr.write('qrexec-client: For dom0 -> dom0 commands, only proper qrexec calls are allowed\n');
      return ExitCode.PROBLEM;
    }
    // the agent's lookup; sockets and /dev/tcp links are refused here (no data stream to give them)
    const found = findQrexecService(servicePath.join(':'), rpc, false);
    if ('code' in found) {
      process.stderr.write(`qrexec-client: ${found.reason}\n`);
      return found.code;
    }
    if (found.kind !== 'exec') return ExitCode.PROBLEM; // not reached with sockets refused
    const env: NodeJS.ProcessEnv = { ...process.env, QREXEC_SERVICE_FULL_NAME: rpc.descriptor, QREXEC_REMOTE_DOMAIN: rpc.sourceDomain, QREXEC_REQUESTED_TARGET_TYPE: rpc.requestedTarget?.type ?? '' };
    if (rpc.arg !== undefined) env['QREXEC_SERVICE_ARGUMENT'] = rpc.arg;
    if (rpc.requestedTarget?.type === 'name') env['QREXEC_REQUESTED_TARGET'] = rpc.requestedTarget.value;
    if (rpc.requestedTarget?.type === 'keyword') env['QREXEC_REQUESTED_TARGET_KEYWORD'] = rpc.requestedTarget.value;
    const child = spawn(found.path, rpc.arg ? [rpc.arg] : [], { stdio: 'inherit', env });
    return new Promise((r) => {
      child.on('error', () => r(ExitCode.PROBLEM));
      child.on('exit', (code) => r(code ?? ExitCode.PROBLEM));
    });
  }

  if (o.connect) {
    // VM-VM: ask the target daemon to run cmd, then tell the source's daemon where to connect.
    // -k kills the target right before exiting: with -W after the call's end (qrexec-policy-exec's
    // DispVMs); the 4.2 reference ignores -k here.
    try {
      const t = await DaemonClient.connect(o.socketDir, domain);
      const ep = await t.exec(cmd, o.connect.srcId, o.justExec);
      const s = await DaemonClient.connect(o.socketDir, String(o.connect.srcId));
      s.serviceConnect(o.connect.ident, ep.domain, ep.port);
      s.close();
      if (o.waitEnd) await t.waitClosed();
      else t.close();
      return 0;
    } catch (e) {
      process.stderr.write(`qrexec-client: ${(e as Error).message}\n`);
      return 137;
    } finally {
      if (o.kill) await killDomain(o.qubesdSocket, domain);
    }
  }

  try {
    return await runInVm(o, domain, cmd, { stdin, stdout, venv, timeoutMs });
  } finally {
    // as the reference: also when the call could not be made
    if (o.kill) await killDomain(o.qubesdSocket, domain);
  }
}

/** -k: admin.vm.Kill of the target; failures are reported, the exit status stays the call's. */
async function killDomain(qubesdSocket: string, domain: string): Promise<void> {
  if (qubesdSocket === 'none') {
    process.stderr.write(`qrexec-client: -k: not killing ${domain}: no qubesd (--qubesd-socket=none)\n`);
    return;
  }
  try {
    await qubesdCall(qubesdSocket, 'admin.vm.Kill', domain, { keywordDest: true });
  } catch (e) {
    process.stderr.write(`qrexec-client: -k: ${(e as Error).message}\n`);
  }
}

/** A command in a VM whose data vchan we serve (no -c): the call's exit status. */
async function runInVm(
  o: Opts,
  domain: string,
  cmd: string,
  io: { stdin: Readable; stdout: Writable; venv: VchanEnv; timeoutMs: number | undefined },
): Promise<number> {
  const { stdin, stdout, venv, timeoutMs } = io;
  let client: DaemonClient;
  try {
    client = await DaemonClient.connect(o.socketDir, domain);
  } catch (e) {
    process.stderr.write(`qrexec-client: ${(e as Error).message}\n`);
    return ExitCode.PROBLEM;
  }
  let ep;
  try {
    ep = await client.exec(cmd, 0, o.justExec);
  } catch (e) {
    process.stderr.write(`qrexec-client: ${(e as Error).message}\n`);
    return ExitCode.PROBLEM;
  }
  process.env['QREXEC_REMOTE_DOMAIN'] = domain;
  let listener;
  try {
    listener = await vchanListen(venv, ep.domain, ep.port);
  } catch (e) {
    client.close();
    process.stderr.write(`qrexec-client: ${errorLine(e)}\n`);
    return ExitCode.PROBLEM;
  }
  const timer = timeoutMs === undefined ? undefined : setTimeout(() => listener.close(), timeoutMs);
  let ch: net.Socket;
  try {
    ch = await listener.accepted;
  } catch {
    process.stderr.write('qrexec-client: qrexec connection timeout\n');
    return ExitCode.PROBLEM;
  } finally {
    if (timer) clearTimeout(timer);
  }
  let input: Readable = stdin;
  // the remote's stdout EOF closes ours, as the reference does, so that whoever
  // reads our stdout sees EOF before the exit status arrives (process.stdout
  // never closes fd 1 itself)
  let output: Writable = o.stdinSocket || o.local !== undefined ? stdout : callerStdout();
  let localExit: Promise<number> | undefined;
  if (o.local !== undefined) {
    // its stdout is held until the handshake is done (spawnHeld)
    const { child, stdin: childIn, stdout: childOut } = spawnHeld('/bin/bash', ['-c', o.local], { stdio: ['pipe', 'pipe', 'inherit'] });
    input = childOut as Readable;
    output = childIn as Writable;
    output.on('error', () => undefined);
    localExit = new Promise((r) => child.on('exit', (c) => r(c ?? 255)));
  }
  // the remote's status, or the local program's when the remote's is 0 (reference process_io)
  const status = await startPump({
    channel: ch,
    role: 'client',
    sink: output,
    source: input,
    single: o.stdinSocket,
    errSink: process.stderr,
    ...(o.prefix !== undefined ? { prefix: Buffer.from(o.prefix) } : {}),
    ...(localExit ? { localExit } : {}),
    replaceStdout: o.t,
    replaceStderr: o.T,
    log: (m) => process.stderr.write(`qrexec-client: ${m}\n`),
  }).done;
  // the pump ended its output; exiting before that (and the remote's stderr)
  // is flushed would drop the tail
  await Promise.all([flushed(output), flushed(process.stderr)]);
  client.close();
  return o.exitWithCode ? status & 0xff : 0;
}
