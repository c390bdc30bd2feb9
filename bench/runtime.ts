// bench/runtime.ts — qubes as bwrap sandboxes against qubes as plain processes.
// Needs root (the bwrap backend mounts overlayfs on the host side). Prints one
// JSON line (last line). Starts are measured from the start request until a
// call into the qube (the real qrexec-client through the real qrexec-host)
// has succeeded; qubesd's admin.vm.Start is not on main yet, so the start
// request is the sandbox layer's Sandbox.start (bwrap) or a spawn of the
// agent (process). Baselines in the same run: a bare `bwrap true`, a spawn
// of `true`, and a call alone into a running qube.
//
// BENCH_RUNTIME_RUNS (default 15) starts per backend; BENCH_RUNTIME_MANY
// (default 100) qubes running at once for host_rss_mb_per_qube and
// max_running (a cap, not a limit found: each idle qube costs ~qube_rss_mb).
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { BIN, waitFor } from '../test/e2e/harness.js';
import { SandboxWorld, SH_SERVICE, type WorldQube } from '../test/runtime/world.js';
import { Sandbox, sandboxSupport, waitAgentReady } from '../src/runtime/sandbox/index.js';

const RUNS = Number(process.env['BENCH_RUNTIME_RUNS'] ?? 15);
const MANY = Number(process.env['BENCH_RUNTIME_MANY'] ?? 100);

const pct = (xs: number[], p: number): number => {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor((p / 100) * s.length))] ?? NaN;
};
const median = (xs: number[]): number => pct(xs, 50);
const r1 = (x: number): number => Math.round(x * 10) / 10;

