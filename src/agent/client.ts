/**
 * Calling a service from a running Node.js program in a qube, the way the
 * reference's qrexec-client-vm does: MSG_TRIGGER_SERVICE4 on the agent
 * socket, exec_params back once dom0 allowed the call, then we serve the data
 * vchan ourselves (vchan server on our domain). No process is started.
 */
import * as net from 'node:net';
import { PassThrough, type Readable, type Writable } from 'node:stream';
import { ExitCode, MsgType, TRIGGER_SERVICE_PARAMS4_SIZE } from '../protocol/index.js';
import { DEFAULT_DATA_LIMITS, connectUnixNow, startPump, vchanEnvFrom, vchanListen, type Pump, type PumpOptions, type VchanEnv } from '../vchan/index.js';
import { DEFAULT_AGENT_SOCKET } from './agent.js';


/** Options of a call. */
export interface CallOptions {
  /** The agent socket (default /var/run/qubes/qrexec-agent). */
  readonly agentSocket?: string;
  /** Requested source qube (relayed calls; informational for the policy). */
  readonly sourceQube?: string;
  /** Our vchan environment (default from VCHAN_SOCKET_DIR / VCHAN_DOMAIN). */
  readonly vchan?: VchanEnv;
  /** Local input (sent as the service's stdin); default: none (EOF at once). */
  readonly stdin?: Readable | Buffer | string;
  /** Where the service's stdout goes; default: collected into the result. */
  readonly stdout?: Writable;
  /** Where the service's stderr goes; default: collected into the result. */
  readonly stderr?: Writable;
  /** Replace unsafe bytes of stdout/stderr (like -t / -T). */
  readonly filterStdout?: boolean;
  readonly filterStderr?: boolean;
  readonly log?: (msg: string) => void;
}

/** The outcome of a call. */
export interface CallResult {
  /** The service's exit status; 126 when refused; 255 when the connection broke. */
  readonly exitCode: number;
  readonly refused: boolean;
  /** Collected output when no `stdout` / `stderr` stream was given. */
  readonly stdout: Buffer;
  readonly stderr: Buffer;
}

/** The reference client's request: header, source[64], target[64] (`$` → `@`), ident "SOCKET", SERVICE+ARG\0. */
export function encodeClientRequest(target: string, service: string, sourceQube = ''): Buffer {
  const svc = Buffer.from(service, 'utf8');
  const b = Buffer.alloc(8 + TRIGGER_SERVICE_PARAMS4_SIZE + svc.length + 1);
  b.writeUInt32LE(MsgType.TRIGGER_SERVICE4, 0);
  b.writeUInt32LE(TRIGGER_SERVICE_PARAMS4_SIZE + svc.length + 1, 4);
  Buffer.from(sourceQube, 'utf8').subarray(0, 63).copy(b, 8);
  Buffer.from(target.replace(/\$/g, '@'), 'utf8').subarray(0, 63).copy(b, 8 + 64);
  b.write('SOCKET', 8 + 128, 'latin1');
  svc.copy(b, 8 + TRIGGER_SERVICE_PARAMS4_SIZE);
  return b;
}

/**
 * Sends the request on a connected agent socket and waits for dom0's answer:
 * exec_params, or undefined when the agent closed the connection (refused).
 */
export function requestCall(sock: net.Socket, request: Buffer): Promise<{ domain: number; port: number } | undefined> {
  return new Promise((resolve, reject) => {
    let got: Buffer = Buffer.alloc(0);
    const onData = (b: Buffer): void => {
      got = Buffer.concat([got, b]);
      if (got.length >= 8) {
        cleanup();
        sock.pause();
        if (got.length > 8) sock.unshift(got.subarray(8));
        resolve({ domain: got.readUInt32LE(0), port: got.readUInt32LE(4) });
      }
    };
    const onEnd = (): void => {
      cleanup();
      resolve(undefined);
    };
    const onError = (e: Error): void => {
      cleanup();
      reject(e);
    };
    const cleanup = (): void => {
      sock.off('data', onData);
      sock.off('end', onEnd);
      sock.off('close', onEnd);
      sock.off('error', onError);
    };
    sock.on('data', onData);
    sock.on('end', onEnd);
    sock.on('close', onEnd);
    sock.on('error', onError);
    sock.write(request);
  });
}

