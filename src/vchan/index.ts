/**
 * Channel transports: the qubes-core-vchan-socket transport (unix sockets named
 * vchan.<server>.<client>.<port>.sock), an in-memory pair for tests, and the
 * data-vchan pump (stdin/stdout/stderr/exit code) that every end of a call
 * runs: the agent's services and callers, dom0 services and qrexec-client.
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
  vchanDirFor,
  vchanListen,
  vchanConnect,
  connectOnce,
  connectStream,
  connectUnixNow,
} from './socket.js';
export { startPump, type Pump, type PumpOptions, type LocalSink, type LocalSource } from './pump.js';
export {
  COMPLAINTS_LOGGED_PER_CALL,
  DEFAULT_DATA_LIMITS,
  DataLimitError,
  IDLE_TIMEOUT_ENV,
  SETUP_TIMEOUT_ENV,
  dataLimitsFromEnv,
  parseSeconds,
  type DataLimits,
} from './limits.js';
export { isSocketStream, onPeerHangup } from './local-socket.js';
