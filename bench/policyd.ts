/**
 * Policy daemon benchmark (`npm run bench:policyd`).
 *
 * Starts bin/qrexec-policy-daemon as its own process (audit log on, as in
 * production) over a realistic policy and measures:
 * - rtt_us_p50/p99: one request round trip over the unix socket (connect,
 *   request, reply, close), 2,000 sequential requests after warm-up;
 * - rps_8_clients: requests/s with 8 concurrent clients, run from worker
 *   threads so that the load generator is not the bottleneck;
 * - reload_ms_10k: time from writing a 10,000-rule policy file to the first
 *   request that sees it;
 * - rss_mb_10k: daemon memory with those 10,000 rules loaded.
 * Baseline measured in the same run: floor_rtt_us_p50, the same
 * connect/1-byte/close round trip against a trivial echo server process.
 * Each figure is the median of several runs. Last line: one JSON object.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { Worker, isMainThread, parentPort, workerData } from 'node:worker_threads';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');

function roundTrip(socketPath: string, payload: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const sock = net.connect({ path: socketPath, allowHalfOpen: true });
    let out = '';
    sock.setEncoding('latin1');
    sock.on('connect', () => sock.write(payload));
    sock.on('data', (c: string) => (out += c));
    sock.on('end', () => {
      sock.destroy();
      resolve(out);
    });
    sock.on('error', reject);
  });
}

/**
 * Load generator in C (compiled into the temp dir when a C compiler is
 * present): a Node client costs as much CPU per request as the daemon, and
 * on a 2-core machine it, not the daemon, would set the rps figure.
 * `loadgen SOCKET REQUEST rtt N` prints N round-trip times (µs), one a line;
 * `loadgen SOCKET REQUEST rps THREADS MS` prints the requests completed.
 */
const LOADGEN_C = String.raw`
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>
static const char *path, *req; static size_t reqlen; static long ms; static volatile int stop;
static double now_us(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec * 1e6 + t.tv_nsec / 1e3; }
static int one(void) {
  struct sockaddr_un a; memset(&a, 0, sizeof a); a.sun_family = AF_UNIX; strncpy(a.sun_path, path, sizeof a.sun_path - 1);
  int fd = socket(AF_UNIX, SOCK_STREAM, 0); if (fd < 0) return -1;
  if (connect(fd, (struct sockaddr *)&a, sizeof a) < 0) { close(fd); return -1; }
  if (write(fd, req, reqlen) != (ssize_t)reqlen) { close(fd); return -1; }
  char buf[4096]; ssize_t n, tot = 0; while ((n = read(fd, buf, sizeof buf)) > 0) tot += n;
  close(fd); return tot > 0 ? 0 : -1;
}
static void *worker(void *arg) { long *cnt = arg; while (!stop) if (one() == 0) (*cnt)++; return NULL; }
int main(int argc, char **argv) {
  if (argc < 5) return 2; path = argv[1]; req = argv[2]; reqlen = strlen(req);
  if (!strcmp(argv[3], "rtt")) { long n = atol(argv[4]); for (long i = 0; i < n; i++) { double t = now_us(); if (one()) return 1; printf("%.1f\n", now_us() - t); } return 0; }
  int th = atoi(argv[4]); ms = atol(argv[5]); pthread_t t[64]; long cnt[64] = {0};
  for (int i = 0; i < th; i++) pthread_create(&t[i], NULL, worker, &cnt[i]);
  usleep(ms * 1000); stop = 1; long tot = 0; for (int i = 0; i < th; i++) { pthread_join(t[i], NULL); tot += cnt[i]; }
  printf("%ld\n", tot); return 0;
}
`;

function buildLoadgen(dir: string): string | null {
  const src = path.join(dir, 'loadgen.c');
  const bin = path.join(dir, 'loadgen');
  fs.writeFileSync(src, LOADGEN_C);
  for (const cc of ['cc', 'gcc', 'clang']) {
    const r = spawnSync(cc, ['-O2', '-pthread', '-o', bin, src], { stdio: 'ignore' });
    if (r.status === 0) return bin;
  }
  return null;
}

