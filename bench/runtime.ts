// bench/runtime.ts — qubes as bwrap sandboxes, and as plain processes, in the
// real host (src/host/system.ts: qubesd, the policy daemon and every qube's
// qrexec daemon in this process). Needs root for bwrap. Prints one JSON line
// (the last line).
//
// - start_ms_p50_*: admin.vm.Start until a call into the qube has returned
//   (the call is made in this process through the qube's qrexec daemon, as
//   qrexec-client does, so no Node start is counted);
// - dispvm_call_ms_p50: cold, what a @dispvm call does: CreateDisposable,
//   Start, the call, Kill (which removes it); _preloaded: the same with
//   preload-dispvm-max=1 (CreateDisposable hands out a started one);
// - shutdown_ms_p50: admin.vm.Shutdown +wait;
// - qube_rss_mb: RSS of every process of one idle qube (counts the Node
//   binary's text, shared by every qube); qube_pss_mb / qube_uss_mb: its
//   proportional and private memory, what one more qube costs;
// - host_rss_mb_per_qube: this (host) process's RSS growth with N idle qubes, / N;
// - max_running: how many idle qubes ran at once. By default only up to a
//   cap (BENCH_RUNTIME_MANY, default 40) on this shared machine, and then
//   max_running_is_cap is true; with --max-running it starts qubes until one
//   fails, free memory falls under BENCH_RUNTIME_MIN_FREE_GIB (default 6), or
//   500; many_*: how long the first and last 10 starts took, the host's
//   descriptors and the machine's processes with them all running.
// Baselines in the same run: a raw unix-socket round trip, `bwrap true`, a
// spawn of `true`, and a call into a qube that is running.
//
// BENCH_RUNTIME_RUNS (default 9) measurements per figure.
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';
import { PassThrough } from 'node:stream';
import { startSystem, type RunningSystem } from '../src/host/system.js';
import { silentLogger } from '../src/policyd/index.js';
import { DaemonClient } from '../src/daemon/client.js';
import { startPump, vchanListen } from '../src/vchan/index.js';
import { detectCgroups, sandboxSupport } from '../src/runtime/sandbox/index.js';
import { resourcePrefix } from '../src/runtime/index.js';

const RUNS = Number(process.env['BENCH_RUNTIME_RUNS'] ?? 9);
const FIND_MAX = process.argv.includes('--max-running');
const MANY = FIND_MAX ? 500 : Number(process.env['BENCH_RUNTIME_MANY'] ?? 40);
/** With --max-running: stop before free memory falls under this (GiB; the machine is shared). */
const MIN_FREE_GIB = Number(process.env['BENCH_RUNTIME_MIN_FREE_GIB'] ?? 6);
/** preload-dispvm-delay of the bench's disposable template (seconds). */
const BENCH_PRELOAD_DELAY = process.env['BENCH_PRELOAD_DELAY'] ?? '1';

const median = (xs: number[]): number => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length === 0 ? NaN : s.length % 2 ? (s[(s.length - 1) / 2] as number) : ((s[s.length / 2 - 1] as number) + (s[s.length / 2] as number)) / 2;
};
const r1 = (x: number): number => Math.round(x * 10) / 10;
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));
const T0 = performance.now();
const progress = (m: string): void => void process.stderr.write(`bench:runtime: ${((performance.now() - T0) / 1000).toFixed(1)} s: ${m}\n`);

/** Rss, Pss and private (Private_Clean + Private_Dirty) of a process, in kB. */
function mem(pid: number): { rss: number; pss: number; uss: number } {
  try {
    const t = fs.readFileSync(`/proc/${pid}/smaps_rollup`, 'utf8');
    const f = (k: string): number => Number(new RegExp(`^${k}:\\s+(\\d+)`, 'm').exec(t)?.[1] ?? 0);
    return { rss: f('Rss'), pss: f('Pss'), uss: f('Private_Clean') + f('Private_Dirty') };
  } catch {
    return { rss: 0, pss: 0, uss: 0 };
  }
}

function timeSpawn(cmd: string, args: string[]): number {
  const t = performance.now();
  spawnSync(cmd, args, { stdio: 'ignore' });
  return performance.now() - t;
}

