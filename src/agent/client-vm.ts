/**
 * qrexec-client-vm in Node.js. The installed command is the native launcher
 * (native/qrexec-client-vm.c), which hands calls to a qrexec-ts agent; it
 * runs this implementation only when the agent is the reference one (then it
 * passes the accepted connection as `--x-resume=FD:DOMAIN:PORT`). It can also
 * be run directly: `node dist/src/cli/qrexec-client-vm.js`.
 */
import { drainSignalRecords, watchSignalSender } from '../native/addon.js';
import { spawnHeld } from '../native/spawn-held.js';
import { connectedPair } from '../vchan/socket-pair.js';
import * as net from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';
import { isatty } from 'node:tty';
import type { Readable, Writable } from 'node:stream';
import { ExitCode } from '../protocol/index.js';
import { DataLimitError, connectStream, dataLimitsFromEnv, vchanEnvFrom, type DataLimits, type Pump } from '../vchan/index.js';
import { DEFAULT_AGENT_SOCKET } from './agent.js';
import { encodeClientRequest, requestCall, serveCall } from './client.js';
import { flushed, openLocal } from '../native/local-stream.js';

function usage(argv0: string): string {
  return (
    `usage: ${argv0} [options] target_vmname program_ident [local_program [local program arguments]]\n` +
    'Options:\n' +
    '  -h, --help - print this message\n' +
    '  --buffer-size=BUFFER_SIZE - minimum vchan buffer size (default: 64k)\n' +
    '  -t, --filter-escape-chars-stdout - filter non-ASCII and control characters on stdout (default if stdout is a terminal)\n' +
    '  -T, --filter-escape-chars-stderr - filter non-ASCII and control characters on stderr (default if stderr is a terminal)\n' +
    '  --no-filter-escape-chars-stdout - opposite to --filter-escape-chars-stdout\n' +
    '  --no-filter-escape-chars-stderr - opposite to --filter-escape-chars-stderr\n' +
    `  --agent-socket=PATH - path to connect to, default: ${DEFAULT_AGENT_SOCKET}\n` +
    '  -p PREFIX-DATA, --prefix-data=PREFIX-DATA - send the given data before the provided stdin (can only be used once)\n' +
    '  --use-stdin-socket - use fd 0 (which must be socket) for both stdin and stdout\n' +
    '  -s SOURCE-QUBE, --source-qube=SOURCE-QUBE - Specify the source qube. This option provides extra information for relayed connection that may be used during policy evaluation.\n'
  );
}

/** Parsed command line (getopt_long "+tTa:p:s:h" semantics). */
export interface ClientVmArgs {
  agentSocket: string;
  prefix: string | undefined;
  source: string | undefined;
  replaceOut: number;
  replaceErr: number;
  stdinSocket: boolean;
  resume: { fd: number; domain: number; port: number } | undefined;
  rest: string[];
}