function loadgenRtt(bin: string, socket: string, payload: string, n: number): number[] {
  const r = spawnSync(bin, [socket, payload, 'rtt', String(n)], { encoding: 'utf8' });
  if (r.status !== 0) throw new Error('loadgen rtt failed');
  return r.stdout.trim().split('\n').map(Number);
}

function loadgenRps(bin: string, socket: string, payload: string, threads: number, durationMs: number): Promise<number> {
  return new Promise((resolve, reject) => {
    const child = spawn(bin, [socket, payload, 'rps', String(threads), String(durationMs)]);
    let out = '';
    child.stdout.setEncoding('utf8');
    child.stdout.on('data', (c: string) => (out += c));
    child.on('error', reject);
    child.on('exit', (code) => (code === 0 ? resolve(Number(out.trim()) / (durationMs / 1000)) : reject(new Error('loadgen rps failed'))));
  });
}

const median = (xs: number[]): number => {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)] as number;
};
const pct = (xs: number[], p: number): number => {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor((s.length * p) / 100))] as number;
};

const QUBES = ['work', 'personal', 'vault', 'untrusted', 'banking', 'sys-net', 'sys-firewall', 'sys-usb', 'sys-gui', 'mail'];

function systemInfo(): unknown {
  const domains: Record<string, unknown> = {
    dom0: { tags: [], type: 'AdminVM', template_for_dispvms: false, default_dispvm: 'default-dvm', icon: 'adminvm-black', label: 'black', guivm: null, relayvm: null, transport_rpc: null, internal: null, power_state: 'Running', uuid: '00000000-0000-0000-0000-000000000000' },
    'default-dvm': { tags: [], type: 'AppVM', template_for_dispvms: true, default_dispvm: 'default-dvm', icon: 'appvm-red', label: 'red', guivm: 'dom0', relayvm: null, transport_rpc: null, internal: null, power_state: 'Halted', uuid: '11111111-0000-0000-0000-000000000000' },
  };
  QUBES.forEach((q, i) => {
    domains[q] = {
      tags: i % 2 ? ['trusted'] : ['created-by-dom0'],
      type: 'AppVM',
      template_for_dispvms: false,
      default_dispvm: 'default-dvm',
      icon: 'appvm-blue',
      label: 'blue',
      guivm: 'dom0',
      relayvm: null,
      transport_rpc: null,
      internal: null,
      power_state: 'Running',
      uuid: `22222222-0000-0000-0000-${String(i).padStart(12, '0')}`,
    };
  });
  return { domains };
}

/** A policy shaped like a Qubes default install plus some user rules (~150 rules in several files). */
function writeRealisticPolicy(dir: string): void {
  fs.mkdirSync(path.join(dir, 'include'), { recursive: true });
  const services = ['qubes.Filecopy', 'qubes.OpenInVM', 'qubes.OpenURL', 'qubes.ClipboardPaste', 'qubes.GetDate', 'qubes.VMShell', 'qubes.StartApp', 'qubes.UpdatesProxy', 'qubes.Gpg', 'qubes.PdfConvert', 'admin.vm.List', 'admin.vm.property.Get', 'qubes.WaitForSession', 'qubes.NotifyUpdates', 'qubes.USB'];
  let user = '';
  for (const q of QUBES) for (const s of services.slice(0, 5)) user += `${s} * ${q} @default ask default_target=vault\n`;
  fs.writeFileSync(path.join(dir, '30-user.policy'), user);
  let main = '';
  for (const s of services) {
    main += `${s} * @tag:trusted @tag:trusted allow\n`;
    main += `${s} * @anyvm @dispvm allow\n`;
    main += `${s} * @anyvm @dispvm:default-dvm allow\n`;
    main += `${s} * @anyvm @anyvm ask\n`;
    main += `${s} * @anyvm dom0 deny\n`;
  }
  main += '!include include/admin\n* * @anyvm @anyvm deny\n';
  fs.writeFileSync(path.join(dir, '90-default.policy'), main);
  fs.writeFileSync(path.join(dir, 'include', 'admin'), 'admin.Events * sys-gui @adminvm allow\nadmin.vm.List * sys-gui @adminvm allow target=dom0\n');
}