/** A raw unix-socket round trip (connect, one byte each way), the floor of any call. */
async function rawRoundTrip(dir: string): Promise<number[]> {
  const p = path.join(dir, 'raw.sock');
  const server = net.createServer((s) => s.once('data', () => s.end('y')));
  await new Promise<void>((r) => server.listen(p, r));
  const out: number[] = [];
  for (let i = 0; i < RUNS * 4; i++) {
    const t = performance.now();
    await new Promise<void>((resolve, reject) => {
      const c = net.connect(p, () => c.write('x'));
      c.once('data', () => {
        c.destroy();
        resolve();
      });
      c.once('error', reject);
    });
    out.push(performance.now() - t);
  }
  server.close();
  return out;
}

interface Host {
  readonly sys: RunningSystem;
  /** Who calls run as: the qube's user; root with the process backend (the host has no `user`). */
  readonly user: string;
  call(method: string, dest: string, arg?: string, payload?: string): Promise<string>;
  /** Runs `cmd` in `qube` as qrexec-client -d does, in this process; resolves with its output. */
  run(qube: string, cmd: string): Promise<string>;
}

async function host(dir: string, runtime: string): Promise<Host> {
  const data = path.join(dir, runtime, 'data');
  const sys = await startSystem({ dataDir: data, runDir: path.join(data, 'run'), runtime, log: silentLogger, warn: (m) => process.stderr.write(`${m}\n`) });
  const venv = { dir: sys.info.vchanDir, ownDomain: 0, layout: sys.info.vchanLayout };
  return {
    sys,
    user: runtime === 'process' ? 'root' : 'DEFAULT',
    call: async (method, dest, arg = '', payload = '') => (await sys.call(method, dest, { arg, payload: Buffer.from(payload) })).toString(),
    run: async (qube, cmd) => {
      const client = await DaemonClient.connect(sys.info.qrexecSocketDir, qube);
      try {
        const ep = await client.exec(cmd, 0, false);
        const listener = await vchanListen(venv, ep.domain, ep.port);
        const ch = await listener.accepted;
        const source = new PassThrough();
        source.end();
        const sink = new PassThrough();
        const chunks: Buffer[] = [];
        sink.on('data', (d: Buffer) => chunks.push(d));
        const status = await startPump({ channel: ch, role: 'client', sink, source, single: false, errSink: new PassThrough().resume(), log: () => undefined }).done;
        if (status !== 0) throw new Error(`${cmd} in ${qube}: exit ${status}`);
        return Buffer.concat(chunks).toString();
      } finally {
        client.close();
      }
    },
  };
}

async function setup(h: Host): Promise<void> {
  await h.call('admin.vm.Create.TemplateVM', 'dom0', '', 'name=tpl label=black');
  await h.call('admin.property.Set', 'dom0', 'default_template', 'tpl');
  await h.call('admin.property.Set', 'dom0', 'default_netvm', '');
  for (const n of ['work', 'dvm']) await h.call('admin.vm.Create.AppVM', 'dom0', '', `name=${n} label=red`);
  await h.call('admin.vm.property.Set', 'dvm', 'template_for_dispvms', 'True');
  // the refill after a use starts 1 s later (the reference's default is 3 s): with 0 it would
  // start during the measured call and compete with it for the host's loop and the CPUs
  await h.call('admin.vm.feature.Set', 'dvm', 'preload-dispvm-delay', BENCH_PRELOAD_DELAY);
}

const power = (h: Host, q: string): string | undefined => h.sys.qubesd.registry.byName(q)?.power;

/** Start until a call returns; the call alone (running); Shutdown+wait. */
async function starts(h: Host, q: string): Promise<{ start: number[]; call: number[]; shutdown: number[] }> {
  const start: number[] = [];
  const call: number[] = [];
  const shutdown: number[] = [];
  // the first start makes the template's files: not counted
  await h.call('admin.vm.Start', q);
  await h.call('admin.vm.Shutdown', q, 'wait');
  for (let i = 0; i < RUNS; i++) {
    const t = performance.now();
    await h.call('admin.vm.Start', q);
    if ((await h.run(q, `${h.user}:echo ok`)) !== 'ok\n') throw new Error('bad output');
    start.push(performance.now() - t);
    const tc = performance.now();
    await h.run(q, `${h.user}:echo ok`);
    call.push(performance.now() - tc);
    const ts = performance.now();
    await h.call('admin.vm.Shutdown', q, 'wait');
    shutdown.push(performance.now() - ts);
  }
  return { start, call, shutdown };
}

