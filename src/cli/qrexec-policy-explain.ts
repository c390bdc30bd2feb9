/**
 * qrexec-policy-explain: why does the policy decide a call the way it does?
 * Prints the decision, the rule that made it, every earlier rule for the
 * same service that did not match (with the column that failed), and how
 * an ask gathered its choices.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { opt, parseArgs, runMain, UsageError } from '../common/args.js';
import {
  explain,
  explanationToJson,
  formatExplanation,
  parseSystemInfo,
  PolicySyntaxError,
  type SystemInfo,
} from '../policy/index.js';
import { DEFAULT_LEGACY_DIR, DEFAULT_POLICY_DIRS, loadPolicyFromDisk, policyDirsOrDefault } from '../policy-files/disk.js';
import { fileProblem } from '../common/errors.js';

const USAGE = `usage: qrexec-policy-explain [--policy-dir DIR ...] [--legacy-dir DIR] --system-info FILE
                             [--requested-source QUBE] [--json] SOURCE TARGET SERVICE[+ARG]

Explain how the qrexec policy decides one call: the decision (as
qrexec-policy-eval prints it), the rule that made it (file:line and text),
every earlier rule for the same service (or *) that did not match with the
column that failed and why, and for "ask" how each rule added or removed
choices.

  SOURCE                  the calling qube (maybe uuid:...)
  TARGET                  the target the caller asks for: a qube, @default (or ""),
                          @dispvm, @dispvm:NAME, @adminvm
  SERVICE[+ARG]           e.g. qubes.Filecopy or qubes.Gpg+sign
  --policy-dir DIR        policy directory; repeat for overlays, earliest first
                          (default: ${DEFAULT_POLICY_DIRS.join(' ')}, those that exist)
  --legacy-dir DIR        4.0 policy directory for !compat-4.0 (default ${DEFAULT_LEGACY_DIR})
  --system-info FILE      qubesd internal.GetSystemInfo JSON
  --requested-source Q    the RemoteVM a relay (SOURCE) calls on behalf of
  --json                  print one JSON object instead of text

Exit status: 0 explained (whatever the decision); 2 bad usage, or the policy or
system info does not load (then every call is denied).
`;

runMain('qrexec-policy-explain', USAGE, () => {
  const args = parseArgs(process.argv.slice(2), [
    { name: 'policy-dir', value: true, repeat: true },
    { name: 'legacy-dir', value: true },
    { name: 'system-info', value: true },
    { name: 'requested-source', value: true },
    { name: 'json' },
  ]);
  if (args.help) {
    process.stdout.write(USAGE);
    return 0;
  }
  const infoPath = opt(args, 'system-info');
  if (!infoPath) throw new UsageError('--system-info is required');
  if (args.positional.length !== 3) {
    throw new UsageError(`expected SOURCE TARGET SERVICE[+ARG], got ${args.positional.length} argument(s)`);
  }
  const [source, target, serviceAndArg] = args.positional as [string, string, string];
  if (source === '' || serviceAndArg === '') throw new UsageError('SOURCE and SERVICE must not be empty');
  const dirs = policyDirsOrDefault(args.options.get('policy-dir'), 2);

  let info: SystemInfo;
  try {
    info = parseSystemInfo(JSON.parse(fs.readFileSync(infoPath, 'utf8')));
  } catch (e) {
    process.stderr.write(`qrexec-policy-explain: ${fileProblem(infoPath, e)}\n`);
    return 2;
  }
  if (!info.domains.has(source)) {
    process.stderr.write(`qrexec-policy-explain: warning: source ${source} is not in the system info\n`);
  }
  let policy;
  // The legacy directory must be absolute: 4.0 file paths are resolved against
  // it. Its files are shown under the directory as given (relative, as the
  // policy directories' files are).
  const legacy = opt(args, 'legacy-dir');
  const legacyAbs = legacy === undefined ? undefined : path.resolve(legacy);
  const showFile = (f: string): string =>
    legacy !== undefined && legacyAbs !== undefined && f.startsWith(legacyAbs + path.sep) ? path.join(legacy, f.slice(legacyAbs.length + 1)) : f;
  try {
    policy = loadPolicyFromDisk({ policyDirs: dirs, legacyDir: legacyAbs });
  } catch (e) {
    if (!(e instanceof PolicySyntaxError)) throw e;
    process.stderr.write(`qrexec-policy-explain: the policy does not load, so every call is denied: ${e.message}\n`);
    return 2;
  }
  const x = explain(policy, { source, intendedTarget: target, serviceAndArg, requestedSource: opt(args, 'requested-source') }, info);
  process.stdout.write(args.flags.has('json') ? JSON.stringify(explanationToJson(x)) + '\n' : formatExplanation(x, { showFile }));
  return 0;
});
