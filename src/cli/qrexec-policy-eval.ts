/**
 * qrexec-policy-eval: decide a batch of requests against a policy, one JSON
 * line in, one JSON line out. Contract: README.md, "qrexec-policy-eval".
 */
import * as fs from 'node:fs';
import { parseArgs, opt, runMain, UsageError } from '../common/args.js';
import { basename, decide, decisionToJson, parseRequestJson, parseSystemInfo, PolicySyntaxError } from '../policy/index.js';
import { loadPolicyFromDisk, DEFAULT_LEGACY_DIR } from '../node/policy-loader.js';
import { fileProblem } from '../common/errors.js';

const USAGE = `usage: qrexec-policy-eval --policy-dir DIR [--policy-dir DIR ...] --system-info FILE [--legacy-dir DIR] < requests.jsonl

Evaluate qrexec policy requests in batch, exactly as the Qubes policy daemon
decides them. Each stdin line is {"source":S,"intended_target":T,
"service_and_arg":"svc+arg"[,"requested_source":R]}; each stdout line the
decision: {"result":"allow"|"ask"|"deny",...}.

  --policy-dir DIR    policy directory (as /etc/qubes/policy.d); repeat for
                      overlays, earliest first (a file name shadows later ones)
  --system-info FILE  qubesd internal.GetSystemInfo JSON
  --legacy-dir DIR    4.0 policy directory for !compat-4.0
                      (default ${DEFAULT_LEGACY_DIR})

Exit status: 0 decided; 2 the policy (or system info) does not load: the only
output line is {"error":"policy","file":F,"line":N}; 1 bad input.
`;

runMain('qrexec-policy-eval', USAGE, () => {
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
  const input = fs.readFileSync(0, 'utf8');
  const out: string[] = [];
  let lineno = 0;
  for (const line of input.split('\n')) {
    lineno++;
    if (line.trim() === '') continue;
    let req;
    try {
      req = parseRequestJson(line);
    } catch (e) {
      process.stderr.write(`qrexec-policy-eval: stdin:${lineno}: ${e instanceof Error ? e.message : String(e)}\n`);
      return 1;
    }
    out.push(JSON.stringify(decisionToJson(decide(policy, req, info), info)));
  }
  process.stdout.write(out.length ? out.join('\n') + '\n' : '');
  return 0;
});
