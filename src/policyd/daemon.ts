/**
 * qrexec-policy-daemon: options, assembly and lifetime. The pieces live in
 * request.ts (parsing), decide.ts (decisions), server.ts (the socket),
 * eval-service.ts (policy.EvalSimple/EvalGUI), policy-store.ts (reload),
 * system-info-source.ts (qubes), gui-caller.ts (ask/notify) and ../audit.
 */
import * as os from 'node:os';
import * as path from 'node:path';
import { DEFAULT_LEGACY_DIR, DEFAULT_POLICY_DIRS } from '../policy-files/disk.js';
import { AuditLog } from '../audit/index.js';
import { last, numberOption, parseArgs, UsageError, type OptionSpec, type ParsedArgs } from '../common/args.js';
import { Notifier } from './decide.js';
import { EvalService } from './eval-service.js';
import { SocketServiceCaller, type GuiServiceCaller } from './gui-caller.js';
import { createLogger, type Logger, type LogLevel } from './log.js';
import { PolicyStore } from './policy-store.js';
import { PolicyServer, type ServerContext } from './server.js';
import { FileSystemInfo, QubesdSystemInfo, type SystemInfoSource } from './system-info-source.js';
import { errorLine, QrexecError, whatIsMissing } from '../common/errors.js';

export const DAEMON_USAGE = `usage: qrexec-policy-daemon [-h] [--policy-path POLICY_PATH] [--socket-path SOCKET_PATH]
                            [--eval-socket-path PATH] [--gui-socket-path PATH]
                            [--system-info FILE] [options]`;

export const DAEMON_HELP = `${DAEMON_USAGE}

Evaluate qrexec policy daemon: answers policy requests from qrexec-daemon on a
unix socket, one request per connection (key=value lines, then an empty line).

options:
  -h, --help                 show this help message and exit
  --policy-path DIR          policy directory (repeatable; default
                             /run/qubes/policy.d and /etc/qubes/policy.d)
  --legacy-dir DIR           4.0-format policy for !compat-4.0
                             (default /etc/qubes-rpc/policy)
  --socket-path PATH         policy socket (default /var/run/qubes/policy.sock)
  --eval-socket-path PATH    policy.EvalSimple socket service (default
                             /etc/qubes-rpc/policy.EvalSimple when no
                             --policy-path is given; "none" disables)
  --gui-socket-path PATH     policy.EvalGUI socket service (likewise,
                             /etc/qubes-rpc/policy.EvalGUI)
  --system-info FILE         qubesd internal.GetSystemInfo JSON to use instead
                             of asking qubesd; reloaded when it changes
  --qubesd-socket PATH       qubesd internal socket
                             (default /var/run/qubesd.internal.sock)
  --qubesd-events-socket PATH
                             qubesd admin socket for admin.Events, which tells
                             when cached system info is stale
                             (default /var/run/qubesd.sock; "none": fetch
                             system info for every request)
  --audit-db PATH            decision audit log (SQLite); default
                             /var/log/qubes/qrexec-policy-audit.sqlite as root,
                             else $XDG_STATE_HOME/qrexec-ts/policy-audit.sqlite
  --no-audit                 keep no audit log
  --audit-sync normal|full   normal: a decision is in the log before its reply
                             even if the daemon is killed; full: also across a
                             power loss (slower). Default normal.
  --audit-max-rows N         retention: keep at most N decisions (default 1000000)
  --audit-max-age-days N     retention: drop decisions older than N days
                             (default 90; 0 keeps them)
  --rpc-dir DIR              where dom0's policy.Ask/policy.Notify socket
                             services are (default /etc/qubes-rpc)
  --agent-socket GUIVM=PATH  reach policy.Ask/Notify of GUIVM on this unix
                             socket (repeatable; e.g. a qrexec-policy-agent)
  --qrexec-client PATH       qrexec-client used to reach other GUI domains
                             (default /usr/lib/qubes/qrexec-client; "none")
  --ask-timeout SEC          deny an ask not answered in time (default 120)
  --notify-timeout SEC       drop a notification not taken in time (default 5)
  --request-timeout SEC      close a connection whose request is incomplete
                             after this long (default 5)
  --log-level LEVEL          debug, info, warning or error (default info)
`;

export const DAEMON_OPTIONS: readonly OptionSpec[] = [
  { name: 'policy-path', value: true, repeat: true },
  { name: 'legacy-dir', value: true },
  { name: 'socket-path', value: true },
  { name: 'eval-socket-path', value: true },
  { name: 'gui-socket-path', value: true },
  { name: 'system-info', value: true },
  { name: 'qubesd-socket', value: true },
  { name: 'qubesd-events-socket', value: true },
  { name: 'audit-db', value: true },
  { name: 'no-audit' },
  { name: 'audit-sync', value: true },
  { name: 'audit-max-rows', value: true },
  { name: 'audit-max-age-days', value: true },
  { name: 'rpc-dir', value: true },
  { name: 'agent-socket', value: true, repeat: true },
  { name: 'qrexec-client', value: true },
  { name: 'ask-timeout', value: true },
  { name: 'notify-timeout', value: true },
  { name: 'request-timeout', value: true },
  { name: 'log-level', value: true },
];

