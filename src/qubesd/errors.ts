/**
 * The exceptions qubesd sends (qubes-core-admin qubes/exc.py): each carries
 * the reference's class name, sent on the wire as `2\0NAME\0\0MESSAGE\0`,
 * and the reference's message text.
 *
 * Two kinds end a connection abruptly after the exception frame, as the
 * reference's respond() does: {@link ProtocolError} (and its subclasses) and
 * {@link PermissionDenied}. The others close it cleanly.
 */
import { QrexecError } from '../common/errors.js';

/** Python's `repr()` of a str, as the reference's messages use `{!r}`. */
export function pyRepr(s: string): string {
  const q = s.includes("'") && !s.includes('"') ? '"' : "'";
  let out = q;
  for (const ch of s) {
    const c = ch.codePointAt(0) as number;
    if (ch === '\\') out += '\\\\';
    else if (ch === q) out += `\\${q}`;
    else if (ch === '\n') out += '\\n';
    else if (ch === '\r') out += '\\r';
    else if (ch === '\t') out += '\\t';
    else if (c < 0x20 || c === 0x7f) out += `\\x${c.toString(16).padStart(2, '0')}`;
    else out += ch;
  }
  return out + q;
}

/** Any error qubesd reports to its client (QubesException and the reference's other sent classes). */
export class QubesError extends QrexecError {
  override name = 'QubesError';
  /** The class name sent on the wire. */
  readonly excType: string;
  /** Abort the connection after the exception frame (ProtocolError, PermissionDenied). */
  readonly abort: boolean;
  constructor(excType: string, message: string, abort = false) {
    super(message);
    this.excType = excType;
    this.abort = abort;
  }
}

const exc = (type: string, abort = false) =>
  class extends QubesError {
    constructor(message: string) {
      super(type, message, abort);
    }
  };

export class QubesException extends exc('QubesException') {}
/** A malformed request (reference ProtocolError, an AssertionError). */
export class ProtocolError extends exc('ProtocolError', true) {}
/** The request is not allowed (reference PermissionDenied). */
export class PermissionDenied extends exc('PermissionDenied', true) {}
export class QubesInvalidTagError extends exc('QubesInvalidTagError', true) {}
export class QubesInvalidLabelError extends exc('QubesInvalidLabelError', true) {}
export class QubesInvalidLabelValueError extends exc('QubesInvalidLabelValueError', true) {}
export class QubesValueError extends exc('QubesValueError') {}
export class QubesPropertyValueError extends exc('QubesPropertyValueError') {}
export class QubesVMAlreadyExistsError extends exc('QubesVMAlreadyExistsError') {}
export class QubesNotImplementedError extends exc('QubesNotImplementedError') {}
export class QubesVMNotFoundError extends QubesError {
  constructor(vmname: string) {
    super('QubesVMNotFoundError', `No such domain: ${pyRepr(vmname)}`);
  }
}
export class QubesVMInvalidUUIDError extends QubesError {
  constructor(uuid: string) {
    super('QubesVMInvalidUUIDError', `VM UUID is not valid: ${pyRepr(uuid)}`);
  }
}

/** Errors about one qube's state, with the reference's default messages. */
const vmExc = (type: string, dflt: (name: string) => string) =>
  class extends QubesError {
    constructor(vmName: string, message?: string) {
      super(type, message ?? dflt(vmName));
    }
  };
export class QubesVMError extends vmExc('QubesVMError', (n) => n) {}
export class QubesVMInUseError extends vmExc('QubesVMInUseError', (n) => `Domain is in use: ${pyRepr(n)}`) {}
export class QubesVMNotStartedError extends vmExc('QubesVMNotStartedError', (n) => `Domain is powered off: ${pyRepr(n)}`) {}
export class QubesVMNotRunningError extends vmExc(
  'QubesVMNotRunningError',
  (n) => `Domain not running (either powered off or paused): ${pyRepr(n)}`,
) {}
export class QubesVMNotPausedError extends vmExc('QubesVMNotPausedError', (n) => `Domain is not paused: ${pyRepr(n)}`) {}
export class QubesVMNotHaltedError extends vmExc('QubesVMNotHaltedError', (n) => `Domain is not powered off: ${pyRepr(n)}`) {}
export class QubesVMShutdownTimeoutError extends vmExc('QubesVMShutdownTimeoutError', (n) => `Domain shutdown timed out: ${pyRepr(n)}`) {}
export class QubesNoTemplateError extends vmExc('QubesNoTemplateError', (n) => `Template for the domain ${pyRepr(n)} not found`) {}

export class QubesNoSuchPropertyError extends QubesError {
  constructor(holder: string, prop: string) {
    super('QubesNoSuchPropertyError', `Invalid property ${pyRepr(prop)} of ${holder}`);
  }
}
export class QubesFeatureNotFoundError extends QubesError {
  constructor(vm: string, feature: string) {
    super('QubesFeatureNotFoundError', `Feature not set for domain ${vm}: ${feature}`);
  }
}
export class QubesTagNotFoundError extends QubesError {
  constructor(vm: string, tag: string) {
    super('QubesTagNotFoundError', `Tag not set for domain ${vm}: ${tag}`);
  }
}
export class QubesLabelNotFoundError extends QubesError {
  constructor(label: string) {
    super('QubesLabelNotFoundError', `Label does not exist: ${label}`);
  }
}
export class QubesLabelInUseError extends QubesError {
  constructor(label: string) {
    super('QubesLabelInUseError', `Label is still in use: ${pyRepr(label)}`);
  }
}
/** QubesPropertyValueError with the reference's default text. */
export function invalidValue(holder: string, prop: string, value: string, message?: string): QubesPropertyValueError {
  return new QubesPropertyValueError(message ?? `Invalid value ${pyRepr(value)} for property ${pyRepr(prop)} of ${pyRepr(holder)}`);
}
