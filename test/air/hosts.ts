/**
 * Qubes Air test hosts: each a full qrexec-ts host (bin/qubes-host, its own
 * data dir, run dir, qubesd, policy) whose process runs in a network
 * namespace made here; the namespaces are joined by veths made here (no
 * other address is ever used). Each host has a relay qube (sys-net-like: its
 * eth0 goes to the host's namespace) and a `work` qube; the host namespace
 * forwards its link port to its relay's sshd (the site's port forward) and
 * masquerades what its relay sends out of the link. Root only.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { BIN, ROOT, waitFor } from '../e2e/harness.js';
import { sandboxSkipReason } from '../runtime/world.js';
import { DEFAULT_POOL_OCTET, linkAddresses } from '../../src/runtime/sandbox/index.js';

/** Why these tests cannot run here, or undefined. As root (CI) a missing prerequisite fails. */
export function airSkipReason(): string | undefined {
  const s = sandboxSkipReason();
  if (s) return s;
  for (const p of ['/usr/sbin/sshd', '/usr/bin/ssh', '/usr/bin/ssh-keygen']) {
    if (!fs.existsSync(p)) throw new Error(`Qubes Air tests need OpenSSH (${p}): apt-get install openssh-server openssh-client`);
  }
  return undefined;
}

export const RELAY_PORT = 2222;

