// A hostile qube for the data-vchan tests: a fake agent ("evil") that the
// real host serves as any qube, and that frames everything itself (with the
// helpers of test/agent/peer.ts and test/daemon/peer.ts). It can call a
// service of a real qube (it then holds the caller's end of the data vchan)
// or be called by one (it holds the service's end), and then sends whatever
// a scenario wants. The victims are real agents; the callers real
// qrexec-client-vm launchers.
import { spawn, type ChildProcess } from 'node:child_process';
import { readdir, readFile, readlink, mkdir, writeFile, access } from 'node:fs/promises';
import { join } from 'node:path';
import type { Writable } from 'node:stream';
import { Conn, connectRetry, msg, vchanServer } from '../agent/peer.js';
import { T, u32, trigger4, fakeAgentListen, within, type Reader } from '../daemon/peer.js';
import { BIN, World, waitFor } from './harness.js';

export { T, u32, msg, within, Conn };

export const WORK = 1;
export const VAULT = 2;
export const EVIL = 3;
const uuid = (id: number): string => `00000000-0000-0000-0000-0000000000${String(id).padStart(2, '0')}`;

/** What /proc says about a process. */
export interface ProcStats {
  rssKb: number;
  hwmKb: number;
  fds: number;
}

export async function procStats(pid: number): Promise<ProcStats> {
  const st = await readFile(`/proc/${pid}/status`, 'utf8');
  const kb = (k: string): number => Number(new RegExp(`^${k}:\\s+(\\d+)`, 'm').exec(st)?.[1] ?? NaN);
  return { rssKb: kb('VmRSS'), hwmKb: kb('VmHWM'), fds: (await readdir(`/proc/${pid}/fd`)).length };
}

/** The descriptors of a process, as link targets (for a message when they do not return to baseline). */
export async function fdTargets(pid: number): Promise<string[]> {
  const out: string[] = [];
  for (const fd of await readdir(`/proc/${pid}/fd`)) out.push(await readlink(`/proc/${pid}/fd/${fd}`).catch(() => '?'));
  return out;
}

/** Pids whose parent is `pid`. */
export async function childrenOf(pid: number): Promise<number[]> {
  const out: number[] = [];
  for (const e of await readdir('/proc')) {
    if (!/^[0-9]+$/.test(e)) continue;
    const stat = await readFile(`/proc/${e}/stat`, 'utf8').catch(() => '');
    // pid (comm) state ppid ...: comm may hold spaces and parentheses
    const ppid = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]);
    if (ppid === pid) out.push(Number(e));
  }
  return out;
}

/**
 * The service processes an agent runs: its children, where its SIGUSR1 relay
 * server (native/qrexec-sigrelay, which spawns services) counts by its
 * children other than the relays.
 */
export async function servicesOf(agentPid: number): Promise<number[]> {
  const comm = (pid: number): Promise<string> => readFile(`/proc/${pid}/comm`, 'utf8').then((c) => c.trim(), () => '');
  const out: number[] = [];
  for (const c of await childrenOf(agentPid)) {
    if ((await comm(c)) !== 'qrexec-sigrelay') {
      out.push(c);
      continue;
    }
    for (const g of await childrenOf(c)) if ((await comm(g)) !== 'qrexec-sigrelay') out.push(g);
  }
  return out;
}

/** A call a real qrexec-client-vm in `work` makes; its stdio is left to the scenario. */
export interface LocalCall {
  readonly proc: ChildProcess;
  /** Exit status (128+signal when killed), once its stdout and stderr are closed. */
  readonly status: Promise<number>;
}

/**
 * The host (qrexec-host: policy daemon and three qube daemons), real agents
 * for work and vault, and the fake agent of evil. Policy: work may call
 * test.* in vault and evil; evil may call test.* in vault.
 */
export class HostileWorld {
  private readonly execs = new Map<string, (ep: { domain: number; port: number }) => void>();
  private readonly connects = new Map<string, (ep: { domain: number; port: number } | null) => void>();

  private constructor(
    readonly w: World,
    readonly evil: Reader,
    readonly agents: Map<string, ChildProcess>,
    /** Bytes each agent logged so far, and the tail of its log. */
    readonly agentLogBytes: Map<string, number>,
    readonly agentLog: Map<string, string>,
  ) {
    void this.dispatch();
  }

