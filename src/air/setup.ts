/**
 * Qubes Air set-up, run in dom0 (qvm-air): this host's name, its relay
 * qubes (SSH keys made inside the relay, which never leave it; its sshd),
 * the peers it was paired with (their relay keys pinned) and the RemoteVMs
 * they carry. dom0 keeps its part under DATA/air/:
 *
 * - `host.json`: `{"name": ...}`, this host's name as its peers know it;
 * - `signing-key.pem`: this host's Ed25519 key for end-to-end signing (src/air/sign.ts);
 * - `peers/PEER.json`: what the peer's offer said, and which local relay reaches it.
 *
 * Everything a relay needs is written into it (RELAY_DIR) by `syncRelay`, the
 * equivalent of the reference's QubesDB `/remote/NAME` entries.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { localHost, readHostInfo } from '../common/local-host.js';
import { AdminError, SocketTransport, defaultTransport } from '../qubesd-client/client.js';
import { QubesApp } from '../qvm/app.js';
import { exitStatus, spawnQrexecClient } from '../qvm/run.js';
import {
  DEFAULT_RELAY_PORT,
  PEER_FEATURE,
  RELAY_DIR,
  RELAY_FEATURE,
  TRANSPORT_RPC,
  authorizedKeys,
  checkPeerName,
  checkQubeName,
  checkSshKey,
  knownHosts,
  parseAddress,
  remotesFile,
  sshConfig,
  sshdConfig,
  writeFilesScript,
  type PeerLink,
  type RemoteEntry,
} from './config.js';
import { AirError } from './errors.js';
import { ensureSigningKey, nextPublicKeyOf, publicKeyOf } from './sign.js';

/** One host's dom0: its Admin API, and its data dir for dom0's own Qubes Air state. */
export interface AirHost {
  readonly app: QubesApp;
  /** DATA (throws AirError when it cannot be known: no running host behind the socket). */
  readonly dataDir: string;
}

/** The host running with `runDir` (it must be running: the relays are reached through it). */
export function airHost(runDir: string): AirHost {
  const info = readHostInfo(runDir);
  if (!info) throw new AirError(`no host is running with run directory ${runDir} (start it with qubes-host)`);
  return { app: new QubesApp(new SocketTransport(info.qubesdSocket)), dataDir: info.dataDir };
}

/**
 * The host dom0 tools use (QUBESD_SOCKET, else QREXEC_HOST_DIR or the
 * default host): its data dir is the one its RUN/host.json names.
 */
export function localAirHost(env: NodeJS.ProcessEnv = process.env): AirHost {
  const explicit = env['QUBESD_SOCKET'];
  const info = explicit ? readHostInfo(path.dirname(explicit)) : localHost(env);
  const app = new QubesApp(explicit ? new SocketTransport(explicit) : info ? new SocketTransport(info.qubesdSocket) : defaultTransport(env));
  return {
    app,
    get dataDir(): string {
      if (!info) throw new AirError(`no running host found (start it with qubes-host; QREXEC_HOST_DIR names another host's run directory)`);
      return info.dataDir;
    },
  };
}

const airDir = (h: AirHost): string => path.join(h.dataDir, 'air');

/** What one host gives another to pair with it (`qvm-air export`). */
export interface AirOffer {
  readonly qubesAir: 1;
  /** The host's name. */
  readonly host: string;
  /** `HOST:PORT` at which its relay's sshd is reached from the peer. */
  readonly address: string;
  readonly relayHostKey: string;
  readonly relayClientKey: string;
  /** The host's Ed25519 signing key, base64 of the 32 raw bytes. */
  readonly signingKey: string;
  /** During a key rotation (`qvm-air rotate`), the key that signs after it. */
  readonly nextSigningKey?: string;
}

/** A paired peer, as dom0 keeps it. */
export interface PeerRecord extends PeerLink {
  readonly signingKey: string;
  /** Accepted too: the peer is rotating its key. */
  readonly nextSigningKey?: string;
  /** The local relay qube that talks to this peer. */
  readonly relay: string;
}

export function parseOffer(text: string): AirOffer {
  let j: unknown;
  try {
    j = JSON.parse(text);
  } catch {
    throw new AirError('the offer is not JSON (made by qvm-air export)');
  }
  const o = j as Record<string, unknown>;
  if (typeof o !== 'object' || o === null || o['qubesAir'] !== 1) throw new AirError('not a Qubes Air offer (made by qvm-air export)');
  const str = (k: string): string => {
    const v = o[k];
    if (typeof v !== 'string') throw new AirError(`the offer has no ${k}`);
    return v;
  };
  parseAddress(str('address'));
  const KEY = /^[A-Za-z0-9+/]{43}=$/;
  if (!KEY.test(str('signingKey'))) throw new AirError('the offer has no valid signingKey');
  const next = o['nextSigningKey'];
  if (next !== undefined && (typeof next !== 'string' || !KEY.test(next))) throw new AirError('the offer has an invalid nextSigningKey');
  return {
    ...(next !== undefined ? { nextSigningKey: next } : {}),
    qubesAir: 1,
    host: checkPeerName(str('host')),
    address: str('address'),
    relayHostKey: checkSshKey(str('relayHostKey'), 'the offer\'s relayHostKey'),
    relayClientKey: checkSshKey(str('relayClientKey'), 'the offer\'s relayClientKey'),
    signingKey: str('signingKey'),
  };
}

