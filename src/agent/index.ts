/**
 * The qube side of qrexec: the agent (control vchan, services, local callers),
 * service execution, per-service configuration, qubes.VMExec argument decoding,
 * and a client library for calls from a running Node.js program.
 */
export { Agent, DEFAULT_AGENT_SOCKET, type AgentOptions } from './agent.js';
export { runAgentCli } from './cli.js';
export { parseServiceConfig, forceUserClash, defaultServiceConfig, ServiceConfigError, type ServiceConfig } from '../services/config.js';
export { execContextFromEnv, prepareCall, startService, type ExecContext } from '../services/exec.js';
export {
  findFile,
  findServiceFile,
  findQrexecService,
  parseTcpTarget,
  connectService,
  warnIgnoredOptions,
  loadServiceConfig,
  DEFAULT_SERVICE_PATH,
  DEFAULT_CONFIG_PATH,
  type ServiceTarget,
  type ServiceLookupFailure,
} from '../services/lookup.js';
/** The data-vchan pump lives in vchan/; re-exported for existing importers. */
export { startPump, type Pump, type PumpOptions } from '../vchan/index.js';
export { callService, encodeClientRequest, type CallOptions, type CallResult } from './client.js';
export { runClientVmCli, parseClientVmArgs } from './client-vm.js';
