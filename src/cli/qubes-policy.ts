/** qubes-policy: list, print, replace or remove policy files through the Policy API (src/policyapi). */
import { runMain, UsageError } from '../common/args.js';
import { PolicyClient } from '../policyapi/client.js';
import { QUBES_POLICY_HELP, QUBES_POLICY_USAGE, qubesPolicyMain } from '../policyapi/commands.js';

const argv = process.argv.slice(2);
if (argv.includes('-h') || argv.includes('--help')) {
  process.stdout.write(QUBES_POLICY_HELP);
} else {
  runMain('qubes-policy', QUBES_POLICY_USAGE + '\n', async () => {
    try {
      return await qubesPolicyMain(argv, new PolicyClient());
    } catch (e) {
      if (e instanceof UsageError) {
        process.stderr.write(`${QUBES_POLICY_USAGE}\nqubes-policy: error: ${e.message}\n`);
        return 2;
      }
      throw e;
    }
  });
}