/** This host's name, or undefined before `qvm-air init`. */
export function hostName(h: AirHost): string | undefined {
  try {
    const j = JSON.parse(fs.readFileSync(path.join(airDir(h), 'host.json'), 'utf8')) as { name?: unknown };
    return typeof j.name === 'string' ? j.name : undefined;
  } catch {
    return undefined;
  }
}

export function requireName(h: AirHost): string {
  const n = hostName(h);
  if (n === undefined) throw new AirError('this host has no Qubes Air name yet (qvm-air init NAME)');
  return n;
}

/** Names this host and makes its signing key (kept if there is one). */
export function initHost(h: AirHost, name: string): void {
  checkPeerName(name);
  const d = airDir(h);
  fs.mkdirSync(path.join(d, 'peers'), { recursive: true, mode: 0o700 });
  const old = hostName(h);
  if (old !== undefined && old !== name) throw new AirError(`this host is already named '${old}'`);
  fs.writeFileSync(path.join(d, 'host.json'), JSON.stringify({ name }) + '\n', { mode: 0o600 });
  ensureSigningKey(d);
}

export function peers(h: AirHost): PeerRecord[] {
  const d = path.join(airDir(h), 'peers');
  let names: string[] = [];
  try {
    names = fs.readdirSync(d).filter((n) => n.endsWith('.json'));
  } catch {
    return [];
  }
  return names.sort().map((n) => JSON.parse(fs.readFileSync(path.join(d, n), 'utf8')) as PeerRecord);
}

export function peer(h: AirHost, name: string): PeerRecord {
  const p = peers(h).find((x) => x.name === name);
  if (!p) throw new AirError(`unknown peer host '${name}' (qvm-air import its offer first)`);
  return p;
}

/** Runs a shell script in `qube` as user (qubes.VMShell); its stdout, or an AirError with its stderr. */
export async function runInQube(app: QubesApp, qube: string, script: string, user = 'user'): Promise<string> {
  const child = await spawnQrexecClient(app, qube, 'qubes.VMShell', user, { stdio: ['pipe', 'pipe', 'pipe'] });
  const out: Buffer[] = [];
  let err = '';
  child.stdout?.on('data', (d: Buffer) => out.push(d));
  child.stderr?.on('data', (d: Buffer) => (err += d.toString()));
  child.stdin?.on('error', () => undefined);
  child.stdin?.end(script);
  const code = await exitStatus(child);
  await new Promise((r) => setImmediate(r));
  if (code !== 0) throw new AirError(`in ${qube}: exit status ${code}${err.trim() ? `: ${err.trim()}` : ''}`);
  return Buffer.concat(out).toString();
}

async function checkRelay(h: AirHost, relay: string): Promise<void> {
  checkQubeName(relay, 'relay name');
  const q = await h.app.get(relay);
  if (!q) throw new AirError(`no qube named '${relay}'`);
  if (q.klass === 'RemoteVM' || q.klass === 'AdminVM') throw new AirError(`${relay} is a ${q.klass}: a relay is a qube of this host`);
}

/**
 * Makes `relay` a relay: its SSH host and client keys (made in the relay if
 * missing) and its sshd_config. Returns its two public keys.
 */
export async function setupRelay(h: AirHost, relay: string, port = DEFAULT_RELAY_PORT): Promise<{ hostKey: string; clientKey: string }> {
  await checkRelay(h, relay);
  requireName(h);
  if (!Number.isInteger(port) || port < 1 || port > 65535) throw new AirError(`invalid port ${port}`);
  const out = await runInQube(
    h.app,
    relay,
    `${writeFilesScript({ sshd_config: sshdConfig(port) })}`.replace(/exit 0\n$/, '') +
      `for k in ssh_host_ed25519_key id_ed25519; do [ -e $k ] || ssh-keygen -q -t ed25519 -N '' -C qubes-air -f $k; done
cat ssh_host_ed25519_key.pub id_ed25519.pub
`,
  );
  const keys = relayKeys(relay, out);
  await h.app.call(relay, 'admin.vm.feature.Set', RELAY_FEATURE, '1');
  return keys;
}

