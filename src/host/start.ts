/**
 * `npm start` (bin/qubes-host): the host process with the demo system made
 * at first start, its autostart qubes started, a tour printed; until Ctrl-C
 * or SIGTERM, which shut every qube down. `--once` runs the tour's commands
 * (the ask answered by the first offered target), prints them with their
 * output and stops: exit status 0 when every step gave what it should.
 */
import { PassThrough } from 'node:stream';
import * as path from 'node:path';
import { defaultDataDir, runDirOf } from '../common/local-host.js';
import { TtyFrontend } from '../policyd/agent.js';
import { createLogger } from '../policyd/index.js';
import { ensureDemoSystem, ensureServicesPolicy } from './demo-system.js';
import { startSystem } from './system.js';
import { watchRelays } from './air-relays.js';
import { Dom0GuiCaller, guiDomains, startGui, type RunningGui } from './gui.js';
import type { RunningSystem } from './system.js';
import { TerminalAsk } from './terminal-ask.js';
import { runStep, tourSteps, tourText, type TourOptions } from './tour.js';

export interface HostOptions {
  readonly dataDir?: string;
  readonly runDir?: string;
  readonly runtime: string;
  readonly demoSystem: boolean;
  readonly once: boolean;
  readonly verbose: boolean;
  readonly out: (s: string) => void;
}

/** Starts the host and runs until a signal (or the tour, with `once`); resolves with the exit status. */
export async function runHost(o: HostOptions): Promise<number> {
  const dataDir = path.resolve(o.dataDir ?? defaultDataDir());
  const runDir = path.resolve(o.runDir ?? runDirOf(dataDir));
  const prog = 'qubes-host';
  const log = createLogger(prog, { level: o.verbose ? 'info' : 'warning' });
  // --once answers the ask itself: what the frontend reads is typed by the tour
  // (the step's answer; nothing: Enter, deny)
  const answers = new PassThrough();
  const step: { answer: string } = { answer: '' };
  const frontend = o.once
    ? new TtyFrontend(answers, {
        write: (s: string) => {
          o.out(s.replace(/\n$/, ''));
          if (s.startsWith('Target number')) setImmediate(() => answers.write(`${step.answer}\n`));
          return true;
        },
      } as NodeJS.WritableStream)
    : new TtyFrontend(process.stdin, process.stdout);
  const t0 = performance.now();
  // the questions for sys-gui's qubes go to its web app (--once answers them here)
  let system: RunningSystem | null = null;
  const gui = new TerminalAsk(frontend, o.once ? null : new Dom0GuiCaller(() => system), log);
  const sys = await startSystem({
    dataDir,
    runDir,
    runtime: o.runtime,
    log,
    gui,
    debug: o.verbose,
    warn: (m) => o.out(m.trimEnd()),
  });
  system = sys;
  let code = 0;
  const guis: RunningGui[] = [];
  // a Qubes Air relay's sshd starts with the relay (before the autostart below)
  const unwatchRelays = watchRelays(sys, log);
  try {
    const created = o.demoSystem ? await ensureDemoSystem(sys.qubesd.registry, sys.call, sys.info.policyDir) : false;
    // after the demo's (which fills only an empty directory): the services' defaults, with or without a demo
    ensureServicesPolicy(sys.info.policyDir);
    const names = sys.qubesd.registry.list().filter((q) => q.klass !== 'AdminVM').map((q) => q.name);
    o.out(`${prog}: qubesd, the policy daemon and the qrexec daemons in one process (pid ${process.pid})`);
    o.out(`${prog}: data in ${dataDir}${created ? ' (demo system created)' : ''}; qubes: ${names.join(', ') || 'none'}`);
    o.out(`${prog}: runtime ${sys.info.runtime}${sys.info.runtime === 'bwrap' ? ': each qube is a bubblewrap sandbox' : sys.info.runtime === 'process' ? ': qubes are plain processes, NOT isolated' : ''}`);
    await sys.autostart();
    const running = sys.qubesd.registry.list().filter((q) => q.klass !== 'AdminVM' && q.power === 'Running').map((q) => q.name);
    for (const g of guiDomains(sys)) {
      if (sys.qubesd.registry.byName(g)?.power !== 'Running') continue;
      try {
        const r = await startGui(sys, g, log);
        guis.push(r);
        o.out(`${prog}: ${g}: open ${r.url}`);
      } catch (e) {
        o.out(`${prog}: ${g}: ${(e as Error).message}`);
      }
    }
    o.out(`${prog}: running: ${running.join(', ') || 'none'} (${((performance.now() - t0) / 1000).toFixed(1)} s)`);
    const defaultRun = runDirOf(defaultDataDir());
    const askWhere = !o.once && guis.some((g) => g.name === sys.qubesd.registry.byName('work')?.get('guivm')) ? 'in the browser (the sys-gui URL above)' : undefined;
    const tour: TourOptions = {
      policyDir: sys.info.policyDir,
      dataDir,
      runtime: sys.info.runtime,
      ...(runDir !== defaultRun ? { exportLine: `export QREXEC_HOST_DIR=${runDir}` } : {}),
      ...(askWhere ? { askWhere } : {}),
    };
    if (o.once) code = await once(tour, runDir !== defaultRun ? { QREXEC_HOST_DIR: runDir } : {}, step, o.out);
    else {
      o.out('');
      o.out(tourText(tour).trimEnd());
      o.out(`Edit the policy in ${sys.info.policyDir} (reloaded on save). Ctrl-C stops every qube and the host.`);
      await new Promise<void>((resolve) => {
        process.once('SIGINT', resolve);
        process.once('SIGTERM', resolve);
      });
      o.out(`${prog}: shutting every qube down`);
    }
  } finally {
    unwatchRelays();
    await Promise.all(guis.map((g) => g.proxy.close()));
    await sys.close();
  }
  return code;
}

async function once(tour: TourOptions, env: Record<string, string>, answering: { answer: string }, out: (s: string) => void): Promise<number> {
  let failed = 0;
  for (const step of tourSteps(tour)) {
    answering.answer = step.answer ?? '';
    out(`\n$ ${step.command}    # ${step.what}`);
    const r = await runStep(step, { ...process.env, ...env });
    if (r.output) out(r.output.trimEnd());
    out(`[exit status ${r.status}${r.ok ? '' : `; expected ${step.status} and output matching ${step.expect}`}]`);
    if (!r.ok) failed++;
  }
  out(failed ? `\n${failed} tour step(s) failed` : '\nevery tour step worked');
  return failed ? 1 : 0;
}
