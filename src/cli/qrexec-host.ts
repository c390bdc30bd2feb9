/** qrexec-host: the policy daemon and the qrexec daemons of all qubes in one process (src/host). */
import { parseArgs, UsageError, usageExit, last } from '../common/args.js';
import { DEFAULT_SERVICE_PATH, DEFAULT_SOCKET_DIR, parseQubeSpec, type QubeSpec } from '../daemon/index.js';
import { DAEMON_OPTIONS, daemonConfig, servingLine, StartupError } from '../policyd/daemon.js';
import { exitOnUncaught, whatIsMissing } from '../common/errors.js';
import { startHost } from '../host/index.js';
import { vchanEnvFrom } from '../vchan/index.js';
import { DEFAULT_QUBESD_SOCKET } from '../qubesd-client/call.js';
import { DEFAULT_POLICY_API_SOCKET } from '../policyapi/server.js';

const prog = 'qrexec-host';
exitOnUncaught(prog);
const USAGE = `usage: qrexec-host --qube DOMID:NAME:UUID[:USER] [--qube ...] [--qrexec-socket-dir DIR]
                   [qrexec-policy-daemon options]`;
const HELP = `${USAGE}

The dom0 side of qrexec in one process: the policy daemon (its socket is
served as by qrexec-policy-daemon) and the qrexec daemon of every qube given
with --qube. Calls of these qubes are decided by the policy daemon in this
process, with the same checks, audit record and ask/notify routing as over
its socket. Calls between the qubes are set up without a socket round trip.

options:
  -h, --help                 show this help message and exit
  --qube DOMID:NAME:UUID[:USER]
                             a qube to serve (repeatable, at least one); USER
                             replaces DEFAULT: in commands (default "user")
  --qrexec-socket-dir DIR    directory of the qrexec.<domid|name|uuid:UUID>
                             client sockets (default ${DEFAULT_SOCKET_DIR})
  --qubesd-admin-socket PATH qubesd Admin API socket, to start targets
                             (autostart) and create, start and kill DispVMs
                             of @dispvm: targets (default
                             ${DEFAULT_QUBESD_SOCKET}; "none": refuse such
                             calls). --qubesd-socket is the policy daemon's
                             internal socket for system info.
  --policy-api-socket PATH   the Policy API socket for dom0's qubes-policy
                             and qubes-policy-editor (default
                             /var/run/qubes/policy-admin.sock without
                             --policy-path, else none; "none": not served)
  --policy-api-dir DIR       the directory the Policy API edits (default:
                             the last --policy-path, /etc/qubes/policy.d);
                             "none": no Policy API (policy.* not served)
  every option of qrexec-policy-daemon (see qrexec-policy-daemon --help)

environment: VCHAN_SOCKET_DIR and VCHAN_DOMAIN (the vchan transport),
QREXEC_SERVICE_PATH (dom0 services, default ${DEFAULT_SERVICE_PATH})
`;

try {
  const parsed = parseArgs(process.argv.slice(2), [...DAEMON_OPTIONS, { name: 'qube', value: true, repeat: true }, { name: 'qrexec-socket-dir', value: true }, { name: 'qubesd-admin-socket', value: true }, { name: 'policy-api-socket', value: true }, { name: 'policy-api-dir', value: true }], { argparse: true });
  if (parsed.help) {
    process.stdout.write(HELP);
    process.exit(0);
  }
  const qubes: QubeSpec[] = [];
  for (const spec of parsed.options.get('qube') ?? []) {
    const q = parseQubeSpec(spec);
    if (!q) throw new UsageError(`argument --qube: want DOMID:NAME:UUID[:USER] with DOMID > 0, not '${spec}'`);
    qubes.push(q);
  }
  if (qubes.length === 0) throw new UsageError('the following arguments are required: --qube');
  const cfg = daemonConfig(parsed);
  const qubesdAdmin = last(parsed, 'qubesd-admin-socket') ?? DEFAULT_QUBESD_SOCKET;
  const apiDir = last(parsed, 'policy-api-dir');
  const apiSock = last(parsed, 'policy-api-socket') ?? (parsed.options.has('policy-path') ? 'none' : DEFAULT_POLICY_API_SOCKET);
  const vchan = vchanEnvFrom(process.env);
  const noVchanDir = whatIsMissing(vchan.dir);
  if (noVchanDir !== undefined) throw new StartupError(`vchan socket directory (VCHAN_SOCKET_DIR): ${noVchanDir}`);
  process.umask(0o007);
  const host = await startHost({
    policy: cfg,
    qubes,
    socketDir: last(parsed, 'qrexec-socket-dir') ?? DEFAULT_SOCKET_DIR,
    vchan,
    servicePath: (process.env['QREXEC_SERVICE_PATH'] ?? DEFAULT_SERVICE_PATH).split(':').filter((x) => x),
    ...(qubesdAdmin !== 'none' ? { qubesdSocket: qubesdAdmin } : {}),
    ...(apiDir === 'none' ? {} : { policyApi: { socketPath: apiSock === 'none' ? null : apiSock, ...(apiDir !== undefined ? { dir: apiDir } : {}) } }),
  });
  host.policyDaemon.log.info(`${servingLine(cfg)}; qubes ${qubes.map((q) => q.name).join(', ')}`);
  let stopping = false;
  const stop = (): void => {
    if (stopping) return;
    stopping = true;
    host.policyDaemon.audit?.flush();
    void host.close().finally(() => process.exit(0));
    setTimeout(() => process.exit(0), 2000).unref();
  };
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
  process.on('SIGPIPE', () => undefined);
} catch (e) {
  if (e instanceof UsageError) usageExit(prog, USAGE, e);
  if (e instanceof StartupError || (e instanceof Error && /qube .* is served twice/.test(e.message))) {
    process.stderr.write(`${prog}: error: ${e.message}\n`);
    process.exit(1);
  }
  throw e;
}
