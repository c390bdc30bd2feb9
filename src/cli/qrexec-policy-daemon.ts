/** qrexec-policy-daemon: see src/policyd/daemon.ts. */
import { DAEMON_HELP, DAEMON_USAGE, daemonConfig, parseDaemonArgs, servingLine, startDaemon, StartupError } from '../policyd/daemon.js';
import { exitOnUncaught } from '../common/errors.js';

exitOnUncaught('qrexec-policy-daemon');
import { UsageError, usageExit } from '../common/args.js';

const prog = 'qrexec-policy-daemon';
try {
  const parsed = parseDaemonArgs(process.argv.slice(2));
  if (parsed.help) {
    process.stdout.write(DAEMON_HELP);
    process.exit(0);
  }
  const cfg = daemonConfig(parsed);
  process.umask(0o007);
  const daemon = await startDaemon(cfg);
  daemon.log.info(servingLine(cfg));
  let stopping = false;
  const stop = (): void => {
    if (stopping) return;
    stopping = true;
    daemon.audit?.flush();
    void daemon.close().finally(() => process.exit(0));
    setTimeout(() => process.exit(0), 2000).unref();
  };
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
} catch (e) {
  if (e instanceof UsageError) usageExit(prog, DAEMON_USAGE, e);
  if (e instanceof StartupError) {
    process.stderr.write(`${prog}: error: ${e.message}\n`);
    process.exit(1);
  }
  throw e;
}
