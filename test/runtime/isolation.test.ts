/**
 * Sandboxed qubes (bwrap backend's sandbox layer) with the real host: calls
 * into them work, and from inside, services try to break out (issue #11 §4).
 * As root (CI) these run; elsewhere they say why not.
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as path from 'node:path';
import * as os from 'node:os';
import { randomBytes } from 'node:crypto';
import { SandboxWorld, SH_SERVICE, sandboxSkipReason } from './world.js';
import { INSIDE_PROJECT } from '../../src/runtime/sandbox/index.js';

const skip = sandboxSkipReason();
let w: SandboxWorld;
let secretDir: string;
let hostSock: net.Server;
let hostSockPath: string;
let abstractSock: net.Server;
let tcp: net.Server;
let tcpPort = 0;
const ABSTRACT = `\0qrexec-test-qubesd-${process.pid}`;
/** Made up at run time, so no file of the project holds it. */
const SECRET = randomBytes(12).toString('hex');

before(async () => {
  if (skip) return;
  w = await SandboxWorld.create([
    { name: 'work', domid: 1, uuid: '11111111-1111-4111-8111-111111111111' },
    { name: 'vault', domid: 2, uuid: '22222222-2222-4222-8222-222222222222' },
  ], `test.Echo * work vault allow
test.Echo * @anyvm @anyvm deny
* * @anyvm @anyvm deny
`);
  for (const q of ['work', 'vault']) {
    w.service(q, 'test.Sh', SH_SERVICE);
    w.service(q, 'test.Echo', `#!/bin/sh\necho "in ${q}: $(hostname) from $QREXEC_REMOTE_DOMAIN as $(id -un)"\ncat\n`);
  }
  fs.mkdirSync(path.join(w.privateOf('vault'), 'home', 'user'), { recursive: true });
  fs.writeFileSync(path.join(w.privateOf('vault'), 'home', 'user', 'secret.txt'), `${SECRET}\n`);
  // host things a qube must not reach
  secretDir = fs.mkdtempSync(path.join(os.tmpdir(), 'qrexec-host-secret-'));
  fs.writeFileSync(path.join(secretDir, 'home-secret.txt'), 'host-secret\n');
  hostSockPath = path.join(w.dir, 'qubesd.sock');
  hostSock = net.createServer((s) => s.end('qubesd\n')).listen(hostSockPath);
  abstractSock = net.createServer((s) => s.end('abstract\n')).listen(ABSTRACT);
  tcp = net.createServer((s) => s.end('tcp\n'));
  await new Promise<void>((r) => tcp.listen(0, '127.0.0.1', () => r()));
  tcpPort = (tcp.address() as net.AddressInfo).port;
  await w.start('work');
  await w.start('vault');
  await w.hostReady();
});

after(async () => {
  if (skip) return;
  hostSock?.close();
  abstractSock?.close();
  tcp?.close();
  await w?.close();
  fs.rmSync(secretDir, { recursive: true, force: true });
});

const opts = { skip: skip ?? false };
/** A node one-liner inside the sandbox. */
const nodeInside = (js: string): string => `${INSIDE_PROJECT}/node -e '${js}'`;

void test('dom0 -> sandboxed qube: the real agent runs the service as user in a qube named work', opts, async () => {
  const r = await w.call('work', 'DEFAULT:QUBESRPC test.Echo+ dom0', 'hello\n');
  assert.equal(r.code, 0, r.stderr);
  assert.equal(r.stdout.toString(), 'in work: work from dom0 as user\nhello\n');
  const s = await w.sh('work', 'cat /etc/hostname; id -u; id -g; echo $HOME; pwd\n');
  assert.equal(s.out, 'work\n1000\n1000\n/home/user\n/home/user\n');
});

