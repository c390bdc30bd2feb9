/** qrexec-demo (`npm start`): a host with demo qubes; see src/demo/host.ts. */
import { parseArgs, runMain } from '../common/args.js';
import { DemoHost, QUBES } from '../demo/host.js';

const USAGE = `usage: qrexec-demo [--once] [--verbose]

Start a demo host: the qrexec policy daemon and two qubes, "work" and
"vault" (agents as plain processes, each with its host daemon), make a few
calls between them, then keep running so that you can make your own.

  --once      make the demo calls, print the audit log and stop
  --verbose   show the daemons' and agents' logs
`;

runMain('qrexec-demo', USAGE, async () => {
  const args = parseArgs(process.argv.slice(2), [{ name: 'once' }, { name: 'verbose' }]);
  if (args.help) {
    process.stdout.write(USAGE);
    return 0;
  }
  const say = (s: string): void => void process.stdout.write(s + '\n');
  const host = await DemoHost.start(say, args.flags.has('verbose'));
  const [work, vault] = QUBES as [(typeof QUBES)[number], (typeof QUBES)[number]];
  let failures = 0;
  const show = (what: string, from: typeof work, target: string, service: string, stdin: string, wantCode: number): void => {
    const r = host.call(from, target, service, stdin);
    const ok = r.code === wantCode;
    if (!ok) failures++;
    say(`\n$ qrexec-client-vm ${target} ${service}    # in ${from.name}: ${what}`);
    if (r.stdout) process.stdout.write(r.stdout);
    if (r.stderr) process.stdout.write(r.stderr);
    say(`[exit status ${r.code}${ok ? '' : `, expected ${wantCode}`}]`);
  };
  show('allowed by 50-demo.policy:2', work, 'vault', 'demo.Echo+hello', 'hello from work\n', 0);
  show('denied (vault may not call work)', vault, 'work', 'demo.Echo', 'secret\n', 126);
  show('allowed, service environment', vault, 'work', 'demo.Whoami+me', '', 0);
  show('allowed but not installed in vault', work, 'vault', 'demo.Missing', '', 127);
  say('\nAudit log:');
  process.stdout.write(host.audit());
  if (args.flags.has('once')) {
    await host.stop();
    return failures === 0 ? 0 : 1;
  }
  say(`\nThe host is running in ${host.dir}. Make calls as a program in "work" would:`);
  say(`  echo hi | VCHAN_SOCKET_DIR=${host.dir} VCHAN_DOMAIN=1 bin/qrexec-client-vm --agent-socket=${host.agentSocket(work)} vault demo.Echo`);
  say(`Edit the policy in ${host.policyDir} (reloaded on change). Ctrl-C stops everything.`);
  await new Promise<void>((resolve) => {
    process.once('SIGINT', resolve);
    process.once('SIGTERM', resolve);
  });
  await host.stop();
  return 0;
});
