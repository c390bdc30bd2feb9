/** qubes-policy-editor: edit a policy file safely through the Policy API (src/policyapi). */
import { runMain, UsageError } from '../common/args.js';
import { PolicyClient } from '../policyapi/client.js';
import { EDITOR_HELP, EDITOR_USAGE, policyEditorMain } from '../policyapi/commands.js';

const argv = process.argv.slice(2);
if (argv.includes('-h') || argv.includes('--help')) {
  process.stdout.write(EDITOR_HELP);
} else {
  runMain('qubes-policy-editor', EDITOR_USAGE + '\n', async () => {
    try {
      return await policyEditorMain(argv, new PolicyClient());
    } catch (e) {
      if (e instanceof UsageError) {
        process.stderr.write(`${EDITOR_USAGE}\nqubes-policy-editor: error: ${e.message}\n`);
        return 2;
      }
      throw e;
    }
  });
}
