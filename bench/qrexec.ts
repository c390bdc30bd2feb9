// bench/qrexec.ts — a full qube→host→qube call with the policy daemon deciding.
// Prints one JSON line (last line): call latency from a TypeScript client in a
// running program to a socket service (_lib), as a qrexec-client-vm process to
// an executable service (_cli, when bin/qrexec-client-vm exists), echo
// throughput of 1 GiB through `cat`, raw unix-socket throughput with 64 KiB
// writes measured in the same run, and host memory per connected qube.
// _cli_ext: whole qrexec-client-vm processes started by a small C driver
// (compiled here with cc), so that Node's own spawn cost is not counted; its
// baseline (_raw_ext) is the same driver starting a process that makes one
// raw unix-socket request. Every figure also comes as a ratio to its raw
// baseline of the same run (`*_x_raw`); lost_bytes counts output that did not
// arrive over all measured calls (must be 0).
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { mkdtemp, mkdir, writeFile, chmod, rm, access, readFile, symlink } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import * as net from 'node:net';
import { Readable, Writable } from 'node:stream';
import { callService } from '../src/agent/index.js';

const ROOT = resolve(fileURLToPath(import.meta.url), '../../..');
const BIN = (n: string): string => join(ROOT, 'bin', n);
const procs: ChildProcess[] = [];

/** BENCH_NODE_ARGS (e.g. `--cpu-prof --cpu-prof-dir=/tmp/prof`) runs our long-running commands under `node ARGS`. */
function start(cmd: string, args: string[], env: NodeJS.ProcessEnv): ChildProcess {
  const nodeArgs = process.env['BENCH_NODE_ARGS'];
  if (nodeArgs) {
    args = [...nodeArgs.split(' ').filter((x) => x), cmd, ...args];
    cmd = process.execPath;
  }
  const p = spawn(cmd, args, { env, stdio: ['ignore', 'ignore', process.env['BENCH_DEBUG'] ? 'inherit' : 'ignore'] });
  procs.push(p);
  return p;
}
async function waitFile(p: string, ms = 20000): Promise<void> {
  const end = Date.now() + ms;
  while (Date.now() < end) {
    if (await access(p).then(() => true, () => false)) return;
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error(`timeout waiting for ${p}`);
}

/** A call through the TypeScript client library (src/agent/client.ts), as a program in the qube makes it. */
async function call(agentSocket: string, vdir: string, own: number, target: string, service: string, input: Readable, output: Writable): Promise<number> {
  const r = await callService(target, service, { agentSocket, vchan: { dir: vdir, ownDomain: own }, stdin: input, stdout: output });
  if (r.refused) throw new Error('call refused');
  return r.exitCode;
}

const sink = (count: { n: number }): Writable =>
  new Writable({
    write(c: Buffer, _e, cb) {
      count.n += c.length;
      cb();
    },
  });
function source(total: number): Readable {
  const chunk = Buffer.alloc(65536, 0x61);
  let left = total;
  return new Readable({
    read() {
      if (left <= 0) {
        this.push(null);
        return;
      }
      const n = Math.min(left, chunk.length);
      left -= n;
      this.push(n === chunk.length ? chunk : chunk.subarray(0, n));
    },
  });
}
const pct = (xs: number[], p: number): number => {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor((p / 100) * s.length))] as number;
};
const median = (xs: number[]): number => pct(xs, 50);
const r2 = (x: number): number => Math.round(x * 100) / 100;

/**
 * The C driver: `drv N exec PROGRAM ARGS...` runs PROGRAM N times (stdin and
 * stderr /dev/null, stdout a pipe it drains), `drv N raw PATH` N processes
 * (itself, re-executed) that each connect to the unix socket PATH, send a
 * line and copy the reply to stdout. One line per run: ms, stdout bytes, status.
 */
