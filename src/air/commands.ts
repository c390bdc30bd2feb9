/** qvm-air: the Qubes Air set-up commands (docs/AIR.md, docs/CLI.md). */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { parseArgs, opt, UsageError, type OptionSpec } from '../common/args.js';
import { fileProblem } from '../common/errors.js';
import { DEFAULT_RELAY_PORT, PEER_FEATURE, parseAddress } from './config.js';
import { AirError } from './errors.js';
import {
  addRemote,
  airHost,
  hostName,
  importOffer,
  initHost,
  localAirHost,
  makeOffer,
  parseOffer,
  peers,
  removePeer,
  requireName,
  setupRelay,
  startRelay,
  stopRelay,
  syncRelay,
  type AirHost,
} from './setup.js';
import { finishRotation, keyFingerprint, nextPublicKeyOf, prepareRotation, publicKeyOf } from './sign.js';

export const USAGE = `usage: qvm-air init NAME
       qvm-air relay RELAY [--port PORT]
       qvm-air export RELAY ADDRESS
       qvm-air import RELAY FILE
       qvm-air add NAME PEER [--remote-name NAME] [--label LABEL]
       qvm-air sync RELAY
       qvm-air start RELAY | stop RELAY
       qvm-air pair --name NAME --address ADDRESS --peer-host-dir RUN --peer-name NAME
                    --peer-address ADDRESS [--relay RELAY] [--peer-relay RELAY]
       qvm-air remove PEER [--force]
       qvm-air rotate [--finish]
       qvm-air list
`;

export const HELP = `${USAGE}
Qubes Air: RemoteVMs, qubes of other hosts, reached through relay qubes over
OpenSSH. Each host decides every call under its own policy, and the target
host's dom0 verifies the source host's signature on each call. Runs in
dom0, against the host that QREXEC_HOST_DIR (or QUBESD_SOCKET) names, else
the default one. See docs/AIR.md.

commands:
  init NAME          name this host (as its peers know it) and make its signing key
  relay RELAY        make the qube RELAY a relay: its SSH host and client keys
                     (made inside it) and its sshd config (--port, default ${DEFAULT_RELAY_PORT})
  export RELAY ADDRESS
                     print this host's offer (JSON) for a peer: ADDRESS is HOST:PORT
                     at which the peer's relay reaches RELAY's sshd
  import RELAY FILE  pin a peer's offer (FILE, or - for stdin) for RELAY, write
                     RELAY's authorized_keys, known_hosts and ssh_config
  add NAME PEER      a RemoteVM NAME for the qube --remote-name (default NAME)
                     of host PEER, carried by PEER's relay (qubesair.SSHProxy)
  sync RELAY         write RELAY's files again (after changing a RemoteVM)
  start RELAY        (re)start RELAY's sshd and drop its open connections
  stop RELAY         stop RELAY's sshd
  pair ...           both hosts at once, when this dom0 reaches both (the other by
                     --peer-host-dir): name them if needed, make both relays,
                     exchange the offers, start both sshds
  remove PEER        forget the peer host PEER: its signing key, its relay keys
                     (it can no longer log in to the relay), and with --force
                     its RemoteVMs; the relay's open connections are dropped
  rotate [--finish]  a signing key rotation without a gap: make the next key
                     (offers carry it; a peer that imports one accepts either
                     key); after every peer imported one, --finish makes it
                     the key that signs, and the old key is deleted
  list               this host's name and key, its peers and its RemoteVMs

options:
  -h, --help         show this help message and exit
`;

const SPECS: readonly OptionSpec[] = [
  { name: 'port', value: true },
  { name: 'remote-name', value: true },
  { name: 'label', value: true },
  { name: 'name', value: true },
  { name: 'address', value: true },
  { name: 'peer-host-dir', value: true },
  { name: 'peer-name', value: true },
  { name: 'peer-address', value: true },
  { name: 'relay', value: true },
  { name: 'peer-relay', value: true },
  { name: 'force' },
  { name: 'finish' },
];

/** Which options each command takes, and how many positional arguments. */
const COMMANDS: Record<string, { args: number; opts: readonly string[] }> = {
  init: { args: 1, opts: [] },
  relay: { args: 1, opts: ['port'] },
  export: { args: 2, opts: [] },
  import: { args: 2, opts: [] },
  add: { args: 2, opts: ['remote-name', 'label'] },
  sync: { args: 1, opts: [] },
  start: { args: 1, opts: [] },
  stop: { args: 1, opts: [] },
  pair: { args: 0, opts: ['name', 'address', 'peer-host-dir', 'peer-name', 'peer-address', 'relay', 'peer-relay'] },
  remove: { args: 1, opts: ['force'] },
  rotate: { args: 0, opts: ['finish'] },
  list: { args: 0, opts: [] },
};

export interface AirIO {
  out(s: string): void;
  readStdin(): string;
}

function need(v: string | undefined, what: string): string {
  if (v === undefined || v === '') throw new UsageError(`${what} is required`);
  return v;
}

function portOf(v: string | undefined): number {
  if (v === undefined) return DEFAULT_RELAY_PORT;
  const n = Number(v);
  if (!/^\d+$/.test(v) || n < 1 || n > 65535) throw new UsageError(`--port: invalid port '${v}'`);
  return n;
}