  static async create(services: Record<string, string>, agentArgs: string[] = []): Promise<HostileWorld> {
    const w = await World.create();
    const policyDir = join(w.dir, 'policy.d');
    await mkdir(policyDir);
    await writeFile(join(policyDir, '30-test.policy'), '* * work vault allow\n* * work evil allow\n* * evil vault allow\n');
    const dom = (type: string, u: string): object => ({ tags: [], type, template_for_dispvms: false, default_dispvm: null, icon: 'x', label: 'red', guivm: null, relayvm: null, transport_rpc: null, internal: null, power_state: 'Running', uuid: u });
    await writeFile(join(w.dir, 'system-info.json'), JSON.stringify({ domains: { dom0: dom('AdminVM', uuid(0)), work: dom('AppVM', uuid(WORK)), vault: dom('AppVM', uuid(VAULT)), evil: dom('AppVM', uuid(EVIL)) } }));
    for (const [name, script] of Object.entries(services)) await w.service('vault', name, script);
    const agents = new Map<string, ChildProcess>();
    const logBytes = new Map<string, number>();
    const logs = new Map<string, string>();
    for (const [domid, name] of [[WORK, 'work'], [VAULT, 'vault']] as const) {
      await mkdir(join(w.dir, `rpc-${name}`), { recursive: true });
      const p = w.start(BIN('qrexec-agent'), [`--agent-socket=${join(w.dir, `agent-${name}.sock`)}`, ...agentArgs], w.env({ VCHAN_DOMAIN: String(domid), QREXEC_SERVICE_PATH: join(w.dir, `rpc-${name}`), QUBES_RPC_CONFIG_PATH: join(w.dir, `cfg-${name}`) }));
      agents.set(name, p);
      logBytes.set(name, 0);
      logs.set(name, '');
      p.stderr?.on('data', (d: Buffer) => {
        logBytes.set(name, (logBytes.get(name) ?? 0) + d.length);
        const text = (logs.get(name) ?? '') + d.toString();
        logs.set(name, text.length > 200_000 ? text.slice(-100_000) : text); // the tail, for messages
      });
    }
    const fa = await fakeAgentListen(w.dir, EVIL);
    w.start(
      BIN('qrexec-host'),
      [
        '--policy-path', policyDir, '--socket-path', join(w.dir, 'policy.sock'), '--system-info', join(w.dir, 'system-info.json'),
        '--eval-socket-path', 'none', '--gui-socket-path', 'none', '--qubesd-events-socket', 'none', '--audit-db', join(w.dir, 'audit.sqlite'),
        `--qrexec-socket-dir=${w.sockDir}`, `--qube=${WORK}:work:${uuid(WORK)}:root`, `--qube=${VAULT}:vault:${uuid(VAULT)}:root`, `--qube=${EVIL}:evil:${uuid(EVIL)}:root`,
      ],
      w.env({ VCHAN_DOMAIN: '0' }),
    );
    const evil = await within(fa.accepted, 'the host connecting to evil', 20000);
    fa.close();
    evil.sock.write(u32(T.HELLO, 4, 4));
    await evil.bytes(12, 20000);
    for (const name of ['work', 'vault', 'evil']) {
      await waitFor(() => access(join(w.sockDir, `qrexec.${name}`)).then(() => true, () => false), 20000, `qrexec.${name}`);
    }
    for (const name of ['work', 'vault']) {
      await waitFor(() => access(join(w.dir, `agent-${name}.sock`)).then(() => true, () => false), 20000, `agent-${name}.sock`);
    }
    return new HostileWorld(w, evil, agents, logBytes, logs);
  }

  pid(agent: 'work' | 'vault'): number {
    return this.agents.get(agent)?.pid as number;
  }

  /** The host's messages to evil's agent: calls to evil, and the endpoints of evil's calls. */
  private async dispatch(): Promise<void> {
    for (;;) {
      let m;
      try {
        m = await this.evil.message(1e9);
      } catch {
        return;
      }
      const domain = m.data.readUInt32LE(0);
      const port = m.data.readUInt32LE(4);
      if (m.type === T.EXEC_CMDLINE) {
        const id = /test\.Hostile\+([A-Za-z0-9_-]+)/.exec(m.data.subarray(8).toString('latin1'))?.[1] ?? '';
        this.execs.get(id)?.({ domain, port });
      } else if (m.type === T.SERVICE_CONNECT || m.type === T.SERVICE_REFUSED) {
        const body = m.type === T.SERVICE_CONNECT ? m.data.subarray(8) : m.data;
        const ident = body.subarray(0, body.indexOf(0) < 0 ? body.length : body.indexOf(0)).toString('latin1');
        this.connects.get(ident)?.(m.type === T.SERVICE_CONNECT ? { domain, port } : null);
      }
    }
  }

