/**
 * The qrexec policy daemon: the socket protocol of the reference
 * qrexec-policy-daemon, live policy reload, ask/notify routing to the GUI
 * domain, and the audit log; plus qrexec-policy-exec and the terminal
 * policy agent.
 */
export { RequestParser, formatRequest, MAX_SERVICE_AND_ARG, MAX_NAME, type DaemonRequest, type ParseStep } from './request.js';
export { decide, Notifier, askIcons, DENY_REPLY, type DecideContext, type Outcome } from './decide.js';
export { PolicyServer, decideAndRecord, type ServerContext } from './server.js';
export { EvalService } from './eval-service.js';
export { PolicyStore, type PolicyState } from './policy-store.js';
export {
  FileSystemInfo,
  QubesdSystemInfo,
  staticSystemInfo,
  readSystemInfoFile,
  type SystemInfoSource,
} from './system-info-source.js';
export { SocketServiceCaller, callSocketService, type GuiServiceCaller, type GuiService } from './gui-caller.js';
export { startDaemon, daemonConfig, parseDaemonArgs, type DaemonConfig, type RunningDaemon } from './daemon.js';
export { createLogger, silentLogger, safe, type Logger } from './log.js';
