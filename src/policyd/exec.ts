/**
 * qrexec-policy-exec, command-line compatible with the reference
 * (qrexec/tools/qrexec_policy_exec.py):
 *
 *     qrexec-policy-exec [--assume-yes-for-ask] [--just-evaluate] [--path PATH] SOURCE TARGET SERVICE+ARG
 *     qrexec-policy-exec [...] DOMAIN-ID SOURCE TARGET SERVICE+ARG PROCESS-IDENT
 *
 * Three arguments evaluate and print the daemon-style reply (exit 0 for
 * allow, 1 otherwise); five also run the call when allowed (start the
 * target through qubesd, then qrexec-client), as the reference does.
 *
 * Unlike the reference, which always loads the policy itself, this asks the
 * running qrexec-policy-daemon (--socket-path) and falls back to evaluating
 * in-process only when the daemon cannot be reached — and says so on stderr
 * (qubes-issues #11058: the reference's fallbacks are silent). With an
 * explicit --path the policy in those directories is evaluated in-process,
 * since the daemon may be using other directories.
 */
import { spawn } from 'node:child_process';
import * as net from 'node:net';
import { DEFAULT_LEGACY_DIR, DEFAULT_POLICY_DIRS } from '../policy-files/disk.js';
import { qubesdCall } from '../qubesd-client/call.js';
import { last, parseArgs, UsageError, type ParsedArgs } from '../common/args.js';
import { decide, Notifier, type Outcome } from './decide.js';
import { SocketServiceCaller } from './gui-caller.js';
import { createLogger, type Logger } from './log.js';
import { PolicyStore } from './policy-store.js';
import { formatRequest, type DaemonRequest } from './request.js';
import { systemInfoOrError } from './server.js';
import { FileSystemInfo, QubesdSystemInfo, type SystemInfoSource } from './system-info-source.js';
import { CommandError, whatIsMissing } from '../common/errors.js';

export const EXEC_USAGE = `usage: qrexec-policy-exec -h
usage: qrexec-policy-exec [--assume-yes-for-ask] [--just-evaluate] [--path PATH] [--legacy-dir DIR] SOURCE TARGET service+argument
usage: qrexec-policy-exec [--assume-yes-for-ask] [--just-evaluate] [--path PATH] [--legacy-dir DIR] domain-id SOURCE TARGET service+argument process-ident`;

export const EXEC_HELP = `${EXEC_USAGE}

To evaluate policy, pass 3 positional arguments:

- Source domain name
- Target domain name
- Service name and argument separated by "+"

To actually run a qrexec call, pass 5 positional arguments:

- Source domain ID (Xen or similar, not Qubes ID)
- Source domain name
- Target domain name
- Service name and argument separated by "+"
- Qrexec process identifier (for data channel connection)

Note that this usage is deprecated.

options:
  -h, --help            show this help message and exit
  --assume-yes-for-ask  Allow run of service without confirmation if policy say 'ask'
  --just-evaluate       Do not run the service, only evaluate policy; retcode=0 means 'allow'
  --path PATH           Use alternative policy path (evaluated in-process)
  --legacy-dir DIR      4.0 policy directory for !compat-4.0 in-process
                        (default /etc/qubes-rpc/policy)
  --socket-path PATH    policy daemon socket (default /var/run/qubes/policy.sock)
  --system-info FILE    system info JSON for in-process evaluation (default: ask qubesd)
  --qubesd-socket PATH  qubesd internal socket (default /var/run/qubesd.internal.sock)
  --qubesd-admin-socket PATH
                        qubesd admin socket, to start targets (default /var/run/qubesd.sock)
  --qrexec-client PATH  (default $QREXEC_CLIENT or /usr/lib/qubes/qrexec-client)
`;

