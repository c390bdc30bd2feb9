/** qrexec-gui-server: the GUI domain's web app (runs inside sys-gui); see src/gui/server.ts. */
import { last, numberOption, parseArgs, runMain, UsageError } from '../common/args.js';
import { GuiServer, QrexecAdmin, agentSocketFromEnv } from '../gui/index.js';

const prog = 'qrexec-gui-server';
const USAGE = `usage: ${prog} [--name NAME] [--rpc-dir DIR] [--ask-timeout SEC] [--allow-source QUBE]... [--agent-socket PATH | --no-admin]\n`;
const HELP = `${USAGE}
Runs inside a GUI domain (sys-gui). Serves, as qrexec socket services in the
qube's service directory:
  gui.Http       the web app, one HTTP connection per call (dom0's
                 qrexec-gui-proxy makes them)
  gui.Token      the login token, for dom0 to print the URL
  policy.Ask     the policy daemon's questions, answered in the browser
  policy.Notify  the policy daemon's notifications

options:
  -h, --help           show this help and exit
  --name NAME          this GUI domain's name (default: $QREXEC_GUI_NAME,
                       the host name, or sys-gui)
  --rpc-dir DIR        where to make the sockets (default: the first entry
                       of $QREXEC_SERVICE_PATH, else /run/qubes-rpc)
  --ask-timeout SEC    deny a question not answered in time (default 110)
  --allow-source QUBE  accept calls from QUBE (repeatable; default dom0)
  --agent-socket PATH  this qube's qrexec agent, for the Admin API calls of
                       the qube manager (default: $QUBES_QREXEC_AGENT_SOCKET,
                       else /var/run/qubes/qrexec-agent)
  --no-admin           no qube manager (no Admin API calls)
`;

runMain(prog, USAGE, async () => {
  const p = parseArgs(process.argv.slice(2), [
    { name: 'name', value: true },
    { name: 'rpc-dir', value: true },
    { name: 'ask-timeout', value: true },
    { name: 'allow-source', value: true, repeat: true },
    { name: 'agent-socket', value: true },
    { name: 'no-admin' },
  ]);
  if (p.help) {
    process.stdout.write(HELP);
    return 0;
  }
  if (p.positional.length > 0) throw new UsageError(`unexpected argument: ${p.positional[0]}`);
  const name = last(p, 'name') ?? (process.env['QREXEC_GUI_NAME'] || process.env['HOSTNAME'] || 'sys-gui');
  const rpcDir = last(p, 'rpc-dir') ?? (process.env['QREXEC_SERVICE_PATH']?.split(':')[0] || '/run/qubes-rpc');
  const askTimeoutMs = numberOption(p, 'ask-timeout', 110) * 1000;
  let server: GuiServer;
  try {
    server = new GuiServer({ name, rpcDir, askTimeoutMs, allowedSources: p.options.get('allow-source') ?? ['dom0'],
      ...(p.flags.has('no-admin') ? {} : { admin: new QrexecAdmin(last(p, 'agent-socket') ?? agentSocketFromEnv()) }),
    });
    await server.listen();
  } catch (e) {
    process.stderr.write(`${prog}: error: ${(e as Error).message}\n`);
    return 1;
  }
  process.stderr.write(`${prog}: ${name}: serving gui.Http, gui.Token, policy.Ask, policy.Notify in ${rpcDir}\n`);
  const stop = (): void => void server.close().finally(() => process.exit(0));
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
  return new Promise<number>(() => undefined);
});