const REQUEST = 'source=personal\nintended_target=untrusted\nservice_and_arg=qubes.Filecopy+\n\n';

async function waitSocket(p: string): Promise<void> {
  for (let i = 0; i < 500; i++) {
    try {
      await roundTrip(p, '\n');
      return;
    } catch {
      await new Promise((r) => setTimeout(r, 20));
    }
  }
  throw new Error('daemon did not start');
}

interface WorkerJob {
  socket: string;
  clients: number;
  durationMs: number;
}

async function workerMain(job: WorkerJob): Promise<void> {
  let count = 0;
  let errors = 0;
  const end = performance.now() + job.durationMs;
  const loop = async (): Promise<void> => {
    while (performance.now() < end) {
      try {
        const r = await roundTrip(job.socket, REQUEST);
        if (r.includes('result=')) count++;
        else errors++;
      } catch {
        errors++;
      }
    }
  };
  await Promise.all(Array.from({ length: job.clients }, loop));
  parentPort?.postMessage({ count, errors });
}

async function rps(socket: string, clients: number, threads: number, durationMs: number): Promise<number> {
  const t0 = performance.now();
  const results = await Promise.all(
    Array.from({ length: threads }, () => {
      const w = new Worker(fileURLToPath(import.meta.url), {
        workerData: { socket, clients: clients / threads, durationMs } satisfies WorkerJob,
      });
      return new Promise<{ count: number; errors: number }>((resolve, reject) => {
        w.once('message', (m: { count: number; errors: number }) => resolve(m));
        w.once('error', reject);
      });
    }),
  );
  const secs = (performance.now() - t0) / 1000;
  const total = results.reduce((a, r) => a + r.count, 0);
  return total / secs;
}

async function rttSeries(socket: string, payload: string, n: number, warm: number): Promise<number[]> {
  for (let i = 0; i < warm; i++) await roundTrip(socket, payload);
  const xs: number[] = [];
  for (let i = 0; i < n; i++) {
    const t0 = process.hrtime.bigint();
    await roundTrip(socket, payload);
    xs.push(Number(process.hrtime.bigint() - t0) / 1000);
  }
  return xs;
}

function rssMb(pid: number): number {
  const status = fs.readFileSync(`/proc/${pid}/status`, 'utf8');
  const m = /VmRSS:\s+(\d+) kB/.exec(status);
  return m ? Number(m[1]) / 1024 : NaN;
}

function bigPolicy(probe: 'allow' | 'deny'): string {
  const lines: string[] = [];
  for (let i = 0; i < 9_999; i++) lines.push(`bench.S${i} +arg${i % 7} @anyvm @tag:t${i % 13} deny`);
  lines.push(`bench.Probe * @anyvm @anyvm ${probe}`);
  return lines.join('\n') + '\n';
}