  /** Tells the host a call of evil's is over (as an agent does), so its port is free again. */
  terminated(domain: number, port: number): void {
    this.evil.sock.write(msg(T.CONNECTION_TERMINATED, u32(domain, port)));
  }

  /**
   * Evil calls `service` in vault: resolves with the caller's end of the data
   * vchan once vault's agent connected to it (no HELLO exchanged yet).
   */
  async evilCalls(id: string, service: string): Promise<{ conn: Conn; end: () => void }> {
    const ep = new Promise<{ domain: number; port: number } | null>((r) => this.connects.set(id, r));
    this.evil.sock.write(trigger4('vault', id, service));
    const e = await within(ep, `${id}: the host's answer`, 20000);
    this.connects.delete(id);
    if (e === null) throw new Error(`${id}: refused`);
    const srv = vchanServer(join(this.w.dir, `vchan.${EVIL}.${e.domain}.${e.port}.sock`));
    const conn = await within(srv.conn, `${id}: vault's agent connecting`, 20000);
    return {
      conn,
      end: () => {
        conn.close();
        this.terminated(e.domain, e.port);
      },
    };
  }

  /** The host's MSG_EXEC_CMDLINE to evil for test.Hostile+`id`: connects to the caller's data vchan (no HELLO yet). */
  async evilServes(id: string): Promise<{ conn: Conn; end: () => void }> {
    const ep = await within(new Promise<{ domain: number; port: number }>((r) => this.execs.set(id, r)), `${id}: the call reaching evil`, 20000);
    this.execs.delete(id);
    const conn = await connectRetry(join(this.w.dir, `vchan.${ep.domain}.${EVIL}.${ep.port}.sock`));
    return {
      conn,
      end: () => {
        conn.close();
        this.terminated(ep.domain, ep.port);
      },
    };
  }

  /** `qrexec-client-vm TARGET SERVICE` in work (the native launcher: work's agent runs the call). */
  clientVm(target: string, service: string): LocalCall {
    const proc = spawn(BIN('qrexec-client-vm'), [`--agent-socket=${join(this.w.dir, 'agent-work.sock')}`, target, service], {
      env: this.w.env({ VCHAN_DOMAIN: String(WORK) }),
      stdio: ['pipe', 'pipe', 'pipe'],
    });
    proc.stdin?.on('error', () => undefined);
    // once its output is read too ('close'), not only at its exit
    const status = new Promise<number>((r) => proc.once('close', (c, s) => r(s ? 128 : (c ?? 255))));
    return { proc, status };
  }

  /** A well-behaved call work → vault (test.Echo: `echo "$1"; cat`); resolves with its duration in ms. */
  async goodCall(tag: string, ms = 5000): Promise<number> {
    const t0 = Date.now();
    const c = this.clientVm('vault', `test.Echo+${tag}`);
    let out = '';
    c.proc.stdout?.on('data', (d: Buffer) => (out += d.toString()));
    c.proc.stderr?.resume();
    c.proc.stdin?.end('in\n');
    const st = await within(c.status, `well-behaved call ${tag}`, ms);
    if (st !== 0 || out !== `${tag}\nin\n`) throw new Error(`well-behaved call ${tag}: status ${st}, output ${JSON.stringify(out)}`);
    return Date.now() - t0;
  }

  close(): Promise<void> {
    this.evil.sock.destroy();
    return this.w.close();
  }
}

/** mulberry32: a small seeded generator, so a failing random scenario can be replayed from its seed. */
export function seeded(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/**
 * Writes frames from `next()` to `s` as fast as it takes them, until `limit`
 * bytes went out or `s` stays full for `stallMs`. Resolves with the bytes
 * the other end took (written and flushed).
 */
export async function floodUntilStalled(s: Writable, next: () => Buffer, limit: number, stallMs = 700): Promise<number> {
  let sent = 0;
  while (sent < limit && !s.destroyed) {
    const b = next();
    sent += b.length;
    if (!s.write(b)) {
      const drained = await new Promise<boolean>((r) => {
        const t = setTimeout(() => r(false), stallMs);
        s.once('drain', () => {
          clearTimeout(t);
          r(true);
        });
        s.once('close', () => {
          clearTimeout(t);
          r(false);
        });
      });
      if (!drained) return sent - s.writableLength;
    }
  }
  return sent - s.writableLength;
}
