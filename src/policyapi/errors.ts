/**
 * The Policy API's errors, named as the reference's (qrexec/policy/admin.py):
 * a service call that fails for one of them exits 1 with
 * `<ClassName> <message>` on stderr, which clients map back to the class.
 */

/** An error meant for the user of the API. */
export class PolicyAdminException extends Error {
  override name = 'PolicyAdminException';
}

/** A token check failed: the file is not in the state the caller expected. */
export class PolicyAdminTokenException extends PolicyAdminException {
  override name = 'PolicyAdminTokenException';
}

export class PolicyAdminFileNotFoundException extends PolicyAdminException {
  override name = 'PolicyAdminFileNotFoundException';
}

/** A request the client should have known not to send. */
export class PolicyAdminProtocolException extends PolicyAdminException {
  override name = 'PolicyAdminProtocolException';
}

/** The policy with the change applied would not load. */
export class PolicyAdminSyntaxException extends PolicyAdminProtocolException {
  override name = 'PolicyAdminSyntaxException';
}

export class PolicyAdminInvalidFileNameException extends PolicyAdminProtocolException {
  override name = 'PolicyAdminInvalidFileNameException';
}

export class PolicyAdminInvalidFilePathException extends PolicyAdminProtocolException {
  override name = 'PolicyAdminInvalidFilePathException';
}

/** Ours (not in the reference): the caller may not do this to this file (scoped delegation). */
export class PolicyAdminAccessException extends PolicyAdminException {
  override name = 'PolicyAdminAccessException';
}

/** Ours: the change breaks a policy test (tests/*.test). */
export class PolicyAdminTestFailedException extends PolicyAdminException {
  override name = 'PolicyAdminTestFailedException';
}

const CLASSES: readonly (new (m: string) => PolicyAdminException)[] = [
  PolicyAdminException,
  PolicyAdminTokenException,
  PolicyAdminFileNotFoundException,
  PolicyAdminProtocolException,
  PolicyAdminSyntaxException,
  PolicyAdminInvalidFileNameException,
  PolicyAdminInvalidFilePathException,
  PolicyAdminAccessException,
  PolicyAdminTestFailedException,
];

/** The exception a service's stderr names (`ClassName message`), or null when it names none. */
export function exceptionFromStderr(stderr: string): PolicyAdminException | null {
  const sp = stderr.indexOf(' ');
  const name = sp < 0 ? stderr : stderr.slice(0, sp);
  for (const C of CLASSES) {
    const e = new C(sp < 0 ? '' : stderr.slice(sp + 1));
    if (e.name === name) return e;
  }
  return null;
}