/** A @dispvm call as the qrexec daemon makes it: CreateDisposable, Start, the call, Kill. */
async function dispvmCall(h: Host): Promise<number> {
  const t = performance.now();
  const d = await h.call('admin.vm.CreateDisposable', 'dvm');
  if (process.env['BENCH_DEBUG']) progress(`created ${d}`);
  await h.call('admin.vm.Start', d).catch((e: Error) => {
    if (!/not powered off|NotHalted/.test(e.message)) throw e;
  });
  if (process.env['BENCH_DEBUG']) progress(`started ${d}`);
  if ((await h.run(d, `${h.user}:echo ok`)) !== 'ok\n') throw new Error('bad output');
  if (process.env['BENCH_DEBUG']) progress(`called ${d}`);
  await h.call('admin.vm.Kill', d);
  return performance.now() - t;
}

/** Every process of qube `q` of a bwrap host: its cgroup's. */
function qubePids(h: Host, q: string): number[] {
  const cg = detectCgroups();
  const base = cg.kind === 'v2' ? cg.base : cg.kind === 'v1' ? (cg.bases.get('pids') ?? cg.bases.get('memory')) : undefined;
  if (!base) return [];
  try {
    return fs.readFileSync(path.join(base, `${resourcePrefix(h.sys.info.runDir)}${q}`, 'cgroup.procs'), 'utf8').split('\n').filter((x) => x).map(Number);
  } catch {
    return [];
  }
}

