/** qrexec-audit: query the policy daemon's decision log (src/audit). */
import { formatRow, parseSince, queryAudit } from '../audit/index.js';
import { last, numberOption, parseArgs, UsageError, usageExit } from '../common/args.js';
import { daemonConfig, parseDaemonArgs } from '../policyd/daemon.js';
import { errorLine } from '../common/errors.js';

const prog = 'qrexec-audit';
const USAGE =
  'usage: qrexec-audit [-h] [--db PATH] [--source QUBE] [--target QUBE] [--service NAME] [--result allow|deny] [--since WHEN] [--limit N] [--json]';
const HELP = `${USAGE}

Show decisions recorded by qrexec-policy-daemon, oldest first.

options:
  -h, --help          show this help message and exit
  --db PATH           audit database (default: the daemon's default)
  --source QUBE       only calls from this qube
  --target QUBE       only calls to this qube (intended or resolved target)
  --service NAME      only this service (without argument)
  --result R          allow or deny
  --since WHEN        ISO date/time, Unix seconds, or 30s / 15m / 2h / 7d ago
  --limit N           at most the N most recent matches (default 1000; 0 = all)
  --json              one JSON object per line
`;

try {
  const p = parseArgs(process.argv.slice(2), [
    { name: 'db', value: true },
    { name: 'source', value: true },
    { name: 'target', value: true },
    { name: 'service', value: true },
    { name: 'result', value: true },
    { name: 'since', value: true },
    { name: 'limit', value: true },
    { name: 'json' },
  ], { argparse: true });
  if (p.help) {
    process.stdout.write(HELP);
    process.exit(0);
  }
  if (p.positional.length > 0) throw new UsageError(`unrecognized arguments: ${p.positional.join(' ')}`);
  const result = last(p, 'result');
  if (result !== undefined && result !== 'allow' && result !== 'deny') {
    throw new UsageError(`argument --result: invalid choice: '${result}' (choose from 'allow', 'deny')`);
  }
  const sinceText = last(p, 'since');
  const sinceMs = sinceText === undefined ? undefined : parseSince(sinceText);
  if (sinceMs === null) throw new UsageError(`argument --since: invalid value: '${sinceText}'`);
  const defaultAudit = daemonConfig(parseDaemonArgs([])).audit;
  const db = last(p, 'db') ?? defaultAudit?.[0];
  if (db === undefined) throw new UsageError('no database: use --db');
  const limit = numberOption(p, 'limit', 1000);
  let rows;
  try {
    rows = queryAudit(db, { source: last(p, 'source'), target: last(p, 'target'), service: last(p, 'service'), result, sinceMs, limit });
  } catch (e) {
    process.stderr.write(`${prog}: error: ${errorLine(e)}\n`);
    process.exit(1);
  }
  const out: string[] = [];
  for (const r of rows) out.push(p.flags.has('json') ? JSON.stringify(r) : formatRow(r));
  process.stdout.write(out.length ? out.join('\n') + '\n' : '');
} catch (e) {
  if (e instanceof UsageError) usageExit(prog, USAGE, e);
  throw e;
}