function rssKb(pid: number): number {
  try {
    return Number(/VmRSS:\s+(\d+)/.exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'))?.[1] ?? 0);
  } catch {
    return 0;
  }
}

function timeSpawn(cmd: string, args: string[]): number {
  const t = performance.now();
  spawnSync(cmd, args, { stdio: 'ignore' });
  return performance.now() - t;
}

const uuid = (i: number): string => `00000000-0000-4000-8000-${String(i).padStart(12, '0')}`;

async function main(): Promise<void> {
  const support = sandboxSupport();
  if (!support.ok) {
    process.stderr.write(`bench:runtime: the bwrap backend cannot run here: ${support.reason}\n`);
    process.exit(1);
  }
  const qubes: WorldQube[] = [{ name: 'work', domid: 1, uuid: uuid(1) }, { name: 'proc', domid: 2, uuid: uuid(2) }, { name: 'disp', domid: 3, uuid: uuid(3) }, { name: 'dvm', domid: 4, uuid: uuid(4) }];
  for (let i = 0; i < MANY; i++) qubes.push({ name: `m${i}`, domid: 100 + i, uuid: uuid(100 + i) });
  const w = await SandboxWorld.create(qubes);
  const hostPid = w.procs[0]?.pid ?? 0;
  const extra: ChildProcess[] = [];
  try {
    w.templateService('test.Sh', SH_SERVICE);
    w.templateService('test.Echo', '#!/bin/sh\necho ok\n');
    // (the process-backend agent runs as the host's root, which has no `user`)
    const callOk = async (name: string, user = 'DEFAULT'): Promise<void> => {
      const r = await w.call(name, `${user}:QUBESRPC test.Echo+ dom0`);
      if (r.stdout.toString() !== 'ok\n') throw new Error(`call into ${name} failed: ${r.code} ${r.stderr}`);
    };

    // baselines
    const bareBwrap: number[] = [];
    const bareSpawn: number[] = [];
    for (let i = 0; i < RUNS; i++) {
      bareBwrap.push(timeSpawn(support.tools.bwrap, ['--unshare-all', '--die-with-parent', '--ro-bind', '/', '/', '--proc', '/proc', '--dev', '/dev', 'true']));
      bareSpawn.push(timeSpawn('/bin/true', []));
    }

    // bwrap: start until a call succeeds; shutdown
    const startBwrap: number[] = [];
    const readyBwrap: number[] = [];
    const shutdown: number[] = [];
    const callAlone: number[] = [];
    let qubeRss = 0;
    let qubeProcs = 0;
    for (let i = 0; i < RUNS; i++) {
      const t = performance.now();
      await w.start('work');
      readyBwrap.push(performance.now() - t);
      await callOk('work');
      startBwrap.push(performance.now() - t);
      const tc = performance.now();
      await callOk('work');
      callAlone.push(performance.now() - tc);
      if (i === RUNS - 1) {
        await new Promise((r) => setTimeout(r, 300));
        const pids = w.sandboxes.get('work')?.pids() ?? [];
        qubeProcs = pids.length;
        qubeRss = pids.reduce((n, p) => n + rssKb(p), 0) / 1024;
      }
      shutdown.push(await w.stop('work'));
    }

    // process: the agent as a plain child process (what the process backend does)
    const startProc: number[] = [];
    const pdir = path.join(w.dir, 'proc-qube');
    fs.mkdirSync(path.join(pdir, 'rpc'), { recursive: true });
    fs.writeFileSync(path.join(pdir, 'rpc', 'test.Echo'), '#!/bin/sh\necho ok\n', { mode: 0o755 });
    const vdir = w.links.add(2);
    let procRss = 0;
    for (let i = 0; i < RUNS; i++) {
      const t = performance.now();
      const p = spawn(BIN('qrexec-agent'), [`--agent-socket=${path.join(pdir, 'agent.sock')}`], {
        env: { ...process.env, VCHAN_SOCKET_DIR: vdir, VCHAN_DOMAIN: '2', QREXEC_SERVICE_PATH: path.join(pdir, 'rpc') },
        stdio: 'ignore',
      });
      extra.push(p);
      await waitFor(async () => fs.existsSync(path.join(pdir, 'agent.sock')), 20_000, 'process agent');
      await callOk('proc', 'root');
      startProc.push(performance.now() - t);
      if (i === RUNS - 1) procRss = rssKb(p.pid ?? 0) / 1024;
      p.kill('SIGKILL');
      await new Promise((r) => p.once('exit', r));
      fs.rmSync(path.join(pdir, 'agent.sock'), { force: true });
    }

    // DispVM through the sandbox layer (no qubesd yet): create+start, call, destroy; and preloaded (started before)
    await w.start('dvm');
    await w.stop('dvm');
    const disp = { volumes: { klass: 'DispVM' as const, name: 'disp', template: 'tpl', dispvmTemplate: 'dvm' } };
    const dispCold: number[] = [];
    const dispWarm: number[] = [];
    for (let i = 0; i < RUNS; i++) {
      const t = performance.now();
      await w.start('disp', disp);
      await callOk('disp');
      await w.stop('disp');
      dispCold.push(performance.now() - t);
      await w.start('disp', disp);
      const t2 = performance.now();
      await callOk('disp');
      await w.stop('disp');
      dispWarm.push(performance.now() - t2);
    }

    // many idle qubes at once
    const hostBefore = rssKb(hostPid);
    const many: Sandbox[] = [];
    const tMany = performance.now();
    for (let i = 0; i < MANY; i++) {
      const name = `m${i}`;
      const sb = await Sandbox.start({
        name, domid: 100 + i, volumes: { klass: 'AppVM', name, template: 'tpl' }, dataDir: w.data,
        runDir: path.join(w.dir, 'run', name), vchanDir: w.links.add(100 + i),
      });
      many.push(sb);
      await waitAgentReady(sb, 60_000);
    }
    const manyStartS = (performance.now() - tMany) / 1000;
    await callOk(`m${MANY - 1}`);
    await new Promise((r) => setTimeout(r, 500));
    const hostAfter = rssKb(hostPid);
    const manyRss = many.reduce((n, sb) => n + sb.pids().reduce((m, p) => m + rssKb(p), 0), 0) / 1024;
    for (const sb of many) await sb.stop();

    const result = {
      start_ms_p50_bwrap: r1(median(startBwrap)),
      start_ms_p50_process: r1(median(startProc)),
      start_ready_ms_p50_bwrap: r1(median(readyBwrap)),
      call_ms_p50_running: r1(median(callAlone)),
      shutdown_ms_p50: r1(median(shutdown)),
      dispvm_call_ms_p50: r1(median(dispCold)),
      dispvm_call_ms_p50_preloaded: r1(median(dispWarm)),
      qube_rss_mb: r1(qubeRss),
      qube_processes: qubeProcs,
      process_qube_rss_mb: r1(procRss),
      host_rss_mb_per_qube: r1((hostAfter - hostBefore) / 1024 / MANY),
      many_qubes_rss_mb_each: r1(manyRss / MANY),
      max_running: MANY,
      max_running_is_cap: true,
      many_start_s: r1(manyStartS),
      baseline_bwrap_true_ms_p50: r1(median(bareBwrap)),
      baseline_spawn_true_ms_p50: r1(median(bareSpawn)),
      runs: RUNS,
    };
    console.log(JSON.stringify(result));
  } finally {
    for (const p of extra) if (p.exitCode === null) p.kill('SIGKILL');
    await w.close();
  }
}

await main();
