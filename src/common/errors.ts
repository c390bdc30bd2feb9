/** Base class for errors this project raises on purpose (as opposed to bugs). */
export class QrexecError extends Error {
  override name = 'QrexecError';
}
