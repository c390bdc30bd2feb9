import { errorLine } from '../common/errors.js';
/** qrexec-policy-exec: see src/policyd/exec.ts. */
import { UsageError, usageExit } from '../common/args.js';
import { EXEC_USAGE, runPolicyExec } from '../policyd/exec.js';

try {
  process.exitCode = await runPolicyExec(process.argv.slice(2));
} catch (e) {
  if (e instanceof UsageError) usageExit('qrexec-policy-exec', EXEC_USAGE, e);
  process.stderr.write(`qrexec-policy-exec: error: ${errorLine(e)}\n`);
  process.exitCode = 1;
}