/** The local side of a served call: the pump's options but the channel and role. */
export type ServeCallIo = Omit<PumpOptions, 'channel' | 'role' | 'single'> & {
  /** `sink` and `source` are one socket (--use-stdin-socket); default false. */
  readonly single?: boolean;
  /** Handed the pump as soon as it runs (qrexec-client-vm's SIGUSR1 stdin-socket switch). */
  readonly onPump?: (p: Pump) => void;
};

/**
 * Serves the data vchan of an allowed call as its caller: vchan server at
 * vchan.<own>.<domain>.<port>.sock, handshake, stdin/stdout/stderr, exit code.
 * Resolves with the call's exit status.
 */
export async function serveCall(env: VchanEnv, params: { domain: number; port: number }, io: ServeCallIo): Promise<number> {
  const listener = await vchanListen(env, params.domain, params.port);
  const setupMs = (io.limits ?? DEFAULT_DATA_LIMITS).setupTimeoutMs;
  const timer = setupMs > 0 ? setTimeout(() => listener.close(), setupMs) : undefined;
  let ch: net.Socket;
  try {
    ch = await listener.accepted;
  } finally {
    clearTimeout(timer);
  }
  ch.setNoDelay?.(true);
  const { onPump, single, ...rest } = io;
  const pump = startPump({ channel: ch, role: 'client', single: single ?? false, peer: `domain ${params.domain} port ${params.port}`, ...rest });
  onPump?.(pump);
  return pump.done;
}

/**
 * The agent socket, connected at once when the native helper is there (the
 * request is then written in this turn and usually reaches the agent with
 * its accept), else through Node's connect.
 */
function connectAgent(path: string): net.Socket {
  const now = connectUnixNow(path, true);
  return now instanceof net.Socket ? now : net.connect({ path, allowHalfOpen: true });
}

/**
 * Calls `service` (`SERVICE+ARG`) on `target` through the local agent and
 * resolves when the call is over. Never throws for a refused or failed call;
 * throws only when the agent cannot be reached.
 */
export async function callService(target: string, service: string, opts: CallOptions = {}): Promise<CallResult> {
  // the request is written as soon as the socket connects, in the same turn
  const sock = connectAgent(opts.agentSocket ?? DEFAULT_AGENT_SOCKET);
  try {
    const env = opts.vchan ?? vchanEnvFrom(process.env);
    const params = await requestCall(sock, encodeClientRequest(target, service, opts.sourceQube));
    sock.on('error', () => undefined);
    const empty = Buffer.alloc(0);
    if (!params) return { exitCode: ExitCode.REFUSED, refused: true, stdout: empty, stderr: empty };
    const outChunks: Buffer[] = [];
    const errChunks: Buffer[] = [];
    const collect = (into: Buffer[]): Writable => {
      const p = new PassThrough();
      p.on('data', (d: Buffer) => into.push(d));
      return p;
    };
    let source: Readable | null;
    if (opts.stdin === undefined) {
      const p = new PassThrough();
      p.end();
      source = p;
    } else if (typeof opts.stdin === 'string' || Buffer.isBuffer(opts.stdin)) {
      const p = new PassThrough();
      p.end(opts.stdin);
      source = p;
    } else {
      source = opts.stdin;
    }
    const code = await serveCall(env, params, {
      sink: opts.stdout ?? collect(outChunks),
      source,
      errSink: opts.stderr ?? collect(errChunks),
      replaceStdout: opts.filterStdout ?? false,
      replaceStderr: opts.filterStderr ?? false,
      ...(opts.log ? { log: opts.log } : {}),
    });
    return { exitCode: code & 0xff, refused: false, stdout: Buffer.concat(outChunks), stderr: Buffer.concat(errChunks) };
  } finally {
    sock.destroy();
  }
}
