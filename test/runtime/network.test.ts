/**
 * Network isolation (issue #11 §1, §4): netvm none is loopback only; a qube
 * behind sys-net reaches the host only through sys-net's namespace (veth,
 * NAT); sys-net reaches the host. Only namespaces and veths made here, and
 * addresses of a 10.x pool on them. Root only (CI).
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import * as net from 'node:net';
import { spawnSync } from 'node:child_process';
import { SandboxWorld, SH_SERVICE, sandboxSkipReason } from './world.js';
import { INSIDE_PROJECT, connectUplink, createNetns, destroyNetwork, makeNetvm, networkAvailable, type NetworkOptions, type QubeNetwork } from '../../src/runtime/sandbox/index.js';

const skip = sandboxSkipReason();
if (!skip) {
  const n = networkAvailable();
  if (!n.ok) throw new Error(`network namespaces must work as root (CI): ${n.reason}`);
}
const opts = { skip: skip ?? false };
const netOpts: NetworkOptions = { prefix: `qt${process.pid % 100000}-`, poolOctet: 200 + (process.pid % 50) };
let w: SandboxWorld;
let sysnet: QubeNetwork;
let worknet: QubeNetwork;
let personalnet: QubeNetwork;
let listener: net.Server;
let port = 0;
const peers: string[] = [];

before(async () => {
  if (skip) return;
  w = await SandboxWorld.create([
    { name: 'sys-net', domid: 1, uuid: '11111111-1111-4111-8111-111111111111' },
    { name: 'work', domid: 2, uuid: '22222222-2222-4222-8222-222222222222' },
    { name: 'vault', domid: 3, uuid: '33333333-3333-4333-8333-333333333333' },
    { name: 'personal', domid: 4, uuid: '44444444-4444-4444-8444-444444444444' },
  ]);
  w.templateService('test.Sh', SH_SERVICE);
  sysnet = connectUplink(netOpts, createNetns(netOpts, 1), 1, 'host');
  makeNetvm(sysnet);
  worknet = connectUplink(netOpts, createNetns(netOpts, 2), 2, sysnet);
  personalnet = connectUplink(netOpts, createNetns(netOpts, 4), 4, sysnet);
  // a listener on the host end of sys-net's uplink only
  listener = net.createServer((s) => {
    peers.push(s.remoteAddress ?? '');
    s.end('host-service\n');
  });
  await new Promise<void>((r) => listener.listen(0, sysnet.gateway, () => r()));
  port = (listener.address() as net.AddressInfo).port;
  await w.start('sys-net', { network: sysnet });
  await w.start('work', { network: worknet });
  await w.start('vault');
  await w.start('personal', { network: personalnet });
  await w.hostReady();
});

after(async () => {
  if (skip) return;
  listener?.close();
  await w?.close();
  if (worknet) destroyNetwork(netOpts, worknet, 2);
  if (personalnet) destroyNetwork(netOpts, personalnet, 4);
  if (sysnet) destroyNetwork(netOpts, sysnet, 1);
  const left = spawnSync('ip', ['-o', 'link'], { encoding: 'utf8' }).stdout + spawnSync('ip', ['netns', 'list'], { encoding: 'utf8' }).stdout;
  assert.ok(!left.includes(netOpts.prefix), `left behind: ${left}`);
});

const probe = (host: string, p: number): string =>
  `${INSIDE_PROJECT}/node -e 'const s=require("net").connect(${p},"${host}");s.setTimeout(3000,()=>{console.log("TIMEOUT");s.destroy()});s.on("data",d=>console.log("REACHED",String(d).trim()));s.on("error",e=>console.log(e.code))'\n`;

void test('a qube behind sys-net reaches the host through it, masqueraded as sys-net', opts, async () => {
  const s = await w.sh('work', probe(sysnet.gateway as string, port));
  assert.equal(s.out, 'REACHED host-service\n', s.err);
  assert.equal(peers.at(-1), sysnet.address, 'the host sees sys-net, not work (NAT)');
  const r = await w.sh('work', 'ip -o -4 addr show dev eth0 | tr -s " " | cut -d" " -f4; ip route show default\n');
  assert.equal(r.out, `${worknet.address}/30\ndefault via ${worknet.gateway} dev eth0 \n`);
});

void test('sys-net (provides network) reaches the host directly', opts, async () => {
  const s = await w.sh('sys-net', probe(sysnet.gateway as string, port));
  assert.equal(s.out, 'REACHED host-service\n', s.err);
});

void test('netvm none: the same listener is unreachable (loopback only), and so is the host loopback from any qube', opts, async () => {
  const s = await w.sh('vault', `${probe(sysnet.gateway as string, port)}ip -o link | cut -d: -f2\n`);
  assert.equal(s.out, 'ENETUNREACH\n lo\n', s.err);
  const lo = net.createServer((c) => c.end('loopback\n'));
  await new Promise<void>((r) => lo.listen(0, '127.0.0.1', () => r()));
  try {
    const p = (lo.address() as net.AddressInfo).port;
    for (const q of ['vault', 'work', 'sys-net']) assert.equal((await w.sh(q, probe('127.0.0.1', p))).out, 'ECONNREFUSED\n', q);
  } finally {
    lo.close();
  }
});

void test("a qube cannot reach another qube behind the same netvm, nor change its own network", opts, async () => {
  // a listener in personal, on all its addresses; reachable from personal itself
  const listen = `${INSIDE_PROJECT}/node -e 'require("net").createServer(c=>c.end("personal\\n")).listen(8123)' </dev/null >/dev/null 2>&1 &\nsleep 0.5; echo started\n`;
  assert.equal((await w.sh('personal', listen)).out, 'started\n');
  assert.equal((await w.sh('personal', probe(personalnet.address as string, 8123))).out, 'REACHED personal\n');
  const s = await w.sh('work', `${probe(personalnet.address as string, 8123)}ip addr add 10.9.9.9/32 dev eth0 2>/dev/null; echo "addr $?"\n`, 'root');
  assert.match(s.out, /^TIMEOUT\naddr [1-9]/, s.err);
});
