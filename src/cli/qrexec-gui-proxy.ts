/** qrexec-gui-proxy: the host side of a GUI domain; see src/guiproxy/proxy.ts. */
import { last, parseArgs, runMain, UsageError } from '../common/args.js';
import { fetchToken, GuiProxy, policySocketDecider } from '../guiproxy/index.js';
import { DEFAULT_POLICY_SOCKET, DEFAULT_SOCKET_DIR } from '../daemon/index.js';
import { vchanEnvFrom } from '../vchan/index.js';

const prog = 'qrexec-gui-proxy';
const USAGE = `usage: ${prog} [--guivm NAME] [--host ADDR] [--port N] [--socket-dir DIR] [--policy-socket PATH] [--quiet]\n`;
const HELP = `${USAGE}
The only GUI program of dom0: listens on a loopback address, and makes each
browser connection one qrexec call from dom0 to gui.Http in the GUI domain
(decided by the policy daemon and audited). At start it asks the GUI domain
for its login token (gui.Token) and prints the URL to open.

options:
  -h, --help            show this help and exit
  --guivm NAME          the GUI domain (default sys-gui)
  --host ADDR           loopback address to listen on (default 127.0.0.1; use
                        another 127.x.y.z per GUI domain to keep their cookies
                        apart)
  --port N              TCP port (default: a free one)
  --socket-dir DIR      the qrexec daemons' sockets (default ${DEFAULT_SOCKET_DIR})
  --policy-socket PATH  the policy daemon (default ${DEFAULT_POLICY_SOCKET})
  --quiet               print only the URL
Environment: VCHAN_SOCKET_DIR and VCHAN_SOCKET_LAYOUT as for qrexec-client.
`;

runMain(prog, USAGE, async () => {
  const p = parseArgs(process.argv.slice(2), [
    { name: 'guivm', value: true },
    { name: 'host', value: true },
    { name: 'port', value: true },
    { name: 'socket-dir', value: true },
    { name: 'policy-socket', value: true },
    { name: 'quiet' },
  ]);
  if (p.help) {
    process.stdout.write(HELP);
    return 0;
  }
  if (p.positional.length > 0) throw new UsageError(`unexpected argument: ${p.positional[0]}`);
  const portText = last(p, 'port') ?? '0';
  if (!/^\d{1,5}$/.test(portText) || Number(portText) > 65535) throw new UsageError(`--port: not a port number: ${portText}`);
  const quiet = p.flags.has('quiet');
  const log = quiet ? () => undefined : (m: string) => void process.stderr.write(`${prog}: ${m}\n`);
  const o = {
    guivm: last(p, 'guivm') ?? 'sys-gui',
    socketDir: last(p, 'socket-dir') ?? DEFAULT_SOCKET_DIR,
    vchan: { ...vchanEnvFrom(process.env), ownDomain: 0 },
    decide: policySocketDecider(last(p, 'policy-socket') ?? DEFAULT_POLICY_SOCKET, log),
    host: last(p, 'host') ?? '127.0.0.1',
    port: Number(portText),
    log,
  };
  let proxy: GuiProxy;
  let token: string;
  try {
    token = await fetchToken(o);
    proxy = await GuiProxy.start(o);
  } catch (e) {
    process.stderr.write(`${prog}: error: ${(e as Error).message}\n`);
    return 1;
  }
  process.stdout.write(quiet ? `${proxy.url}/?token=${token}\n` : `${o.guivm}: open ${proxy.url}/?token=${token}\n`);
  const stop = (): void => void proxy.close().finally(() => process.exit(0));
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
  return new Promise<number>(() => undefined);
});
