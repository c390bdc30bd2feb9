import {
  DOMAIN_FIELD_SIZE,
  EXEC_PARAMS_SIZE,
  HEADER_SIZE,
  MAX_QREXEC_CMD_LEN,
  MAX_SERVICE_NAME_LEN,
  MsgType,
  PEER_INFO_SIZE,
  ProtocolVersion,
  SERVICE_PARAMS_SIZE,
  TRIGGER_SERVICE_PARAMS3_SIZE,
  TRIGGER_SERVICE_PARAMS4_SIZE,
  TRIGGER_SERVICE_PARAMS_SIZE,
  maxDataChunk,
  msgTypeName,
} from './constants.js';
import type { LengthBounds, LengthRules } from './decoder.js';
import { ProtocolError } from './errors.js';

// ---------------------------------------------------------------- encoders

/** `struct msg_header` (8 bytes). */
export function encodeHeader(type: number, len: number): Buffer {
  const b = Buffer.allocUnsafe(HEADER_SIZE);
  b.writeUInt32LE(type >>> 0, 0);
  b.writeUInt32LE(len >>> 0, 4);
  return b;
}

/** A whole message: header followed by payload, in one buffer. */
export function encodeMessage(type: number, payload: Uint8Array = EMPTY): Buffer {
  const b = Buffer.allocUnsafe(HEADER_SIZE + payload.length);
  b.writeUInt32LE(type >>> 0, 0);
  b.writeUInt32LE(payload.length, 4);
  b.set(payload, HEADER_SIZE);
  return b;
}

/** MSG_HELLO with `peer_info.version`. */
export function encodeHello(version: number): Buffer {
  const b = Buffer.allocUnsafe(HEADER_SIZE + PEER_INFO_SIZE);
  b.writeUInt32LE(MsgType.HELLO, 0);
  b.writeUInt32LE(PEER_INFO_SIZE, 4);
  b.writeUInt32LE(version >>> 0, 8);
  return b;
}

/**
 * MSG_EXEC_CMDLINE / MSG_JUST_EXEC / MSG_SERVICE_CONNECT: exec_params followed by
 * `cmdline` and a terminating NUL (added here; `cmdline` must not contain one).
 */
export function encodeExec(
  type: number,
  connectDomain: number,
  connectPort: number,
  cmdline: string | Uint8Array,
): Buffer {
  const body = typeof cmdline === 'string' ? Buffer.from(cmdline, 'utf8') : cmdline;
  if (body.includes(0)) throw new ProtocolError('BAD_PAYLOAD', 'command line contains a NUL byte');
  const len = EXEC_PARAMS_SIZE + body.length + 1;
  if (len > MAX_QREXEC_CMD_LEN) throw new ProtocolError('BAD_LENGTH', `command line too long (${len} > ${MAX_QREXEC_CMD_LEN})`);
  const b = Buffer.allocUnsafe(HEADER_SIZE + len);
  b.writeUInt32LE(type, 0);
  b.writeUInt32LE(len, 4);
  b.writeUInt32LE(connectDomain >>> 0, 8);
  b.writeUInt32LE(connectPort >>> 0, 12);
  b.set(body, 16);
  b[16 + body.length] = 0;
  return b;
}

/** A bare exec_params message (the daemon's reply to a client, MSG_CONNECTION_TERMINATED). */
export function encodeExecParams(type: number, connectDomain: number, connectPort: number): Buffer {
  const b = Buffer.allocUnsafe(HEADER_SIZE + EXEC_PARAMS_SIZE);
  b.writeUInt32LE(type, 0);
  b.writeUInt32LE(EXEC_PARAMS_SIZE, 4);
  b.writeUInt32LE(connectDomain >>> 0, 8);
  b.writeUInt32LE(connectPort >>> 0, 12);
  return b;
}

/** MSG_CONNECTION_TERMINATED (agent→daemon). */
export function encodeConnectionTerminated(connectDomain: number, connectPort: number): Buffer {
  return encodeExecParams(MsgType.CONNECTION_TERMINATED, connectDomain, connectPort);
}

/**
 * `struct service_params`: the ident, NUL-padded to 32 bytes. A Buffer of exactly
 * 32 bytes is used as is (to echo an untrusted ident back byte for byte).
 */
export function encodeIdent(ident: string | Uint8Array): Buffer {
  if (typeof ident !== 'string' && ident.length === SERVICE_PARAMS_SIZE) return Buffer.from(ident);
  return fixedField(ident, SERVICE_PARAMS_SIZE, 'ident');
}

