import { parseArgs } from 'node:util';
import { spawn } from 'node:child_process';
import { closeSync, mkdirSync, openSync, writeSync } from 'node:fs';
import { vchanEnvFrom } from '../vchan/index.js';
import { whatIsMissing } from '../common/errors.js';
import { DEFAULT_QUBESD_SOCKET } from '../qubesd-client/call.js';
import { DEFAULT_SOCKET_DIR } from './client.js';
import { DEFAULT_SERVICE_PATH } from './dom0.js';
import { DEFAULT_POLICY_PROGRAM, DEFAULT_POLICY_SOCKET } from './policy.js';
import { createQubeDaemons, parseQubeSpec, type QubeSpec } from './host.js';
import type { QubeDaemon, Logger } from './qube.js';

const USAGE = (argv0: string): string => `usage: ${argv0} [options] domainid domain-name [default user]
Options:
  -h, --help - display usage
  -q, --quiet - quiet mode
  --socket-dir=PATH - directory for qrexec socket, default: ${DEFAULT_SOCKET_DIR}
  -p, --policy-program=PATH - program to execute to check policy, default: ${DEFAULT_POLICY_PROGRAM}
  --policy-socket=PATH - policy daemon socket (also QREXEC_POLICY_SOCKET), default: ${DEFAULT_POLICY_SOCKET}
  -D, --direct - run directly, don't daemonize, log to stderr
  -u, --uuid=UUID - domain UUID, mandatory
  --qube=DOMID:NAME:UUID[:USER] - also serve this qube in the same process
      (repeatable; calls between qubes of one process skip their sockets)
  --qubesd-socket=PATH - qubesd Admin API socket, to start targets (autostart)
      and create, start and kill DispVMs of @dispvm: targets,
      default: ${DEFAULT_QUBESD_SOCKET}; "none": refuse such calls
`;

/** A usage error: the usage, then what was wrong; exit 2. */
function usage(argv0: string, msg: string): never {
  process.stderr.write(`${USAGE(argv0)}${argv0}: ${msg}\n`);
  process.exit(2);
}

/** `qrexec-daemon` main: command line of the reference daemon/qrexec-daemon.c. */
export async function qrexecDaemonMain(argv: string[], scriptPath: string): Promise<void> {
  const argv0 = 'qrexec-daemon';
  let parsed;
  try {
    parsed = parseArgs({
      args: argv,
      allowPositionals: true,
      options: {
        help: { type: 'boolean', short: 'h' },
        quiet: { type: 'boolean', short: 'q' },
        'socket-dir': { type: 'string' },
        'policy-program': { type: 'string', short: 'p' },
        'policy-socket': { type: 'string' },
        direct: { type: 'boolean', short: 'D' },
        uuid: { type: 'string', short: 'u' },
        qube: { type: 'string', multiple: true },
        'qubesd-socket': { type: 'string' },
      },
    });
  } catch (e) {
    usage(argv0, (e as Error).message.replace(/\. To specify a positional argument.*/s, ''));
  }
  const o = parsed.values;
  if (o.help) {
    process.stdout.write(USAGE(argv0));
    process.exit(0);
  }
  const pos = parsed.positionals;
  if (pos.length < 2 || pos.length > 3) usage(argv0, 'want domainid domain-name [default user]');
  if (!o.uuid) usage(argv0, 'Domain UUID option missing! (-u UUID)');
  const domid = Number.parseInt(pos[0] as string, 10) || 0;
  const name = pos[1] as string;
  const quiet = !!o.quiet;
  const log: Logger = (level, msg) => {
    if (quiet && level === 'info') return;
    process.stderr.write(`qrexec-daemon[${process.pid}]: ${level}: ${msg}\n`);
  };
  if (domid <= 0) {
    log('error', 'domain id=0?');
    process.exit(1);
  }
  const env = process.env;
  let startup = Number.parseInt(env['QREXEC_STARTUP_TIMEOUT'] ?? '', 10);
  if (!(startup > 0)) startup = 60;
  const haveTimeout = env['QREXEC_STARTUP_NOWAIT'] === undefined;

  // the agent is waited for on the vchan: a directory that is not there would be waited on silently
  const noVchanDir = whatIsMissing(vchanEnvFrom(env).dir);
  if (noVchanDir !== undefined) {
    process.stderr.write(`${argv0}: vchan socket directory (VCHAN_SOCKET_DIR): ${noVchanDir}\n`);
    process.exit(1);
  }
  if (!o.direct && env['QREXEC_DAEMON_NOTIFY_FD'] === undefined) {
    await daemonize(argv, scriptPath, name, haveTimeout, quiet);
    return;
  }
  const notifyFd = env['QREXEC_DAEMON_NOTIFY_FD'] !== undefined ? Number(env['QREXEC_DAEMON_NOTIFY_FD']) : undefined;
  const notify = (b: number): void => {
    if (notifyFd === undefined) return;
    try {
      const s = createWriteFd(notifyFd);
      s(b);
    } catch {
      /* parent gone */
    }
  };

  const qubes: QubeSpec[] = [{ domid, name, uuid: o.uuid, user: pos[2] ?? 'user' }];
  for (const spec of o.qube ?? []) {
    const q = parseQubeSpec(spec);
    if (!q) {
      log('error', `bad --qube=${spec} (want DOMID:NAME:UUID[:USER], DOMID > 0)`);
      process.exit(1);
    }
    qubes.push(q);
  }
  const qubesdSocket = o['qubesd-socket'] ?? DEFAULT_QUBESD_SOCKET;
  let daemons: QubeDaemon[];
  try {
    daemons = createQubeDaemons(qubes, {
      socketDir: o['socket-dir'] ?? DEFAULT_SOCKET_DIR,
      vchan: vchanEnvFrom(env),
      policySocket: o['policy-socket'] ?? env['QREXEC_POLICY_SOCKET'] ?? DEFAULT_POLICY_SOCKET,
      policyProgram: o['policy-program'] ?? DEFAULT_POLICY_PROGRAM,
      servicePath: (env['QREXEC_SERVICE_PATH'] ?? DEFAULT_SERVICE_PATH).split(':').filter((x) => x),
      startupTimeoutMs: haveTimeout ? startup * 1000 : 0,
      log,
      ...(qubesdSocket !== 'none' ? { qubesdSocket } : {}),
    });
  } catch (e) {
    log('error', (e as Error).message);
    process.exit(1);
  }
  const onSignal = (): void => {
    void Promise.all(daemons.map((d) => d.stop())).then(() => process.exit(0));
  };
  process.on('SIGTERM', onSignal);
  process.on('SIGINT', onSignal);
  process.on('SIGPIPE', () => undefined);
  try {
    await Promise.all(daemons.map((d) => d.start()));
  } catch (e) {
    const msg = (e as Error).message;
    if (/no server after/.test(msg)) {
      notify(1);
      log('error', `qrexec connection timeout: Cannot connect to '${name}' qrexec agent for ${startup} seconds, giving up`);
      process.exit(3);
    }
    log('error', msg);
    process.exit(1);
  }
  notify(0);
  // each qube's daemon ends on its own (agent gone for good); the process ends with the last
  const codes = await Promise.all(daemons.map((d) => d.done));
  process.exit(Math.max(...codes));
}

