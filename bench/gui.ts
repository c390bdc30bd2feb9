/**
 * GUI domain benchmark (`npm run bench:gui`).
 *
 * The real host in this process (qubesd, the policy daemon, the qrexec
 * daemons; process backend; the shipped policy, as test/gui/host-world.ts),
 * sys-gui's web app in its qube behind dom0's proxy, 1,000 qubes managed by
 * sys-gui, Debian's Chromium headless. Each figure is the median of several
 * runs:
 * - page_ready_ms_1000: a fresh browser context navigates to the printed URL
 *   (token login, redirect, the app) until the qube manager holds all 1,000
 *   rows (aria-rowcount), sys-gui's model already loaded;
 * - page_cold_ms_1000 (one run): sys-gui restarted with its 1,000 qubes, from
 *   starting its web app (the host's startGui: the server in the qube, the
 *   token, the proxy) to the first page holding all rows, the page opened
 *   as soon as the URL is known. The model loads when the server starts:
 *   admin.vm.List, then GetAll for every qube (16 calls in flight), each one
 *   qrexec call sys-gui -> dom0; disk usage (volume.Info) comes in a second
 *   pass, and disk_pass_ms_1000 is when the last row has it;
 * - ask_shown_ms_p50: from spawning qrexec-client-vm in work (a call the
 *   policy asks about) to the prompt in the page (a MutationObserver, then
 *   the next animation frame, reported back through a binding so that this
 *   process's clock measures both ends);
 * - event_to_dom_ms_p50: from dom0's admin.vm.property.Set (label) to the
 *   row's new label in the page;
 * - proxy_rtt_ms_p50: GET /api/state through the proxy, a new connection
 *   each time (so one qrexec call dom0 -> sys-gui each), and
 *   proxy_rtt_keepalive_ms_p50 on one kept-alive connection.
 * Baselines in the same run: raw_http_rtt_ms_p50 (a new loopback TCP
 * connection and one HTTP request to a trivial Node server in this process)
 * and raw_unix_rtt_ms_p50 (connect/request/reply/close on a unix socket).
 * Last line: one JSON object.
 */
import * as fs from 'node:fs';
import * as http from 'node:http';
import * as net from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';
import { spawn } from 'node:child_process';
import type { Page } from 'playwright-core';
import { HostWorld } from '../test/gui/host-world.js';
import { startGui, type RunningGui } from '../src/host/gui.js';
import { silentLogger } from '../src/policyd/index.js';
import { ROOT } from '../test/gui/harness.js';

const N = 1000;
const RUNS = Number(process.env['BENCH_RUNS'] ?? 7);
const now = (): number => performance.timeOrigin + performance.now();
const median = (xs: number[]): number => {
  const s = [...xs].sort((a, b) => a - b);
  return Math.round((s[Math.floor(s.length / 2)] as number) * 10) / 10;
};
const log = (m: string): void => void process.stderr.write(`bench:gui: ${m}\n`);

function get(url: string, headers: Record<string, string>, agent: http.Agent | false): Promise<number> {
  return new Promise((resolve, reject) => {
    const req = http.get(url, { headers, agent }, (res) => {
      res.resume();
      res.on('end', () => resolve(res.statusCode ?? 0));
    });
    req.on('error', reject);
  });
}

async function rtts(n: number, f: () => Promise<unknown>): Promise<number> {
  await f();
  const t: number[] = [];
  for (let i = 0; i < n; i++) {
    const t0 = performance.now();
    await f();
    t.push(performance.now() - t0);
  }
  return median(t);
}

async function baselines(): Promise<{ http: number; unix: number }> {
  const server = http.createServer((_q, s) => s.end('{}'));
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const port = (server.address() as net.AddressInfo).port;
  const httpRtt = await rtts(200, () => get(`http://127.0.0.1:${port}/`, {}, false));
  server.close();
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'bench-gui-'));
  const sock = path.join(dir, 's');
  const echo = net.createServer({ allowHalfOpen: true }, (c) => c.on('data', (d) => c.end(d)));
  await new Promise<void>((r) => echo.listen(sock, r));
  const unixRtt = await rtts(200, () => new Promise<void>((resolve, reject) => {
    const c = net.connect(sock, () => c.write('ping'));
    c.on('data', () => undefined);
    c.on('close', () => resolve());
    c.on('error', reject);
  }));
  echo.close();
  fs.rmSync(dir, { recursive: true, force: true });
  return { http: httpRtt, unix: unixRtt };
}