/** Parses the options; returns an exit status with a message when they are wrong. */
export function parseClientVmArgs(args: string[]): ClientVmArgs | { status: number; out: string; err: string } {
  const argv0 = 'qrexec-client-vm';
  const a: ClientVmArgs = {
    agentSocket: DEFAULT_AGENT_SOCKET,
    prefix: undefined,
    source: undefined,
    replaceOut: -1,
    replaceErr: -1,
    stdinSocket: false,
    resume: undefined,
    rest: [],
  };
  const bad = (msg: string, status = 2): { status: number; out: string; err: string } => ({ status, out: '', err: msg + usage(argv0) });
  const longs: Record<string, boolean> = {
    'buffer-size': true, 'filter-escape-chars-stdout': false, 'filter-escape-chars-stderr': false,
    'no-filter-escape-chars-stdout': false, 'no-filter-escape-chars-stderr': false, 'agent-socket': true,
    'prefix-data': true, 'use-stdin-socket': false, 'source-qube': true, help: false, 'x-resume': true,
  };
  let i = 0;
  const apply = (name: string, val: string | undefined): { status: number; out: string; err: string } | undefined => {
    switch (name) {
      case 'buffer-size': {
        const v = val as string;
        if (!/^[0-9]/.test(v)) return { status: 1, out: '', err: 'Bad buffer size: does not begin with a number\n' };
        const n = /^0x[0-9a-f]+$/i.test(v) ? parseInt(v, 16) : /^0[0-7]*$/.test(v) ? parseInt(v, 8) : /^[0-9]+$/.test(v) ? Number(v) : NaN;
        if (Number.isNaN(n)) return { status: 1, out: '', err: 'Bad buffer size: trailing junk\n' };
        if (n > 0x7fffffff) return { status: 1, out: '', err: 'strtoul: Numerical result out of range\n' };
        return undefined;
      }
      case 't': case 'filter-escape-chars-stdout': a.replaceOut = 1; return undefined;
      case 'T': case 'filter-escape-chars-stderr': a.replaceErr = 1; return undefined;
      case 'no-filter-escape-chars-stdout': a.replaceOut = 0; return undefined;
      case 'no-filter-escape-chars-stderr': a.replaceErr = 0; return undefined;
      case 'a': case 'agent-socket': a.agentSocket = val as string; return undefined;
      case 'p': case 'prefix-data':
        if (a.prefix !== undefined) return bad('');
        a.prefix = val as string;
        return undefined;
      case 's': case 'source-qube':
        if (a.source !== undefined) return bad('');
        a.source = val as string;
        return undefined;
      case 'use-stdin-socket':
        if (a.stdinSocket) return { status: 2, out: '', err: `${argv0}: --use-stdin-socket passed twice\n` };
        a.stdinSocket = true;
        return undefined;
      case 'h': case 'help': return { status: 0, out: usage(argv0), err: '' };
      case 'x-resume': {
        const m = /^([0-9]+):([0-9]+):([0-9]+)$/.exec(val as string);
        if (!m) return bad(`${argv0}: bad --x-resume\n`);
        a.resume = { fd: Number(m[1]), domain: Number(m[2]), port: Number(m[3]) };
        return undefined;
      }
      default: return bad(`${argv0}: invalid option -- '${name}'\n`);
    }
  };
  for (; i < args.length; i++) {
    const arg = args[i] as string;
    if (arg === '--') { i++; break; }
    if (arg.startsWith('--')) {
      const eq = arg.indexOf('=');
      const name = arg.slice(2, eq < 0 ? undefined : eq);
      const matches = Object.keys(longs).filter((k) => k === name || k.startsWith(name));
      const exact = matches.includes(name) ? name : matches.length === 1 ? matches[0] : undefined;
      if (exact === undefined) return bad(`${argv0}: unrecognized option '${arg}'\n`);
      let val: string | undefined;
      if (longs[exact]) {
        val = eq >= 0 ? arg.slice(eq + 1) : args[++i];
        if (val === undefined) return bad(`${argv0}: option '--${exact}' requires an argument\n`);
      } else if (eq >= 0) return bad(`${argv0}: option '--${exact}' doesn't allow an argument\n`);
      const r = apply(exact, val);
      if (r) return r;
      continue;
    }
    if (arg.startsWith('-') && arg.length > 1) {
      for (let j = 1; j < arg.length; j++) {
        const c = arg[j] as string;
        if ('aps'.includes(c)) {
          const val = j + 1 < arg.length ? arg.slice(j + 1) : args[++i];
          if (val === undefined) return bad(`${argv0}: option requires an argument -- '${c}'\n`);
          const r = apply(c, val);
          if (r) return r;
          break;
        }
        const r = apply(c, undefined);
        if (r) return r;
      }
      continue;
    }
    break;
  }
  a.rest = args.slice(i);
  if (a.rest.length < 2) return bad('');
  if (a.rest.length > 2 && a.stdinSocket) return bad('cannot spawn a local process with --use-stdin-socket\n');
  return a;
}

