/**
 * The qrexec wire protocol (QubesOS libqrexec/qrexec.h): constants, a push-based
 * frame decoder, message encoders and payload parsers, and command-line parsing.
 * Pure: no sockets, no files. Every length and field a peer sends is checked here
 * or by the decoder's length rules before use.
 */
export * from './constants.js';
export { ProtocolError, type ProtocolErrorCode } from './errors.js';
export { FrameDecoder, type Frame, type LengthBounds, type LengthRules } from './decoder.js';
export * from './messages.js';
export * from './command.js';
export { replaceUnsafeBytes } from './replace.js';
