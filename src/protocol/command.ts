import { MAX_SERVICE_NAME_LEN, NAME_MAX, NOGUI_CMD_PREFIX, RPC_REQUEST_COMMAND } from './constants.js';
import { ProtocolError } from './errors.js';

/**
 * A parsed qrexec command line (doc/execution.rst):
 * `USER:[nogui:]QUBESRPC SERVICE+ARG SOURCE [name|keyword TARGET]` or
 * `USER:[nogui:]SHELL COMMAND` (a legacy command, run through the shell).
 */
export interface ParsedCommand {
  /** `USER` before the first colon; undefined when the username was not stripped. */
  readonly username?: string;
  /** The `nogui:` prefix was present (do not wait for a GUI session). */
  readonly nogui: boolean;
  /** Everything after `USER:[nogui:]`, without `QUBESRPC ` for service calls. */
  readonly command: string;
  /** Service call details, absent for legacy shell commands. */
  readonly rpc?: RpcCommand;
}

/** The `QUBESRPC` part of a command. */
export interface RpcCommand {
  /** `SERVICE+ARG`; a missing argument is normalised to a trailing `+`. */
  readonly descriptor: string;
  /** `SERVICE` (1..255 bytes). */
  readonly serviceName: string;
  /** `ARG` (may be empty), or undefined when the command had no `+`. */
  readonly arg: string | undefined;
  /** `SOURCE`: the calling qube. */
  readonly sourceDomain: string;
  /** Words after SOURCE (`name vault`, `keyword adminvm`), as given. */
  readonly rest: readonly string[];
  /** `name`/`keyword` and the target, when given as the 4th/5th words. */
  readonly requestedTarget?: { readonly type: string; readonly value: string };
}

/**
 * Parses a command line like the reference's parse_qubes_rpc_command.
 * With `stripUsername` the text must start with `USER:` (what an agent receives);
 * without it the text starts at `[nogui:]` (what the host runs locally).
 * Throws ProtocolError('BAD_COMMAND') with the reference's reason.
 * Does not look the service up nor check the names against any registry.
 */
export function parseCommand(cmdline: string, stripUsername: boolean): ParsedCommand {
  let username: string | undefined;
  let command = cmdline;
  if (stripUsername) {
    const colon = cmdline.indexOf(':');
    if (colon < 0) throw new ProtocolError('BAD_COMMAND', `Bad command from dom0 (${cmdline}): no colon`);
    username = cmdline.slice(0, colon);
    command = cmdline.slice(colon + 1);
  }
  let nogui = false;
  if (command.startsWith(NOGUI_CMD_PREFIX)) {
    nogui = true;
    command = command.slice(NOGUI_CMD_PREFIX.length);
  }
  if (!command.startsWith(RPC_REQUEST_COMMAND)) {
    return username === undefined ? { nogui, command } : { username, nogui, command };
  }
  if (command[RPC_REQUEST_COMMAND.length] !== ' ') {
    throw new ProtocolError('BAD_COMMAND', `"${RPC_REQUEST_COMMAND}" not followed by space`);
  }
  command = command.slice(RPC_REQUEST_COMMAND.length + 1);
  const sp = command.indexOf(' ');
  if (sp < 0) throw new ProtocolError('BAD_COMMAND', 'No space found after service descriptor');
  if (sp === 0) throw new ProtocolError('BAD_COMMAND', 'Service descriptor is empty (too many spaces after QUBESRPC?)');
  const desc = command.slice(0, sp);
  const descLen = Buffer.byteLength(desc, 'utf8');
  if (descLen > MAX_SERVICE_NAME_LEN) throw new ProtocolError('BAD_COMMAND', `Command too long (length ${descLen})`);
  const plus = desc.indexOf('+');
  const serviceName = plus < 0 ? desc : desc.slice(0, plus);
  const nameLen = Buffer.byteLength(serviceName, 'utf8');
  if (nameLen > NAME_MAX) throw new ProtocolError('BAD_COMMAND', `Service name too long to execute (length ${nameLen})`);
  if (nameLen < 1) throw new ProtocolError('BAD_COMMAND', 'Service name empty');
  const after = command.slice(sp + 1);
  const sp2 = after.indexOf(' ');
  const sourceDomain = sp2 < 0 ? after : after.slice(0, sp2);
  if (sourceDomain.length === 0) {
    throw new ProtocolError('BAD_COMMAND', 'Source domain is empty (too many spaces after service descriptor?)');
  }
  const rest = sp2 < 0 ? [] : after.slice(sp2 + 1).split(' ').filter((w) => w.length > 0);
  const t0 = rest[0];
  const t1 = rest[1];
  const rpc: RpcCommand = {
    descriptor: plus < 0 ? `${desc}+` : desc,
    serviceName,
    arg: plus < 0 ? undefined : desc.slice(plus + 1),
    sourceDomain,
    rest,
    ...(rest.length === 2 && t0 !== undefined && t1 !== undefined ? { requestedTarget: { type: t0, value: t1 } } : {}),
  };
  return username === undefined ? { nogui, command, rpc } : { username, nogui, command, rpc };
}

/**
 * Builds the command line the daemon sends for an allowed call to a qube:
 * `USER:QUBESRPC SERVICE+ARG SOURCE` (a `+` is appended when there is no argument).
 */
export function buildServiceCommand(user: string, service: string, source: string): string {
  return `${user}:QUBESRPC ${service}${service.includes('+') ? '' : '+'} ${source}`;
}

/**
 * Builds the command line for a call to dom0:
 * `QUBESRPC SERVICE+ARG SOURCE name|keyword TARGET` (keyword without its `@`).
 */
export function buildDom0ServiceCommand(service: string, source: string, requestedTarget: string): string {
  const kw = requestedTarget.startsWith('@');
  return `QUBESRPC ${service}${service.includes('+') ? '' : '+'} ${source} ${kw ? 'keyword' : 'name'} ${kw ? requestedTarget.slice(1) : requestedTarget}`;
}

/** True for the names the reference treats as dom0 (`dom0`, `@adminvm`, the all-zero uuid). */
export function targetRefersToDom0(target: string): boolean {
  return target === 'dom0' || target === '@adminvm' || target === 'uuid:00000000-0000-0000-0000-000000000000';
}