/** Navigate a fresh context to the GUI until the manager holds all rows; ms. */
async function pageReady(w: HostWorld, rows: number): Promise<{ ms: number; page: Page }> {
  const ctx = await w.browserContext();
  const page = await ctx.newPage();
  const t0 = now();
  await page.goto(w.gui('sys-gui').url);
  await page.waitForFunction((n) => document.querySelector('table[aria-label="Qubes"]')?.getAttribute('aria-rowcount') === String(n + 1), rows, { timeout: 120_000, polling: 'raf' });
  return { ms: now() - t0, page };
}

/**
 * BENCH_CPU_PROFILE=DIR: a CPU profile of this process (the host: qubesd,
 * the policy daemon, the qrexec daemons) during a phase, written to
 * DIR/gui-PHASE.cpuprofile (open it in Chromium's DevTools); else nothing.
 */
async function profile(phase: string): Promise<() => Promise<void>> {
  const dir = process.env['BENCH_CPU_PROFILE'];
  if (!dir) return () => Promise.resolve();
  const { Session } = await import('node:inspector/promises');
  const s = new Session();
  s.connect();
  await s.post('Profiler.enable');
  await s.post('Profiler.start');
  return async () => {
    const { profile: p } = await s.post('Profiler.stop');
    fs.mkdirSync(dir, { recursive: true });
    fs.writeFileSync(path.join(dir, `gui-${phase}.cpuprofile`), JSON.stringify(p));
    s.disconnect();
    log(`CPU profile of the ${phase} phase: ${path.join(dir, `gui-${phase}.cpuprofile`)}`);
  };
}

/** When (ms after `t0`) the model of sys-gui has the disk usage of every row: GET /api/qubes through the proxy, polled. */
async function diskPass(w: HostWorld, t0: number): Promise<number> {
  const { base: origin, token } = w.gui('sys-gui');
  const login = await fetch(`${origin}/?token=${token}`, { redirect: 'manual' });
  const cookie = (login.headers.get('set-cookie') ?? '').split(';')[0] as string;
  for (;;) {
    const r = (await (await fetch(`${origin}/api/qubes`, { headers: { cookie } })).json()) as { rows: { diskBytes: number | null }[] };
    if (r.rows.length === N && r.rows.every((x) => x.diskBytes !== null)) return now() - t0;
    if (now() - t0 > 300_000) throw new Error('the disk usage pass did not end in 300 s');
    await new Promise((res) => setTimeout(res, 100));
  }
}

/**
 * The time (this process's clock) of the animation frame after `selector`
 * first matches in the page: the page calls back through a binding, so one
 * clock measures both ends (the callback's own latency is included).
 */
async function watch(page: Page): Promise<(selector: string) => Promise<{ seen: Promise<number> }>> {
  let resolve: ((t: number) => void) | null = null;
  await page.exposeFunction('__benchSeen', () => void resolve?.(now()));
  return async (selector) => {
    const seen = new Promise<number>((r) => {
      resolve = r;
    });
    await page.evaluate((sel) => {
      const done = (): void => {
        requestAnimationFrame(() => void (window as unknown as { __benchSeen: () => Promise<void> }).__benchSeen());
      };
      if (document.querySelector(sel)) return done();
      const mo = new MutationObserver(() => {
        if (!document.querySelector(sel)) return;
        mo.disconnect();
        done();
      });
      mo.observe(document.body, { subtree: true, childList: true, attributes: true });
    }, selector);
    return { seen };
  };
}