/** MSG_SERVICE_CONNECT as the daemon sends it to the agent: exec_params + 32-byte ident. */
export function encodeServiceConnect(connectDomain: number, connectPort: number, ident: string | Uint8Array): Buffer {
  const b = Buffer.allocUnsafe(HEADER_SIZE + EXEC_PARAMS_SIZE + SERVICE_PARAMS_SIZE);
  b.writeUInt32LE(MsgType.SERVICE_CONNECT, 0);
  b.writeUInt32LE(EXEC_PARAMS_SIZE + SERVICE_PARAMS_SIZE, 4);
  b.writeUInt32LE(connectDomain >>> 0, 8);
  b.writeUInt32LE(connectPort >>> 0, 12);
  encodeIdent(ident).copy(b, 16);
  return b;
}

/** MSG_SERVICE_REFUSED (daemon→agent). */
export function encodeServiceRefused(ident: string | Uint8Array): Buffer {
  return encodeMessage(MsgType.SERVICE_REFUSED, encodeIdent(ident));
}

/** Fields of a service call request. */
export interface TriggerFields {
  /** Requested target (`vault`, `@dispvm:x`, `@default`…), at most 63 bytes. */
  readonly target: string;
  /** Request ident (`SOCKET7`), at most 31 bytes. */
  readonly ident: string;
  /** `SERVICE+ARG`, at most 64,999 bytes: with its NUL it fills the reference's 65,000-byte limit (63 with v2). */
  readonly service: string;
  /** MSG_TRIGGER_SERVICE4 only: requested source, at most 63 bytes. */
  readonly source?: string;
}

/** MSG_TRIGGER_SERVICE (v2 only). */
export function encodeTriggerService2(f: TriggerFields): Buffer {
  const p = Buffer.concat([fixedField(f.service, 64, 'service name'), fixedField(f.target, 32, 'target'), fixedField(f.ident, 32, 'ident')]);
  return encodeMessage(MsgType.TRIGGER_SERVICE, p);
}

/** MSG_TRIGGER_SERVICE3 (v3+). */
export function encodeTriggerService3(f: TriggerFields): Buffer {
  const svc = serviceField(f.service);
  return encodeMessage(
    MsgType.TRIGGER_SERVICE3,
    Buffer.concat([fixedField(f.target, DOMAIN_FIELD_SIZE, 'target'), fixedField(f.ident, SERVICE_PARAMS_SIZE, 'ident'), svc]),
  );
}

/** MSG_TRIGGER_SERVICE4 (v4+). `source` defaults to empty (no requested source). */
export function encodeTriggerService4(f: TriggerFields): Buffer {
  const svc = serviceField(f.service);
  return encodeMessage(
    MsgType.TRIGGER_SERVICE4,
    Buffer.concat([
      fixedField(f.source ?? '', DOMAIN_FIELD_SIZE, 'source'),
      fixedField(f.target, DOMAIN_FIELD_SIZE, 'target'),
      fixedField(f.ident, SERVICE_PARAMS_SIZE, 'ident'),
      svc,
    ]),
  );
}

/** Header of a data message (MSG_DATA_*) of `len` bytes; send the data right after it. */
export function encodeDataHeader(type: number, len: number): Buffer {
  return encodeHeader(type, len);
}

/** MSG_DATA_EXIT_CODE with a u32 status. */
export function encodeExitCode(status: number): Buffer {
  const b = Buffer.allocUnsafe(HEADER_SIZE + 4);
  b.writeUInt32LE(MsgType.DATA_EXIT_CODE, 0);
  b.writeUInt32LE(4, 4);
  b.writeInt32LE(status | 0, 8);
  return b;
}

function serviceField(service: string): Buffer {
  const s = Buffer.from(service, 'utf8');
  // the reference bounds the field with its NUL: name + NUL ≤ MAX_SERVICE_NAME_LEN
  if (s.length === 0 || s.length > MAX_SERVICE_NAME_LEN - 1) {
    throw new ProtocolError('BAD_LENGTH', `service name length ${s.length} outside [1, ${MAX_SERVICE_NAME_LEN - 1}]`);
  }
  if (s.includes(0)) throw new ProtocolError('BAD_PAYLOAD', 'service name contains a NUL byte');
  const b = Buffer.allocUnsafe(s.length + 1);
  s.copy(b);
  b[s.length] = 0;
  return b;
}

function fixedField(value: string | Uint8Array, size: number, what: string): Buffer {
  const v = typeof value === 'string' ? Buffer.from(value, 'utf8') : value;
  if (v.length >= size) throw new ProtocolError('BAD_LENGTH', `${what} too long (${v.length} bytes, max ${size - 1})`);
  if (v.includes(0)) throw new ProtocolError('BAD_PAYLOAD', `${what} contains a NUL byte`);
  const b = Buffer.alloc(size);
  b.set(v, 0);
  return b;
}

