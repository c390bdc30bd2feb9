import { QrexecError } from '../common/errors.js';

/** Why a peer's bytes were rejected. Closed set: every protocol failure maps to one. */
export type ProtocolErrorCode =
  | 'UNKNOWN_TYPE' // message type not valid on this channel / in this state
  | 'BAD_LENGTH' // declared length outside the bounds of the type
  | 'BAD_PAYLOAD' // payload malformed (missing NUL, bad field)
  | 'BAD_VERSION' // unsupported protocol version in MSG_HELLO
  | 'BAD_COMMAND' // command line cannot be parsed
  | 'DECODER_FAILED'; // push() after a previous error

/**
 * A protocol violation by a peer. `offset` is the byte offset in the stream
 * (counting from the first byte pushed into the decoder) where the offending
 * message starts, when known.
 */
export class ProtocolError extends QrexecError {
  override name = 'ProtocolError';
  constructor(
    readonly code: ProtocolErrorCode,
    message: string,
    readonly offset?: number,
  ) {
    super(message);
  }
}