function relayKeys(relay: string, out: string): { hostKey: string; clientKey: string } {
  const [hostKey, clientKey] = out.trim().split('\n');
  return { hostKey: checkSshKey(hostKey ?? '', `${relay}: host key`), clientKey: checkSshKey(clientKey ?? '', `${relay}: client key`) };
}

/** What this host offers a peer: its name, its relay's address and keys, its signing key. */
export async function makeOffer(h: AirHost, relay: string, address: string): Promise<AirOffer> {
  parseAddress(address);
  await checkRelay(h, relay);
  const out = await runInQube(h.app, relay, `cd ${RELAY_DIR} 2>/dev/null && cat ssh_host_ed25519_key.pub id_ed25519.pub || { echo "${relay} is no relay yet (qvm-air relay ${relay})" >&2; exit 1; }\n`);
  const keys = relayKeys(relay, out);
  const next = nextPublicKeyOf(airDir(h));
  return {
    qubesAir: 1,
    host: requireName(h),
    address,
    relayHostKey: keys.hostKey,
    relayClientKey: keys.clientKey,
    signingKey: publicKeyOf(airDir(h)),
    ...(next !== undefined ? { nextSigningKey: next } : {}),
  };
}

/** Pins a peer's offer for `relay` and writes the relay's files. */
export async function importOffer(h: AirHost, relay: string, offer: AirOffer): Promise<void> {
  await checkRelay(h, relay);
  const me = requireName(h);
  if (offer.host === me) throw new AirError(`the offer is this host's own (${me})`);
  const rec: PeerRecord = {
    name: offer.host,
    address: offer.address,
    relayHostKey: offer.relayHostKey,
    relayClientKey: offer.relayClientKey,
    signingKey: offer.signingKey,
    ...(offer.nextSigningKey !== undefined ? { nextSigningKey: offer.nextSigningKey } : {}),
    relay,
  };
  const d = path.join(airDir(h), 'peers');
  fs.mkdirSync(d, { recursive: true, mode: 0o700 });
  const f = path.join(d, `${offer.host}.json`);
  fs.writeFileSync(`${f}.new`, JSON.stringify(rec, null, 2) + '\n', { mode: 0o600 });
  fs.renameSync(`${f}.new`, f);
  await syncRelay(h, relay);
}

/** The RemoteVMs of the registry that `relay` carries (with a peer feature). */
export async function remoteEntries(h: AirHost, relay: string): Promise<RemoteEntry[]> {
  h.app.invalidate();
  const out: RemoteEntry[] = [];
  for (const q of await h.app.list()) {
    if (q.klass !== 'RemoteVM') continue;
    if ((await q.value('relayvm')) !== relay) continue;
    const p = await q.feature(PEER_FEATURE);
    if (p === undefined || p === '') continue;
    out.push({ local: q.name, peer: p, remote: (await q.value('remote_name')) || q.name });
  }
  return out;
}

/** Writes the relay's authorized_keys, known_hosts, ssh_config and remotes from dom0's state. */
export async function syncRelay(h: AirHost, relay: string): Promise<void> {
  await checkRelay(h, relay);
  const mine = peers(h).filter((p) => p.relay === relay);
  const names = new Set(mine.map((p) => p.name));
  const entries = (await remoteEntries(h, relay)).filter((e) => names.has(e.peer));
  await runInQube(
    h.app,
    relay,
    writeFilesScript({ authorized_keys: authorizedKeys(mine), known_hosts: knownHosts(mine), ssh_config: sshConfig(mine), remotes: remotesFile(entries) }),
  );
}

/**
 * The relay-side script that stops its sshd for good: the listener and every
 * per-connection child it forked (each sshd child is in its own session, so
 * killing the listener alone leaves the open connections, and the calls on
 * them, running), with the processes of those connections' calls; then the
 * relay's own connections to its peers (their ControlMaster processes).
 */
export function stopRelayScript(): string {
  return `cd ${RELAY_DIR} 2>/dev/null || exit 0
# the direct children of $1 (from /proc: the field after the command name's ')')
kids() {
  for s in /proc/[0-9]*/stat; do
    read -r line 2>/dev/null < "$s" || continue
    r=\${line##*) }; r=\${r#* }
    [ "\${r%% *}" = "$1" ] || continue
    p=\${s#/proc/}; echo "\${p%/stat}"
  done
}
# $1 and all its descendants, children first noted (a killed parent's children are re-parented)
tree() {
  for k in $(kids "$1"); do tree "$k"; done
  echo "$1"
}
# whether one of $all still runs (a zombie does not count)
alive() {
  for p in $all; do
    read -r line 2>/dev/null < /proc/"$p"/stat || continue
    r=\${line##*) }
    [ "\${r%% *}" = Z ] || return 0
  done
  return 1
}
l=$(cat sshd.pid 2>/dev/null)
if [ -n "$l" ] && [ "$(cat /proc/"$l"/comm 2>/dev/null)" = sshd ]; then
  all=$(tree "$l")
  # shellcheck disable=SC2086
  kill $all 2>/dev/null
  n=0
  while [ "$n" -lt 50 ] && alive; do sleep 0.1; n=$((n + 1)); done
  # shellcheck disable=SC2086
  kill -9 $all 2>/dev/null
fi
rm -f sshd.pid
for c in /tmp/qubes-air-*.ctl; do [ -S "$c" ] && ssh -F ssh_config -o ControlPath="$c" -O exit x 2>/dev/null; done
exit 0
`;
}