const EMPTY = Buffer.alloc(0);

// ----------------------------------------------------------- length rules

const b = (min: number, max: number): LengthBounds => ({ min, max });
const HELLO_BOUNDS = b(PEER_INFO_SIZE, PEER_INFO_SIZE);
const EXEC_BOUNDS = b(EXEC_PARAMS_SIZE + 1, MAX_QREXEC_CMD_LEN);
/** The daemon may expand `DEFAULT:` into a longer default user name. */
const EXEC_BOUNDS_FROM_DAEMON = b(EXEC_PARAMS_SIZE + 1, MAX_QREXEC_CMD_LEN + 4096);

/** Rules for the first message of any channel: only MSG_HELLO. */
export const helloRules: LengthRules = (t) => (t === MsgType.HELLO ? HELLO_BOUNDS : undefined);

/** Control vchan, messages the daemon accepts from an agent after the handshake at `version`. */
export function agentToDaemonRules(version: number): LengthRules {
  return (t) => {
    switch (t) {
      case MsgType.TRIGGER_SERVICE:
        return version < ProtocolVersion.V3 ? b(TRIGGER_SERVICE_PARAMS_SIZE, TRIGGER_SERVICE_PARAMS_SIZE) : undefined;
      case MsgType.TRIGGER_SERVICE3:
        return version >= ProtocolVersion.V3
          ? b(TRIGGER_SERVICE_PARAMS3_SIZE + 1, TRIGGER_SERVICE_PARAMS3_SIZE + MAX_SERVICE_NAME_LEN)
          : undefined;
      case MsgType.TRIGGER_SERVICE4:
        return version >= ProtocolVersion.V4
          ? b(TRIGGER_SERVICE_PARAMS4_SIZE + 1, TRIGGER_SERVICE_PARAMS4_SIZE + MAX_SERVICE_NAME_LEN)
          : undefined;
      case MsgType.CONNECTION_TERMINATED:
        return b(EXEC_PARAMS_SIZE, EXEC_PARAMS_SIZE);
      default:
        return undefined;
    }
  };
}

/** Control vchan, messages an agent accepts from the daemon after the handshake. */
export const daemonToAgentRules: LengthRules = (t) => {
  switch (t) {
    case MsgType.EXEC_CMDLINE:
    case MsgType.JUST_EXEC:
    case MsgType.SERVICE_CONNECT:
      return EXEC_BOUNDS_FROM_DAEMON;
    case MsgType.SERVICE_REFUSED:
      return b(SERVICE_PARAMS_SIZE, SERVICE_PARAMS_SIZE);
    default:
      return undefined;
  }
};

/** Daemon unix socket, messages the daemon accepts from a local client after the handshake. */
export const clientToDaemonRules: LengthRules = (t) => {
  switch (t) {
    case MsgType.EXEC_CMDLINE:
    case MsgType.JUST_EXEC:
    case MsgType.SERVICE_CONNECT:
      return EXEC_BOUNDS;
    default:
      return undefined;
  }
};

/** Daemon unix socket, the daemon's reply to a client's request (exec_params only). */
export const daemonToClientRules: LengthRules = (t) => {
  switch (t) {
    case MsgType.EXEC_CMDLINE:
    case MsgType.JUST_EXEC:
    case MsgType.SERVICE_CONNECT:
      return b(EXEC_PARAMS_SIZE, EXEC_PARAMS_SIZE);
    default:
      return undefined;
  }
};

/**
 * Data vchan after the handshake at `version`: MSG_DATA_* of at most one chunk.
 * Both directions are accepted (the reference does too and only logs the oddity);
 * the data-stream layer decides what a message means for its role.
 */
export function dataRules(version: number): LengthRules {
  const chunk = b(0, maxDataChunk(version));
  return (t) =>
    t === MsgType.DATA_STDIN || t === MsgType.DATA_STDOUT || t === MsgType.DATA_STDERR || t === MsgType.DATA_EXIT_CODE
      ? chunk
      : undefined;
}

// ----------------------------------------------------------- payload parsers

/** Reads MSG_HELLO's peer_info.version (payload length already checked). */
export function parseHello(payload: Buffer): number {
  if (payload.length !== PEER_INFO_SIZE) throw new ProtocolError('BAD_LENGTH', `MSG_HELLO payload of ${payload.length} bytes`);
  return payload.readUInt32LE(0);
}