async function main(): Promise<void> {
  const support = sandboxSupport();
  if (!support.ok) {
    process.stderr.write(`bench:runtime: the bwrap backend cannot run here: ${support.reason}\n`);
    process.exit(1);
  }
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'bench-runtime-'));
  fs.chmodSync(dir, 0o755);
  try {
    // baselines
    const raw = await rawRoundTrip(dir);
    const bareBwrap: number[] = [];
    const bareSpawn: number[] = [];
    for (let i = 0; i < RUNS; i++) {
      bareBwrap.push(timeSpawn(support.tools.bwrap, ['--unshare-all', '--die-with-parent', '--ro-bind', '/', '/', '--proc', '/proc', '--dev', '/dev', 'true']));
      bareSpawn.push(timeSpawn('/bin/true', []));
    }

    // the process backend
    progress('baselines done');
    const p = await host(dir, 'process');
    let proc;
    try {
      await setup(p);
      proc = await starts(p, 'work');
    } finally {
      await p.sys.close();
    }

    // the bwrap backend
    progress('process backend done');
    const h = await host(dir, 'bwrap');
    try {
      await setup(h);
      const bw = await starts(h, 'work');
      // one idle qube's memory
      progress('bwrap starts done');
      await h.call('admin.vm.Start', 'work');
      await sleep(1000);
      const m = qubePids(h, 'work').map(mem);
      const sum = (k: 'rss' | 'pss' | 'uss'): number => m.reduce((n, x) => n + x[k], 0) / 1024;
      const qube = { rss: sum('rss'), pss: sum('pss'), uss: sum('uss'), procs: m.length };
      await h.call('admin.vm.Shutdown', 'work', 'wait');

      // DispVMs, cold then preloaded
      progress('memory done');
      await dispvmCall(h); // its first start: not counted
      const cold: number[] = [];
      for (let i = 0; i < RUNS; i++) cold.push(await dispvmCall(h));
      await h.call('admin.vm.feature.Set', 'dvm', 'preload-dispvm-max', '1');
      const warm: number[] = [];
      const reg = h.sys.qubesd.registry;
      const preloaded = (): boolean => {
        const n = reg.byName('dvm')?.feature('preload-dispvm') ?? '';
        return n !== '' && reg.byName(n)?.feature('preload-dispvm-completed') === '1' && power(h, n) === 'Paused';
      };
      for (let i = 0; i < RUNS; i++) {
        for (let j = 0; j < 3000 && !preloaded(); j++) await sleep(10);
        if (!preloaded()) throw new Error('no preloaded disposable');
        warm.push(await dispvmCall(h));
      }
      await h.call('admin.vm.feature.Remove', 'dvm', 'preload-dispvm-max');
      for (let j = 0; j < 1000 && reg.list().some((q) => q.klass === 'DispVM'); j++) await sleep(10);

      // many idle qubes at once
      progress('dispvms done');
      global.gc?.();
      await sleep(500);
      const hostBefore = mem(process.pid).rss;
      let running = 0;
      let stopReason = 'cap';
      const tMany = performance.now();
      const manyStarts: number[] = [];
      for (let i = 0; i < MANY; i++) {
        if (FIND_MAX && os.freemem() < MIN_FREE_GIB * 1024 ** 3) {
          stopReason = `free memory under ${MIN_FREE_GIB} GiB`;
          break;
        }
        const name = `m${i}`;
        await h.call('admin.vm.Create.AppVM', 'dom0', '', `name=${name} label=red`);
        const ts = performance.now();
        try {
          await h.call('admin.vm.Start', name);
        } catch (e) {
          stopReason = `start ${running + 1} failed: ${(e as Error).message.slice(0, 160)}`;
          break;
        }
        manyStarts.push(performance.now() - ts);
        running++;
        if (running % 50 === 0) progress(`${running} qubes running, ${(os.freemem() / 1024 ** 3).toFixed(1)} GiB free, host fds ${fs.readdirSync('/proc/self/fd').length}, load ${os.loadavg()[0]?.toFixed(1)}`);
      }
      const manyStartS = (performance.now() - tMany) / 1000;
      // the first and the last still answer
      if (running > 0) for (const n of new Set([`m0`, `m${running - 1}`])) if ((await h.run(n, `${h.user}:echo ok`)) !== 'ok\n') throw new Error(`${n} does not answer`);
      const hostFds = fs.readdirSync('/proc/self/fd').length;
      const allPids = fs.readdirSync('/proc').filter((e) => /^\d+$/.test(e)).length;
      global.gc?.();
      await sleep(1000);
      const hostAfter = mem(process.pid).rss;
      const eachPss = running ? Array.from({ length: running }, (_, i) => qubePids(h, `m${i}`).map(mem).reduce((n, x) => n + x.pss, 0)).reduce((a, b) => a + b, 0) / 1024 / running : 0;

      const result = {
        start_ms_p50_bwrap: r1(median(bw.start)),
        start_ms_p50_process: r1(median(proc.start)),
        call_ms_p50_running_bwrap: r1(median(bw.call)),
        call_ms_p50_running_process: r1(median(proc.call)),
        dispvm_call_ms_p50: r1(median(cold)),
        dispvm_call_ms_p50_preloaded: r1(median(warm)),
        shutdown_ms_p50: r1(median(bw.shutdown)),
        shutdown_ms_p50_process: r1(median(proc.shutdown)),
        qube_rss_mb: r1(qube.rss),
        qube_pss_mb: r1(qube.pss),
        qube_uss_mb: r1(qube.uss),
        qube_processes: qube.procs,
        many_qubes_pss_mb_each: r1(eachPss),
        host_rss_mb_per_qube: running ? r1((hostAfter - hostBefore) / 1024 / running) : null,
        max_running: running,
        max_running_is_cap: !FIND_MAX && running === MANY,
        max_running_stop: FIND_MAX ? stopReason : `capped at ${MANY} (measure with --max-running)`,
        many_start_s: r1(manyStartS),
        many_start_ms_p50_first10: r1(median(manyStarts.slice(0, 10))),
        many_start_ms_p50_last10: r1(median(manyStarts.slice(-10))),
        many_host_fds: hostFds,
        many_machine_pids: allPids,
        baseline_raw_unix_rtt_ms_p50: Math.round(median(raw) * 1000) / 1000,
        baseline_bwrap_true_ms_p50: r1(median(bareBwrap)),
        baseline_spawn_true_ms_p50: r1(median(bareSpawn)),
        preload_dispvm_delay_s: Number(BENCH_PRELOAD_DELAY),
        runs: RUNS,
      };
      await h.sys.close();
      console.log(JSON.stringify(result));
    } catch (e) {
      await h.sys.close();
      throw e;
    }
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

await main();
