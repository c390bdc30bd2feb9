/** qubes-policy-backup: back up or restore a whole policy directory (src/policyapi/backup.ts). */
import { last, parseArgs, runMain, UsageError } from '../common/args.js';
import { BackupError, createBackup, parseBackup, restoreBackup } from '../policyapi/backup.js';
import { readInputFile, writeOutputFile } from '../common/command-files.js';
import { errorLine, isSystemError } from '../common/errors.js';

const USAGE = `usage: qubes-policy-backup [--dir DIR] create FILE|-
       qubes-policy-backup [--dir DIR] restore FILE|-

Back up every file of a policy directory (policy files, include/, tests/,
delegations.conf) into one file, or restore one (ours; run in dom0). A
restore first checks that the backed-up policy loads, then writes each file
atomically (included files before the files that include them) and removes
files the backup does not hold.

  --dir DIR   the policy directory (default /etc/qubes/policy.d)

Exit status: 0 done; 1 the backup is invalid or does not load; 2 bad usage.
`;

runMain('qubes-policy-backup', USAGE, () => {
  const args = parseArgs(process.argv.slice(2), [{ name: 'dir', value: true }]);
  if (args.help) {
    process.stdout.write(USAGE);
    return 0;
  }
  const [cmd, file, ...rest] = args.positional;
  if ((cmd !== 'create' && cmd !== 'restore') || file === undefined || rest.length > 0) throw new UsageError('want create FILE or restore FILE');
  const dir = last(args, 'dir') ?? '/etc/qubes/policy.d';
  try {
    if (cmd === 'create') {
      const text = JSON.stringify(createBackup(dir)) + '\n';
      if (file === '-') process.stdout.write(text);
      else writeOutputFile(file, text, { mode: 0o600 });
      return 0;
    }
    const [written, removed] = restoreBackup(dir, parseBackup(readInputFile(file)));
    process.stderr.write(`restored ${written} files, removed ${removed}\n`);
    return 0;
  } catch (e) {
    if (e instanceof BackupError || isSystemError(e)) {
      process.stderr.write(`qubes-policy-backup: ${errorLine(e)}\n`);
      return 1;
    }
    throw e;
  }
});