/**
 * The relay-side script that (re)starts its sshd, after ending the old one
 * with its open connections and the relay's connections to its peers (the
 * next call makes them again). Run by `qvm-air start`, and by the host each
 * time a relay qube starts (src/host/air-relays.ts).
 */
export function startRelayScript(): string {
  return `[ -d ${RELAY_DIR} ] || { echo "this qube is no relay yet (qvm-air relay NAME)" >&2; exit 1; }
(
${stopRelayScript()}) || exit 1
cd ${RELAY_DIR} && /usr/sbin/sshd -f ${RELAY_DIR}/sshd_config -E ${RELAY_DIR}/sshd.log
`;
}

export async function startRelay(h: AirHost, relay: string): Promise<void> {
  await checkRelay(h, relay);
  await runInQube(h.app, relay, startRelayScript());
}

/** Stops the relay's sshd and ends its open connections, both ways. */
export async function stopRelay(h: AirHost, relay: string): Promise<void> {
  await checkRelay(h, relay);
  await runInQube(h.app, relay, stopRelayScript());
}

/**
 * A RemoteVM `name` for the qube `remoteName` of `peerName`, carried by the
 * peer's relay: class RemoteVM, relayvm, transport_rpc qubesair.SSHProxy,
 * remote_name, the peer feature. Then the relay is synced.
 */
export async function addRemote(h: AirHost, name: string, peerName: string, remoteName = name, label = 'red'): Promise<void> {
  checkQubeName(name);
  checkQubeName(remoteName, 'remote name');
  const p = peer(h, peerName);
  const app = h.app;
  app.invalidate();
  if (await app.get(name)) throw new AirError(`a qube named '${name}' exists`);
  await app.call('dom0', 'admin.vm.Create.RemoteVM', '', `name=${name} label=${label}`);
  try {
    await app.call(name, 'admin.vm.property.Set', 'relayvm', p.relay);
    await app.call(name, 'admin.vm.property.Set', 'transport_rpc', TRANSPORT_RPC);
    await app.call(name, 'admin.vm.property.Set', 'remote_name', remoteName);
    await app.call(name, 'admin.vm.feature.Set', PEER_FEATURE, peerName);
  } catch (e) {
    await app.call(name, 'admin.vm.Remove').catch(() => undefined);
    throw e instanceof AdminError ? new AirError(`setting up ${name}: ${e.message}`) : e;
  }
  await syncRelay(h, p.relay);
}

/**
 * Forgets the peer host `name`: its record (so its signatures are no longer
 * accepted), its lines in the relay's files (its client key may no longer
 * log in, its host key is no longer pinned), and, with `force`, the
 * RemoteVMs that stand for its qubes (without it, they make this refuse).
 * The relay's sshd is then restarted when it runs, because an SSH
 * connection the peer already opened would otherwise stay usable: calls in
 * flight through that relay fail, and the other peers' next calls reconnect.
 * Returns the RemoteVMs removed.
 */
export async function removePeer(h: AirHost, name: string, force: boolean): Promise<string[]> {
  checkPeerName(name);
  const p = peer(h, name);
  h.app.invalidate();
  const remotes: string[] = [];
  for (const q of await h.app.list()) if (q.klass === 'RemoteVM' && (await q.feature(PEER_FEATURE)) === name) remotes.push(q.name);
  if (remotes.length > 0 && !force) throw new AirError(`the RemoteVMs ${remotes.join(', ')} stand for qubes of ${name}: remove them first, or use --force`);
  for (const r of remotes) {
    try {
      await h.app.call(r, 'admin.vm.Remove');
    } catch (e) {
      throw e instanceof AdminError ? new AirError(`removing ${r}: ${e.message}`) : e;
    }
  }
  fs.rmSync(path.join(airDir(h), 'peers', `${name}.json`), { force: true });
  await syncRelay(h, p.relay);
  await runInQube(h.app, p.relay, `[ -s ${RELAY_DIR}/sshd.pid ] || exit 0\n${startRelayScript()}`);
  return remotes;
}
