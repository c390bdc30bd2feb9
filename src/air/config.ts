/**
 * Qubes Air: the files of a relay qube's `~/.qubes-air/` directory, made by
 * dom0 (qvm-air) from its own state and the registry. Pure: names and keys
 * are checked here, so nothing a peer sent can break out of a config line.
 *
 * - `sshd_config`: the relay's sshd (run as the relay's user on its own port,
 *   its own host key, public keys only, no forwarding of any kind).
 * - `authorized_keys`: one line per peer host, whose key may only run the
 *   relay entry point with that peer's name (`command=`, `restrict`, no pty,
 *   no forwarding).
 * - `known_hosts`: each peer relay's host key, pinned under an alias
 *   (`qubes-air-PEER`), whatever address the peer is reached at.
 * - `ssh_config`: one `Host PEER` entry each: address, pinned key, one
 *   multiplexed connection (ControlMaster) kept open and made again on loss,
 *   keep-alives that notice a dead link.
 * - `remotes`: the RemoteVM mapping (the reference's QubesDB `/remote/NAME`),
 *   one `LOCAL PEER REMOTE` line per RemoteVM relayed by this qube: a call to
 *   LOCAL goes to peer PEER as REMOTE, and a call from PEER's qube REMOTE
 *   arrives here as LOCAL.
 */
import { AirError } from './errors.js';

/** Where the files live inside the relay. */
export const RELAY_DIR = '/home/user/.qubes-air';
/** The entry point, as the relay sees the shipped scripts. */
export const RELAY_ENTRY = '/run/qrexec-ts/qubes-rpc/air/qubes-air-entry';
/** The relay's sshd port inside its own network namespace. */
export const DEFAULT_RELAY_PORT = 2222;
/** The transport service (the reference's name). */
export const TRANSPORT_RPC = 'qubesair.SSHProxy';
/** The RemoteVM feature naming the peer host a RemoteVM lives on. */
export const PEER_FEATURE = 'qubesair-peer';
/**
 * The feature marking a qube as a relay (set by `qvm-air relay`): as with a
 * qvm-service, its sshd is started each time the qube starts.
 */
export const RELAY_FEATURE = 'service.qubes-air-relay';

const PEER_RE = /^[a-z][a-z0-9-]{0,30}$/;
const QUBE_RE = /^[A-Za-z][A-Za-z0-9_.-]{0,30}$/;
const KEY_RE = /^ssh-ed25519 [A-Za-z0-9+/]{68}$/;
const ADDR_RE = /^(\d{1,3}(?:\.\d{1,3}){3}|[A-Za-z0-9][A-Za-z0-9.-]{0,252}):(\d{1,5})$/;

/** A host (peer) name: lower-case letters, digits and dashes. */
export function checkPeerName(s: string): string {
  if (!PEER_RE.test(s)) throw new AirError(`invalid host name '${s}' (lower-case letters, digits and '-', starting with a letter, at most 31)`);
  return s;
}

export function checkQubeName(s: string, what = 'qube name'): string {
  if (!QUBE_RE.test(s)) throw new AirError(`invalid ${what} '${s}'`);
  return s;
}

/** An `ssh-ed25519 BASE64` public key (comment dropped). */
export function checkSshKey(s: string, what: string): string {
  const k = s.trim().split(/\s+/).slice(0, 2).join(' ');
  if (!KEY_RE.test(k)) throw new AirError(`${what}: not an ssh-ed25519 public key`);
  return k;
}

/** `HOST:PORT` → its parts. */
export function parseAddress(s: string): { host: string; port: number } {
  const m = ADDR_RE.exec(s);
  const port = m ? Number(m[2]) : 0;
  if (!m || port < 1 || port > 65535) throw new AirError(`invalid address '${s}' (expected HOST:PORT)`);
  return { host: m[1] as string, port };
}

/** What dom0 knows of a peer host, to write its relay's lines. */
export interface PeerLink {
  readonly name: string;
  /** `HOST:PORT` the peer's relay sshd is reached at. */
  readonly address: string;
  /** The peer relay's sshd host key (pinned). */
  readonly relayHostKey: string;
  /** The key the peer relay's ssh client logs in with. */
  readonly relayClientKey: string;
}

/** One RemoteVM this relay carries. */
export interface RemoteEntry {
  readonly local: string;
  readonly peer: string;
  readonly remote: string;
}