export interface DaemonConfig {
  readonly policyDirs: readonly string[];
  readonly legacyDir: string;
  readonly socketPath: string;
  /** [path, explicitly requested] or null. */
  readonly evalSocket: readonly [string, boolean] | null;
  readonly guiSocket: readonly [string, boolean] | null;
  readonly systemInfoFile: string | null;
  readonly qubesdSocket: string;
  readonly qubesdEventsSocket: string | null;
  /** [path, explicitly requested] or null for no audit log. */
  readonly audit: readonly [string, boolean] | null;
  readonly auditSync: 'normal' | 'full';
  readonly auditMaxRows: number;
  readonly auditMaxAgeDays: number;
  readonly rpcDir: string;
  readonly agentSockets: ReadonlyMap<string, string>;
  readonly qrexecClient: string | null;
  readonly askTimeoutMs: number;
  readonly notifyTimeoutMs: number;
  readonly requestTimeoutMs: number;
  readonly logLevel: LogLevel;
}

function defaultAuditPath(): string {
  if (process.getuid?.() === 0) return '/var/log/qubes/qrexec-policy-audit.sqlite';
  const state = process.env['XDG_STATE_HOME'] || path.join(os.homedir(), '.local', 'state');
  return path.join(state, 'qrexec-ts', 'policy-audit.sqlite');
}

/** Command line → configuration. @throws UsageError */
export function daemonConfig(p: ParsedArgs): DaemonConfig {
  if (p.positional.length > 0) throw new UsageError(`unrecognized arguments: ${p.positional.join(' ')}`);
  const explicitPaths = p.options.get('policy-path');
  const systemDaemon = explicitPaths === undefined;
  const socketOpt = (name: string, dflt: string): readonly [string, boolean] | null => {
    const v = last(p, name);
    if (v === 'none') return null;
    if (v !== undefined) return [v, true];
    return systemDaemon ? [dflt, false] : null;
  };
  const level = last(p, 'log-level') ?? 'info';
  if (!['debug', 'info', 'warning', 'error'].includes(level)) {
    throw new UsageError(`argument --log-level: invalid choice: '${level}'`);
  }
  const sync = last(p, 'audit-sync') ?? 'normal';
  if (sync !== 'normal' && sync !== 'full') throw new UsageError(`argument --audit-sync: invalid choice: '${sync}'`);
  const agentSockets = new Map<string, string>();
  for (const v of p.options.get('agent-socket') ?? []) {
    const eq = v.indexOf('=');
    if (eq <= 0) throw new UsageError(`argument --agent-socket: expected GUIVM=PATH, not '${v}'`);
    agentSockets.set(v.slice(0, eq), v.slice(eq + 1));
  }
  const auditDb = last(p, 'audit-db');
  const events = last(p, 'qubesd-events-socket') ?? '/var/run/qubesd.sock';
  const client = last(p, 'qrexec-client') ?? '/usr/lib/qubes/qrexec-client';
  return {
    policyDirs: explicitPaths ?? [...DEFAULT_POLICY_DIRS],
    legacyDir: last(p, 'legacy-dir') ?? DEFAULT_LEGACY_DIR,
    socketPath: last(p, 'socket-path') ?? '/var/run/qubes/policy.sock',
    evalSocket: socketOpt('eval-socket-path', '/etc/qubes-rpc/policy.EvalSimple'),
    guiSocket: socketOpt('gui-socket-path', '/etc/qubes-rpc/policy.EvalGUI'),
    systemInfoFile: last(p, 'system-info') ?? null,
    qubesdSocket: last(p, 'qubesd-socket') ?? '/var/run/qubesd.internal.sock',
    qubesdEventsSocket: events === 'none' ? null : events,
    audit: p.flags.has('no-audit') ? null : auditDb !== undefined ? [auditDb, true] : [defaultAuditPath(), false],
    auditSync: sync,
    auditMaxRows: numberOption(p, 'audit-max-rows', 1_000_000),
    auditMaxAgeDays: numberOption(p, 'audit-max-age-days', 90),
    rpcDir: last(p, 'rpc-dir') ?? '/etc/qubes-rpc',
    agentSockets,
    qrexecClient: client === 'none' ? null : client,
    askTimeoutMs: numberOption(p, 'ask-timeout', 120) * 1000,
    notifyTimeoutMs: numberOption(p, 'notify-timeout', 5) * 1000,
    requestTimeoutMs: numberOption(p, 'request-timeout', 5) * 1000,
    logLevel: level as LogLevel,
  };
}

export function parseDaemonArgs(argv: readonly string[]): ParsedArgs {
  return parseArgs(argv, DAEMON_OPTIONS, { argparse: true });
}

/** A running daemon. */
export interface RunningDaemon {
  readonly store: PolicyStore;
  readonly server: PolicyServer;
  readonly audit: AuditLog | null;
  readonly log: Logger;
  /** The qubes (qubesd's GetSystemInfo or the system-info file). */
  readonly systemInfo: SystemInfoSource;
  close(): Promise<void>;
}

