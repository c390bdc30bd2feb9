/**
 * qubesd's socket protocol (qubes-core-admin qubes/api/__init__.py,
 * QubesDaemonProtocol), pure: no I/O here.
 *
 * A request is one connection: `METHOD[+ARG] SRC DEST_TYPE DEST\0PAYLOAD`,
 * acted on at the client's EOF. The header is split on spaces into at most
 * 4 fields (so DEST may hold spaces, and then fails name validation);
 * `keyword adminvm` means `name dom0`; any other DEST_TYPE, fewer than 4
 * fields or no NUL at all is a framing error: the connection is aborted
 * without a reply. More than {@link MAX_REQUEST} bytes aborts too.
 *
 * Replies: `0\0DATA` (success), `2\0TYPE\0\0MESSAGE\0` (exception; the
 * traceback field stays empty), and for admin.Events one `1\0SUBJECT\0EVENT\0
 * (KEY\0VALUE\0)*\0` frame per event.
 */

/** The reference's buffer_size: a longer request is aborted. */
export const MAX_REQUEST = 65536;

export interface Request {
  readonly method: string;
  readonly arg: string;
  /** Raw bytes, decoded by the API (name or uuid:...). */
  readonly src: Buffer;
  readonly dest: Buffer;
  readonly payload: Buffer;
}

/** Accumulates one request's bytes up to the limit (a list of chunks, joined once at EOF). */
export class RequestBuffer {
  private readonly chunks: Buffer[] = [];
  private length = 0;

  /** @returns false when the request has grown past {@link MAX_REQUEST} (abort). */
  push(chunk: Buffer): boolean {
    if (this.length + chunk.length > MAX_REQUEST) return false;
    this.chunks.push(chunk);
    this.length += chunk.length;
    return true;
  }

  /** The request at EOF, or null for a framing error. */
  finish(): Request | null {
    return parseRequest(Buffer.concat(this.chunks, this.length));
  }
}

function isAscii(b: Buffer): boolean {
  for (const c of b) if (c > 0x7f) return false;
  return true;
}

/** Parse a whole request; null for a framing error (or a method that is not ASCII, which the reference also drops). */
export function parseRequest(buf: Buffer): Request | null {
  const nul = buf.indexOf(0);
  if (nul < 0) return null;
  const header = buf.subarray(0, nul);
  const fields: Buffer[] = [];
  let start = 0;
  for (let i = 0; i < 3; i++) {
    const sp = header.indexOf(0x20, start);
    if (sp < 0) return null;
    fields.push(header.subarray(start, sp));
    start = sp + 1;
  }
  fields.push(header.subarray(start));
  const [methArg, src, destType, destRaw] = fields as [Buffer, Buffer, Buffer, Buffer];
  let dest = destRaw;
  const dt = destType.toString('latin1');
  if (dt === 'keyword' && dest.equals(Buffer.from('adminvm'))) dest = Buffer.from('dom0');
  else if (dt !== 'name') return null;
  if (!isAscii(methArg)) return null;
  const ma = methArg.toString('latin1');
  const plus = ma.indexOf('+');
  return {
    method: plus < 0 ? ma : ma.slice(0, plus),
    arg: plus < 0 ? '' : ma.slice(plus + 1),
    src,
    dest,
    payload: buf.subarray(nul + 1),
  };
}

/** `0\0` + data. */
export function encodeOk(data: string | null): Buffer {
  const s = data ?? '';
  const b = Buffer.allocUnsafe(2 + Buffer.byteLength(s, 'utf8'));
  b[0] = 0x30;
  b[1] = 0;
  b.write(s, 2, 'utf8');
  return b;
}

/**
 * `2\0TYPE\0\0MESSAGE\0`. A `%` in the message is doubled: the Python
 * client formats the message with `%` (and an empty argument tuple).
 */
export function encodeException(type: string, message: string): Buffer {
  return Buffer.from(`2\0${type}\0\0${message.replace(/%/g, '%%')}\0`, 'utf8');
}

/** One event frame; subject '' for app-level events. */
export function encodeEvent(subject: string, event: string, kwargs: readonly (readonly [string, string])[]): Buffer {
  let s = `1\0${subject}\0${event}\0`;
  for (const [k, v] of kwargs) s += `${k}\0${v}\0`;
  return Buffer.from(`${s}\0`, 'latin1');
}
