// bench/air.ts — Qubes Air: calls from a qube to a qube of another host,
// through both hosts' policies, relays and one SSH connection (test/air/hosts.ts:
// each host a full qrexec-ts host in its own network namespace). Root only.
//
//   npm run bench:air                 two hosts a and b
//   npm run bench:air -- --hosts 5    five hosts on one site network; every host calls every other at once
//
// The timings are taken inside the calling qube (bash's EPOCHREALTIME around
// each qrexec-client-vm process, so no tool start is counted). Two hosts:
// remote_call_ms_p50/p99 (a small call work@a -> work@b over the warm
// connection), remote_call_ms_first (the same with the connection made first:
// median of several), remote_mbps (256 MiB through echo, median of 3), and
// in the same run the local baseline: local_call_ms_p50 (work@a -> relay@a,
// one local qrexec call) and local_mbps. Last line: one JSON object.
import { parseArgs } from 'node:util';
import { AirTestHost, RELAY_PORT, forwardToRelay, link, netnsTag, program, star } from '../test/air/hosts.js';

const { values } = parseArgs({
  options: { hosts: { type: 'string', default: '2' }, calls: { type: 'string', default: '300' }, mib: { type: 'string', default: '256' } },
});
const N = Number(values.hosts);
const CALLS = Number(values.calls);
const MIB = Number(values.mib);
if (!Number.isInteger(N) || N < 2 || N > 8 || !Number.isInteger(CALLS) || CALLS < 10 || !Number.isInteger(MIB) || MIB < 1) {
  process.stderr.write('usage: bench/air.js [--hosts 2..8] [--calls N>=10] [--mib N]\n');
  process.exit(2);
}
if (process.getuid?.() !== 0) {
  process.stderr.write('bench:air needs root (network namespaces, sandboxes)\n');
  process.exit(1);
}

const SERVICES: Record<string, string> = {
  'test.Null': '#!/bin/sh\nexit 0\n',
  'test.Echo': '#!/bin/sh\nexec cat\n',
};
// in the qube: `calls TARGET N` prints each call's µs; `echoes TARGET MIB` prints µs and bytes back
const CALLS_SH = `#!/bin/bash
t=$1 n=$2
for ((i = 0; i < n; i++)); do
  s=$EPOCHREALTIME
  qrexec-client-vm "$t" test.Null </dev/null >/dev/null || { echo "FAIL $?"; exit 1; }
  e=$EPOCHREALTIME
  echo $(( \${e/./} - \${s/./} ))
done
`;
const ECHO_SH = `#!/bin/bash
t=$1 mib=$2
s=$EPOCHREALTIME
got=$(head -c $((mib << 20)) /dev/zero | qrexec-client-vm "$t" test.Echo | wc -c)
e=$EPOCHREALTIME
echo "$(( \${e/./} - \${s/./} )) $got"
`;
/** Closes relay's connection to `peer`, then one timed call to `target`: its µs. */
const FIRST_SH = `#!/bin/bash
t=$1
s=$EPOCHREALTIME
qrexec-client-vm "$t" test.Null </dev/null >/dev/null || { echo "FAIL $?"; exit 1; }
e=$EPOCHREALTIME
echo $(( \${e/./} - \${s/./} ))
`;

const pct = (xs: readonly number[], p: number): number => {
  const s = [...xs].sort((x, y) => x - y);
  return s[Math.min(s.length - 1, Math.floor((p / 100) * s.length))] ?? NaN;
};
const r2 = (x: number): number => Math.round(x * 100) / 100;
const log = (s: string): void => void process.stderr.write(`${s}\n`);

async function run(h: AirTestHost, qube: string, cmd: string, ms = 600_000): Promise<string> {
  const r = await h.runIn(qube, cmd, ms);
  if (r.status !== 0 || /FAIL/.test(r.stdout)) throw new Error(`${h.name}/${qube}: ${cmd}: exit ${r.status}: ${r.stdout.slice(-200)} ${r.stderr}`);
  return r.stdout;
}
const micros = (out: string): number[] => out.trim().split('\n').map(Number);

