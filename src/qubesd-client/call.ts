/**
 * A client of qubesd's Admin API socket (qubes-core-admin
 * qubes/api/__init__.py), shared by the policy daemon (system info) and the
 * qrexec daemon and client (start, kill and create DispVMs).
 *
 * One call is one connection: we send `METHOD+ARG dom0 TYPE DEST\0` and the
 * payload, shut our side down, and read the reply to EOF. TYPE is `name`, as
 * the Python tools' utils.qubesd_call sends it; with `keywordDest`, a
 * destination starting with `@` is sent as `keyword` without it, as the C
 * daemon and client's qubesd_call2 do. The reply is `0\0` + data
 * on success, or `2\0TYPE\0TRACEBACK\0MESSAGE\0` when qubesd raised an
 * exception (TRACEBACK is empty unless qubesd runs with --debug).
 *
 * Not handled: event streams (`1\0…`, admin.Events): a reply starting so is
 * invalid here.
 */
import * as net from 'node:net';
import { describeSystemError, QrexecError } from '../common/errors.js';

/** qubesd's Admin API socket (reference QUBESD_SOCK). */
export const DEFAULT_QUBESD_SOCKET = '/var/run/qubesd.sock';
/** qubesd's internal socket (internal.GetSystemInfo). */
export const DEFAULT_QUBESD_INTERNAL_SOCKET = '/var/run/qubesd.internal.sock';
/** Largest reply accepted unless a call says otherwise (the reference qrexec tools take 64 KiB). */
export const DEFAULT_QUBESD_MAX_REPLY = 1024 * 1024;
/** How long a call may take unless it says otherwise. */
export const DEFAULT_QUBESD_TIMEOUT_MS = 30_000;

/** qubesd answered with an exception (`2\0…`). */
export class QubesdError extends QrexecError {
  override name = 'QubesdError';
  constructor(
    readonly method: string,
    readonly dest: string,
    /** The exception's class name, e.g. `QubesVMNotHaltedError`. */
    readonly excType: string,
    /** Its text (may be empty). */
    readonly excMessage: string,
  ) {
    super(`qubesd ${method} ${printable(dest)}: ${printable(excType)}${excMessage ? `: ${printable(excMessage)}` : ''}`);
  }
}

/** No answer from qubesd: it could not be reached, was too slow, or said something that is not a reply. */
export class QubesdCallError extends QrexecError {
  override name = 'QubesdCallError';
  constructor(
    readonly method: string,
    readonly code: 'CONNECT' | 'TIMEOUT' | 'TOO_LARGE' | 'BAD_REPLY',
    message: string,
  ) {
    super(`qubesd ${method}: ${message}`);
  }
}

export interface QubesdCallOptions {
  /** The argument after `+` (default empty). */
  readonly arg?: string;
  /** A destination starting with `@` is a keyword (C reference); default: every destination is a name (Python reference). */
  readonly keywordDest?: boolean;
  readonly payload?: Uint8Array;
  /** Give up (and close the connection) after this long; default {@link DEFAULT_QUBESD_TIMEOUT_MS}. */
  readonly timeoutMs?: number;
  /** Largest reply accepted, header included; default {@link DEFAULT_QUBESD_MAX_REPLY}. */
  readonly maxReply?: number;
}

/** The request bytes of one call, without the payload. */
export function formatQubesdRequest(method: string, dest: string, arg = '', keywordDest = false): string {
  const [type, d] = keywordDest && dest.startsWith('@') ? ['keyword', dest.slice(1)] : ['name', dest];
  return `${method}+${arg} dom0 ${type} ${d}\0`;
}

/**
 * One Admin API call as dom0. Resolves with the data after `0\0`.
 * @throws (rejects with) {@link QubesdError} when qubesd raised an exception,
 * {@link QubesdCallError} when there is no valid reply (connect failure,
 * timeout, reply too large or malformed).
 */
export function qubesdCall(socketPath: string, method: string, dest = 'dom0', opts: QubesdCallOptions = {}): Promise<Buffer> {
  const max = opts.maxReply ?? DEFAULT_QUBESD_MAX_REPLY;
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let len = 0;
    let settled = false;
    let connected = false;
    const sock = net.connect({ path: socketPath, allowHalfOpen: true });
    const fail = (e: Error): void => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      sock.destroy();
      reject(e);
    };
    const timer = setTimeout(() => fail(new QubesdCallError(method, 'TIMEOUT', `no reply in ${opts.timeoutMs ?? DEFAULT_QUBESD_TIMEOUT_MS} ms`)), opts.timeoutMs ?? DEFAULT_QUBESD_TIMEOUT_MS);
    sock.on('connect', () => {
      connected = true;
      sock.write(formatQubesdRequest(method, dest, opts.arg, opts.keywordDest));
      if (opts.payload && opts.payload.length > 0) sock.write(opts.payload);
      sock.end();
    });
    sock.on('data', (c: Buffer) => {
      len += c.length;
      if (len > max) {
        fail(new QubesdCallError(method, 'TOO_LARGE', `reply larger than ${max} bytes`));
        return;
      }
      chunks.push(c);
    });
    sock.on('error', (e: Error) => {
      fail(new QubesdCallError(method, connected ? 'BAD_REPLY' : 'CONNECT', connected ? e.message : `cannot connect to qubesd: ${describeSystemError(e, socketPath)}`));
    });
    sock.on('end', () => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      sock.destroy();
      try {
        resolve(parseQubesdReply(method, dest, Buffer.concat(chunks, len)));
      } catch (e) {
        reject(e as Error);
      }
    });
  });
}

/**
 * The data of a whole reply.
 * @throws {@link QubesdError} for an exception reply, {@link QubesdCallError} BAD_REPLY for anything else.
 */
export function parseQubesdReply(method: string, dest: string, reply: Buffer): Buffer {
  if (reply.length >= 2 && reply[1] === 0) {
    if (reply[0] === 0x30) return reply.subarray(2);
    if (reply[0] === 0x32) {
      // TYPE \0 TRACEBACK \0 MESSAGE \0 (older qubesd: no fields after TYPE)
      const fields = reply.subarray(2).toString('utf8').split('\0');
      return throwError(new QubesdError(method, dest, fields[0] ?? '', fields[2] ?? ''));
    }
  }
  return throwError(new QubesdCallError(method, 'BAD_REPLY', `invalid reply ${printable(reply.subarray(0, 40).toString('latin1'))}`));
}

function throwError(e: Error): never {
  throw e;
}

/** Printable, bounded text for messages (qubesd's text may hold anything). */
function printable(s: string, max = 200): string {
  let out = '';
  for (let i = 0; i < s.length && i < max; i++) {
    const c = s.charCodeAt(i);
    out += c >= 0x20 && c < 0x7f && c !== 0x5c ? s[i] : c === 0x5c ? '\\\\' : `\\x${(c & 0xff).toString(16).padStart(2, '0')}`;
  }
  return s.length > max ? `${out}...(${s.length} chars)` : out;
}
