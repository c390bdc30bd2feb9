/**
 * qubesd benchmark (`npm run bench:qubesd`).
 *
 * Starts bin/qubesd as its own process (SQLite WAL, group fsync, as in
 * production) with 1,000 qubes and measures, each figure the median of
 * several runs:
 * - list_getall_ms_1000: admin.vm.List plus admin.vm.property.GetAll for
 *   each of the 1,000 qubes, one client, sequential calls over the socket
 *   (one connection each), with the client our qvm-* commands use (blocking
 *   system calls through the native addon, as the Python client's blocking
 *   sockets; without the addon, net.Socket); list_getall_ms_1000_net_socket
 *   the same with a net.Socket per call (what a Node.js program that keeps
 *   its event loop running pays); `server` says which socket server qubesd
 *   used (native: the addon's request loop; net: net.Server), and
 *   list_getall_ms_1000_net_server is the same as list_getall_ms_1000 on a
 *   second qubesd with the same qubes on the net.Server fallback, measured
 *   interleaved with it;
 * - qvm_ls_ms_1000: our bin/qvm-ls as a whole process on those qubes;
 * - system_info_ms_1000: internal.GetSystemInfo round trip (cached document);
 * - system_info_cold_ms_1000: the same right after a change (rebuilt);
 * - set_per_s: admin.vm.property.Set throughput at saturation (durable:
 *   each reply after its commit and fdatasync), the best of 4, 16 and 64
 *   concurrent clients, the count in set_clients; set_per_s_4_clients,
 *   set_per_s_16_clients and set_per_s_64_clients each count (group fsync
 *   shares one fdatasync among the Sets in flight, so more clients give
 *   more throughput until the server is busy);
 * - event_us_p50: from sending a Set to its property-set event arriving at
 *   an admin.Events listener;
 * - create_ms_p50: admin.vm.Create.AppVM;
 * - start_ms_p50_process: admin.vm.Start until the agent is connected, process backend.
 * Baseline in the same run: raw_rtt_us_p50, a connect/request/reply/close
 * round trip against a trivial unix socket echo server in this process.
 * Last line: one JSON object.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { SocketTransport } from '../src/qubesd-client/client.js';
import { loadNative } from '../src/native/addon.js';
import { defaultServerKind } from '../src/qubesd/server.js';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');
const N = 1000;
const RUNS = 5;

function call(sock: string, bytes: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const s = net.connect({ path: sock, allowHalfOpen: true });
    const chunks: Buffer[] = [];
    s.on('connect', () => s.end(bytes));
    s.on('data', (c: Buffer) => chunks.push(c));
    s.on('error', reject);
    s.on('close', () => resolve(Buffer.concat(chunks).toString('latin1')));
  });
}
const req = (m: string, dest: string, arg = '', payload = ''): string => `${m}+${arg} dom0 name ${dest}\0${payload}`;
async function ok(sock: string, m: string, dest: string, arg = '', payload = ''): Promise<string> {
  const r = await call(sock, req(m, dest, arg, payload));
  if (!r.startsWith('0\0')) throw new Error(`${m} ${dest}: ${JSON.stringify(r.slice(0, 200))}`);
  return r.slice(2);
}

const median = (xs: number[]): number => {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)] as number;
};
const now = (): number => Number(process.hrtime.bigint()) / 1e6;
const round = (x: number, d = 2): number => Math.round(x * 10 ** d) / 10 ** d;

async function rawBaseline(dir: string): Promise<number> {
  const p = path.join(dir, 'echo.sock');
  const server = net.createServer({ allowHalfOpen: true }, (s) => {
    s.on('data', () => undefined);
    s.on('end', () => s.end('0\0'));
  });
  await new Promise<void>((r) => server.listen(p, r));
  const xs: number[] = [];
  for (let i = 0; i < 2000; i++) {
    const t0 = now();
    await call(p, 'x\0');
    xs.push((now() - t0) * 1000);
  }
  server.close();
  return median(xs.slice(500));
}

async function startQubesd(dir: string, netServer = false): Promise<{ p: ChildProcess; sock: string; internal: string }> {
  const run = path.join(dir, 'run');
  const env = netServer ? { ...process.env, QUBESD_NET_SERVER: '1' } : process.env;
  const p = spawn(process.execPath, [path.join(ROOT, 'bin/qubesd'), '--data-dir', path.join(dir, 'data'), '--run-dir', run], { stdio: ['ignore', 'ignore', 'inherit'], env });
  const sock = path.join(run, 'qubesd.sock');
  for (let i = 0; i < 400; i++) {
    const r = await call(sock, req('admin.vm.List', 'dom0')).catch(() => '');
    if (r.startsWith('0\0')) return { p, sock, internal: path.join(run, 'qubesd.internal.sock') };
    await new Promise((res) => setTimeout(res, 25));
  }
  throw new Error('qubesd did not start');
}

async function main(): Promise<void> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'bench-qubesd-'));
  const raw_rtt_us_p50 = await rawBaseline(dir);
  const { p, sock, internal } = await startQubesd(dir);
  const server = defaultServerKind();
  // the same registry on a qubesd with the net.Server fallback (list_getall_ms_1000_net_server), unless that is the main one
  const alt = server === 'native' ? await startQubesd(path.join(dir, 'alt'), true) : null;
  try {
    await ok(sock, 'admin.vm.Create.TemplateVM', 'dom0', '', 'name=tpl label=black');
    await ok(sock, 'admin.property.Set', 'dom0', 'default_template', 'tpl');
    await ok(sock, 'admin.vm.Create.AppVM', 'dom0', '', 'name=sys-net label=red');
    await ok(sock, 'admin.vm.property.Set', 'sys-net', 'provides_network', 'True');
    await ok(sock, 'admin.property.Set', 'dom0', 'default_netvm', 'sys-net');
    const createTimes: number[] = [];
    for (let i = 0; i < N - 3; i++) {
      const t0 = now();
      await ok(sock, 'admin.vm.Create.AppVM', 'dom0', '', `name=q${String(i).padStart(4, '0')} label=${['red', 'blue', 'green'][i % 3]}`);
      createTimes.push(now() - t0);
    }
    const create_ms_p50 = median(createTimes);
    const altTools = alt ? new SocketTransport(alt.sock, 'dom0', loadNative() ?? undefined) : null;
    if (altTools) {
      await altTools.call('dom0', 'admin.vm.Create.TemplateVM', '', 'name=tpl label=black');
      await altTools.call('dom0', 'admin.property.Set', 'default_template', 'tpl');
      for (let i = 0; i < N - 2; i++) await altTools.call('dom0', 'admin.vm.Create.AppVM', '', `name=q${String(i).padStart(4, '0')} label=red`);
    }
    process.stderr.write(`${N} qubes created\n`);

    const listGetAllNet = async (): Promise<number> => {
      const t0 = now();
      const list = await ok(sock, 'admin.vm.List', 'dom0');
      for (const line of list.split('\n')) if (line) await ok(sock, 'admin.vm.property.GetAll', line.slice(0, line.indexOf(' ')));
      return now() - t0;
    };
    const tools = new SocketTransport(sock, 'dom0', loadNative() ?? undefined);
    const listGetAll = async (t: SocketTransport): Promise<number> => {
      const t0 = now();
      const list = await t.call('dom0', 'admin.vm.List');
      for (const line of list.split('\n')) if (line) await t.call(line.slice(0, line.indexOf(' ')), 'admin.vm.property.GetAll');
      return now() - t0;
    };
    await listGetAll(tools);
    await listGetAllNet();
    if (altTools) await listGetAll(altTools);
    const lg: number[] = [];
    const lgNet: number[] = [];
    const lgAlt: number[] = [];
    for (let i = 0; i < RUNS; i++) {
      lg.push(await listGetAll(tools));
      lgNet.push(await listGetAllNet());
      if (altTools) lgAlt.push(await listGetAll(altTools));
    }
    if (alt) {
      alt.p.kill('SIGTERM');
      await new Promise((r) => alt.p.once('exit', r));
    }

    const ls: number[] = [];
    for (let i = 0; i < RUNS; i++) {
      const t0 = now();
      const r = spawnSync(process.execPath, [path.join(ROOT, 'bin/qvm-ls')], { env: { ...process.env, QUBESD_SOCKET: sock }, maxBuffer: 64 * 1024 * 1024 });
      ls.push(now() - t0);
      if (r.status !== 0 || r.stdout.toString().split('\n').length < N) throw new Error(`qvm-ls failed: ${r.stderr.toString()}`);
    }

    const si: number[] = [];
    const siCold: number[] = [];
    for (let i = 0; i < 50; i++) {
      await ok(sock, 'admin.vm.tag.Set', 'q0001', `t${i}`);
      let t0 = now();
      await ok(internal, 'internal.GetSystemInfo', 'dom0');
      siCold.push(now() - t0);
      t0 = now();
      await ok(internal, 'internal.GetSystemInfo', 'dom0');
      si.push(now() - t0);
    }

    const setRate = async (clients: number): Promise<number> => {
      const rates: number[] = [];
      for (let r = 0; r < RUNS; r++) {
        let n = 0;
        const end = now() + 1000;
        await Promise.all(
          Array.from({ length: clients }, async (_, k) => {
            for (let i = 0; now() < end; i++) {
              await ok(sock, 'admin.vm.property.Set', `q${String(k * 10 + 1).padStart(4, '0')}`, 'vcpus', String((i % 7) + 1));
              n++;
            }
          }),
        );
        rates.push(n);
      }
      return median(rates);
    };
    // throughput at saturation: the best of these client counts is the headline figure
    const setRates = new Map<number, number>();
    for (const clients of [4, 16, 64]) setRates.set(clients, await setRate(clients));
    const [set_clients, set_per_s] = [...setRates].reduce((a, b) => (b[1] > a[1] ? b : a));

    // event latency: one listener, Set then wait for its property-set frame
    const ev: number[] = [];
    await new Promise<void>((resolve, reject) => {
      const s = net.connect({ path: sock, allowHalfOpen: true });
      let buf = '';
      let waiting: ((x: void) => void) | null = null;
      let first = true;
      s.setEncoding('latin1');
      s.on('connect', () => s.end(req('admin.Events', 'dom0')));
      s.on('error', reject);
      s.on('data', (c: string) => {
        buf += c;
        if (first && buf.includes('connection-established')) {
          first = false;
          buf = '';
          void (async () => {
            for (let i = 0; i < 300; i++) {
              const got = new Promise<void>((r) => (waiting = r));
              const t0 = now();
              void call(sock, req('admin.vm.property.Set', 'q0002', 'memory', String(400 + (i % 50) + 1)));
              await got;
              ev.push((now() - t0) * 1000);
            }
            s.destroy();
            resolve();
          })();
          return;
        }
        if (waiting && buf.includes('\0property-set:memory\0')) {
          buf = '';
          const w = waiting;
          waiting = null;
          w();
        }
      });
    });

    // start, process backend
    await ok(sock, 'admin.vm.Create.StandaloneVM', 'dom0', '', 'name=runner label=red');
    const st: number[] = [];
    for (let i = 0; i < RUNS; i++) {
      const t0 = now();
      await ok(sock, 'admin.vm.Start', 'runner');
      st.push(now() - t0);
      await ok(sock, 'admin.vm.Kill', 'runner');
    }

    const result = {
      list_getall_ms_1000: round(median(lg)),
      list_getall_ms_1000_net_socket: round(median(lgNet)),
      ...(lgAlt.length ? { list_getall_ms_1000_net_server: round(median(lgAlt)) } : {}),
      server,
      qvm_ls_ms_1000: round(median(ls)),
      system_info_ms_1000: round(median(si), 3),
      system_info_cold_ms_1000: round(median(siCold), 3),
      set_per_s,
      set_clients,
      set_per_s_4_clients: setRates.get(4),
      set_per_s_16_clients: setRates.get(16),
      set_per_s_64_clients: setRates.get(64),
      event_us_p50: round(median(ev.slice(50)), 1),
      create_ms_p50: round(create_ms_p50, 3),
      start_ms_p50_process: round(median(st), 1),
      raw_rtt_us_p50: round(raw_rtt_us_p50, 1),
      list_getall_calls_per_raw_rtt: round((median(lg) * 1000) / (N + 1) / raw_rtt_us_p50, 2),
      native_client: loadNative() !== null,
      qubes: N,
      runs: RUNS,
    };
    process.stdout.write(`${JSON.stringify(result)}\n`);
  } finally {
    for (const q of alt ? [p, alt.p] : [p]) {
      if (q.exitCode !== null || q.signalCode !== null) continue;
      q.kill('SIGTERM');
      await new Promise((r) => q.once('exit', r));
    }
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

await main();