export const EXEC_OPTIONS = [
  { name: 'assume-yes-for-ask' },
  { name: 'just-evaluate' },
  { name: 'path', value: true, repeat: true },
  { name: 'legacy-dir', value: true },
  { name: 'socket-path', value: true },
  { name: 'system-info', value: true },
  { name: 'qubesd-socket', value: true },
  { name: 'qubesd-admin-socket', value: true },
  { name: 'qrexec-client', value: true },
] as const;

/** Ask the daemon. Resolves with its reply, or rejects if it cannot be reached. */
export function askDaemon(socketPath: string, req: DaemonRequest, timeoutMs = 0): Promise<string> {
  return new Promise((resolve, reject) => {
    const sock = net.connect({ path: socketPath, allowHalfOpen: true });
    const chunks: Buffer[] = [];
    let connected = false;
    const timer =
      timeoutMs > 0
        ? setTimeout(() => {
            sock.destroy();
            reject(new Error('no reply in time'));
          }, timeoutMs)
        : null;
    sock.on('connect', () => {
      connected = true;
      sock.write(formatRequest(req));
    });
    sock.on('data', (c: Buffer) => chunks.push(c));
    sock.on('end', () => {
      if (timer) clearTimeout(timer);
      sock.destroy();
      resolve(Buffer.concat(chunks).toString('latin1'));
    });
    sock.on('error', (e) => {
      if (timer) clearTimeout(timer);
      // After connecting, an error is the daemon dropping us: a deny, not a reason to fall back.
      if (connected) resolve('');
      else reject(e);
    });
  });
}

/** Evaluate in this process, as the daemon would. */
export async function evaluateInProcess(
  req: DaemonRequest,
  opts: { policyDirs: readonly string[]; legacyDir?: string; systemInfo: SystemInfoSource; log: Logger },
): Promise<string> {
  const store = new PolicyStore({ policyDirs: opts.policyDirs, legacyDir: opts.legacyDir, log: opts.log });
  const gui = new SocketServiceCaller();
  const info = await systemInfoOrError(opts.systemInfo);
  const out: Outcome = await decide(req, info, {
    policy: () => store.current,
    log: opts.log,
    gui,
    askTimeoutMs: 120_000,
    notify: new Notifier(gui, opts.log),
  });
  return out.reply;
}

function parseReply(reply: string): Map<string, string> {
  const m = new Map<string, string>();
  for (const line of reply.split('\n')) {
    const eq = line.indexOf('=');
    if (eq < 0 || m.has(line.slice(0, eq))) throw new Error(`bad policy response ${JSON.stringify(reply)}`);
    m.set(line.slice(0, eq), line.slice(eq + 1));
  }
  return m;
}