function createWriteFd(fd: number): (b: number) => void {
  // one synchronous byte, then close: the parent waits for exactly one byte
  return (b) => {
    writeSync(fd, Buffer.from([b]));
    closeSync(fd);
  };
}

/** Without --direct: start ourselves in the background, logging to /var/log/qubes/qrexec.NAME.log, and wait for "connected". */
async function daemonize(argv: string[], scriptPath: string, name: string, haveTimeout: boolean, quiet: boolean): Promise<void> {
  const logDir = process.env['QREXEC_LOG_DIR'] ?? '/var/log/qubes';
  let logfd: number;
  try {
    mkdirSync(logDir, { recursive: true });
    logfd = openSync(`${logDir}/qrexec.${name}.log`, 'w', 0o660);
  } catch (e) {
    process.stderr.write(`qrexec-daemon: open: ${(e as Error).message}\n`);
    process.exit(1);
  }
  const child = spawn(process.execPath, [scriptPath, ...argv], {
    detached: true,
    stdio: ['ignore', logfd, logfd, 'pipe'],
    env: { ...process.env, QREXEC_DAEMON_NOTIFY_FD: '3' },
  });
  child.unref();
  if (!haveTimeout) process.exit(0);
  if (!quiet) process.stderr.write("Waiting for VM's qrexec agent.");
  const dots = setInterval(() => {
    if (!quiet) process.stderr.write('.');
  }, 1000);
  const pipe = child.stdio[3] as NodeJS.ReadableStream;
  const byte = await new Promise<number | undefined>((resolve) => {
    pipe.once('data', (d: Buffer) => resolve(d[0]));
    pipe.once('end', () => resolve(undefined));
    pipe.once('error', () => resolve(undefined));
  });
  clearInterval(dots);
  if (byte === 0) {
    if (!quiet) process.stderr.write('\nConnected to VM\n');
    process.exit(0);
  }
  if (byte === 1) {
    process.stderr.write(`\nCannot connect to '${name}' qrexec agent, giving up\n`);
    process.exit(3);
  }
  process.stderr.write('\nConnection to the VM failed\n');
  process.exit(1);
}