const DRIVER_C = `#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
static double now_ms(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec * 1e3 + t.tv_nsec / 1e6; }
static int raw_call(const char *path) {
  int s = socket(AF_UNIX, SOCK_STREAM, 0);
  struct sockaddr_un a; memset(&a, 0, sizeof a); a.sun_family = AF_UNIX;
  strncpy(a.sun_path, path, sizeof a.sun_path - 1);
  if (s < 0 || connect(s, (struct sockaddr *)&a, sizeof a) != 0) return 1;
  if (write(s, "x\\n", 2) != 2) return 1;
  char b[4096]; ssize_t n;
  while ((n = read(s, b, sizeof b)) > 0) if (write(1, b, (size_t)n) != n) return 1;
  return 0;
}
int main(int argc, char **argv) {
  if (argc < 4) return 2;
  if (!strcmp(argv[2], "rawclient")) return raw_call(argv[3]);
  int n = atoi(argv[1]);
  for (int i = 0; i < n; i++) {
    int p[2]; if (pipe(p)) return 1;
    double t0 = now_ms();
    pid_t c = fork();
    if (c == 0) {
      int dn = open("/dev/null", O_RDWR);
      dup2(dn, 0); dup2(dn, 2); dup2(p[1], 1); close(p[0]); close(p[1]);
      if (!strcmp(argv[2], "raw")) execl("/proc/self/exe", "drv", "1", "rawclient", argv[3], (char *)0);
      else execv(argv[3], argv + 3);
      _exit(127);
    }
    close(p[1]);
    long bytes = 0; char b[4096]; ssize_t r;
    while ((r = read(p[0], b, sizeof b)) > 0) bytes += r;
    close(p[0]);
    int st = 0; waitpid(c, &st, 0);
    printf("%.4f %ld %d\\n", now_ms() - t0, bytes, WIFEXITED(st) ? WEXITSTATUS(st) : 255);
  }
  return 0;
}
`;

/** Compiles the driver into `dir`; null when there is no C compiler. */
async function buildDriver(dir: string): Promise<string | null> {
  const src = join(dir, 'drv.c');
  const exe = join(dir, 'drv');
  await writeFile(src, DRIVER_C);
  const ok = await new Promise<boolean>((r) => execFile(process.env['CC'] ?? 'cc', ['-O2', '-o', exe, src], (e) => r(!e)));
  return ok ? exe : null;
}

/** Runs the driver; one {ms, bytes, code} per run. */
function runDriver(drv: string, args: string[], env: NodeJS.ProcessEnv): Promise<{ ms: number; bytes: number; code: number }[]> {
  return new Promise((resolve, reject) => {
    execFile(drv, args, { env, maxBuffer: 1 << 24 }, (e, stdout) => {
      if (e) return reject(e);
      resolve(
        stdout
          .trim()
          .split('\n')
          .filter((l) => l)
          .map((l) => {
            const [ms, bytes, code] = l.split(' ').map(Number) as [number, number, number];
            return { ms, bytes, code };
          }),
      );
    });
  });
}

/** A unix socket server answering "ok\n" to each connection's first data and closing, as bench.Sock does. */
async function okServer(path: string): Promise<net.Server> {
  const server = net.createServer((c) => {
    c.on('error', () => undefined);
    c.once('data', () => c.end('ok\n'));
  });
  await new Promise<void>((r) => server.listen(path, () => r()));
  return server;
}

/** One raw request/reply on a fresh unix socket connection from this process (the _lib baseline). */
function rawCall(path: string): Promise<number> {
  return new Promise((resolve, reject) => {
    let n = 0;
    const c = net.createConnection(path, () => c.write('x\n'));
    c.on('data', (d: Buffer) => (n += d.length));
    c.on('end', () => resolve(n));
    c.on('error', reject);
  });
}

async function rawUnix(dir: string, total: number): Promise<number> {
  const path = join(dir, `raw-${Math.random().toString(36).slice(2)}.sock`);
  let got = 0;
  let done!: () => void;
  const finished = new Promise<void>((r) => (done = r));
  const server = net.createServer((c) => {
    c.on('data', (d: Buffer) => {
      got += d.length;
    });
    c.on('end', () => done());
  });
  await new Promise<void>((r) => server.listen(path, () => r()));
  const c = net.createConnection(path);
  await new Promise<void>((r) => c.once('connect', () => r()));
  const t0 = process.hrtime.bigint();
  await new Promise<void>((r) => {
    source(total).pipe(c).on('finish', () => r());
  });
  await finished;
  const secs = Number(process.hrtime.bigint() - t0) / 1e9;
  server.close();
  return got / 1e6 / secs;
}

