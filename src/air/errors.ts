/** Errors of the Qubes Air set-up and of its dom0 services. */
import { QrexecError } from '../common/errors.js';

/** A Qubes Air operation cannot be done (bad name, unknown peer, relay failure...). */
export class AirError extends QrexecError {
  override name = 'AirError';
}
