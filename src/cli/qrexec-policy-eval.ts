/**
 * qrexec-policy-eval: decide a batch of requests against a policy, one JSON
 * line in, one JSON line out. Contract: README.md, "qrexec-policy-eval".
 */
import * as fs from 'node:fs';
import { parseArgs, opt, runMain, UsageError } from '../common/args.js';
import { basename, decide, decisionToJson, parseRequestJson, parseSystemInfo, PolicySyntaxError } from '../policy/index.js';
import { loadPolicyFromDisk, DEFAULT_LEGACY_DIR } from '../policy-files/disk.js';
import { fileProblem } from '../common/errors.js';
import { answerLines } from '../common/line-stream.js';

const USAGE = `usage: qrexec-policy-eval --policy-dir DIR [--policy-dir DIR ...] --system-info FILE [--legacy-dir DIR] < requests.jsonl

Evaluate qrexec policy requests, exactly as the Qubes policy daemon decides
them. Each stdin line is {"source":S,"intended_target":T,
"service_and_arg":"svc+arg"[,"requested_source":R]}; each stdout line the
decision: {"result":"allow"|"ask"|"deny",...}, written as soon as the line is
read (usable as a coprocess). A line that is not such a request is answered
{"error":"request","line":N,"message":M}, and the next lines still are.

  --policy-dir DIR    policy directory (as /etc/qubes/policy.d); repeat for
                      overlays, earliest first (a file name shadows later ones)
  --system-info FILE  qubesd internal.GetSystemInfo JSON
  --legacy-dir DIR    4.0 policy directory for !compat-4.0
                      (default ${DEFAULT_LEGACY_DIR})

Exit status: 0 every line decided; 1 some line was not a request; 2 the policy
(or system info) does not load: the only output line is
{"error":"policy","file":F,"line":N} (or {"error":"system-info",...}).
`;

runMain('qrexec-policy-eval', USAGE, async () => {
  const args = parseArgs(process.argv.slice(2), [
    { name: 'policy-dir', value: true, repeat: true },
    { name: 'system-info', value: true },
    { name: 'legacy-dir', value: true },
  ]);
  if (args.help) {
    process.stdout.write(USAGE);
    return 0;
  }
  const dirs = args.options.get('policy-dir');
  const infoPath = opt(args, 'system-info');
  if (!dirs || !infoPath) throw new UsageError('--policy-dir and --system-info are required');
  if (args.positional.length > 0) throw new UsageError(`unexpected argument ${args.positional[0]}`);

  let info;
  try {
    info = parseSystemInfo(JSON.parse(fs.readFileSync(infoPath, 'utf8')));
  } catch (e) {
    process.stderr.write(`qrexec-policy-eval: ${fileProblem(infoPath, e)}\n`);
    process.stdout.write(JSON.stringify({ error: 'system-info', file: basename(infoPath), line: null }) + '\n');
    return 2;
  }
  let policy;
  try {
    policy = loadPolicyFromDisk({ policyDirs: dirs, legacyDir: opt(args, 'legacy-dir') });
  } catch (e) {
    if (!(e instanceof PolicySyntaxError)) throw e;
    process.stderr.write(`qrexec-policy-eval: policy does not load: ${e.message}\n`);
    process.stdout.write(JSON.stringify({ error: 'policy', file: basename(e.file), line: e.line }) + '\n');
    return 2;
  }
  let bad = 0;
  await answerLines(process.stdin, process.stdout, (line, lineno) => {
    try {
      return JSON.stringify(decisionToJson(decide(policy, parseRequestJson(line), info), info));
    } catch (e) {
      // a bad line is answered too, and the next lines still are
      bad++;
      const message = e instanceof Error ? e.message : String(e);
      process.stderr.write(`qrexec-policy-eval: stdin:${lineno}: ${message}\n`);
      return JSON.stringify({ error: 'request', line: lineno, message });
    }
  });
  if (bad > 0) return 1;
  return 0;
});