/**
 * Version negotiation as the reference does it: the result is the smaller of
 * the two versions; below `minVersion` the peer is refused (BAD_VERSION).
 */
export function negotiateVersion(remote: number, local: number, minVersion: number): number {
  const v = Math.min(remote, local);
  if (v < minVersion) {
    throw new ProtocolError(
      'BAD_VERSION',
      `Incompatible protocol version (remote ${remote}, local ${local}); minimum supported version is ${minVersion}`,
    );
  }
  return v;
}

/** Parsed exec_params + command line. */
export interface ExecParams {
  readonly connectDomain: number;
  readonly connectPort: number;
  /** Bytes after exec_params, without the final NUL (may hold NULs for SERVICE_CONNECT idents). */
  readonly cmdline: Buffer;
}

/**
 * exec_params followed by a NUL-terminated string (MSG_EXEC_CMDLINE, MSG_JUST_EXEC,
 * MSG_SERVICE_CONNECT). Requires a body and its final NUL, as the reference daemon does.
 */
export function parseExec(payload: Buffer): ExecParams {
  if (payload.length <= EXEC_PARAMS_SIZE) {
    throw new ProtocolError('BAD_LENGTH', `exec message too short (${payload.length} bytes, min ${EXEC_PARAMS_SIZE + 1})`);
  }
  if (payload[payload.length - 1] !== 0) {
    throw new ProtocolError('BAD_PAYLOAD', `command line of ${payload.length - EXEC_PARAMS_SIZE} bytes is not NUL-terminated`);
  }
  return {
    connectDomain: payload.readUInt32LE(0),
    connectPort: payload.readUInt32LE(4),
    cmdline: payload.subarray(EXEC_PARAMS_SIZE, payload.length - 1),
  };
}

/** A bare exec_params (8 bytes): the daemon's reply, MSG_CONNECTION_TERMINATED. */
export function parseExecParams(payload: Buffer): { connectDomain: number; connectPort: number } {
  if (payload.length !== EXEC_PARAMS_SIZE) {
    throw new ProtocolError('BAD_LENGTH', `exec_params of ${payload.length} bytes, expected ${EXEC_PARAMS_SIZE}`);
  }
  return { connectDomain: payload.readUInt32LE(0), connectPort: payload.readUInt32LE(4) };
}

/**
 * Checks a 32-byte request ident like the reference's validate_request_id:
 * bytes from `[0-9A-Za-z_.- ]`, a NUL terminator, only NULs after it.
 * Returns the ident text, or an error description.
 */
export function validateIdent(raw: Buffer): { ok: true; ident: string } | { ok: false; reason: string } {
  for (let i = 0; i < raw.length; i++) {
    const c = raw[i] as number;
    if (c === 0) {
      for (let j = i + 1; j < raw.length; j++) {
        if (raw[j] !== 0) return { ok: false, reason: `non-NUL byte ${raw[j]} at offset ${j} follows NUL terminator at offset ${i}` };
      }
      return { ok: true, ident: raw.toString('latin1', 0, i) };
    }
    if (!isNameChar(c) && c !== 0x20) return { ok: false, reason: `bad byte ${c} at offset ${i}` };
  }
  return { ok: false, reason: 'no NUL terminator' };
}

function isNameChar(c: number): boolean {
  return (
    (c >= 0x61 && c <= 0x7a) || (c >= 0x41 && c <= 0x5a) || (c >= 0x30 && c <= 0x39) || c === 0x5f || c === 0x2d || c === 0x2e
  );
}

/**
 * The reference's sanitize_name: every byte outside `[A-Za-z0-9_.-]` and
 * `extra` becomes `_`. Operates on bytes, so the result is ASCII.
 */
export function sanitizeName(raw: Buffer, extra: string): string {
  let s = '';
  for (const c of raw) s += isNameChar(c) || (c < 0x80 && extra.includes(String.fromCharCode(c))) ? String.fromCharCode(c) : '_';
  return s;
}

/** A fixed-size field read as the reference does: last byte forced to NUL, text up to the first NUL. */
function fixedString(raw: Buffer): Buffer {
  const end = raw.indexOf(0);
  return raw.subarray(0, end < 0 || end >= raw.length - 1 ? raw.length - 1 : end);
}

/** A validated service call request from an agent. */
export interface Trigger {
  /** Sanitised requested target (`[A-Za-z0-9_.-@:]`). */
  readonly target: string;
  /** Sanitised requested source (MSG_TRIGGER_SERVICE4 only; empty when none). Informational: never the call's source. */
  readonly requestedSource: string;
  /** Validated ident. */
  readonly ident: string;
  /** The raw 32 ident bytes, echoed in MSG_SERVICE_REFUSED. */
  readonly identRaw: Buffer;
  /** Sanitised `SERVICE+ARG` (`[A-Za-z0-9_.-+]`), non-empty, not starting with `+`. */
  readonly service: string;
}