async function main(): Promise<void> {
  const base = await baselines();
  log(`baselines: http ${base.http} ms, unix ${base.unix} ms`);
  const w = await HostWorld.start();
  try {
    // the ask of the benchmark, decided by the policy daemon as any other
    fs.writeFileSync(path.join(w.dir, 'data', 'policy.d', '29-bench.policy'), 'bench.Ask  *  work  personal  ask\n');
    const t0 = performance.now();
    const have = 3; // personal, tpl, work
    for (let i = 0; i < N - have; i++) await w.admin('admin.vm.Create.AppVM', 'dom0', '', `name=q${String(i).padStart(4, '0')} label=${['green', 'blue', 'purple', 'orange'][i % 4]}`);
    log(`${N - have} qubes created in ${Math.round(performance.now() - t0)} ms`);

    // the browser started before (its launch is not the page's)
    await (await w.browserContext()).close();
    // cold: sys-gui restarted, so its web app starts with 1,000 qubes to load
    await (w.guis.get('sys-gui') as RunningGui).proxy.close();
    await w.admin('admin.vm.Kill', 'sys-gui');
    await w.admin('admin.vm.Start', 'sys-gui');
    const stopProfile = await profile('cold');
    const c0 = now();
    w.guis.set('sys-gui', await startGui(w.sys, 'sys-gui', silentLogger));
    const urlMs = now() - c0;
    const cold = await pageReady(w, N);
    const coldMs = urlMs + cold.ms;
    // the second pass: every row with its disk usage (qubesd's volume.Info usage=)
    const diskMs = await diskPass(w, c0);
    await stopProfile();
    log(`cold page: ${Math.round(coldMs)} ms (URL after ${Math.round(urlMs)} ms); disk usage of every row after ${Math.round(diskMs)} ms`);
    await cold.page.context().close();
    const warm: number[] = [];
    for (let i = 0; i < RUNS; i++) {
      const r = await pageReady(w, N);
      warm.push(r.ms);
      await r.page.context().close();
    }
    log(`warm pages: ${warm.map((x) => Math.round(x)).join(' ')} ms`);

    // the proxy: a small authenticated request
    const { base: origin, token } = w.gui('sys-gui');
    const login = await fetch(`${origin}/?token=${token}`, { redirect: 'manual' });
    const cookie = (login.headers.get('set-cookie') ?? '').split(';')[0] as string;
    const headers = { cookie, host: new URL(origin).host };
    const st = await get(`${origin}/api/state`, headers, false);
    if (st !== 200) throw new Error(`GET /api/state: ${st}`);
    const stopProxyProfile = await profile('proxy');
    const proxyRtt = await rtts(RUNS * 10, () => get(`${origin}/api/state`, headers, false));
    await stopProxyProfile();
    const keep = new http.Agent({ keepAlive: true, maxSockets: 1 });
    const proxyKeep = await rtts(RUNS * 10, () => get(`${origin}/api/state`, headers, keep));
    keep.destroy();
    log(`proxy: ${proxyRtt} ms (new connection), ${proxyKeep} ms (kept alive)`);

    const { page } = await pageReady(w, N);
    const when = await watch(page);
    // a property Set in dom0 to the row's new label
    const ev: number[] = [];
    for (let i = 0; i < RUNS; i++) {
      const label = i % 2 === 0 ? 'green' : 'yellow';
      const { seen } = await when(`tr[data-qube="personal"] .qube.label-${label}`);
      const t = now();
      await w.admin('admin.vm.property.Set', 'personal', 'label', label);
      ev.push((await seen) - t);
    }
    log(`event to DOM: ${ev.map((x) => Math.round(x)).join(' ')} ms`);

    // an ask: qrexec-client-vm in work to the prompt in the page (then closed: denied)
    await w.admin('admin.vm.Start', 'work');
    const { env, agentSocket } = w.inside('work');
    const asks: number[] = [];
    for (let i = 0; i < RUNS; i++) {
      const { seen } = await when('.dialog.ask');
      const t = now();
      const p = spawn(path.join(ROOT, 'bin', 'qrexec-client-vm'), [`--agent-socket=${agentSocket}`, 'personal', 'bench.Ask'], { env, stdio: ['ignore', 'ignore', 'ignore'] });
      const exit = new Promise<number | null>((r) => p.on('close', (c) => r(c)));
      const shown = await Promise.race([seen, exit.then((c) => Promise.reject(new Error(`the call ended (exit status ${c}) without a prompt`)))]);
      asks.push(shown - t);
      await page.locator('.dialog.ask').getByRole('button', { name: 'Close' }).click();
      const code = await exit;
      if (code !== 126) throw new Error(`the closed ask gave exit status ${code}`);
      await page.locator('.dialog.ask').waitFor({ state: 'detached' });
    }
    log(`ask shown: ${asks.map((x) => Math.round(x)).join(' ')} ms`);
    await page.context().close();

    console.log(
      JSON.stringify({
        qubes: N,
        runs: RUNS,
        page_ready_ms_1000: median(warm),
        page_cold_ms_1000: Math.round(coldMs),
        disk_pass_ms_1000: Math.round(diskMs),
        ask_shown_ms_p50: median(asks),
        event_to_dom_ms_p50: median(ev),
        proxy_rtt_ms_p50: proxyRtt,
        proxy_rtt_keepalive_ms_p50: proxyKeep,
        raw_http_rtt_ms_p50: base.http,
        raw_unix_rtt_ms_p50: base.unix,
      }),
    );
  } finally {
    await w.close();
  }
}

void main().catch((e: unknown) => {
  console.error(`bench:gui: ${(e as Error).stack ?? String(e)}`);
  process.exitCode = 1;
});
