/** qubes-host (`npm start`): the whole host in one process, with a demo system; see src/host/start.ts. */
import { parseArgs, last, UsageError } from '../common/args.js';
import { errorLine, isSystemError, QrexecError } from '../common/errors.js';
import { StartupError } from '../policyd/daemon.js';
import { runHost } from '../host/start.js';
import { RuntimeError } from '../runtime/types.js';

const prog = 'qubes-host';
const USAGE = `usage: qubes-host [--data-dir DIR] [--run-dir RUN] [--runtime bwrap|process|none]
                  [--no-demo-system] [--once] [--verbose]
`;
const HELP = `${USAGE}
The whole dom0 side in one process and one event loop: qubesd (the registry
and the Admin API), the qrexec policy daemon (with the Policy API) and the
qrexec daemon of every running qube. At the first start of an empty data dir
it creates a demo system (a template made from this host, sys-net, work,
personal, vault, default-dvm), then starts the qubes with autostart and
prints what to try. Ctrl-C or SIGTERM shuts every qube down. See
docs/ARCHITECTURE.md.

options:
  -h, --help         show this help message and exit
  --data-dir DIR     the registry, the qubes' volumes and the policy
                     (default $XDG_DATA_HOME/qrexec-ts or ~/.local/share/qrexec-ts)
  --run-dir RUN      the sockets (default DIR/run); dom0 tools find a host
                     whose RUN is not the default through QREXEC_HOST_DIR=RUN
  --runtime NAME     bwrap (default: bubblewrap sandboxes, needs root; falls
                     back to process, loudly, when bwrap cannot run), process
                     (no isolation) or none (qubes cannot start)
  --no-demo-system   do not create the demo qubes in an empty data dir
  --once             run the tour's commands, answer its question, print the
                     results and stop (exit status 1 if a step failed)
  --verbose          show the daemons' logs
`;

const args = (() => {
  try {
    const a = parseArgs(process.argv.slice(2), [
      { name: 'data-dir', value: true },
      { name: 'run-dir', value: true },
      { name: 'runtime', value: true },
      { name: 'no-demo-system' },
      { name: 'once' },
      { name: 'verbose' },
    ], { argparse: true });
    if (a.positional.length) throw new UsageError(`unrecognized arguments: ${a.positional.join(' ')}`);
    const rt = last(a, 'runtime') ?? 'bwrap';
    if (!['bwrap', 'process', 'none'].includes(rt)) throw new UsageError(`argument --runtime: invalid choice: '${rt}' (choose from 'bwrap', 'process', 'none')`);
    return a;
  } catch (e) {
    if (e instanceof UsageError) {
      process.stderr.write(`${USAGE}${prog}: error: ${e.message}\n`);
      process.exit(2);
    }
    throw e;
  }
})();
if (args.help) {
  process.stdout.write(HELP);
  process.exit(0);
}
process.on('SIGPIPE', () => undefined);
const dataDir = last(args, 'data-dir');
const runDir = last(args, 'run-dir');
try {
  const code = await runHost({
    ...(dataDir !== undefined ? { dataDir } : {}),
    ...(runDir !== undefined ? { runDir } : {}),
    runtime: last(args, 'runtime') ?? 'bwrap',
    demoSystem: !args.flags.has('no-demo-system'),
    once: args.flags.has('once'),
    verbose: args.flags.has('verbose'),
    out: (s) => void process.stdout.write(s + '\n'),
  });
  process.exit(code);
} catch (e) {
  if (e instanceof QrexecError || e instanceof StartupError || e instanceof RuntimeError || isSystemError(e)) {
    process.stderr.write(`${prog}: error: ${errorLine(e)}\n`);
    process.exit(1);
  }
  throw e;
}