function sh(cmd: string, args: string[], input?: string): string {
  const r = spawnSync(cmd, args, { encoding: 'utf8', ...(input !== undefined ? { input } : {}) });
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(' ')}: ${r.stderr || r.error?.message}`);
  return r.stdout;
}

export interface ToolResult {
  readonly status: number;
  readonly stdout: string;
  readonly stderr: string;
}

export class AirTestHost {
  proc: ChildProcess | undefined;
  log = '';
  /** The host namespace's address on its link to the others (set by {@link link}). */
  linkAddress = '';
  relayAddress = '';

  private constructor(
    readonly name: string,
    readonly netns: string,
    readonly dir: string,
  ) {}

  get data(): string {
    return path.join(this.dir, 'data');
  }
  get run(): string {
    return path.join(this.data, 'run');
  }
  get env(): NodeJS.ProcessEnv {
    return { ...process.env, QREXEC_HOST_DIR: this.run };
  }

  /** A namespace and a data dir for host `name`; `start` runs it. */
  static create(tag: string, name: string): AirTestHost {
    const netns = `${tag}${name}`;
    sh('ip', ['netns', 'add', netns]);
    sh('ip', ['-n', netns, 'link', 'set', 'lo', 'up']);
    sh('ip', ['netns', 'exec', netns, 'sysctl', '-q', '-w', 'net.ipv4.ip_forward=1']);
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), `air-${name}-`));
    fs.chmodSync(dir, 0o755);
    return new AirTestHost(name, netns, dir);
  }

  async start(): Promise<void> {
    const p = spawn('nsenter', [`--net=/run/netns/${this.netns}`, process.execPath, path.join(ROOT, 'bin', 'qubes-host'), '--data-dir', this.data, '--no-demo-system', '--runtime', 'bwrap'], {
      stdio: ['ignore', 'pipe', 'pipe'],
      env: { ...process.env, QREXEC_HOST_DIR: '' },
    });
    p.stdout?.on('data', (d: Buffer) => (this.log += d.toString()));
    p.stderr?.on('data', (d: Buffer) => (this.log += d.toString()));
    this.proc = p;
    await waitFor(() => Promise.resolve(fs.existsSync(path.join(this.run, 'host.json')) || p.exitCode !== null), 60_000, `host ${this.name} up`);
    if (p.exitCode !== null) throw new Error(`host ${this.name} exited: ${this.log}`);
  }

  tool(name: string, args: string[], input?: string, timeoutMs = 60_000): ToolResult {
    const r = spawnSync(BIN(name), args, { env: this.env, encoding: 'utf8', timeout: timeoutMs, ...(input !== undefined ? { input } : {}) });
    return { status: r.status ?? -1, stdout: r.stdout ?? '', stderr: r.stderr ?? '' };
  }

  /** A tool that must succeed; its stdout. */
  ok(name: string, ...args: string[]): string {
    const r = this.tool(name, args);
    if (r.status !== 0) throw new Error(`${this.name}: ${name} ${args.join(' ')}: exit ${r.status}: ${r.stderr}`);
    return r.stdout;
  }

  /** Runs `cmd` in `qube` (qvm-run --pass-io), asynchronously (for calls that must overlap). */
  runIn(qube: string, cmd: string, timeoutMs = 60_000): Promise<ToolResult> {
    return new Promise((resolve) => {
      const p = spawn(BIN('qvm-run'), ['--pass-io', '--no-gui', qube, cmd], { env: this.env, stdio: ['ignore', 'pipe', 'pipe'] });
      let out = '';
      let err = '';
      p.stdout.on('data', (d: Buffer) => (out += d.toString()));
      p.stderr.on('data', (d: Buffer) => (err += d.toString()));
      const t = setTimeout(() => p.kill('SIGKILL'), timeoutMs);
      p.on('close', (code) => {
        clearTimeout(t);
        resolve({ status: code ?? -1, stdout: out, stderr: err });
      });
    });
  }

  /** The template, the relay (its uplink is the host's namespace) and `work`, started. */
  makeQubes(): void {
    this.ok('qvm-create', '-C', 'TemplateVM', '-l', 'black', 'tpl');
    this.ok('qubes-prefs', 'default_template', 'tpl');
    this.ok('qvm-create', '-l', 'red', '--prop', 'provides_network=True', 'relay');
    this.ok('qvm-prefs', 'relay', 'netvm', 'none');
    this.ok('qvm-create', '-l', 'blue', 'work');
    this.ok('qvm-prefs', 'work', 'netvm', 'none');
    this.ok('qvm-start', 'relay');
    this.ok('qvm-start', 'work');
    this.readRelayAddress();
  }

  /** The relay's address on its uplink, which follows its xid (new at each start). */
  readRelayAddress(): void {
    const xid = Number(this.ok('qvm-prefs', 'relay', 'xid').trim());
    this.relayAddress = linkAddresses(DEFAULT_POOL_OCTET, xid).down;
  }

  /** A service in a qube's /usr/local/etc/qubes-rpc (its private volume). */
  service(qube: string, name: string, script: string): void {
    const d = path.join(this.data, 'qubes', qube, 'private', 'usrlocal', 'etc', 'qubes-rpc');
    fs.mkdirSync(d, { recursive: true, mode: 0o755 });
    fs.writeFileSync(path.join(d, name), script, { mode: 0o755 });
  }

  /** The test's policy, then the shipped default policy (its qubesair.Sign/Verify rules). */
  policy(text: string): void {
    fs.writeFileSync(path.join(this.data, 'policy.d', '20-air-test.policy'), text);
    fs.copyFileSync(path.join(ROOT, 'policy', '80-services-default.policy'), path.join(this.data, 'policy.d', '80-services-default.policy'));
  }

  async stop(): Promise<void> {
    const p = this.proc;
    if (p && p.exitCode === null) {
      const gone = new Promise((r) => p.once('exit', r));
      p.kill('SIGTERM');
      const t = setTimeout(() => p.kill('SIGKILL'), 15_000);
      await gone;
      clearTimeout(t);
    }
    spawnSync('ip', ['netns', 'del', this.netns]);
    fs.rmSync(this.dir, { recursive: true, force: true });
  }
}

/** A short unique namespace prefix for one test run. */
export function netnsTag(): string {
  return `air${crypto.randomBytes(3).toString('hex')}`;
}

/**
 * Joins the namespaces of `a` and `b` by a veth (10.231.N.1 and .2/30 on
 * them), each forwarding its link port RELAY_PORT to its relay's sshd and
 * masquerading out of the link.
 */
export function link(a: AirTestHost, b: AirTestHost, n = 0): void {
  const ia = `l${n}${b.name}`;
  const ib = `l${n}${a.name}`;
  sh('ip', ['-n', a.netns, 'link', 'add', ia, 'type', 'veth', 'peer', 'name', ib, 'netns', b.netns]);
  a.linkAddress = `10.231.${n}.1`;
  b.linkAddress = `10.231.${n}.2`;
  for (const [h, i] of [[a, ia], [b, ib]] as const) {
    sh('ip', ['-n', h.netns, 'addr', 'add', `${h.linkAddress}/30`, 'dev', i]);
    sh('ip', ['-n', h.netns, 'link', 'set', i, 'up']);
  }
}

/** The site's port forward to the relay's sshd and the masquerade out of the links (after makeQubes). */
export function forwardToRelay(h: AirTestHost): void {
  sh('ip', ['netns', 'exec', h.netns, 'nft', '-f', '-'], `table ip airtest