/** Hosts `names`, their qubes, services and bench programs, started; joined by one link (2) or a switch. */
async function setUp(names: readonly string[]): Promise<{ hosts: AirTestHost[]; done: () => Promise<void> }> {
  const tag = netnsTag();
  const hosts = names.map((n) => AirTestHost.create(tag, n));
  let unstar = (): void => undefined;
  const done = async (): Promise<void> => {
    await Promise.all(hosts.map((h) => h.stop()));
    unstar();
  };
  try {
    if (hosts.length === 2) link(hosts[0] as AirTestHost, hosts[1] as AirTestHost);
    else unstar = star(tag, hosts);
    for (const h of hosts) await h.start();
    for (const h of hosts) {
      h.makeQubes();
      forwardToRelay(h);
      for (const [n, s] of Object.entries(SERVICES)) {
        h.service('work', n, s);
        h.service('relay', n, s);
      }
      program(h, 'work', 'calls', CALLS_SH);
      program(h, 'work', 'echoes', ECHO_SH);
      program(h, 'work', 'first', FIRST_SH);
    }
    // the documented set-up: one pair command per pair of hosts, then the RemoteVMs
    for (let i = 0; i < hosts.length; i++) {
      for (let j = i + 1; j < hosts.length; j++) {
        const x = hosts[i] as AirTestHost;
        const y = hosts[j] as AirTestHost;
        x.ok('qvm-air', 'pair', '--name', x.name, '--address', `${x.linkAddress}:${RELAY_PORT}`, '--peer-host-dir', y.run, '--peer-name', y.name, '--peer-address', `${y.linkAddress}:${RELAY_PORT}`);
      }
    }
    for (const h of hosts) {
      let pol = 'test.Null * work relay allow\ntest.Echo * work relay allow\n';
      for (const o of hosts) {
        if (o === h) continue;
        h.ok('qvm-air', 'add', `work-${o.name}`, o.name, '--remote-name', 'work');
        pol += `test.Null * work work-${o.name} allow\ntest.Echo * work work-${o.name} allow\ntest.Null * work-${o.name} work allow\ntest.Echo * work-${o.name} work allow\n`;
      }
      h.policy(pol);
    }
  } catch (e) {
    await done();
    throw e;
  }
  return { hosts, done };
}

async function twoHosts(): Promise<Record<string, unknown>> {
  const { hosts, done } = await setUp(['a', 'b']);
  const a = hosts[0] as AirTestHost;
  try {
    await run(a, 'work', 'calls work-b 3');
    await run(a, 'work', 'calls relay 3');
    const local = micros(await run(a, 'work', `calls relay ${CALLS}`));
    const remote = micros(await run(a, 'work', `calls work-b ${CALLS}`));
    log(`local p50 ${pct(local, 50) / 1000} ms, remote p50 ${pct(remote, 50) / 1000} p99 ${pct(remote, 99) / 1000} ms`);
    const first: number[] = [];
    for (let i = 0; i < 7; i++) {
      await run(a, 'relay', 'ssh -F ~/.qubes-air/ssh_config -O exit b 2>/dev/null; sleep 0.2; true');
      first.push(...micros(await run(a, 'work', 'first work-b')));
    }
    log(`first ${first.map((x) => x / 1000).join(' ')} ms`);
    const mbps = async (target: string): Promise<number> => {
      const rs: number[] = [];
      for (let i = 0; i < 3; i++) {
        const [us, got] = (await run(a, 'work', `echoes ${target} ${MIB}`)).trim().split(' ').map(Number);
        if (got !== MIB << 20) throw new Error(`echo to ${target}: ${got} bytes back of ${MIB << 20}`);
        rs.push((MIB << 20) / (us as number));
      }
      return pct(rs, 50);
    };
    const localMbps = await mbps('relay');
    const remoteMbps = await mbps('work-b');
    log(`echo ${MIB} MiB: local ${r2(localMbps)} MB/s, remote ${r2(remoteMbps)} MB/s`);
    return {
      bench: 'air',
      hosts: 2,
      calls: CALLS,
      remote_call_ms_p50: r2(pct(remote, 50) / 1000),
      remote_call_ms_p99: r2(pct(remote, 99) / 1000),
      remote_call_ms_first: r2(pct(first, 50) / 1000),
      remote_mbps: r2(remoteMbps),
      local_call_ms_p50: r2(pct(local, 50) / 1000),
      local_call_ms_p99: r2(pct(local, 99) / 1000),
      local_mbps: r2(localMbps),
      echo_mib: MIB,
    };
  } finally {
    await done();
  }
}