export function sshdConfig(port = DEFAULT_RELAY_PORT): string {
  return `# qrexec-ts Qubes Air relay sshd (written by qvm-air; do not edit)
Port ${port}
ListenAddress 0.0.0.0
HostKey ${RELAY_DIR}/ssh_host_ed25519_key
AuthorizedKeysFile ${RELAY_DIR}/authorized_keys
PidFile ${RELAY_DIR}/sshd.pid
UsePAM no
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin no
AllowTcpForwarding no
AllowStreamLocalForwarding no
AllowAgentForwarding no
X11Forwarding no
PermitTunnel no
PermitTTY no
PermitUserRC no
PermitUserEnvironment no
StrictModes yes
ClientAliveInterval 2
ClientAliveCountMax 3
MaxSessions 256
MaxStartups 64:30:256
LogLevel INFO
Ciphers aes128-gcm@openssh.com,chacha20-poly1305@openssh.com,aes256-gcm@openssh.com
`;
}

export function authorizedKeys(peers: readonly PeerLink[]): string {
  const lines = peers.map((p) => {
    checkPeerName(p.name);
    const key = checkSshKey(p.relayClientKey, `peer ${p.name}: client key`);
    return `command="${RELAY_ENTRY} ${p.name}",no-pty,no-port-forwarding,no-agent-forwarding,no-X11-forwarding,no-user-rc,restrict ${key} qubes-air:${p.name}`;
  });
  return `# qrexec-ts Qubes Air: one line per peer host (written by qvm-air)\n${lines.map((l) => l + '\n').join('')}`;
}

export function knownHosts(peers: readonly PeerLink[]): string {
  return peers.map((p) => `qubes-air-${checkPeerName(p.name)} ${checkSshKey(p.relayHostKey, `peer ${p.name}: host key`)}\n`).join('');
}

export function sshConfig(peers: readonly PeerLink[]): string {
  const blocks = peers.map((p) => {
    const { host, port } = parseAddress(p.address);
    return `Host ${checkPeerName(p.name)}
  HostName ${host}
  Port ${port}
  HostKeyAlias qubes-air-${p.name}
  ControlPath /tmp/qubes-air-${p.name}.ctl
`;
  });
  return `# qrexec-ts Qubes Air: the peer hosts' relays (written by qvm-air)
${blocks.join('')}
Host *
  User user
  IdentityFile ${RELAY_DIR}/id_ed25519
  IdentitiesOnly yes
  UserKnownHostsFile ${RELAY_DIR}/known_hosts
  GlobalKnownHostsFile /dev/null
  StrictHostKeyChecking yes
  CheckHostIP no
  UpdateHostKeys no
  BatchMode yes
  ControlMaster auto
  ControlPersist yes
  ConnectTimeout 5
  ConnectionAttempts 1
  ServerAliveInterval 1
  ServerAliveCountMax 3
  ClearAllForwardings yes
  ForwardAgent no
  ForwardX11 no
  RequestTTY no
  Compression no
  LogLevel ERROR
  Ciphers aes128-gcm@openssh.com,chacha20-poly1305@openssh.com,aes256-gcm@openssh.com
`;
}

export function remotesFile(entries: readonly RemoteEntry[]): string {
  return entries
    .map((e) => `${checkQubeName(e.local)} ${checkPeerName(e.peer)} ${checkQubeName(e.remote, 'remote name')}\n`)
    .sort()
    .join('');
}

/**
 * A shell script (for the relay's qubes.VMShell) that writes `files` into
 * RELAY_DIR atomically, mode 0600 (0700 for the directory). The contents
 * are made here from checked names and keys; each goes in a quoted here
 * document whose end marker it cannot contain.
 */
export function writeFilesScript(files: Readonly<Record<string, string>>): string {
  let s = `set -e\numask 077\nmkdir -p ${RELAY_DIR}\ncd ${RELAY_DIR}\n`;
  for (const [name, text] of Object.entries(files)) {
    if (!/^[a-z_]+$/.test(name)) throw new AirError(`bad relay file name ${name}`);
    if (text.includes('QUBES_AIR_EOF')) throw new AirError(`relay file ${name} contains the end marker`);
    s += `cat > ${name}.new <<'QUBES_AIR_EOF'\n${text}${text.endsWith('\n') || text === '' ? '' : '\n'}QUBES_AIR_EOF\nmv -f ${name}.new ${name}\n`;
  }
  return s + 'exit 0\n';
}