/** The agent end of a control vchan that only sends MSG_HELLO (v3), for memory figures. */
async function fakeAgent(vdir: string, domid: number): Promise<net.Server> {
  const server = net.createServer((c) => {
    c.on('error', () => undefined);
    c.resume(); // the daemon's HELLO answer and nothing else
    const h = Buffer.alloc(12);
    h.writeUInt32LE(0x300, 0);
    h.writeUInt32LE(4, 4);
    h.writeUInt32LE(3, 8);
    c.write(h);
  });
  await new Promise<void>((r) => server.listen(join(vdir, `vchan.${domid}.0.512.sock`), () => r()));
  return server;
}

/** Whether `path` is a tmpfs mount point (from /proc/self/mounts). */
async function isTmpfs(path: string): Promise<boolean> {
  const mounts = await readFile('/proc/self/mounts', 'utf8').catch(() => '');
  return mounts.split('\n').some((l) => {
    const [, mnt, type] = l.split(' ');
    return mnt === path && type === 'tmpfs';
  });
}

async function rssMb(pid: number): Promise<number> {
  const st = await readFile(`/proc/${pid}/status`, 'utf8');
  const m = /VmRSS:\s+(\d+) kB/.exec(st);
  return m ? Number(m[1]) / 1024 : NaN;
}