void test('qube -> qube between two sandboxes: qrexec-client-vm in work reaches vault (vchan socket linked into vault only)', opts, async () => {
  // (in a subshell: qrexec-client-vm hands its stdout to the agent, which shuts it down at the call's end)
  const s = await w.sh('work', `X=$(echo ping | ${INSIDE_PROJECT}/bin/qrexec-client-vm vault test.Echo); echo "exit $? $X"\n`);
  assert.equal(s.out, 'exit 0 in vault: vault from work as user\nping\n', s.err);
  const d = await w.sh('vault', `X=$(${INSIDE_PROJECT}/bin/qrexec-client-vm work test.Echo </dev/null 2>&1); echo "exit $? $X"\n`);
  assert.match(d.out, /^exit 126 /);
  // vault's data vchan socket was never linked into work, nor work's into a third directory
  assert.deepEqual(fs.readdirSync(w.vchanRoot).sort(), ['1', '2']);
});

void test("a service in work cannot read vault's private files (by any path) nor find them", opts, async () => {
  const vaultPriv = w.privateOf('vault');
  const s = await w.sh('work', `cat ${vaultPriv}/home/user/secret.txt; ls ${w.data}; grep -rs ${SECRET} /rw /home /root /tmp /run /var /etc /opt /srv /mnt /media; echo done\n`, 'root');
  assert.ok(!s.out.includes(SECRET), s.out);
  assert.match(s.err, /No such file/);
  assert.equal(s.out.trim().split('\n').pop(), 'done');
  // its own private volume is there
  const own = await w.sh('work', 'ls -d /rw /home/user /usr/local/etc/qubes-rpc\n');
  assert.equal(own.out, '/home/user\n/rw\n/usr/local/etc/qubes-rpc\n');
});

void test("a service cannot read the host's home, /root, the test's files, the data dir or /run", opts, async () => {
  const home = os.homedir();
  const s = await w.sh('work', `for f in ${secretDir}/home-secret.txt ${home}/.bashrc /root/.bashrc ${w.dir}/system-info.json /run/netns /run/user /etc/shadow; do cat $f 2>/dev/null && echo "READ $f"; done; ls /home; ls /run; echo end\n`, 'root');
  assert.doesNotMatch(s.out, /READ|host-secret/);
  assert.equal(s.out, 'user\nqrexec-ts\nqubes\nqubes-rpc\nvchan\nend\n');
});

void test("a service cannot connect to a qubesd-like socket of the host, by path or abstract name", opts, async () => {
  const js = `const n=require("net");const t=(o,k)=>new Promise(r=>{const s=n.connect(o);s.on("data",d=>{console.log(k,"REACHED",String(d).trim());r()});s.on("error",e=>{console.log(k,e.code);r()})});(async()=>{await t({path:process.argv[1]},"path");await t({path:"\\0"+process.argv[2]},"abstract")})()`;
  const s = await w.sh('work', `${INSIDE_PROJECT}/node -e '${js}' ${hostSockPath} ${ABSTRACT.slice(1)}\n`, 'root');
  assert.equal(s.out, 'path ENOENT\nabstract ECONNREFUSED\n', s.err);
  // the same probe from the host reaches both: the probe can succeed
  assert.ok(fs.existsSync(hostSockPath));
});

void test("a service sees only its own qube's vchan sockets and cannot reach vault's", opts, async () => {
  // vault's pending vchan servers (for dom0, and dom0's for vault), listening on the host
  const paths = [path.join(w.vchanRoot, '2', 'vchan.2.0.9999.sock'), path.join(w.vchanRoot, '2', 'vchan.0.2.9998.sock')];
  const servers = await Promise.all(paths.map((p) => new Promise<net.Server>((r) => {
    const srv = net.createServer((c) => c.end('vault-vchan\n')).listen(p, () => r(srv));
  })));
  try {
    const js = 'const n=require("net");for(const p of process.argv.slice(1))n.connect(p).on("error",e=>console.log(e.code)).on("data",()=>console.log("REACHED"))';
    const inside = paths.flatMap((p) => [p, `/run/vchan/${path.basename(p)}`]).join(' ');
    const s = await w.sh('work', `ls /run/vchan | grep -v '^vchan\\.\\(1\\.0\\|0\\.1\\)\\.'; ${nodeInside(js)} ${inside}\n`, 'root');
    assert.equal(s.out, 'ENOENT\nENOENT\nENOENT\nENOENT\n', s.err);
    // the same sockets answer on the host: the probe could have succeeded
    for (const p of paths) {
      const got = await new Promise<string>((r) => net.connect(p).on('data', (d) => r(String(d))));
      assert.equal(got, 'vault-vchan\n');
    }
  } finally {
    for (const srv of servers) srv.close();
  }
});

