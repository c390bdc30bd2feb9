/**
 * Policy API benchmark (`npm run bench:policy-api`).
 *
 * A policy daemon and the Policy API in this process, as qrexec-host runs
 * them, over a 10,000-rule policy (10 files of 1,000 rules, 100 qubes), the
 * API reached through its dom0 socket and the daemon through its own:
 * - replace_ms_p50_10k: Replace of one small file until a request on the
 *   policy socket is decided by the new version;
 * - get_ms_p50: policy.Get of that file;
 * - diff_ms_10k_100q: policy.Diff (dry run of a change touching 5 services)
 *   over the 100 qubes;
 * - floor_ms_p50: a raw unix socket round trip (connect, write, reply, close)
 *   to an echo server in this process, the baseline.
 * Medians of several runs. Last line: one JSON object.
 */
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';
import { daemonConfig, parseDaemonArgs, startDaemon, silentLogger } from '../src/policyd/index.js';
import { startPolicyApi } from '../src/policyapi/host.js';
import { PolicyClient, socketTransport } from '../src/policyapi/client.js';

const QUBES = 100;
const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'bench-policy-api-'));
const policyDir = path.join(dir, 'policy.d');
fs.mkdirSync(path.join(policyDir, 'include'), { recursive: true });
const q = (i: number): string => `q${i % QUBES}`;
for (let f = 0; f < 10; f++) {
  const lines: string[] = [];
  for (let i = 0; i < 1000; i++) {
    const n = f * 1000 + i;
    lines.push(`svc.S${n % 500} +a${n % 7} ${q(n)} ${q(n * 7 + 3)} ${n % 3 === 0 ? 'deny' : 'allow'}`);
  }
  fs.writeFileSync(path.join(policyDir, `${20 + f}-bulk.policy`), lines.join('\n') + '\n');
}
const small = (v: number): string => [0, 1, 2, 3, 4].map((k) => `bench.S${k} * q${k} q${(k + v) % QUBES} allow`).join('\n') + '\n';
fs.writeFileSync(path.join(policyDir, '10-bench.policy'), small(1));
const dom = (type: string): object => ({ tags: [], type, template_for_dispvms: false, default_dispvm: null, icon: 'x', label: 'red', guivm: null, relayvm: null, transport_rpc: null, internal: null, power_state: 'Running', uuid: null });
const domains: Record<string, object> = { dom0: dom('AdminVM') };
for (let i = 0; i < QUBES; i++) domains[`q${i}`] = dom('AppVM');
fs.writeFileSync(path.join(dir, 'system-info.json'), JSON.stringify({ domains }));

const median = (xs: number[]): number => {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)] as number;
};

function ask(socketPath: string, text: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const s = net.createConnection({ path: socketPath, allowHalfOpen: true });
    let out = '';
    s.setEncoding('latin1');
    s.on('connect', () => s.end(text));
    s.on('data', (c: string) => (out += c));
    s.on('end', () => resolve(out));
    s.on('error', reject);
  });
}

const cfg = daemonConfig(
  parseDaemonArgs([
    '--policy-path', policyDir, '--socket-path', path.join(dir, 'policy.sock'), '--system-info', path.join(dir, 'system-info.json'),
    '--eval-socket-path', 'none', '--gui-socket-path', 'none', '--qubesd-events-socket', 'none', '--no-audit',
  ]),
);
const daemon = await startDaemon(cfg, { log: silentLogger, gui: null });
const apiSock = path.join(dir, 'policy-admin.sock');
const api = await startPolicyApi(daemon, cfg.policyDirs, cfg.legacyDir, { socketPath: apiSock });
const client = new PolicyClient(socketTransport(apiSock));
const echo = net.createServer({ allowHalfOpen: true }, (s) => s.on('data', (d) => s.end(d)));
const echoPath = path.join(dir, 'echo.sock');
await new Promise<void>((r) => echo.listen(echoPath, r));

const decision = (target: string): Promise<string> =>
  ask(cfg.socketPath, `source=q0\nintended_target=${target}\nservice_and_arg=bench.S0+x\njust_evaluate=yes\n\n`);

async function runOnce(): Promise<{ replace: number; get: number; diff: number; floor: number }> {
  const replace: number[] = [];
  const get: number[] = [];
  const floor: number[] = [];
  for (let i = 0; i < 30; i++) {
    const v = 2 + (i % 50);
    const t0 = performance.now();
    await client.replace('10-bench', small(v));
    // until the daemon decides by it
    while (!(await decision(`q${v % QUBES}`)).startsWith('result=allow')) await new Promise((r) => setImmediate(r));
    replace.push(performance.now() - t0);
  }
  for (let i = 0; i < 200; i++) {
    const t0 = performance.now();
    await client.get('10-bench');
    get.push(performance.now() - t0);
    const t1 = performance.now();
    await ask(echoPath, 'x');
    floor.push(performance.now() - t1);
  }
  const diffs: number[] = [];
  for (let i = 0; i < 3; i++) {
    const t0 = performance.now();
    const d = await client.diff('10-bench', small(60 + i));
    diffs.push(performance.now() - t0);
    if (d.total === 0) throw new Error('the diff found no change');
  }
  return { replace: median(replace), get: median(get), diff: median(diffs), floor: median(floor) };
}

const runs: Awaited<ReturnType<typeof runOnce>>[] = [];
for (let r = 0; r < 5; r++) {
  const x = await runOnce();
  runs.push(x);
  console.log(`run ${r + 1}: replace ${x.replace.toFixed(2)} ms, get ${x.get.toFixed(3)} ms, diff ${x.diff.toFixed(1)} ms, floor ${x.floor.toFixed(3)} ms`);
}
const rules = daemon.store.current.ok ? daemon.store.current.policy.rules.length : 0;
await api.close();
await daemon.close();
echo.close();
fs.rmSync(dir, { recursive: true, force: true });
const round = (x: number, d: number): number => Number(x.toFixed(d));
console.log(
  JSON.stringify({
    rules,
    qubes: QUBES,
    replace_ms_p50_10k: round(median(runs.map((r) => r.replace)), 2),
    get_ms_p50: round(median(runs.map((r) => r.get)), 3),
    diff_ms_10k_100q: round(median(runs.map((r) => r.diff)), 1),
    floor_ms_p50: round(median(runs.map((r) => r.floor)), 3),
  }),
);
