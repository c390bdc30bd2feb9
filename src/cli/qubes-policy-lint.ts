/**
 * qubes-policy-lint: check policy files line by line and report every
 * problem as `file:line: error: message` (reference: qubes_policy_lint.py).
 */
import * as fs from 'node:fs';
import { parseArgs, runMain, UsageError } from '../common/args.js';
import { formatDiagnostic, lintPolicyText } from '../policy/index.js';

const USAGE = `usage: qubes-policy-lint [-h] [-s] [-i] FILE [FILE ...]

Check qrexec policy files and print every problem as "FILE:LINE: error: MESSAGE".
Each line is checked on its own, so all problems are found, not just the first.
Included files are not read; their paths are checked (they must be relative to
the policy directory or its include/ subdirectory).

  FILE                 a policy file; "-" reads stdin
  -s, --show-line      also print the offending line
  -i, --include-service
                       lint files included with !include-service (old syntax:
                       SOURCE TARGET ACTION[,PARAMS]); normal policies then
                       cannot be checked in the same run

Exit status: 0 no problem; 1 some problem (or a file could not be read);
2 bad usage. Warnings go to stderr and do not change the exit status.
`;

runMain('qubes-policy-lint', USAGE, () => {
  const args = parseArgs(process.argv.slice(2), [
    { name: 'show-line', short: 's' },
    { name: 'include-service', short: 'i' },
  ]);
  if (args.help) {
    process.stdout.write(USAGE);
    return 0;
  }
  if (args.positional.length === 0) throw new UsageError('the following arguments are required: FILE');
  const show = args.flags.has('show-line');
  const includeService = args.flags.has('include-service');
  let status = 0;
  let stdinUsed = false;
  for (const file of args.positional) {
    let bytes: Uint8Array;
    try {
      if (file === '-') {
        // stdin can be read once; a second "-" sees it empty
        bytes = stdinUsed ? new Uint8Array() : fs.readFileSync(0);
        stdinUsed = true;
      } else {
        bytes = fs.readFileSync(file);
      }
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code;
      const msg = code === 'ENOENT' ? 'File does not exist.' : e instanceof Error ? e.message : String(e);
      process.stdout.write(`${file}:0: error: ${msg}\n`);
      status = 1;
      continue;
    }
    const errors: string[] = [];
    for (const d of lintPolicyText(bytes, file, { includeService })) {
      if (d.severity === 'warning') process.stderr.write(formatDiagnostic(d) + '\n');
      else errors.push(formatDiagnostic(d, show));
    }
    if (errors.length > 0) {
      process.stdout.write(errors.join('\n') + '\n');
      status = 1;
    }
  }
  return status;
});
