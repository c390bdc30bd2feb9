/**
 * qrexec-policy-graph: Graphviz DOT of which qubes may call which services
 * on which targets (reference: qrexec_policy_graph.py).
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { opt, parseArgs, runMain, UsageError } from '../common/args.js';
import { GraphOptionError, parseSystemInfo, policyGraph, PolicySyntaxError, type SystemInfo } from '../policy/index.js';
import { DEFAULT_POLICY_DIRS, loadPolicyFromDisk, policyDirsOrDefault } from '../policy-files/disk.js';
import { writeOutputFile } from '../common/command-files.js';
import { fileProblem } from '../common/errors.js';

const USAGE = `usage: qrexec-policy-graph [--include-ask] [--source QUBE [QUBE ...]] [--target TARGET [TARGET ...]]
                           [--service SERVICE[+ARG] [...]] [--output FILE] [--policy-dir DIR ...]
                           [--legacy-dir DIR] --system-info FILE [--skip-labels] [--full-output]

Draw the qrexec policy as a Graphviz DOT graph: an edge for each call the
policy allows (red) or asks about (orange, with --include-ask), from the
calling qube to the target it names (or to the rule's target=), labelled with
the service. Render with e.g. "dot -Tsvg graph.dot > graph.svg".

  --include-ask        include calls the user is asked about
  --source QUBE...     only calls from these qubes
  --target TARGET...   only calls to these targets (qube, @adminvm, @dispvm,
                       @dispvm:NAME)
  --service SVC...     only these services (SERVICE or SERVICE+ARG)
  --output FILE        write to FILE instead of stdout
  --policy-dir DIR     policy directory; repeat for overlays, earliest first
                       (default: ${DEFAULT_POLICY_DIRS.join(' ')}, those that exist)
  --legacy-dir DIR     4.0 policy directory for !compat-4.0
  --system-info FILE   qubesd internal.GetSystemInfo JSON
  --skip-labels        no service names on edges; one edge per pair of qubes
  --full-output        label edges with the service, the rule's argument and
                       the whole action (asks included)

Exit status: 0 drawn; 1 the policy or system info does not load; 2 bad usage.
`;

/** argparse's nargs="+": `--source a b` means `--source a --source b`. */
function expandLists(argv: readonly string[], names: readonly string[]): string[] {
  const out: string[] = [];
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i] as string;
    if (a === '--') {
      out.push(...argv.slice(i));
      break;
    }
    if (!names.includes(a)) {
      out.push(a);
      continue;
    }
    let j = i + 1;
    while (j < argv.length && !(argv[j] as string).startsWith('-')) out.push(a, argv[j++] as string);
    if (j === i + 1) out.push(a); // no value: the parser says so
    i = j - 1;
  }
  return out;
}

runMain('qrexec-policy-graph', USAGE, () => {
  const argv = expandLists(process.argv.slice(2), ['--source', '--target', '--service']);
  const args = parseArgs(argv, [
    { name: 'include-ask' },
    { name: 'source', value: true, repeat: true },
    { name: 'target', value: true, repeat: true },
    { name: 'service', value: true, repeat: true },
    { name: 'output', value: true },
    { name: 'policy-dir', value: true, repeat: true },
    { name: 'legacy-dir', value: true },
    { name: 'system-info', value: true },
    { name: 'skip-labels' },
    { name: 'full-output' },
  ]);
  if (args.help) {
    process.stdout.write(USAGE);
    return 0;
  }
  if (args.positional.length > 0) throw new UsageError(`unexpected argument ${args.positional[0]}`);
  const infoPath = opt(args, 'system-info');
  if (!infoPath) throw new UsageError('--system-info is required');
  let info: SystemInfo;
  try {
    info = parseSystemInfo(JSON.parse(fs.readFileSync(infoPath, 'utf8')));
  } catch (e) {
    process.stderr.write(`qrexec-policy-graph: ${fileProblem(infoPath, e)}\n`);
    return 1;
  }
  let policy;
  try {
    const legacy = opt(args, 'legacy-dir');
    policy = loadPolicyFromDisk({
      policyDirs: policyDirsOrDefault(args.options.get('policy-dir'), 1),
      legacyDir: legacy === undefined ? undefined : path.resolve(legacy),
    });
  } catch (e) {
    if (!(e instanceof PolicySyntaxError)) throw e;
    process.stderr.write(`qrexec-policy-graph: the policy does not load: ${e.message}\n`);
    return 1;
  }
  let dot: string;
  try {
    dot = policyGraph(policy, info, {
      includeAsk: args.flags.has('include-ask'),
      sources: args.options.get('source'),
      targets: args.options.get('target'),
      services: args.options.get('service'),
      skipLabels: args.flags.has('skip-labels'),
      fullOutput: args.flags.has('full-output'),
    });
  } catch (e) {
    if (e instanceof GraphOptionError) throw new UsageError(e.message);
    throw e;
  }
  const output = opt(args, 'output');
  if (output === undefined) process.stdout.write(dot);
  else writeOutputFile(output, dot);
  return 0;
});
