/**
 * Qubes' networking with network namespaces:
 *
 * - netvm none: the sandbox's own new network namespace, loopback only.
 * - a qube with a netvm X: a named namespace of its own, joined to X's by a
 *   veth pair (`eth0` inside, `vif<domid>` in X). Addresses as on Qubes
 *   (qubes/vm/mix/net.py): the qube's own /32 (its `ip`, 10.137.0.<qid>, or
 *   10.138.<dispid> for a DispVM) on eth0, X's own IP (the qube's gateway)
 *   on the vif, host routes both ways; without them a /30 of the pool.
 *   Its default route goes through X, which forwards and masquerades
 *   (nftables) out of its own `eth0`, and drops traffic between two of its
 *   vifs (qubes behind one netvm do not reach each other).
 * - a qube that provides network with no netvm of its own (sys-net): its
 *   `eth0` is a veth to the host's namespace (`qh<domid>` on the host, a /30
 *   of the pool 10.255/16: its "physical" network), so it reaches the host, and through the host's own routing (and NAT, when the
 *   host is set up for it) the outside.
 *
 * Namespaces are named `<prefix><domid>` in /run/netns (ip netns); a host
 * start removes stale ones of its prefix (see {@link cleanStaleNetns}).
 */
import * as fs from 'node:fs';
import { spawnSync } from 'node:child_process';
import { SandboxError } from './errors.js';

const NETNS_DIR = '/run/netns';

/** Runs `ip ...`; throws a NETWORK error with its stderr. */
function ip(args: string[]): string {
  const r = spawnSync('ip', args, { encoding: 'utf8' });
  if (r.status !== 0) throw new SandboxError('NETWORK', `ip ${args.join(' ')}: ${(r.stderr || r.error?.message || `exit ${r.status}`).trim()}`);
  return r.stdout;
}

/** True when `ip` and `nft` exist and we may make namespaces (root). */
export function networkAvailable(): { ok: true } | { ok: false; reason: string } {
  if (process.geteuid?.() !== 0) return { ok: false, reason: 'not root: network namespaces with veths need CAP_NET_ADMIN on the host' };
  for (const [t, v] of [['ip', '-V'], ['nft', '--version']] as const) {
    const r = spawnSync(t, [v], { encoding: 'utf8' });
    if (r.error || r.status !== 0) return { ok: false, reason: `${t} is not installed (${t === 'ip' ? 'iproute2' : 'nftables'})` };
  }
  return { ok: true };
}

/**
 * Second octet of the default pool of /30 links: sys-net's link to the host
 * (its "physical" network). Not Qubes' 10.137-10.139, which name qubes,
 * DispVMs and the virtual DNS servers.
 */
export const DEFAULT_POOL_OCTET = 255;

/** The /30 of link `n` in 10.<a>.<b>.<c>/30 from `pool` (a /16 such as 10.255.0.0): [upstream, downstream, prefix]. */
export function linkAddresses(poolSecondOctet: number, n: number): { up: string; down: string } {
  if (!Number.isInteger(n) || n < 0 || n >= 16384) throw new SandboxError('NETWORK', `link number ${n} out of the pool`);
  const third = n >> 6;
  const fourth = (n & 63) * 4;
  return { up: `10.${poolSecondOctet}.${third}.${fourth + 1}`, down: `10.${poolSecondOctet}.${third}.${fourth + 2}` };
}

/** One qube's network namespace and its uplink. */
export interface QubeNetwork {
  readonly netns: string;
  /** The namespace file to run in. */
  readonly path: string;
  /** Our address and the gateway's (undefined: no uplink). */
  readonly address?: string;
  readonly gateway?: string;
}

export interface NetworkOptions {
  /** Names of our namespaces start with this (unique per host run dir). */
  readonly prefix: string;
  /** Second octet of the 10.x.0.0/16 pool ({@link DEFAULT_POOL_OCTET}). */
  readonly poolOctet?: number;
}

/** Makes the namespace of `domid`, loopback up. */
export function createNetns(o: NetworkOptions, domid: number): QubeNetwork {
  const name = `${o.prefix}${domid}`;
  if (fs.existsSync(`${NETNS_DIR}/${name}`)) ip(['netns', 'del', name]);
  ip(['netns', 'add', name]);
  ip(['-n', name, 'link', 'set', 'lo', 'up']);
  return { netns: name, path: `${NETNS_DIR}/${name}` };
}

/** A qube's own address and its gateway (its netvm's), as Qubes gives them. */
export interface QubeAddresses {
  readonly ip: string;
  readonly gateway: string;
}

