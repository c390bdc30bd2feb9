/** qrexec-policy-test: run a policy directory's tests/*.test against it (src/policyapi/policy-tests.ts). */
import * as fs from 'node:fs';
import { last, parseArgs, runMain, UsageError } from '../common/args.js';
import { parseSystemInfo } from '../policy/index.js';
import { loadPolicyFromDisk } from '../policy-files/disk.js';
import { loadTestDir, runPolicyTests } from '../policyapi/policy-tests.js';
import { errorLine, fileProblem } from '../common/errors.js';

const USAGE = `usage: qrexec-policy-test --system-info FILE [--legacy-dir DIR] DIR

Run the policy tests of policy directory DIR (DIR/tests/*.test, one
expectation a line: SERVICE[+ARG] SOURCE TARGET allow|ask|deny [target=QUBE])
against the policy in DIR, as the Policy API does on every change (ours; no
Qubes tool does this). Prints each failing line as FILE:LINE: TEXT: got ...

  --system-info FILE   qubesd internal.GetSystemInfo JSON (the qubes)
  --legacy-dir DIR     4.0 policy directory for !compat-4.0

Exit status: 0 every test passes; 1 some fails, or the policy or a test file
cannot be read; 2 bad usage.
`;

runMain('qrexec-policy-test', USAGE, () => {
  const args = parseArgs(process.argv.slice(2), [{ name: 'system-info', value: true }, { name: 'legacy-dir', value: true }]);
  if (args.help) {
    process.stdout.write(USAGE);
    return 0;
  }
  if (args.positional.length !== 1) throw new UsageError('want one policy directory');
  const infoFile = last(args, 'system-info');
  if (infoFile === undefined) throw new UsageError('the following arguments are required: --system-info');
  const dir = args.positional[0] as string;
  let info;
  try {
    info = parseSystemInfo(JSON.parse(fs.readFileSync(infoFile, 'utf8')) as unknown);
  } catch (e) {
    process.stderr.write(`qrexec-policy-test: ${fileProblem(infoFile, e)}\n`);
    return 1;
  }
  try {
    const legacy = last(args, 'legacy-dir');
    const policy = loadPolicyFromDisk({ policyDirs: [dir], ...(legacy !== undefined ? { legacyDir: legacy } : {}) });
    const cases = loadTestDir(dir);
    const failures = runPolicyTests(policy, info, cases);
    for (const f of failures) process.stdout.write(f + '\n');
    process.stdout.write(`${cases.length - failures.length} of ${cases.length} passed\n`);
    return failures.length === 0 ? 0 : 1;
  } catch (e) {
    // the policy or a test file does not load (PolicySyntaxError, PolicyTestSyntaxError, unreadable)
    process.stderr.write(`qrexec-policy-test: ${errorLine(e)}\n`);
    return 1;
  }
});
