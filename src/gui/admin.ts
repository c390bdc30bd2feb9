/**
 * The Admin API from inside the GUI domain: every call is a qrexec call
 * through this qube's agent to dom0's `admin.*` services, decided by the
 * policy (which, by default, lets a GUI domain reach only the qubes whose
 * guivm it is). The wire format is qubesd's: a reply `0\0DATA` or
 * `2\0EXCEPTION\0\0MESSAGE\0`; admin.Events sends one
 * `1\0SUBJECT\0EVENT\0(KEY\0VALUE\0)*\0` frame per event.
 */
import { Writable } from 'node:stream';
import { callService, DEFAULT_AGENT_SOCKET } from '../agent/index.js';

/** This qube's agent socket: QUBES_QREXEC_AGENT_SOCKET (the process backend sets it), else the default. */
export const agentSocketFromEnv = (env: NodeJS.ProcessEnv = process.env): string => env['QUBES_QREXEC_AGENT_SOCKET'] || DEFAULT_AGENT_SOCKET;

export class AdminError extends Error {
  override name = 'AdminError';
  constructor(
    /** The qubesd exception class, or `Refused` when the policy denied the call. */
    readonly excType: string,
    message: string,
  ) {
    super(message);
  }
}

/** How the Admin API is reached (a fake in tests). */
export interface AdminTransport {
  /** One call; resolves with the reply's data. @throws AdminError */
  call(method: string, dest: string, arg?: string, payload?: string): Promise<string>;
  /** admin.Events: `onEvent` per frame; resolves when the stream ends (qubesd went away). */
  events(onEvent: (e: AdminEvent) => void): Promise<void>;
  /** Any other qrexec service (the Policy API, audit.Query...): its exit status and output. */
  service(dest: string, serviceAndArg: string, payload?: string | Buffer): Promise<ServiceReply>;
}

export interface ServiceReply {
  /** The service's exit status (126: refused by the policy). */
  readonly code: number;
  readonly refused: boolean;
  readonly stdout: Buffer;
  readonly stderr: string;
}

export interface AdminEvent {
  readonly subject: string;
  readonly event: string;
  readonly kwargs: Readonly<Record<string, string>>;
}

/** Decode a reply. @throws AdminError */
export function parseReply(method: string, raw: Buffer): string {
  if (raw.length >= 2 && raw[0] === 0x30 && raw[1] === 0) return raw.subarray(2).toString('utf8');
  if (raw.length >= 2 && raw[0] === 0x32 && raw[1] === 0) {
    const parts = raw.subarray(2).toString('utf8').split('\0');
    // EXC \0 TRACEBACK(empty) \0 MESSAGE \0
    throw new AdminError(parts[0] || 'QubesException', (parts[2] ?? '').replace(/%%/g, '%') || `${method} failed`);
  }
  throw new AdminError('ProtocolError', `${method}: malformed reply`);
}

/** A push parser of admin.Events frames (STYLE: the decoder is a small state machine). */
export class EventDecoder {
  private pending: Buffer = Buffer.alloc(0);

  /** Feed bytes; returns the frames completed. @throws AdminError on an exception frame or junk */
  push(chunk: Buffer): AdminEvent[] {
    this.pending = this.pending.length === 0 ? chunk : Buffer.concat([this.pending, chunk]);
    const out: AdminEvent[] = [];
    for (;;) {
      const r = this.frame();
      if (r === null) break;
      if (r !== 'skip') out.push(r);
    }
    if (this.pending.length > 1024 * 1024) throw new AdminError('ProtocolError', 'admin.Events: frame too long');
    return out;
  }

  private frame(): AdminEvent | 'skip' | null {
    const b = this.pending;
    if (b.length < 2) return null;
    if (b[0] === 0x32) {
      const end = b.indexOf(0, b.indexOf(0, b.indexOf(0, 2) + 1) + 1);
      if (end < 0) return null;
      parseReply('admin.Events', b.subarray(0, end + 1));
    }
    if (b[0] !== 0x31 || b[1] !== 0) throw new AdminError('ProtocolError', 'admin.Events: malformed frame');
    const fields: string[] = [];
    let pos = 2;
    for (;;) {
      const nul = b.indexOf(0, pos);
      if (nul < 0) return null;
      const f = b.subarray(pos, nul).toString('utf8');
      pos = nul + 1;
      // after subject and event, an empty key ends the frame
      if (fields.length >= 2 && fields.length % 2 === 0 && f === '') break;
      fields.push(f);
    }
    this.pending = b.subarray(pos);
    const kwargs: Record<string, string> = Object.create(null) as Record<string, string>;
    for (let i = 2; i + 1 < fields.length; i += 2) kwargs[fields[i] as string] = fields[i + 1] as string;
    return { subject: fields[0] as string, event: fields[1] as string, kwargs };
  }
}

/** The Admin API through qrexec (this qube's agent at `agentSocket`). */
export class QrexecAdmin implements AdminTransport {
  constructor(private readonly agentSocket: string = agentSocketFromEnv()) {}

  async call(method: string, dest: string, arg = '', payload = ''): Promise<string> {
    const r = await callService(dest, `${method}+${arg}`, { agentSocket: this.agentSocket, stdin: payload });
    if (r.refused) throw new AdminError('Refused', `${method} on ${dest}: refused by the policy`);
    if (r.exitCode !== 0 && r.stdout.length === 0) throw new AdminError('CallFailed', `${method} on ${dest}: exit status ${r.exitCode}`);
    return parseReply(method, r.stdout);
  }

  async service(dest: string, serviceAndArg: string, payload: string | Buffer = ''): Promise<ServiceReply> {
    const r = await callService(dest, serviceAndArg, { agentSocket: this.agentSocket, stdin: payload });
    return { code: r.exitCode, refused: r.refused, stdout: r.stdout, stderr: r.stderr.toString('utf8') };
  }

  async events(onEvent: (e: AdminEvent) => void): Promise<void> {
    const decoder = new EventDecoder();
    let failure: Error | null = null;
    const sink = new Writable({
      write(c: Buffer, _e, cb) {
        try {
          for (const e of decoder.push(c)) onEvent(e);
          cb();
        } catch (e) {
          failure = e as Error;
          cb(e as Error);
        }
      },
    });
    sink.on('error', () => undefined);
    // qubesd acts on a request at its end of input: the stream then runs until qubesd (or this qube) stops
    const r = await callService('dom0', 'admin.Events+', { agentSocket: this.agentSocket, stdout: sink });
    if (r.refused) throw new AdminError('Refused', 'admin.Events: refused by the policy');
    if (failure) throw failure;
  }
}