/** Result of parsing a trigger: either a request, or a refusal to send back with the reason to log. */
export type TriggerResult =
  | { readonly ok: true; readonly trigger: Trigger }
  | { readonly ok: false; readonly identRaw: Buffer; readonly reason: string };

/**
 * Parses MSG_TRIGGER_SERVICE / 3 / 4 payloads (length bounds already enforced by
 * the decoder) like the reference daemon: fixed fields NUL-forced, names
 * sanitised, ident validated; a bad ident or service name yields a refusal
 * (the caller replies MSG_SERVICE_REFUSED with `identRaw`), not a channel error.
 */
export function parseTrigger(type: number, payload: Buffer): TriggerResult {
  let source: Buffer = EMPTY;
  let target: Buffer;
  let identRaw: Buffer;
  let service: Buffer;
  let what: string;
  if (type === MsgType.TRIGGER_SERVICE) {
    if (payload.length !== TRIGGER_SERVICE_PARAMS_SIZE) throw new ProtocolError('BAD_LENGTH', `MSG_TRIGGER_SERVICE of ${payload.length} bytes`);
    service = fixedString(payload.subarray(0, 64));
    target = fixedString(payload.subarray(64, 96));
    identRaw = Buffer.from(payload.subarray(96, 128));
    what = 'MSG_TRIGGER_SERVICE';
  } else {
    const fixed = type === MsgType.TRIGGER_SERVICE4 ? TRIGGER_SERVICE_PARAMS4_SIZE : TRIGGER_SERVICE_PARAMS3_SIZE;
    if (type !== MsgType.TRIGGER_SERVICE3 && type !== MsgType.TRIGGER_SERVICE4) {
      throw new ProtocolError('UNKNOWN_TYPE', `${msgTypeName(type)} is not a trigger`);
    }
    if (payload.length <= fixed || payload.length - fixed > MAX_SERVICE_NAME_LEN) {
      throw new ProtocolError('BAD_LENGTH', `${msgTypeName(type)} of ${payload.length} bytes`);
    }
    let o = 0;
    if (type === MsgType.TRIGGER_SERVICE4) {
      source = fixedString(payload.subarray(0, DOMAIN_FIELD_SIZE));
      o = DOMAIN_FIELD_SIZE;
    }
    target = fixedString(payload.subarray(o, o + DOMAIN_FIELD_SIZE));
    identRaw = Buffer.from(payload.subarray(o + DOMAIN_FIELD_SIZE, fixed));
    what = msgTypeName(type);
    const name = payload.subarray(fixed);
    const idCheck = validateIdent(identRaw);
    if (!idCheck.ok) return { ok: false, identRaw, reason: `${idCheck.reason} in message ${what}` };
    if (name[name.length - 1] !== 0) return { ok: false, identRaw, reason: 'Service name not NUL-terminated' };
    const nul = name.indexOf(0);
    if (nul !== name.length - 1) return { ok: false, identRaw, reason: `Service name contains NUL byte at offset ${nul}` };
    service = name.subarray(0, nul);
  }
  const idCheck = validateIdent(identRaw);
  if (!idCheck.ok) return { ok: false, identRaw, reason: `${idCheck.reason} in message ${what}` };
  if (service.length === 0) return { ok: false, identRaw, reason: 'Empty service name not allowed' };
  if (service[0] === 0x2b) return { ok: false, identRaw, reason: "Service name must not start with '+'" };
  return {
    ok: true,
    trigger: {
      target: sanitizeName(target, '@:'),
      requestedSource: sanitizeName(source, '@:'),
      ident: idCheck.ident,
      identRaw,
      service: sanitizeName(service, '+'),
    },
  };
}

/** MSG_SERVICE_REFUSED payload: the 32-byte ident (text up to the first NUL). */
export function parseServiceRefused(payload: Buffer): { ident: string; identRaw: Buffer } {
  if (payload.length !== SERVICE_PARAMS_SIZE) throw new ProtocolError('BAD_LENGTH', `MSG_SERVICE_REFUSED of ${payload.length} bytes`);
  return { ident: fixedString(payload).toString('latin1'), identRaw: payload };
}

/** MSG_DATA_EXIT_CODE: the status, or 255 when shorter than 4 bytes (as the reference). */
export function parseExitCode(payload: Buffer): number {
  return payload.length < 4 ? 255 : payload.readInt32LE(0);
}