async function main(): Promise<void> {
  // vchan sockets live on tmpfs, as /var/run/vchan does on a real system: a
  // socket file on a disk file system costs 0.1-1 ms per bind or unlink here
  const base = process.env['BENCH_DIR'] ?? ((await isTmpfs('/dev/shm')) ? '/dev/shm' : tmpdir());
  const dir = await mkdtemp(join(base, 'qrexec-bench-'));
  const sock = join(dir, 'sock');
  await mkdir(sock);
  const env = { ...process.env, VCHAN_SOCKET_DIR: dir };
  try {
    // policy daemon with a real policy
    const pol = join(dir, 'policy.d');
    await mkdir(pol);
    await writeFile(join(pol, '30-bench.policy'), 'bench.Sock * work vault allow user=root\nbench.Exec * work vault allow user=root\nbench.Cat * work vault allow user=root\n');
    const info = { domains: Object.fromEntries(['dom0', 'work', 'vault'].map((n, i) => [n, { tags: [], type: n === 'dom0' ? 'AdminVM' : 'AppVM', template_for_dispvms: false, default_dispvm: null, icon: 'x', label: 'red', guivm: null, relayvm: null, transport_rpc: null, internal: null, power_state: 'Running', uuid: `00000000-0000-0000-0000-00000000000${i}` }])) };
    await writeFile(join(dir, 'system-info.json'), JSON.stringify(info));
    const policySock = join(dir, 'policy.sock');
    // BENCH_LAYOUT: host (default) = bin/qrexec-host, the policy daemon and the daemons of
    // both qubes in one process; separate = a qrexec-policy-daemon process and one
    // qrexec-daemon process for both qubes; per-qube = the reference's way, a policy daemon
    // process and a qrexec-daemon process per qube
    const layout = process.env['BENCH_LAYOUT'] ?? (process.env['BENCH_PER_QUBE_DAEMONS'] ? 'per-qube' : 'host');
    if (!['host', 'separate', 'per-qube'].includes(layout)) throw new Error(`BENCH_LAYOUT=${layout}: want host, separate or per-qube`);
    const policyArgs = ['--policy-path', pol, '--socket-path', policySock, '--system-info', join(dir, 'system-info.json'), '--eval-socket-path', 'none', '--gui-socket-path', 'none', '--qubesd-events-socket', 'none', '--audit-db', join(dir, 'audit.sqlite')];
    if (layout !== 'host') {
      start(BIN('qrexec-policy-daemon'), policyArgs, env);
      await waitFile(policySock);
    }
    // vault's services: a socket service answered by this process (it writes
    // "ok" on the service descriptor and closes), an executable, cat
    const rpcVault = join(dir, 'rpc-vault');
    await mkdir(rpcVault);
    const svcSock = join(dir, 'bench-sock.sock');
    const svcServer = net.createServer((c) => {
      let seen = false;
      c.on('data', (d: Buffer) => {
        if (!seen && d.includes(0)) {
          seen = true;
          c.write('ok\n', () => c.destroy()); // answer and close at once, as a C service would
        }
      });
      c.on('error', () => undefined);
    });
    await new Promise<void>((r) => svcServer.listen(svcSock, () => r()));
    svcServer.unref(); // the bench ends when its work is done, not when this server closes
    await symlink(svcSock, join(rpcVault, 'bench.Sock'));
    await writeFile(join(rpcVault, 'bench.Exec'), '#!/bin/sh\necho ok\n');
    await writeFile(join(rpcVault, 'bench.Cat'), '#!/bin/sh\nexec cat\n');
    await chmod(join(rpcVault, 'bench.Exec'), 0o755);
    await chmod(join(rpcVault, 'bench.Cat'), 0o755);
    await mkdir(join(dir, 'rpc-work'));
    const daemonArgs = (id: number, name: string): string[] => ['--direct', '-q', `--uuid=00000000-0000-0000-0000-00000000000${id}`, `--socket-dir=${sock}`, `--policy-socket=${policySock}`, `--policy-program=${join(dir, 'none')}`, String(id), name, 'root'];
    const qubeSpec = (id: number, name: string): string => `--qube=${id}:${name}:00000000-0000-0000-0000-00000000000${id}:root`;
    for (const [id, name] of [[1, 'work'], [2, 'vault']] as const) {
      start(BIN('qrexec-agent'), [`--agent-socket=${join(dir, `agent-${name}.sock`)}`], { ...env, VCHAN_DOMAIN: String(id), QREXEC_SERVICE_PATH: join(dir, `rpc-${name}`), QUBES_RPC_CONFIG_PATH: join(dir, 'cfg') });
      if (layout === 'per-qube') start(BIN('qrexec-daemon'), daemonArgs(id, name), { ...env, VCHAN_DOMAIN: '0' });
    }
    if (layout === 'separate') start(BIN('qrexec-daemon'), [...daemonArgs(1, 'work'), qubeSpec(2, 'vault')], { ...env, VCHAN_DOMAIN: '0' });
    if (layout === 'host') start(BIN('qrexec-host'), [...policyArgs, `--qrexec-socket-dir=${sock}`, qubeSpec(1, 'work'), qubeSpec(2, 'vault')], { ...env, VCHAN_DOMAIN: '0' });
    for (const name of ['work', 'vault']) await waitFile(join(sock, `qrexec.${name}`));
    const agentWork = join(dir, 'agent-work.sock');

    // _lib: 200 calls to the socket service after BENCH_WARMUP (default 2,000)
    // calls: a host, agents and program that have been running for a while.
    // Fresh processes are slower until V8 has compiled their per-call code
    // (measured: p50 ~1.5 ms over the first few hundred calls, ~0.6-0.8 ms
    // after ~2,000, staying there after an idle pause); the first 200 calls
    // are reported too, as call_ms_p50_lib_cold.
    const lib: number[] = [];
    const cold: number[] = [];
    // output that did not arrive, over every measured call (must be 0)
    let lost = 0;
    const calls = Number(process.env['BENCH_CALLS'] ?? 200);
    const warmup = Number(process.env['BENCH_WARMUP'] ?? 2000);
    for (let i = 0; i < calls + warmup; i++) {
      const t0 = process.hrtime.bigint();
      const out = { n: 0 };
      await call(agentWork, dir, 1, 'vault', 'bench.Sock', Readable.from([]), sink(out));
      const ms = Number(process.hrtime.bigint() - t0) / 1e6;
      if (i >= warmup) lib.push(ms);
      else if (i < calls) cold.push(ms);
      if (i >= warmup) lost += Math.max(0, 3 - out.n);
    }
    // its baseline: the same request/reply on a raw unix socket from this process
    const rawPath = join(dir, 'raw-ok.sock');
    const rawServer = await okServer(rawPath);
    const libRaw: number[] = [];
    for (let i = 0; i < calls + 200; i++) {
      const t0 = process.hrtime.bigint();
      const n = await rawCall(rawPath);
      if (i >= 200) libRaw.push(Number(process.hrtime.bigint() - t0) / 1e6);
      if (n !== 3) throw new Error(`raw call returned ${n} bytes`);
    }

    // _cli: qrexec-client-vm as a process, if built
    let cli: number[] | null = null;
    const clientVm = BIN('qrexec-client-vm');
    if (!process.env['BENCH_NO_CLI'] && (await access(clientVm).then(() => true, () => false))) {
      cli = [];
      for (let i = 0; i < calls + 20; i++) {
        const t0 = process.hrtime.bigint();
        let got = 0;
        const code = await new Promise<number>((r) => {
          const p = spawn(clientVm, [`--agent-socket=${agentWork}`, 'vault', 'bench.Exec'], { env: { ...env, VCHAN_DOMAIN: '1' }, stdio: ['ignore', 'pipe', 'ignore'] });
          p.stdout.on('data', (d: Buffer) => (got += d.length));
          p.on('close', (c) => r(c ?? -1));
        });
        if (code !== 0) {
          cli = null;
          break;
        }
        if (i >= 20) {
          cli.push(Number(process.hrtime.bigint() - t0) / 1e6);
          lost += Math.max(0, 3 - got);
        }
      }
    }

    // _cli_ext: the same calls started by the C driver, and its raw baseline
    let cliExt: number[] | null = null;
    let rawExt: number[] | null = null;
    const drv = process.env['BENCH_NO_CLI'] ? null : await buildDriver(dir);
    if (drv && cli) {
      const runs = await runDriver(drv, [String(calls + 20), 'exec', clientVm, `--agent-socket=${agentWork}`, 'vault', 'bench.Exec'], { ...env, VCHAN_DOMAIN: '1' });
      const measured = runs.slice(20);
      if (measured.every((r) => r.code === 0)) {
        cliExt = measured.map((r) => r.ms);
        for (const r of measured) lost += Math.max(0, 3 - r.bytes);
      }
      const raws = (await runDriver(drv, [String(calls + 20), 'raw', rawPath], env)).slice(20);
      if (raws.some((r) => r.code !== 0 || r.bytes !== 3)) throw new Error('raw driver calls failed');
      rawExt = raws.map((r) => r.ms);
    }
    rawServer.close();

    // throughput: 1 GiB through cat, and raw unix socket, 3 runs each, interleaved
    const total = Number(process.env['BENCH_BYTES'] ?? 1 << 30);
    const echo: number[] = [];
    const raw: number[] = [];
    for (let k = 0; k < 3; k++) {
      raw.push(await rawUnix(dir, total));
      const out = { n: 0 };
      const t0 = process.hrtime.bigint();
      await call(agentWork, dir, 1, 'vault', 'bench.Cat', source(total), sink(out));
      const secs = Number(process.hrtime.bigint() - t0) / 1e9;
      lost += Math.max(0, total - out.n);
      echo.push(total / 1e6 / secs);
    }
    // host memory per connected qube: a daemon process serving one qube, and one serving
    // N qubes, each with a minimal agent (HELLO only) played by this process
    const memDir = join(dir, 'mem');
    await mkdir(memDir);
    const memEnv = { ...env, VCHAN_SOCKET_DIR: memDir, VCHAN_DOMAIN: '0' };
    const N = Number(process.env['BENCH_RSS_QUBES'] ?? 16);
    const fakeAgents: net.Server[] = [];
    for (let i = 0; i < N + 1; i++) fakeAgents.push(await fakeAgent(memDir, 100 + i));
    const memArgs = (id: number): string[] => ['--direct', '-q', `--uuid=mem-${id}`, `--socket-dir=${join(memDir, 'sock')}`, `--policy-socket=${policySock}`, String(id), `mem${id}`];
    const one = start(BIN('qrexec-daemon'), memArgs(100), memEnv);
    const many = start(BIN('qrexec-daemon'), [...memArgs(101), ...Array.from({ length: N - 1 }, (_, i) => `--qube=${102 + i}:mem${102 + i}:mem-${102 + i}`)], memEnv);
    for (let i = 0; i < N + 1; i++) await waitFile(join(memDir, 'sock', `qrexec.mem${100 + i}`));
    await new Promise((r) => setTimeout(r, 500));
    const rssOne = await rssMb(one.pid as number);
    const rssMany = await rssMb(many.pid as number);
    for (const f of fakeAgents) f.close();
    const ratio = (a: number | null, b: number | null): number | null => (a === null || b === null || b === 0 ? null : r2(a / b));
    const rawP50 = median(libRaw);
    const rawP99 = pct(libRaw, 99);
    const rawExtP50 = rawExt ? median(rawExt) : null;
    const rawExtP99 = rawExt ? pct(rawExt, 99) : null;
    const result = {
      lost_bytes: lost,
      call_ms_p50_lib: r2(median(lib)),
      call_ms_p99_lib: r2(pct(lib, 99)),
      call_ms_p50_lib_raw: r2(rawP50),
      call_ms_p99_lib_raw: r2(rawP99),
      call_ms_p50_lib_x_raw: ratio(median(lib), rawP50),
      call_ms_p99_lib_x_raw: ratio(pct(lib, 99), rawP99),
      call_ms_p50_lib_cold: cold.length ? r2(median(cold)) : null,
      warmup_calls: warmup,
      call_ms_p50_cli: cli ? r2(median(cli)) : null,
      call_ms_p99_cli: cli ? r2(pct(cli, 99)) : null,
      call_ms_p50_cli_x_raw: ratio(cli ? median(cli) : null, rawExtP50),
      call_ms_p99_cli_x_raw: ratio(cli ? pct(cli, 99) : null, rawExtP99),
      call_ms_p50_cli_ext: cliExt ? r2(median(cliExt)) : null,
      call_ms_p99_cli_ext: cliExt ? r2(pct(cliExt, 99)) : null,
      call_ms_p50_raw_ext: rawExtP50 === null ? null : r2(rawExtP50),
      call_ms_p99_raw_ext: rawExtP99 === null ? null : r2(rawExtP99),
      call_ms_p50_cli_ext_x_raw: ratio(cliExt ? median(cliExt) : null, rawExtP50),
      call_ms_p99_cli_ext_x_raw: ratio(cliExt ? pct(cliExt, 99) : null, rawExtP99),
      mbps_echo: Math.round(median(echo)),
      mbps_unix_raw: Math.round(median(raw)),
      mbps_echo_x_raw: ratio(median(echo), median(raw)),
      host_rss_mb_per_qube: r2(rssMany / N),
      host_rss_mb_per_qube_process: r2(rssOne),
      layout,
      vchan_dir: base,
    };
    process.stderr.write(`echo runs ${echo.map(Math.round).join(', ')} MB/s; raw runs ${raw.map(Math.round).join(', ')} MB/s; host daemon rss ${r2(rssOne)} MB serving 1 qube, ${r2(rssMany)} MB serving ${N} qubes\n`);
    console.log(JSON.stringify(result));
  } finally {
    for (const p of procs) if (p.exitCode === null) p.kill('SIGTERM');
    await new Promise((r) => setTimeout(r, 200));
    for (const p of procs) if (p.exitCode === null) p.kill('SIGKILL');
    await rm(dir, { recursive: true, force: true });
  }
}

await main();