/** Run the command; resolves with the exit status. */
export async function runPolicyExec(argv: readonly string[], log: Logger = createLogger('qrexec-policy-exec')): Promise<number> {
  const p: ParsedArgs = parseArgs(argv, EXEC_OPTIONS, { argparse: true });
  if (p.help) {
    process.stdout.write(EXEC_HELP);
    return 0;
  }
  const args = p.positional;
  if (args.length !== 3 && args.length !== 5) {
    throw new UsageError(`Must have 3 or 5 positional arguments, not ${args.length}`);
  }
  const justEvaluate = p.flags.has('just-evaluate');
  const [domainId, source, intendedTarget, serviceAndArg, processIdent] =
    args.length === 3 ? [undefined, args[0], args[1], args[2], undefined] : args;
  const req: DaemonRequest = {
    source: source as string,
    intendedTarget: intendedTarget as string,
    serviceAndArg: serviceAndArg as string,
    requestedSource: undefined,
    assumeYesForAsk: p.flags.has('assume-yes-for-ask'),
    justEvaluate,
  };
  const explicitPaths = p.options.get('path');
  const inProcess = async (why: string, fallback: boolean): Promise<string> => {
    if (fallback) log.warning(`${why}; evaluating the policy in-process`);
    const file = last(p, 'system-info');
    const systemInfo: SystemInfoSource =
      file !== undefined
        ? new FileSystemInfo(file, log)
        : new QubesdSystemInfo({
            socketPath: last(p, 'qubesd-socket') ?? '/var/run/qubesd.internal.sock',
            eventsSocketPath: null,
            log,
          });
    const policyDirs = explicitPaths ?? DEFAULT_POLICY_DIRS;
    for (const d of policyDirs) {
      if (whatIsMissing(d) !== undefined) throw new CommandError(`${d}: policy directory does not exist`);
    }
    try {
      return await evaluateInProcess(req, {
        policyDirs,
        legacyDir: last(p, 'legacy-dir') ?? DEFAULT_LEGACY_DIR,
        systemInfo,
        log,
      });
    } finally {
      systemInfo.close();
    }
  };
  let reply: string;
  if (explicitPaths !== undefined) {
    reply = await inProcess('--path given', false);
  } else {
    const sockPath = last(p, 'socket-path') ?? '/var/run/qubes/policy.sock';
    try {
      reply = await askDaemon(sockPath, req);
    } catch (e) {
      reply = await inProcess(`policy daemon not reachable at ${sockPath} (${(e as NodeJS.ErrnoException).code ?? (e as Error).message})`, true);
    }
  }
  if (reply === '') reply = 'result=deny';

  if (args.length === 3) {
    process.stdout.write(reply + '\n');
    return reply === 'result=allow' || reply.includes('\nresult=allow\n') ? 0 : 1;
  }
  const result = parseReply(reply);
  if (result.get('result') !== 'allow') return 1;
  if (justEvaluate) return 0;
  return runCall(p, result, {
    domainId: domainId as string,
    source: req.source,
    intendedTarget: req.intendedTarget,
    serviceAndArg: req.serviceAndArg,
    processIdent: processIdent as string,
  });
}

/** Start the allowed call like the reference: qubesd to start the target, then qrexec-client. */
async function runCall(
  p: ParsedArgs,
  result: Map<string, string>,
  call: { domainId: string; source: string; intendedTarget: string; serviceAndArg: string; processIdent: string },
): Promise<number> {
  let target = result.get('target') ?? '';
  const dispvm = target.startsWith('@dispvm:');
  let cmd = `QUBESRPC ${call.serviceAndArg} ${call.source}`;
  const admin = last(p, 'qubesd-admin-socket') ?? '/var/run/qubesd.sock';
  if (target === 'dom0' || target === '@adminvm') {
    let intended = call.intendedTarget;
    let type = 'name';
    if (intended.startsWith('@')) {
      type = 'keyword';
      intended = intended.slice(1);
    }
    cmd += ` ${type} ${intended}`;
  } else {
    target = result.get('target_uuid') ?? '';
    cmd = `${result.get('user') || 'DEFAULT'}:` + cmd;
    if (dispvm) {
      target = (await qubesdCall(admin, 'admin.vm.CreateDisposable', target, { payload: Buffer.from('uuid') })).toString('latin1');
    }
    await qubesdCall(admin, 'admin.vm.Start', target);
  }
  const client = last(p, 'qrexec-client') ?? process.env['QREXEC_CLIENT'] ?? '/usr/lib/qubes/qrexec-client';
  const child = spawn(
    client,
    [dispvm ? '-EWkd' : '-Ed', target, '-c', [call.processIdent, call.source, call.domainId].join(','), '--', cmd],
    // our qrexec-client sends -k's admin.vm.Kill to the same qubesd (the reference's ignores this)
    { stdio: 'inherit', env: { ...process.env, QREXEC_QUBESD_SOCKET: admin } },
  );
  return new Promise((resolve) => {
    child.on('error', (e) => {
      process.stderr.write(`qrexec-policy-exec: cannot run ${client}: ${e.message}\n`);
      resolve(1);
    });
    child.on('exit', (code, sig) => resolve(code ?? (sig ? 128 : 1)));
  });
}
