/** Command-line front ends of the agent programs (kept here so src/cli stays thin). */
import * as os from 'node:os';
import * as path from 'node:path';
import { errorLine, whatIsMissing } from '../common/errors.js';
import { DataLimitError, IDLE_TIMEOUT_ENV, SETUP_TIMEOUT_ENV, dataLimitsFromEnv, parseSeconds, vchanEnvFrom, type DataLimits } from '../vchan/index.js';
import { Agent, DEFAULT_AGENT_SOCKET } from './agent.js';
import { execContextFromEnv } from '../services/exec.js';
import { watchSignalSender } from '../native/addon.js';

const FORK_SERVER_SOCKET = '/var/run/qubes/qrexec-server.%s.sock';

function agentUsage(argv0: string): string {
  return (
    `usage: ${argv0} [options]\n` +
    'Options:\n' +
    '  -h, --help - display usage\n' +
    `  --agent-socket=PATH - path to listen at, default: ${DEFAULT_AGENT_SOCKET}\n` +
    `  --fork-server-socket=PATH - where to find the fork server, default: ${FORK_SERVER_SOCKET}\n` +
    '    (set empty to disable, use %s as username)\n' +
    "  --no-fork-server - don't try to connect to fork server\n" +
    `  --data-setup-timeout=SECONDS - each set-up step of a call's data vchan (connect, peer's hello), 0: none (default: $${SETUP_TIMEOUT_ENV} or 120)\n` +
    `  --data-idle-timeout=SECONDS - close a call after this long without any frame either way, 0: never (default: $${IDLE_TIMEOUT_ENV} or 0)\n`
  );
}

/** A logger writing `qrexec-agent[pid]: msg` lines to stderr. */
export function stderrLogger(name: string): (msg: string) => void {
  return (msg) => {
    process.stderr.write(`${name}[${process.pid}]: ${msg}\n`);
  };
}

/**
 * qrexec-agent's command line, as the reference's getopt_long("ha:s:S"):
 * --agent-socket=PATH (-a), --fork-server-socket=PATH (-s; accepted, there is
 * no fork server: services are started by the agent itself), --no-fork-server (-S).
 * Returns the exit status.
 */
export async function runAgentCli(args: string[]): Promise<number> {
  let agentSocket = DEFAULT_AGENT_SOCKET;
  const argv0 = 'qrexec-agent';
  let limits: DataLimits;
  try {
    limits = dataLimitsFromEnv(process.env);
  } catch (e) {
    if (!(e instanceof DataLimitError)) throw e;
    process.stderr.write(`${argv0}: ${e.message}\n`);
    return 2;
  }
  for (let i = 0; i < args.length; i++) {
    const a = args[i] as string;
    const takeValue = (name: string): string | undefined => {
      if (a.startsWith(`${name}=`)) return a.slice(name.length + 1);
      if (a === name) return args[++i];
      return undefined;
    };
    if (a === '-h' || a === '--help') {
      process.stdout.write(agentUsage(argv0));
      return 0;
    }
    const sock = a.startsWith('--agent-socket') ? takeValue('--agent-socket') : a.startsWith('-a') ? (a.length > 2 ? a.slice(2) : args[++i]) : undefined;
    if (sock !== undefined) {
      agentSocket = sock;
      continue;
    }
    if (a.startsWith('--fork-server-socket') || a.startsWith('-s')) {
      const v = a.startsWith('--') ? takeValue('--fork-server-socket') : a.length > 2 ? a.slice(2) : args[++i];
      if (v === undefined) {
        process.stderr.write(`${argv0}: option requires an argument -- '${a}'\n${agentUsage(argv0)}`);
        return 2;
      }
      continue;
    }
    if (a === '--no-fork-server' || a === '-S') continue;
    const limit = (['--data-setup-timeout', '--data-idle-timeout'] as const).find((n) => a === n || a.startsWith(`${n}=`));
    if (limit !== undefined) {
      const v = takeValue(limit);
      try {
        if (v === undefined) throw new DataLimitError(`option '${limit}' requires an argument`);
        const ms = parseSeconds(limit, v);
        limits = limit === '--data-setup-timeout' ? { ...limits, setupTimeoutMs: ms } : { ...limits, idleTimeoutMs: ms };
      } catch (e) {
        if (!(e instanceof DataLimitError)) throw e;
        process.stderr.write(`${argv0}: ${e.message}\n${agentUsage(argv0)}`);
        return 2;
      }
      continue;
    }
    process.stderr.write(`${argv0}: unrecognized option '${a}'\n${agentUsage(argv0)}`);
    return 2;
  }
  // the agent socket is opened only after dom0's handshake: a directory that
  // is not there is said now, not after waiting for dom0
  const missing = whatIsMissing(path.dirname(agentSocket));
  if (missing !== undefined) {
    process.stderr.write(`${argv0}: agent socket ${agentSocket}: ${missing}\n`);
    return 1;
  }
  const log = stderrLogger('qrexec-agent');
  const agent = new Agent({
    agentSocket,
    vchan: vchanEnvFrom(process.env),
    exec: execContextFromEnv(process.env, log),
    log,
    limits,
  });
  let terminated = false;
  process.on('SIGTERM', () => {
    terminated = true;
    agent.close();
  });
  process.on('SIGPIPE', () => undefined);
  // listening for dom0 first (bound in this turn), the rest while it connects
  const started = agent.start();
  // A service may send SIGUSR1 to QREXEC_AGENT_PID (us) to have its output read
  // from its stdin socket. One process serves every call, so the sender's pid
  // tells which call it is: that needs the native addon's signal watch. Either
  // way a listener is installed, so Node never starts its inspector on SIGUSR1.
  // (No service runs before dom0's handshake.)
  if (!watchSignalSender(os.constants.signals.SIGUSR1, (pid, lineage) => agent.serviceSignal(pid, lineage))) {
    process.on('SIGUSR1', () => log('SIGUSR1 ignored: the single-socket switch for services needs the native addon'));
  }
  try {
    await started;
  } catch (e) {
    agent.close();
    // SIGTERM before dom0 connected: a clean stop
    if (terminated) return 0;
    process.stderr.write(`${argv0}: ${errorLine(e)}\n`);
    return 1;
  }
  if (process.env['NOTIFY_SOCKET']) log('NOTIFY_SOCKET set: sd_notify is not implemented');
  await agent.done;
  return terminated ? 0 : 1;
}
