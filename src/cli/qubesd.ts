/** qubesd: the qube registry and the Admin API (src/qubesd). */
import { parseArgs, last, runMain, UsageError } from '../common/args.js';
import { startQubesd, ADMIN_SOCKET, INTERNAL_SOCKET, MISC_SOCKET } from '../qubesd/index.js';
import { runtimeFromOptions, RUNTIME_HELP } from '../runtime/select.js';
import { errorLine } from '../common/errors.js';

const USAGE = `usage: qubesd --data-dir DIR --run-dir RUN [--runtime process|bwrap|none] [--debug]`;
const HELP = `${USAGE}

The Qubes registry daemon: qubes, their properties, tags, features and labels
in DIR/qubes.db (SQLite, every acknowledged change durable), served on
  RUN/${ADMIN_SOCKET}           the Admin API (admin.*), as qubesd's
  RUN/${INTERNAL_SOCKET}  internal.GetSystemInfo
  RUN/${MISC_SOCKET}      qubes.FeaturesRequest, qubes.NotifyTools, qubes.NotifyUpdates
Each socket is mode 0660. Runs until SIGTERM or SIGINT.

options:
  -h, --help         show this help message and exit
  --data-dir DIR     registry directory (created if missing)
  --run-dir RUN      socket directory (created if missing)
  --runtime NAME     how qubes run: ${RUNTIME_HELP}
  --debug            log every call to stderr
`;

runMain('qubesd', USAGE, async () => {
  const args = parseArgs(process.argv.slice(2), [
    { name: 'data-dir', value: true },
    { name: 'run-dir', value: true },
    { name: 'runtime', value: true },
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
  let d;
  try {
    d = await startQubesd({
      dataDir,
      runDir,
      runtime,
      log: (level, msg) => {
        if (debug || level !== 'info') process.stderr.write(`qubesd: ${level}: ${msg}\n`);
      },
    });
  } catch (e) {
    process.stderr.write(`qubesd: error: ${errorLine(e)}\n`);
    return 1;
  }
  const qd = d;
  await new Promise<void>((resolve) => {
    const stop = (): void => {
      void qd.close().finally(resolve);
    };
    process.once('SIGTERM', stop);
    process.once('SIGINT', stop);
  });
  return 0;
});
