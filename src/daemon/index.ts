/**
 * Host side of qrexec: the per-qube daemon (control vchan, local client
 * socket, service calls), the policy client, data-port allocation, the local
 * client library used by qrexec-client, and dom0 service execution.
 */
export { QubeDaemon, MAX_PENDING_CALLS, MAX_CLIENTS, type QubeDaemonOptions, type QubeDirectory, type QubesdCaller, type Logger, type LogLevel } from './qube.js';
export {
  askPolicy,
  formatPolicyRequest,
  parsePolicyResponse,
  DEFAULT_POLICY_SOCKET,
  DEFAULT_POLICY_PROGRAM,
  MAX_POLICY_RESPONSE,
  type PolicyQuery,
  type PolicyAllow,
  type PolicyDecision,
  type PolicyOutcome,
  type PolicyClientOptions,
} from './policy.js';
export { PortAllocator } from './ports.js';
export { DaemonClient, DaemonClientError, DEFAULT_SOCKET_DIR, type DataEndpoint } from './client.js';
export { runDom0Service, DEFAULT_SERVICE_PATH, type InProcessService, type InProcessServices, type InProcessReply } from './dom0.js';
export { QubeHost, createQubeDaemons, parseQubeSpec, type QubeSpec, type SharedQubeOptions } from './host.js';