/** Runs qrexec-client-vm; resolves with the exit status. */
export async function runClientVmCli(args: string[]): Promise<number> {
  const parsed = parseClientVmArgs(args);
  if ('status' in parsed) {
    process.stdout.write(parsed.out);
    process.stderr.write(parsed.err);
    return parsed.status;
  }
  const [target, service, ...program] = parsed.rest as [string, string, ...string[]];
  let limits: DataLimits;
  try {
    limits = dataLimitsFromEnv(process.env);
  } catch (e) {
    if (!(e instanceof DataLimitError)) throw e;
    process.stderr.write(`qrexec-client-vm: ${e.message}\n`);
    return 2;
  }
  const local = program.length > 0;
  if (!local && parsed.replaceOut === -1 && isatty(1)) parsed.replaceOut = 1;
  if (parsed.replaceErr === -1 && isatty(2)) parsed.replaceErr = 1;

  let sock: net.Socket;
  let params: { domain: number; port: number } | undefined;
  if (parsed.resume) {
    sock = new net.Socket({ fd: parsed.resume.fd, readable: true, writable: true });
    params = { domain: parsed.resume.domain, port: parsed.resume.port };
  } else {
    try {
      sock = await connectStream({ path: parsed.agentSocket, allowHalfOpen: true });
    } catch (e) {
      process.stderr.write(`connect: ${(e as Error).message}\n`);
      return 1;
    }
    params = await requestCall(sock, encodeClientRequest(target, service, parsed.source ?? '')).catch(() => undefined);
  }
  sock.on('error', () => undefined);
  if (!params) {
    process.stderr.write('Request refused\n');
    return ExitCode.REFUSED;
  }
  let sink: Writable;
  let source: Readable;
  let localExit: Promise<number> | undefined;
  const release: (() => void)[] = [];
  // the local program's stdin, which it may ask (SIGUSR1) to use for its output too
  let stdinSock: net.Socket | undefined;
  let switchAsked = false;
  let pump: Pump | undefined;
  // the local program's output ended: a switch it asked for first happens first
  let beforeOutputEof: (() => Promise<void> | void) | undefined;
  if (local) {
    const [file, ...rest] = program as [string, ...string[]];
    const extra: number[] = [0, 1];
    if (process.env['PASS_LOCAL_STDERR']) extra.push(2);
    const env: NodeJS.ProcessEnv = { ...process.env, QREXEC_AGENT_PID: String(process.pid) };
    extra.forEach((fd, k) => (env[`SAVED_FD_${fd}`] = String(3 + k)));
    // As the reference: the program's stdin is a socket we can also read from,
    // and SIGUSR1 to QREXEC_AGENT_PID (us) switches our reading to it. The
    // first signal counts; later ones are ignored (never Node's default, the inspector).
    let theirs: net.Socket;
    try {
      [stdinSock, theirs] = await connectedPair();
    } catch (e) {
      process.stderr.write(`qrexec-client-vm: socketpair: ${(e as Error).message}\n`);
      return 1;
    }
    const onSignal = (): void => {
      if (switchAsked) return;
      switchAsked = true;
      if (pump && stdinSock) pump.useStdinSocket(stdinSock);
    };
    // With the addon the signal's record can be handed on at once when the
    // program's output ends (drainSignalRecords); Node's own signal event
    // comes in the same turn of the event loop as that EOF, at the latest.
    if (watchSignalSender(os.constants.signals.SIGUSR1, onSignal)) {
      beforeOutputEof = drainSignalRecords;
    } else {
      process.on('SIGUSR1', onSignal);
      beforeOutputEof = () => new Promise<void>((resolve) => setImmediate(resolve));
    }
    // its stdout is held until the data vchan's handshake is done (spawnHeld)
    const { child, stdout: childOut } = spawnHeld(file, rest, { argv0: path.basename(file), env, stdio: [theirs, 'pipe', 'inherit', ...extra] });
    theirs.destroy();
    localExit = new Promise((resolve) => {
      child.once('error', (e) => {
        process.stderr.write(`execv: ${e.message}\n`);
        resolve(255);
      });
      child.once('exit', (code, sig) => resolve(sig ? 128 : (code ?? 255)));
    });
    sink = stdinSock;
    source = childOut as Readable;
    const ours = stdinSock;
    ours.on('error', () => undefined);
    release.push(() => ours.destroy());
  } else {
    const out = openLocal(parsed.stdinSocket ? 0 : 1, parsed.stdinSocket ? 'duplex' : 'write', { inherited: !parsed.stdinSocket });
    const inp = parsed.stdinSocket ? out : openLocal(0, 'read');
    sink = out.stream as Writable;
    source = inp.stream as Readable;
    release.push(() => out.release(), () => inp.release());
  }
  const status = await serveCall(vchanEnvFrom(process.env), params, {
    sink,
    source,
    errSink: process.stderr,
    single: parsed.stdinSocket,
    ...(parsed.prefix !== undefined ? { prefix: Buffer.from(parsed.prefix) } : {}),
    ...(localExit ? { localExit } : {}),
    ...(beforeOutputEof ? { beforeOutputEof } : {}),
    replaceStdout: parsed.replaceOut > 0,
    replaceStderr: parsed.replaceErr > 0,
    log: (m) => process.stderr.write(`qrexec-client-vm: ${m}\n`),
    limits,
    onPump: (p) => {
      pump = p;
      if (switchAsked && stdinSock) p.useStdinSocket(stdinSock);
    },
  }).catch((e: Error) => {
    process.stderr.write(`qrexec-client-vm: ${e.message}\n`);
    return 1;
  });
  for (const r of release) r();
  // the pump ended our output: exiting before it (and the remote's stderr) is
  // flushed would drop what a slow reader has not taken yet
  await Promise.all([flushed(sink), flushed(process.stderr)]);
  sock.destroy();
  return status & 0xff;
}
