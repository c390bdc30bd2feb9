/**
 * Channel transports: the qubes-core-vchan-socket transport (unix sockets named
 * vchan.<server>.<client>.<port>.sock), an in-memory pair for tests, and the
 * data-vchan stream (stdin/stdout/stderr/exit code) shared by both ends of a call.
 */
export { type Channel, memoryPair } from './channel.js';
export {
  DEFAULT_VCHAN_SOCKET_DIR,
  VchanError,
  type VchanEnv,
  type VchanListener,
  type ConnectOptions,
  vchanEnvFrom,
  vchanPath,
  vchanListen,
  vchanConnect,
  connectOnce,
} from './socket.js';
export { runDataStream, type DataStreamOptions, type DataStreamResult } from './datastream.js';