/** Failures that stop the daemon from starting (exit status 1). */
export class StartupError extends QrexecError {
  override name = 'StartupError';
}

/** What a started daemon serves, in one line (printed once at start). */
export function servingLine(cfg: DaemonConfig): string {
  const extra = [cfg.evalSocket, cfg.guiSocket].filter((x) => x !== null).map((x) => (x as readonly [string, boolean])[0]);
  const info = cfg.systemInfoFile ?? `qubesd (${cfg.qubesdSocket})`;
  return (
    `serving the policy in ${cfg.policyDirs.join(', ')} on ${cfg.socketPath}` +
    (extra.length ? ` (also ${extra.join(', ')})` : '') +
    `; qubes from ${info}; audit log ${cfg.audit === null ? 'off' : cfg.audit[0]}`
  );
}

export async function startDaemon(
  cfg: DaemonConfig,
  hooks: { log?: Logger; gui?: GuiServiceCaller | null; systemInfo?: SystemInfoSource } = {},
): Promise<RunningDaemon> {
  const log = hooks.log ?? createLogger('qrexec-policy-daemon', { level: cfg.logLevel });
  // A broken policy file is reported and denies everything until fixed; a
  // policy directory that is not there at all is a mistake in the set-up.
  for (const dir of cfg.policyDirs) {
    if (whatIsMissing(dir) !== undefined) throw new StartupError(`${dir}: policy directory does not exist`);
  }
  let systemInfo: SystemInfoSource;
  if (hooks.systemInfo) {
    // qubesd in this process (the host process): no socket, no event stream
    systemInfo = hooks.systemInfo;
  } else if (cfg.systemInfoFile !== null) {
    const f = new FileSystemInfo(cfg.systemInfoFile, log);
    if (!f.ok) throw new StartupError(`cannot load system info from ${cfg.systemInfoFile}: ${f.lastError?.message}`);
    f.watch();
    systemInfo = f;
  } else {
    systemInfo = new QubesdSystemInfo({
      socketPath: cfg.qubesdSocket,
      eventsSocketPath: cfg.qubesdEventsSocket,
      log,
    });
  }
  let audit: AuditLog | null = null;
  if (cfg.audit !== null) {
    const [auditPath, explicit] = cfg.audit;
    try {
      audit = new AuditLog({
        path: auditPath,
        sync: cfg.auditSync,
        maxRows: cfg.auditMaxRows,
        maxAgeDays: cfg.auditMaxAgeDays,
      });
    } catch (e) {
      if (explicit) {
        systemInfo.close();
        throw new StartupError(`cannot open the audit log ${auditPath}: ${(e as Error).message}`);
      }
      log.warning(`cannot open the default audit log ${auditPath} (${(e as Error).message}); decisions are not audited`);
    }
  }
  const store = new PolicyStore({ policyDirs: cfg.policyDirs, legacyDir: cfg.legacyDir, log });
  store.watch();
  const gui =
    hooks.gui !== undefined
      ? hooks.gui
      : new SocketServiceCaller({ rpcDir: cfg.rpcDir, agentSockets: cfg.agentSockets, qrexecClient: cfg.qrexecClient });
  const ctx: ServerContext = {
    policy: () => store.current,
    reportBroken: () => store.reportBroken(),
    log,
    gui,
    askTimeoutMs: cfg.askTimeoutMs,
    notify: new Notifier(gui, log, cfg.notifyTimeoutMs),
    systemInfo,
    audit,
    requestTimeoutMs: cfg.requestTimeoutMs,
  };
  const server = new PolicyServer(ctx);
  const evals: EvalService[] = [];
  const cleanup = async (): Promise<void> => {
    await Promise.all([server.close(), ...evals.map((e) => e.close())]);
    store.close();
    systemInfo.close();
    await audit?.close();
  };
  // The socket services first, the policy socket last: a client that waits
  // for the policy socket finds every socket served.
  const services: [typeof cfg.evalSocket, 'policy.EvalSimple' | 'policy.EvalGUI'][] = [
    [cfg.evalSocket, 'policy.EvalSimple'],
    [cfg.guiSocket, 'policy.EvalGUI'],
  ];
  for (const [sock, name] of services) {
    if (sock === null) continue;
    const svc = new EvalService(name, ctx);
    try {
      await svc.listen(sock[0]);
      evals.push(svc);
    } catch (e) {
      if (sock[1]) {
        await cleanup();
        throw new StartupError(`cannot listen on ${sock[0]}: ${errorLine(e)}`);
      }
      log.warning(`${name} not served: cannot listen on ${sock[0]} (${(e as Error).message})`);
    }
  }
  try {
    await server.listen(cfg.socketPath);
  } catch (e) {
    await cleanup();
    throw new StartupError(`cannot listen on ${cfg.socketPath}: ${errorLine(e)}`);
  }
  return { store, server, audit, log, systemInfo, close: cleanup };
}
