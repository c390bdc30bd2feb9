/** qubesd: the qube registry and the Admin API (src/qubesd). */
import { parseArgs, last, runMain, UsageError } from '../common/args.js';
import { startQubesd, ADMIN_SOCKET, INTERNAL_SOCKET, MISC_SOCKET } from '../qubesd/index.js';
import { runtimeFromOptions, RUNTIME_HELP } from '../runtime/select.js';
import { errorLine } from '../common/errors.js';
import { DEFAULT_POLICY_DIRS } from '../policy-files/disk.js';
import { PolicyStore } from '../policyd/policy-store.js';
import { createLogger } from '../policyd/log.js';
import * as fs from 'node:fs';

const USAGE = `usage: qubesd --data-dir DIR --run-dir RUN [--runtime process|bwrap|none] [--policy-dir DIR ...] [--debug]`;
const HELP = `${USAGE}

The Qubes registry daemon: qubes, their properties, tags, features and labels
in DIR/qubes.db (SQLite, every acknowledged change durable), served on
  RUN/${ADMIN_SOCKET}           the Admin API (admin.*), as qubesd's
  RUN/${INTERNAL_SOCKET}  internal.GetSystemInfo
  RUN/${MISC_SOCKET}      qubes.FeaturesRequest, qubes.NotifyTools, qubes.NotifyUpdates
Each socket is mode 0660. Runs until SIGTERM or SIGINT.

Calls from qubes (through qrexec) see only what the qrexec policy lets them:
admin.vm.List lists a qube only if admin.vm.List is allowed from the caller
to it, and admin.Events sends an event only if admin.Events+EVENT is allowed
to its subject (ask counts as no). The policy is read from --policy-dir
(default: ${DEFAULT_POLICY_DIRS.join(', ')}, those that exist) and reloaded
when it changes; with no policy, qubes see nothing.

options:
  -h, --help         show this help message and exit
  --data-dir DIR     registry directory (created if missing)
  --run-dir RUN      socket directory (created if missing)
  --runtime NAME     how qubes run: ${RUNTIME_HELP}
  --policy-dir DIR   qrexec policy directory for filtering (repeatable)
  --debug            log every call to stderr

environment:
  QUBESD_NET_SERVER=1  serve the sockets with Node's net.Server instead of the
                       native addon's request loop (the default when built)
`;

runMain('qubesd', USAGE, async () => {
  const args = parseArgs(process.argv.slice(2), [
    { name: 'data-dir', value: true },
    { name: 'run-dir', value: true },
    { name: 'runtime', value: true },
    { name: 'policy-dir', value: true, repeat: true },
    { name: 'debug' },
  ], { argparse: true });
  if (args.help) {
    process.stdout.write(HELP);
    return 0;
  }
  const dataDir = last(args, 'data-dir');
  const runDir = last(args, 'run-dir');
  if (!dataDir || !runDir) throw new UsageError('the following arguments are required: --data-dir, --run-dir');
  if (args.positional.length) throw new UsageError(`unrecognized arguments: ${args.positional.join(' ')}`);
  const debug = args.flags.has('debug');
  const runtime = runtimeFromOptions(last(args, 'runtime') ?? 'process', { dataDir, runDir, debug, ...(process.env['QREXEC_POLICY_SOCKET'] ? { policySocket: process.env['QREXEC_POLICY_SOCKET'] } : {}) });
  const given = args.options.get('policy-dir') ?? [];
  const policyDirs = given.length ? given : DEFAULT_POLICY_DIRS.filter((p) => fs.existsSync(p));
  const policyLog = createLogger('qubesd', { level: debug ? 'debug' : 'warning' });
  const policyStore = policyDirs.length ? new PolicyStore({ policyDirs, log: policyLog }) : null;
  policyStore?.watch();
  let d;
  try {
    d = await startQubesd({
      dataDir,
      runDir,
      runtime,
      policy: () => (policyStore?.current.ok ? policyStore.current.policy : null),
      log: (level, msg) => {
        if (debug || level !== 'info') process.stderr.write(`qubesd: ${level}: ${msg}\n`);
      },
    });
  } catch (e) {
    policyStore?.close();
    process.stderr.write(`qubesd: error: ${errorLine(e)}\n`);
    return 1;
  }
  const qd = d;
  await new Promise<void>((resolve) => {
    const stop = (): void => {
      policyStore?.close();
      void qd.close().finally(resolve);
    };
    process.once('SIGTERM', stop);
    process.once('SIGINT', stop);
  });
  return 0;
});