async function main(): Promise<void> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'policyd-bench-'));
  const policyDir = path.join(dir, 'policy.d');
  writeRealisticPolicy(policyDir);
  const infoFile = path.join(dir, 'system-info.json');
  fs.writeFileSync(infoFile, JSON.stringify(systemInfo()));
  const socket = path.join(dir, 'policy.sock');
  const children: ChildProcess[] = [];
  try {
    // Floor: a trivial echo server in its own process.
    const echoSock = path.join(dir, 'echo.sock');
    const echo = spawn(process.execPath, [
      '-e',
      `require('net').createServer({allowHalfOpen:true},s=>s.on('data',d=>s.end(d))).listen(${JSON.stringify(echoSock)})`,
    ]);
    children.push(echo);
    await waitSocket(echoSock).catch(() => undefined);
    const loadgen = buildLoadgen(dir);
    const series = async (sock: string, payload: string, n: number, warm: number): Promise<number[]> => {
      if (loadgen === null) return rttSeries(sock, payload, n, warm);
      loadgenRtt(loadgen, sock, payload, warm);
      return loadgenRtt(loadgen, sock, payload, n);
    };
    const floorRuns: number[] = [];
    for (let r = 0; r < 3; r++) floorRuns.push(median(await series(echoSock, 'x', 2000, 300)));
    const floor = median(floorRuns);

    const daemon = spawn(
      process.execPath,
      [
        path.join(ROOT, 'bin', 'qrexec-policy-daemon'),
        '--policy-path', policyDir,
        '--socket-path', socket,
        '--system-info', infoFile,
        ...(process.env['BENCH_NO_AUDIT'] ? ['--no-audit'] : ['--audit-db', path.join(dir, 'audit.sqlite')]),
        '--log-level', 'error',
      ],
      { stdio: ['ignore', 'ignore', 'inherit'] },
    );
    children.push(daemon);
    await waitSocket(socket);
    const check = await roundTrip(socket, REQUEST);
    if (!check.includes('result=')) throw new Error(`unexpected reply ${JSON.stringify(check)}`);

    const p50s: number[] = [];
    const p99s: number[] = [];
    for (let r = 0; r < 3; r++) {
      const xs = await series(socket, REQUEST, 2000, r === 0 ? 1000 : 200);
      p50s.push(pct(xs, 50));
      p99s.push(pct(xs, 99));
    }
    const rpsRuns: number[] = [];
    for (let r = 0; r < 3; r++) {
      rpsRuns.push(loadgen !== null ? await loadgenRps(loadgen, socket, REQUEST, 8, 2000) : await rps(socket, 8, 2, 2000));
    }

    // Reload: 10k-rule file, toggled between deny and allow for bench.Probe.
    const probe = 'source=work\nintended_target=personal\nservice_and_arg=bench.Probe+\njust_evaluate=yes\n\n';
    const bigFile = path.join(policyDir, '10-big.policy');
    fs.writeFileSync(bigFile, bigPolicy('deny'));
    for (let i = 0; i < 500 && (await roundTrip(socket, probe)) !== 'result=deny'; i++) await new Promise((r) => setTimeout(r, 10));
    await new Promise((r) => setTimeout(r, 300));
    const reloads: number[] = [];
    for (let r = 0; r < 5; r++) {
      const want = r % 2 === 0 ? 'allow' : 'deny';
      const text = bigPolicy(want);
      const t0 = performance.now();
      fs.writeFileSync(bigFile, text);
      for (;;) {
        if ((await roundTrip(socket, probe)) === `result=${want}`) break;
        if (performance.now() - t0 > 10_000) throw new Error('reload never seen');
      }
      reloads.push(performance.now() - t0);
      await new Promise((r) => setTimeout(r, 300));
    }
    // Exercise the big policy a little, then measure memory.
    for (let i = 0; i < 200; i++) await roundTrip(socket, probe);
    const rss = rssMb(daemon.pid as number);

    const result = {
      rtt_us_p50: Math.round(median(p50s)),
      rtt_us_p99: Math.round(median(p99s)),
      rps_8_clients: Math.round(median(rpsRuns)),
      reload_ms_10k: Math.round(median(reloads) * 10) / 10,
      rss_mb_10k: Math.round(rss * 10) / 10,
      floor_rtt_us_p50: Math.round(floor),
      rtt_vs_floor: Math.round((median(p50s) / floor) * 100) / 100,
      client: loadgen !== null ? 'c' : 'node',
    };
    process.stderr.write(
      `rtt p50 runs ${p50s.map(Math.round).join(',')} us; p99 runs ${p99s.map(Math.round).join(',')} us; rps runs ${rpsRuns.map(Math.round).join(',')}; reload runs ${reloads.map((x) => x.toFixed(1)).join(',')} ms\n`,
    );
    process.stdout.write(JSON.stringify(result) + '\n');
  } finally {
    for (const c of children) c.kill('SIGKILL');
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

if (isMainThread) await main();
else await workerMain(workerData as WorkerJob);