delete table ip airtest
table ip airtest {
  chain pre { type nat hook prerouting priority dstnat; policy accept; iifname "l*" tcp dport ${RELAY_PORT} dnat to ${h.relayAddress}:${RELAY_PORT}; }
  chain post { type nat hook postrouting priority srcnat; policy accept; oifname "l*" masquerade; }
}
`);
}

/** Cuts (or restores) the link between the namespaces: its ends down. */
export function setLink(a: AirTestHost, b: AirTestHost, up: boolean, n = 0): void {
  sh('ip', ['-n', a.netns, 'link', 'set', `l${n}${b.name}`, up ? 'up' : 'down']);
  sh('ip', ['-n', b.netns, 'link', 'set', `l${n}${a.name}`, up ? 'up' : 'down']);
}

/** Makes host `h` unreachable (or reachable again): its namespace drops everything that comes over its links. */
export function blockLink(h: AirTestHost, block: boolean): void {
  sh('ip', ['netns', 'exec', h.netns, 'nft', '-f', '-'], block
    ? `table inet airdown {
  chain input { type filter hook input priority -10; policy accept; iifname "l*" drop; }
  chain forward { type filter hook forward priority -10; policy accept; iifname "l*" drop; }
}
`
    : 'delete table inet airdown\n');
}

/**
 * A site network for many hosts: a switch namespace `${tag}sw` with a bridge,
 * each host joined to it by a veth (`lsw` on the host's side, so the rules of
 * {@link forwardToRelay} apply) at 10.231.0.(i+1)/24. Returns what removes
 * the switch (the hosts' ends go with their namespaces).
 */
export function star(tag: string, hosts: readonly AirTestHost[]): () => void {
  const sw = `${tag}sw`;
  sh('ip', ['netns', 'add', sw]);
  sh('ip', ['-n', sw, 'link', 'add', 'br0', 'type', 'bridge']);
  sh('ip', ['-n', sw, 'link', 'set', 'br0', 'up']);
  hosts.forEach((h, i) => {
    sh('ip', ['-n', h.netns, 'link', 'add', 'lsw', 'type', 'veth', 'peer', 'name', `p${h.name}`, 'netns', sw]);
    h.linkAddress = `10.231.0.${i + 1}`;
    sh('ip', ['-n', h.netns, 'addr', 'add', `${h.linkAddress}/24`, 'dev', 'lsw']);
    sh('ip', ['-n', h.netns, 'link', 'set', 'lsw', 'up']);
    sh('ip', ['-n', sw, 'link', 'set', `p${h.name}`, 'master', 'br0']);
    sh('ip', ['-n', sw, 'link', 'set', `p${h.name}`, 'up']);
  });
  return () => {
    spawnSync('ip', ['netns', 'del', sw]);
  };
}

/** A program in a qube's /usr/local/bin (its private volume). */
export function program(h: AirTestHost, qube: string, name: string, script: string): void {
  const d = path.join(h.data, 'qubes', qube, 'private', 'usrlocal', 'bin');
  fs.mkdirSync(d, { recursive: true, mode: 0o755 });
  fs.writeFileSync(path.join(d, name), script, { mode: 0o755 });
}