const IPV4 = /^(?:(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\.){3}(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)$/;

/**
 * The uplink of qube `domid` (namespace `net`) to `upstream`: a netvm's
 * namespace, or 'host' (the host's own, for sys-net). The upstream end routes
 * and masquerades; its nftables table is made once per upstream. With
 * `addrs` (a netvm upstream only), the Qubes layout: `ip`/32 on eth0 and
 * `gateway`/32 (the netvm's own IP, on every one of its vifs) with a host
 * route each way; otherwise a /30 of the pool.
 */
export function connectUplink(o: NetworkOptions, net: QubeNetwork, domid: number, upstream: QubeNetwork | 'host', addrs?: QubeAddresses): QubeNetwork {
  const upName = upstream === 'host' ? `${o.prefix}h${domid}` : `vif${domid}`;
  if (upName.length > 15) throw new SandboxError('NETWORK', `interface name ${upName} too long (shorten the prefix)`);
  const upNs = upstream === 'host' ? [] : ['netns', upstream.netns];
  const onUp = upstream === 'host' ? [] : ['-n', upstream.netns];
  if (addrs && upstream !== 'host') {
    if (!IPV4.test(addrs.ip) || !IPV4.test(addrs.gateway)) throw new SandboxError('NETWORK', `bad addresses ${addrs.ip} via ${addrs.gateway}`);
    ip(['link', 'add', upName, ...upNs, 'type', 'veth', 'peer', 'name', 'eth0', 'netns', net.netns]);
    ip([...onUp, 'addr', 'add', `${addrs.gateway}/32`, 'dev', upName]);
    ip([...onUp, 'link', 'set', upName, 'up']);
    ip([...onUp, 'route', 'add', `${addrs.ip}/32`, 'dev', upName]);
    ip(['-n', net.netns, 'addr', 'add', `${addrs.ip}/32`, 'dev', 'eth0']);
    ip(['-n', net.netns, 'link', 'set', 'eth0', 'up']);
    ip(['-n', net.netns, 'route', 'add', `${addrs.gateway}/32`, 'dev', 'eth0']);
    ip(['-n', net.netns, 'route', 'add', 'default', 'via', addrs.gateway, 'dev', 'eth0']);
    return { ...net, address: addrs.ip, gateway: addrs.gateway };
  }
  const { up, down } = linkAddresses(o.poolOctet ?? DEFAULT_POOL_OCTET, domid);
  ip(['link', 'add', upName, ...upNs, 'type', 'veth', 'peer', 'name', 'eth0', 'netns', net.netns]);
  ip([...onUp, 'addr', 'add', `${up}/30`, 'dev', upName]);
  ip([...onUp, 'link', 'set', upName, 'up']);
  ip(['-n', net.netns, 'addr', 'add', `${down}/30`, 'dev', 'eth0']);
  ip(['-n', net.netns, 'link', 'set', 'eth0', 'up']);
  ip(['-n', net.netns, 'route', 'add', 'default', 'via', up]);
  return { ...net, address: down, gateway: up };
}

/** Makes the namespace `net` a netvm: forwarding, masquerade out of eth0, no traffic between its vifs. Idempotent. */
export function makeNetvm(net: QubeNetwork): void {
  const r = spawnSync('ip', ['netns', 'exec', net.netns, 'sysctl', '-q', '-w', 'net.ipv4.ip_forward=1'], { encoding: 'utf8' });
  if (r.status !== 0) throw new SandboxError('NETWORK', `ip_forward in ${net.netns}: ${(r.stderr || '').trim()}`);
  const rules = `table ip qubes
delete table ip qubes
table ip qubes {
  chain postrouting { type nat hook postrouting priority srcnat; policy accept; oifname "eth0" masquerade; }
  chain forward { type filter hook forward priority filter; policy accept; iifname "vif*" oifname "vif*" drop; }
}
`;
  const n = spawnSync('ip', ['netns', 'exec', net.netns, 'nft', '-f', '-'], { input: rules, encoding: 'utf8' });
  if (n.status !== 0) throw new SandboxError('NETWORK', `nftables in ${net.netns}: ${(n.stderr || '').trim()}`);
}

/** Removes the namespace (and so every veth end in it) and the host end of a sys-net uplink. */
export function destroyNetwork(o: NetworkOptions, net: QubeNetwork, domid: number): void {
  spawnSync('ip', ['netns', 'del', net.netns]);
  // the host end of a veth goes with its peer; this only catches a half-made link
  spawnSync('ip', ['link', 'del', `${o.prefix}h${domid}`], { stdio: 'ignore' });
}

/** Removes namespaces and host veths of `prefix` left by a host that died (kill -9). Returns how many. */
export function cleanStaleNetns(prefix: string): number {
  let n = 0;
  let names: string[] = [];
  try {
    names = fs.readdirSync(NETNS_DIR);
  } catch {
    /* none */
  }
  for (const name of names) {
    if (!name.startsWith(prefix)) continue;
    spawnSync('ip', ['netns', 'del', name]);
    n++;
  }
  const links = spawnSync('ip', ['-o', 'link', 'show'], { encoding: 'utf8' }).stdout ?? '';
  for (const m of links.matchAll(/^\d+: ([^:@]+)[@:]/gm)) {
    const l = m[1] as string;
    if (l.startsWith(`${prefix}h`)) {
      spawnSync('ip', ['link', 'del', l]);
      n++;
    }
  }
  return n;
}