async function manyHosts(): Promise<Record<string, unknown>> {
  const names = 'abcdefgh'.slice(0, N).split('');
  const t0 = Date.now();
  const { hosts, done } = await setUp(names);
  const setupS = (Date.now() - t0) / 1000;
  log(`${N} hosts set up in ${setupS} s`);
  try {
    // first calls: every host to every other, one after another (each makes its connection)
    const first: number[] = [];
    for (const h of hosts) for (const o of hosts) if (o !== h) first.push(...micros(await run(h, 'work', `first work-${o.name}`)));
    await run(hosts[0] as AirTestHost, 'work', 'calls relay 3');
    const local = micros(await run(hosts[0] as AirTestHost, 'work', `calls relay ${CALLS}`));
    // one pair alone, warm: the two-host figure on this bigger site
    const alone = micros(await run(hosts[0] as AirTestHost, 'work', `calls work-${hosts[1]?.name} ${CALLS}`));
    // all at once: on every host, one loop per other host, all running together
    const per = Math.max(10, Math.floor(CALLS / (N - 1)));
    const t1 = Date.now();
    const outs = await Promise.all(hosts.flatMap((h) => hosts.filter((o) => o !== h).map((o) => run(h, 'work', `calls work-${o.name} ${per}`))));
    const wall = (Date.now() - t1) / 1000;
    const all = outs.flatMap(micros);
    // relay state: connections (masters) and sshd processes per relay
    const state = await run(hosts[0] as AirTestHost, 'relay', 'ls /tmp/qubes-air-*.ctl | wc -l; for s in /proc/[0-9]*/comm; do read -r c < $s && echo $c; done | grep -cx sshd');
    const [masters, sshds] = state.trim().split('\n').map(Number);
    // one echo per pair at once, 16 MiB each
    const t2 = Date.now();
    const echoes = await Promise.all(hosts.map((h, i) => {
      const o = hosts[(i + 1) % N] as AirTestHost;
      return run(h, 'work', `echoes work-${o.name} 16`);
    }));
    const echoWall = (Date.now() - t2) / 1000;
    for (const e of echoes) if (Number(e.trim().split(' ')[1]) !== 16 << 20) throw new Error(`echo: ${e}`);
    return {
      bench: 'air',
      hosts: N,
      pairs: N * (N - 1),
      setup_s: r2(setupS),
      first_call_ms_p50: r2(pct(first, 50) / 1000),
      first_call_ms_max: r2(Math.max(...first) / 1000),
      remote_call_ms_p50_alone: r2(pct(alone, 50) / 1000),
      all_to_all_calls: all.length,
      all_to_all_ms_p50: r2(pct(all, 50) / 1000),
      all_to_all_ms_p99: r2(pct(all, 99) / 1000),
      all_to_all_calls_per_s: r2(all.length / wall),
      ring_echo_16mib_aggregate_mbps: r2((N * (16 << 20)) / 1e6 / echoWall),
      relay_connections: masters,
      relay_sshd_processes: sshds,
      local_call_ms_p50: r2(pct(local, 50) / 1000),
    };
  } finally {
    await done();
  }
}

const result = N === 2 ? await twoHosts() : await manyHosts();
process.stdout.write(JSON.stringify(result) + '\n');
