/** qrexec-policy-agent: see src/policyd/agent.ts. */
import { PolicyAgent, TtyFrontend } from '../policyd/agent.js';
import { last, numberOption, parseArgs, UsageError, usageExit } from '../common/args.js';
import { createLogger } from '../policyd/log.js';

const prog = 'qrexec-policy-agent';
const USAGE = 'usage: qrexec-policy-agent [-h] [-s PATH] --tty [--timeout SEC]';
const HELP = `${USAGE}

Serves policy.Ask and policy.Notify (called by qrexec-policy-daemon) on a unix
socket and asks the user on this terminal.

options:
  -h, --help              show this help message and exit
  -s, --socket-path PATH  path to socket (default /var/run/qubes/policy-agent.sock)
  --tty                   terminal front end: questions on stdout, answers on
                          stdin (a number or name of an offered target; Enter
                          or "deny" denies)
  --timeout SEC           deny a question not answered in time (default 60)
`;

try {
  const p = parseArgs(process.argv.slice(2), [
    { name: 'socket-path', short: 's', value: true },
    { name: 'tty' },
    { name: 'timeout', value: true },
  ], { argparse: true });
  if (p.help) {
    process.stdout.write(HELP);
    process.exit(0);
  }
  if (p.positional.length > 0) throw new UsageError(`unrecognized arguments: ${p.positional.join(' ')}`);
  if (!p.flags.has('tty')) throw new UsageError('no front end selected: use --tty');
  const socketPath = last(p, 'socket-path') ?? '/var/run/qubes/policy-agent.sock';
  const frontend = new TtyFrontend(process.stdin, process.stdout, numberOption(p, 'timeout', 60) * 1000);
  const agent = new PolicyAgent(frontend, createLogger(prog));
  try {
    await agent.listen(socketPath);
  } catch (e) {
    process.stderr.write(`${prog}: error: cannot listen on ${socketPath}: ${(e as Error).message}\n`);
    process.exit(1);
  }
  process.stdout.write(`${prog}: listening on ${socketPath}\n`);
  const stop = (): void => void agent.close().finally(() => process.exit(0));
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
} catch (e) {
  if (e instanceof UsageError) usageExit(prog, USAGE, e);
  throw e;
}
