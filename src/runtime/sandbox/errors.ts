import { QrexecError } from '../../common/errors.js';

/** Why a sandbox could not be set up, started or controlled. */
export class SandboxError extends QrexecError {
  override name = 'SandboxError';
  constructor(
    readonly code: 'UNAVAILABLE' | 'BAD_SPEC' | 'START' | 'STORAGE' | 'NETWORK' | 'CGROUP' | 'STATE',
    message: string,
  ) {
    super(message);
  }
}