void test("host processes are invisible in /proc and cannot be signalled or ptraced", opts, async () => {
  const s = await w.sh('work', `ls /proc | grep -c '^[0-9]'; cat /proc/${process.pid}/cmdline 2>&1 | head -c 60; echo; kill -0 ${process.pid} 2>&1; echo "kill $?"; ${nodeInside('try{process.kill(Number(process.argv[1]),"SIGTERM");console.log("SIGNALLED")}catch(e){console.log(e.code)}')} ${process.pid}; cat /proc/1/comm\n`, 'root');
  const lines = s.out.split('\n');
  assert.ok(Number(lines[0]) < 15, `few processes visible: ${lines[0]}`);
  assert.match(lines[1] ?? '', /No such file/);
  assert.match(s.out, /kill 1\n/);
  assert.match(s.out, /ESRCH/);
  assert.doesNotMatch(s.out, /SIGNALLED/);
  // ptrace of any process outside: there is none to name; of one inside, root lacks CAP_SYS_PTRACE for another uid
  const p = await w.sh('work', `python3 -c 'import ctypes,sys; l=ctypes.CDLL(None,use_errno=True); r=l.ptrace(16,${process.pid},0,0); print(r, ctypes.get_errno())'\n`, 'root');
  assert.equal(p.out, '-1 3\n', p.err); // ESRCH
});

void test("root in a qube has no mount, module, raw network or ptrace power; /proc/sys is read-only", opts, async () => {
  const s = await w.sh('work', `mount -t tmpfs x /mnt 2>&1 >/dev/null; echo "mount $?"; echo 1 > /proc/sys/kernel/sysrq 2>/dev/null; echo "sysctl $?"; ip link add d0 type dummy 2>/dev/null; echo "ip $?"; grep CapEff /proc/self/status\n`, 'root');
  assert.match(s.out, /mount [1-9]/);
  assert.match(s.out, /sysctl [1-9]/);
  assert.match(s.out, /ip [1-9]/);
  const eff = BigInt(`0x${/CapEff:\s*([0-9a-f]+)/.exec(s.out)?.[1] ?? 'f'}`);
  const CAP_SYS_ADMIN = 21n;
  const CAP_SYS_PTRACE = 19n;
  const CAP_NET_ADMIN = 12n;
  const CAP_SYS_MODULE = 16n;
  for (const c of [CAP_SYS_ADMIN, CAP_SYS_PTRACE, CAP_NET_ADMIN, CAP_SYS_MODULE]) assert.equal((eff >> c) & 1n, 0n, `capability ${c} kept`);
});

void test('netvm none: loopback only, a TCP listener on the host loopback is not reachable', opts, async () => {
  const js = 'const s=require("net").connect(Number(process.argv[1]),"127.0.0.1");s.on("data",d=>console.log("REACHED",String(d).trim()));s.on("error",e=>console.log(e.code))';
  const s = await w.sh('work', `${nodeInside(js)} ${tcpPort}; ip -o link | cut -d: -f2\n`);
  assert.equal(s.out, 'ECONNREFUSED\n lo\n', s.err);
});

void test("an AppVM's changes to / vanish at shutdown; its private volume stays", opts, async () => {
  const s = await w.sh('work', 'echo x > /etc/appvm-change && echo y > /usr/appvm-change && echo kept > /home/user/kept && echo ok\n', 'root');
  assert.equal(s.out, 'ok\n', s.err);
  await w.stop('work');
  assert.ok(!fs.existsSync('/etc/appvm-change'), 'the host /etc is untouched');
  assert.deepEqual(fs.readdirSync(path.join(w.data, 'qubes', 'tpl', 'layers')), ['0001'], 'the template is untouched');
  await w.start('work');
  const t = await w.sh('work', 'ls /etc/appvm-change /usr/appvm-change 2>&1 | wc -l; cat /home/user/kept\n');
  assert.equal(t.out, '2\nkept\n');
  assert.match((await w.sh('work', 'cat /etc/appvm-change 2>&1\n')).out, /No such file/);
});
