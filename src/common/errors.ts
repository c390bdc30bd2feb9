/**
 * Errors this project raises on purpose, and one-line descriptions of
 * system errors for the commands (what is missing, not Node's wording).
 */
import * as fs from 'node:fs';
import * as path from 'node:path';

/** Base class for errors this project raises on purpose (as opposed to bugs). */
export class QrexecError extends Error {
  override name = 'QrexecError';
}

/** A command cannot do what it was asked: printed as `<command>: <message>`, exit status `exitCode`. */
export class CommandError extends QrexecError {
  override name = 'CommandError';
  constructor(
    message: string,
    readonly exitCode = 1,
  ) {
    super(message);
  }
}

/**
 * The other side of a call failed or refused, with the status it gave when
 * it gave one (a qrexec client's exit status, a file copy receiver's
 * status).
 */
export class PeerError extends QrexecError {
  override name = 'PeerError';
  constructor(
    message: string,
    readonly status: number | null = null,
  ) {
    super(message);
  }
}

/** A Node system error (fs, net, child_process): it has an errno code. */
export function isSystemError(e: unknown): e is NodeJS.ErrnoException {
  return e instanceof Error && typeof (e as NodeJS.ErrnoException).code === 'string' && /^E[A-Z0-9]+$/.test((e as NodeJS.ErrnoException).code as string);
}

function exists(p: string): boolean {
  try {
    fs.lstatSync(p);
    return true;
  } catch {
    return false;
  }
}

/** The first component of `p` that does not exist (`p` itself or a directory above it), or undefined if `p` exists. */
export function firstMissing(p: string): string | undefined {
  if (exists(p)) return undefined;
  let cur = p;
  for (;;) {
    const parent = path.dirname(cur);
    if (parent === cur || exists(parent)) return cur;
    cur = parent;
  }
}

/** `X does not exist` for the first missing component of `p`, or undefined when `p` exists. */
export function whatIsMissing(p: string): string | undefined {
  const m = firstMissing(p);
  return m === undefined ? undefined : `${m} does not exist`;
}

/** Why `p` cannot be read as a file (`X does not exist`, `X is a directory`...), or undefined when it can. */
export function unreadableFile(p: string): string | undefined {
  try {
    if (fs.statSync(p).isDirectory()) return `${p} is a directory`;
    fs.accessSync(p, fs.constants.R_OK);
    return undefined;
  } catch (e) {
    return describeSystemError(e, p);
  }
}

/** The first component of `p` that exists and is not a directory, or undefined. */
function firstNonDir(p: string): string | undefined {
  const parts: string[] = [];
  for (let cur = path.dirname(p); ; cur = path.dirname(cur)) {
    parts.unshift(cur);
    if (path.dirname(cur) === cur) break;
  }
  for (const c of parts) {
    try {
      if (!fs.statSync(c).isDirectory()) return c;
    } catch {
      return undefined;
    }
  }
  return undefined;
}

/** The path a system error is about (fs: path; unix sockets: address). */
function errorPath(e: NodeJS.ErrnoException): string | undefined {
  const address = (e as { address?: unknown }).address;
  return e.path ?? (typeof address === 'string' ? address : undefined);
}

/**
 * One line for a failed operation on a path: `/run/x does not exist` (the
 * first missing component), `/dev/null is not a directory`, `F: permission
 * denied`... Node reports a unix socket bound in a missing directory as
 * EACCES (libuv's choice); that is said as missing too.
 */
export function describeSystemError(e: unknown, p?: string): string {
  if (!isSystemError(e)) return e instanceof Error ? e.message : String(e);
  const where = p ?? errorPath(e);
  const code = e.code as string;
  if (e.syscall?.startsWith('spawn') && code === 'ENOENT') return `cannot run ${where ?? e.syscall.slice(6)}: not found`;
  if (where === undefined) return e.message;
  if (code === 'ENOENT' || code === 'EACCES' || code === 'ENOTDIR') {
    const missing = firstMissing(where);
    if (missing !== undefined && code !== 'ENOTDIR') return `${missing} does not exist`;
    const notDir = firstNonDir(where);
    if (notDir !== undefined) return `${notDir} is not a directory`;
    if (code === 'ENOTDIR') return `${where} is not a directory`;
    if (code === 'ENOENT') return `${where} does not exist`;
    return `${where}: permission denied`;
  }
  const reason = systemErrorReason(e);
  return `${where}${reason.startsWith('is ') ? ' ' : ': '}${reason}`;
}

/** A problem with file `p`: a system error described (see describeSystemError), else `p: message` (bad JSON...). */
export function fileProblem(p: string, e: unknown): string {
  if (isSystemError(e)) return describeSystemError(e, p);
  return `${p}: ${e instanceof Error ? e.message : String(e)}`;
}

/** A system error's reason without its path: "does not exist", "permission denied", "is a directory"... */
export function systemErrorReason(e: NodeJS.ErrnoException): string {
  switch (e.code) {
    case 'ENOENT': return 'does not exist';
    case 'EACCES':
    case 'EPERM': return 'permission denied';
    case 'EISDIR': return 'is a directory';
    case 'ENOTDIR': return 'is not a directory';
    case 'EEXIST': return 'already exists';
    case 'EADDRINUSE': return 'is already in use (another process listens there)';
    case 'ECONNREFUSED': return 'nothing is listening there (connection refused)';
    case 'ENOSPC': return 'no space left on the device';
    case 'EROFS': return 'is on a read-only file system';
    case 'ENAMETOOLONG': return 'the path is too long';
    default: {
      // Node: "EMFILE: too many open files, open 'x'" -> "too many open files"
      const m = /^[A-Z0-9]+: ([^,]*)/.exec(e.message);
      return m ? (m[1] as string) : e.message;
    }
  }
}

/** Errors that mean a bug in our code, not a problem the user can fix. */
const BUG_ERRORS: readonly ErrorConstructor[] = [TypeError, RangeError, ReferenceError, EvalError, URIError];

/**
 * The line a command prints for an error that ends it: the message of our
 * own errors, a description of system errors; a TypeError, RangeError... is a
 * bug, said as such (QREXEC_DEBUG=1 adds the stack).
 */
export function errorLine(e: unknown): string {
  if (isSystemError(e)) return describeSystemError(e);
  if (e instanceof Error) {
    // our errors (typed or plain Error) and libraries' own carry a message meant for the user
    if (!BUG_ERRORS.includes(e.constructor as ErrorConstructor)) return e.message;
    return process.env['QREXEC_DEBUG'] ? `internal error: ${e.stack ?? e.message}` : `internal error: ${e.message} (QREXEC_DEBUG=1 shows where)`;
  }
  return `internal error: ${String(e)}`;
}

/**
 * For commands whose main is top-level code: whatever escapes is printed as
 * one `<command>: <message>` line (no stack trace), exit status 1.
 */
export function exitOnUncaught(prog: string): void {
  const die = (e: unknown): void => {
    process.stderr.write(`${prog}: ${errorLine(e)}\n`);
    process.exit(e instanceof CommandError ? e.exitCode : 1);
  };
  process.on('uncaughtException', die);
  process.on('unhandledRejection', die);
}