/** qvm-air's main: resolves with the exit status; throws UsageError, AirError and the Admin API's errors. */
export async function qvmAirMain(argv: readonly string[], io: AirIO, h: AirHost = localAirHost()): Promise<number> {
  const a = parseArgs(argv, SPECS);
  if (a.help) {
    io.out(HELP);
    return 0;
  }
  const [cmd, ...pos] = a.positional;
  if (cmd === undefined) throw new UsageError('a command is required');
  const spec = COMMANDS[cmd];
  if (!spec) throw new UsageError(`unknown command '${cmd}'`);
  for (const k of [...a.options.keys(), ...a.flags]) if (!spec.opts.includes(k)) throw new UsageError(`${cmd} takes no option --${k}`);
  if (pos.length !== spec.args) throw new UsageError(`${cmd} takes ${spec.args} argument${spec.args === 1 ? '' : 's'}, not ${pos.length}`);
  const p0 = pos[0] as string;
  const p1 = pos[1] as string;
  switch (cmd) {
    case 'init':
      initHost(h, p0);
      io.out(`this host is ${p0}; its signing key: ${keyFingerprint(publicKeyOf(path.join(h.dataDir, 'air')))}\n`);
      return 0;
    case 'relay': {
      const k = await setupRelay(h, p0, portOf(opt(a, 'port')));
      io.out(`${p0} is a relay: host key ${k.hostKey.slice(0, 40)}…, client key ${k.clientKey.slice(0, 40)}…\n`);
      return 0;
    }
    case 'export':
      parseAddress(p1);
      io.out(JSON.stringify(await makeOffer(h, p0, p1), null, 2) + '\n');
      return 0;
    case 'import': {
      let text: string;
      try {
        text = p1 === '-' ? io.readStdin() : fs.readFileSync(p1, 'utf8');
      } catch (e) {
        throw new AirError(`cannot read the offer: ${fileProblem(p1, e)}`);
      }
      const offer = parseOffer(text);
      await importOffer(h, p0, offer);
      io.out(`peer ${offer.host} at ${offer.address} pinned for ${p0}: signing key ${keyFingerprint(offer.signingKey)}\n`);
      return 0;
    }
    case 'add':
      await addRemote(h, p0, p1, opt(a, 'remote-name') ?? p0, opt(a, 'label') ?? 'red');
      return 0;
    case 'sync':
      await syncRelay(h, p0);
      return 0;
    case 'start':
      await startRelay(h, p0);
      return 0;
    case 'stop':
      await stopRelay(h, p0);
      return 0;
    case 'remove': {
      const gone = await removePeer(h, p0, a.flags.has('force'));
      io.out(`peer ${p0} removed${gone.length > 0 ? `, with its RemoteVMs ${gone.join(', ')}` : ''}\n`);
      return 0;
    }
    case 'rotate': {
      const d = path.join(h.dataDir, 'air');
      if (a.flags.has('finish')) {
        io.out(`this host now signs with ${keyFingerprint(finishRotation(d))}; export a new offer for each peer (qvm-air export), so that they drop the old key\n`);
      } else {
        requireName(h);
        io.out(`next signing key: ${keyFingerprint(prepareRotation(d))}; export an offer for each peer (qvm-air export) for them to import, then run qvm-air rotate --finish\n`);
      }
      return 0;
    }
    case 'pair': {
      const other = airHost(need(opt(a, 'peer-host-dir'), '--peer-host-dir'));
      await pair(
        { h, name: need(opt(a, 'name'), '--name'), address: need(opt(a, 'address'), '--address'), relay: opt(a, 'relay') ?? 'relay' },
        { h: other, name: need(opt(a, 'peer-name'), '--peer-name'), address: need(opt(a, 'peer-address'), '--peer-address'), relay: opt(a, 'peer-relay') ?? 'relay' },
      );
      io.out(`paired ${opt(a, 'name')} (${opt(a, 'address')}) and ${opt(a, 'peer-name')} (${opt(a, 'peer-address')})\n`);
      return 0;
    }
    default:
      return list(h, io);
  }
}

interface PairSide {
  readonly h: AirHost;
  readonly name: string;
  readonly address: string;
  readonly relay: string;
}

/** Two hosts this dom0 reaches: names, relays, offers both ways, sshds started. */
export async function pair(x: PairSide, y: PairSide): Promise<void> {
  parseAddress(x.address);
  parseAddress(y.address);
  for (const s of [x, y]) {
    const n = hostName(s.h);
    if (n === undefined) initHost(s.h, s.name);
    else if (n !== s.name) throw new AirError(`that host is named '${n}', not '${s.name}'`);
  }
  await Promise.all([setupRelay(x.h, x.relay), setupRelay(y.h, y.relay)]);
  const [ox, oy] = await Promise.all([makeOffer(x.h, x.relay, x.address), makeOffer(y.h, y.relay, y.address)]);
  await Promise.all([importOffer(x.h, x.relay, oy), importOffer(y.h, y.relay, ox)]);
  await Promise.all([startRelay(x.h, x.relay), startRelay(y.h, y.relay)]);
}

async function list(h: AirHost, io: AirIO): Promise<number> {
  const me = hostName(h);
  io.out(me === undefined ? 'this host has no Qubes Air name (qvm-air init NAME)\n' : `host ${me} ${keyFingerprint(publicKeyOf(path.join(h.dataDir, 'air')))}\n`);
  const next = me === undefined ? undefined : nextPublicKeyOf(path.join(h.dataDir, 'air'));
  if (next !== undefined) io.out(`next key ${keyFingerprint(next)} (a rotation is under way: qvm-air rotate --finish)\n`);
  for (const p of peers(h)) io.out(`peer ${p.name} ${p.address} via ${p.relay} ${keyFingerprint(p.signingKey)}${p.nextSigningKey ? ` (next ${keyFingerprint(p.nextSigningKey)})` : ''}\n`);
  h.app.invalidate();
  for (const q of await h.app.list()) {
    if (q.klass !== 'RemoteVM') continue;
    io.out(`remote ${q.name} = ${(await q.value('remote_name')) || q.name} on ${(await q.feature(PEER_FEATURE)) ?? '?'} via ${(await q.value('relayvm')) ?? '?'}\n`);
  }
  return 0;
}
