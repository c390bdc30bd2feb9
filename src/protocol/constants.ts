/**
 * Numeric constants of the qrexec wire protocol (QubesOS libqrexec/qrexec.h).
 * Everything on the wire is little-endian.
 */

/** Protocol versions. */
export const ProtocolVersion = {
  /** Qubes < R3.0, no negotiation. Never spoken. */
  V1: 1,
  /** Qubes R3.0–R4.0: separate data and control channels, MSG_HELLO; data chunks ≤ 4 KiB; MSG_TRIGGER_SERVICE. */
  V2: 2,
  /** Qubes R4.1–R4.2: data chunks ≤ 64 KiB, MSG_TRIGGER_SERVICE3. */
  V3: 3,
  /** Qubes ≥ R4.3: MSG_TRIGGER_SERVICE4 (carries a requested source qube). */
  V4: 4,
} as const;

/** The version the daemon and agent announce on vchans. */
export const QREXEC_PROTOCOL_VERSION = 4;
/** The version the daemon announces to local clients (unix socket `qrexec.<domid>`). */
export const QREXEC_CLIENT_PROTOCOL_VERSION = 3;
/** Oldest agent the daemon accepts (reference: QREXEC_AGENT_MIN_VERSION). */
export const QREXEC_AGENT_MIN_VERSION = 2;
/** Oldest local client the daemon accepts (reference: QREXEC_CLIENT_MIN_VERSION). */
export const QREXEC_CLIENT_MIN_VERSION = 3;
/** Oldest peer accepted on a data vchan (reference: QREXEC_DATA_MIN_VERSION). */
export const QREXEC_DATA_MIN_VERSION = 2;

/** Message types (`msg_header.type`). */
export const MsgType = {
  /**
   * daemon→agent (and client→daemon): start a process in the qube and connect its
   * stdin/stdout/stderr to a data vchan. Payload: exec_params + NUL-terminated command line. Since v2.
   */
  EXEC_CMDLINE: 0x200,
  /** daemon→agent (and client→daemon): start a process with stdio on /dev/null. Payload: exec_params + command line. Since v2. */
  JUST_EXEC: 0x201,
  /**
   * daemon→agent (and client→daemon): connect a waiting qrexec-client-vm (the caller) to a data vchan.
   * Payload: exec_params whose command line is the request ident (service_params). Since v2.
   */
  SERVICE_CONNECT: 0x202,
  /** daemon→agent: the call with this ident was refused. Payload: service_params (32 bytes). Since v2. */
  SERVICE_REFUSED: 0x203,
  /** agent→daemon: call a service (protocol v2 only). Payload: trigger_service_params (128 bytes). */
  TRIGGER_SERVICE: 0x210,
  /** agent→daemon: a data connection ended, its port may be reused. Payload: exec_params without command line (8 bytes). Since v2. */
  CONNECTION_TERMINATED: 0x211,
  /** agent→daemon: call a service. Payload: trigger_service_params3 + NUL-terminated SERVICE+ARG. Since v3. */
  TRIGGER_SERVICE3: 0x212,
  /** agent→daemon: call a service with a requested source. Payload: trigger_service_params4 + NUL-terminated SERVICE+ARG. Since v4. */
  TRIGGER_SERVICE4: 0x213,
  /** both directions, first message on every channel: peer_info (u32 version). Since v2. */
  HELLO: 0x300,
  /** data vchan, caller→service: stdin bytes; length 0 means EOF. Since v2. */
  DATA_STDIN: 0x190,
  /** data vchan, service→caller: stdout bytes; length 0 means EOF. Since v2. */
  DATA_STDOUT: 0x191,
  /** data vchan, service→caller: stderr bytes; length 0 means EOF. Since v2. */
  DATA_STDERR: 0x192,
  /** data vchan, service→caller: the service's exit status (u32, ≥ 4 bytes). Since v2. */
  DATA_EXIT_CODE: 0x193,
} as const;
export type MsgTypeName = keyof typeof MsgType;
export type MsgTypeValue = (typeof MsgType)[MsgTypeName];

const NAMES = new Map<number, MsgTypeName>(
  (Object.keys(MsgType) as MsgTypeName[]).map((k) => [MsgType[k], k]),
);
/** `MSG_EXEC_CMDLINE`-style name of a message type, or `0x…` for unknown values. */
export function msgTypeName(type: number): string {
  const n = NAMES.get(type);
  return n === undefined ? `0x${type.toString(16)}` : `MSG_${n}`;
}

/** Size of `struct msg_header`. */
export const HEADER_SIZE = 8;
/** Size of `struct exec_params` without the command line. */
export const EXEC_PARAMS_SIZE = 8;
/** Size of `struct service_params` (the request ident). */
export const SERVICE_PARAMS_SIZE = 32;
/** Size of `struct peer_info`. */
export const PEER_INFO_SIZE = 4;
/** Size of the fixed part of trigger_service_params (v2): service_name[64], target_domain[32], ident[32]. */
export const TRIGGER_SERVICE_PARAMS_SIZE = 128;
/** Size of the fixed part of trigger_service_params3: target_domain[64], ident[32]. */
export const TRIGGER_SERVICE_PARAMS3_SIZE = 96;
/** Size of the fixed part of trigger_service_params4: source_domain[64], target_domain[64], ident[32]. */
export const TRIGGER_SERVICE_PARAMS4_SIZE = 160;
/** Size of a domain-name field in trigger_service_params3/4. */
export const DOMAIN_FIELD_SIZE = 64;

/** Largest data chunk with protocol v2. */
export const MAX_DATA_CHUNK_V2 = 4096;
/** Largest data chunk with protocol v3 and later. */
export const MAX_DATA_CHUNK_V3 = 65536;
/** Longest `SERVICE+ARG` field on the wire, its terminating NUL included (so at most 64,999 characters). */
export const MAX_SERVICE_NAME_LEN = 65000;
/** Longest exec message payload (exec_params + command line + NUL). */
export const MAX_QREXEC_CMD_LEN = 65535;
/** Control vchan port; data ports start right after it. */
export const VCHAN_BASE_PORT = 512;
/** First data port. */
export const VCHAN_BASE_DATA_PORT = 513;
/** Number of data ports a daemon hands out (reference: MAX_CLIENTS = MAX_FDS). */
export const MAX_DATA_PORTS = 256;
/** Longest service name part (before `+`) the reference will execute (NAME_MAX). */
export const NAME_MAX = 255;

/** The data chunk limit for a negotiated version. */
export function maxDataChunk(version: number): number {
  return version >= ProtocolVersion.V3 ? MAX_DATA_CHUNK_V3 : MAX_DATA_CHUNK_V2;
}

/** Exit statuses with a qrexec meaning. */
export const ExitCode = {
  /** Problem with qrexec itself. */
  PROBLEM: 125,
  /** The call was refused. */
  REFUSED: 126,
  /** Allowed, but no such service. */
  NOT_FOUND: 127,
} as const;

/** Command-line prefixes. */
export const RPC_REQUEST_COMMAND = 'QUBESRPC';
export const NOGUI_CMD_PREFIX = 'nogui:';
