/**
 * The other commands a Qubes user types inside a qube, end to end with real
 * qubes (process runtime) and a real policy daemon: qvm-open-in-vm (a file
 * edited in the other qube comes back; --view-only; URLs), qvm-run-vm
 * (qubes.VMShell), qvm-connect-tcp (qubes.ConnectTCP, foreground and
 * background); refusals by policy.
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as path from 'node:path';
import { nameBuffer, sanitizeOpenName } from '../../src/qube/open.js';
import { parseTcpSpec } from '../../src/qube/connect-tcp.js';
import { shellLine } from '../../src/qube/run-vm.js';
import { ROOT, startSystem, type TestSystem } from './system.js';

let sys: TestSystem;
let echo: net.Server;
let echoPort = 0;

before(async () => {
  sys = await startSystem({
    policy:
      'qubes.OpenInVM   *  work  personal  allow\n' +
      'qubes.OpenURL    *  work  personal  allow\n' +
      'qubes.VMShell    *  work  personal  allow\n' +
      'qubes.ConnectTCP *  work  personal  allow\n' +
      '*                *  @anyvm  @anyvm  deny\n',
  });
  for (const args of [['-C', 'TemplateVM', '-l', 'black', 'fedora'], ['-t', 'fedora', '-l', 'blue', 'work'], ['-t', 'fedora', '-l', 'green', 'personal'], ['-t', 'fedora', '-l', 'black', 'vault']]) {
    const r = await sys.dom0('qvm-create', args);
    assert.equal(r.code, 0, r.err);
  }
  for (const q of ['work', 'personal', 'vault']) assert.equal((await sys.dom0('qvm-start', [q])).code, 0);
  // personal's opener: appends to files (an edit), records URLs
  const bin = path.join(sys.home('personal'), '.local', 'bin');
  fs.mkdirSync(bin, { recursive: true });
  fs.writeFileSync(
    path.join(bin, 'qubes-open'),
    '#!/bin/sh\ncase "$1" in\n*://*) printf "%s" "$1" > "$HOME/opened-url";;\n*) cp "$1" "$HOME/opened-copy"; echo "$(dirname "$1")" > "$HOME/opened-dir"; [ -w "$1" ] && sleep 1.1 && printf " edited" >> "$1";;\nesac\n',
    { mode: 0o755 },
  );
  echo = net.createServer((s) => s.pipe(s));
  await new Promise<void>((r) => echo.listen(0, '127.0.0.1', r));
  echoPort = (echo.address() as net.AddressInfo).port;
});
after(async () => {
  echo.close();
  await sys.close();
});

const inWork = (prog: string, args: string[], input = ''): ReturnType<TestSystem['inQube']> => sys.inQube('work', path.join(ROOT, 'bin', prog), args, { input });

test('qvm-open-in-vm: the file is opened in the other qube and its edit comes back; its temporary copy is gone', { timeout: 60_000 }, async () => {
  const f = path.join(sys.home('work'), 'letter.txt');
  fs.writeFileSync(f, 'Dear');
  const r = await inWork('qvm-open-in-vm', ['personal', 'letter.txt']);
  assert.equal(r.code, 0, r.err);
  assert.equal(fs.readFileSync(f, 'utf8'), 'Dear edited');
  assert.equal(fs.readFileSync(path.join(sys.home('personal'), 'opened-copy'), 'utf8'), 'Dear');
  const where = fs.readFileSync(path.join(sys.home('personal'), 'opened-dir'), 'utf8').trim();
  assert.match(path.basename(where), /^work-/);
  assert.ok(!fs.existsSync(where), 'the received copy is removed');
});

test('qvm-open-in-vm --view-only: not sent back; a URL goes to qubes.OpenURL; bad arguments', { timeout: 60_000 }, async () => {
  const f = path.join(sys.home('work'), 'ro.txt');
  fs.writeFileSync(f, 'keep');
  const r = await inWork('qvm-open-in-vm', ['--view-only', 'personal', 'ro.txt']);
  assert.equal(r.code, 0, r.err);
  assert.equal(fs.readFileSync(f, 'utf8'), 'keep');
  const u = await inWork('qvm-open-in-vm', ['personal', 'https://www.qubes-os.org/doc/']);
  assert.equal(u.code, 0, u.err);
  assert.equal(fs.readFileSync(path.join(sys.home('personal'), 'opened-url'), 'utf8'), 'https://www.qubes-os.org/doc/');
  const bad = await inWork('qvm-open-in-vm', ['personal', 'no-such-file']);
  assert.equal(bad.code, 2);
  assert.match(bad.out, /Error! "no-such-file" is not a valid file or URL\./);
  const denied = await inWork('qvm-open-in-vm', ['vault', 'ro.txt']);
  assert.equal(denied.code, 126);
  const usage = await inWork('qvm-open-in-dvm', []);
  assert.equal(usage.code, 2);
});

test('qubes.OpenURL refuses what is not http(s) or ftp', { timeout: 60_000 }, async () => {
  fs.rmSync(path.join(sys.home('personal'), 'opened-url'), { force: true });
  const r = await inWork('qvm-open-in-vm', ['personal', 'file:///etc/passwd']);
  assert.equal(r.code, 1);
  assert.ok(!fs.existsSync(path.join(sys.home('personal'), 'opened-url')));
});

test('qvm-run-vm: a command in another qube through qubes.VMShell, stdio connected, its status; refused elsewhere', { timeout: 60_000 }, async () => {
  const r = await inWork('qvm-run-vm', ['personal', 'read x; echo "$x from $QREXEC_REMOTE_DOMAIN"; echo err >&2; exit 4'], 'hi\n');
  assert.equal(r.out, 'hi from work\n');
  assert.equal(r.err, 'err\n');
  assert.equal(r.code, 4);
  // joined with spaces, as the reference: one shell command line
  const q = await inWork('qvm-run-vm', ['personal', 'printf', '%s-', 'a b', "'c d'"]);
  assert.deepEqual([q.code, q.out], [0, 'a-b-c d-']);
  const denied = await inWork('qvm-run-vm', ['vault', 'true']);
  assert.equal(denied.code, 126);
  const usage = await inWork('qvm-run-vm', ['personal']);
  assert.equal(usage.code, 2);
});

async function roundTrip(port: number, msg: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const s = net.connect(port, '127.0.0.1');
    let got = '';
    s.on('connect', () => s.write(msg));
    s.on('data', (d) => {
      got += d.toString();
      if (got.length >= msg.length) s.end();
    });
    // a refused call closes the connection with our bytes unread: a reset
    s.on('error', (e: NodeJS.ErrnoException) => (e.code === 'ECONNRESET' ? resolve(got) : reject(e)));
    s.on('close', () => resolve(got));
  });
}

const freePort = async (): Promise<number> => {
  const s = net.createServer();
  await new Promise<void>((r) => s.listen(0, '127.0.0.1', r));
  const p = (s.address() as net.AddressInfo).port;
  await new Promise((r) => s.close(r));
  return p;
};

test('qvm-connect-tcp: a local port forwarded to another qube\'s port (foreground and background); refused targets close', { timeout: 60_000 }, async () => {
  const lp = await freePort();
  const xid = (await sys.dom0('qvm-prefs', ['work', 'xid'])).out.trim();
  const env: NodeJS.ProcessEnv = { ...process.env, HOME: sys.home('work'), QUBES_QREXEC_AGENT_SOCKET: path.join(sys.dataDir, 'qubes', 'work', 'agent.sock'), VCHAN_SOCKET_DIR: path.join(sys.runDir, 'vchan'), VCHAN_DOMAIN: xid };
  delete env['QUBESD_SOCKET'];
  const fg: ChildProcess = spawn(process.execPath, [path.join(ROOT, 'bin/qvm-connect-tcp'), '--foreground', `${lp}:personal:${echoPort}`], { env, stdio: ['ignore', 'pipe', 'inherit'] });
  try {
    await new Promise<void>((r) => fg.stdout?.once('data', () => r()));
    for (let i = 0; i < 100; i++) {
      if (await new Promise<boolean>((r) => net.connect(lp, '127.0.0.1').on('connect', function (this: net.Socket) { this.destroy(); r(true); }).on('error', () => r(false)))) break;
      await new Promise((r) => setTimeout(r, 50));
    }
    assert.equal(await roundTrip(lp, 'ping through qrexec'), 'ping through qrexec');
    assert.equal(await roundTrip(lp, 'twice'), 'twice');
  } finally {
    fg.kill();
  }
  // background, as the reference: returns once listening
  const lp2 = await freePort();
  const bg = await sys.inQube('work', path.join(ROOT, 'bin/qvm-connect-tcp'), [`${lp2}:personal:${echoPort}`]);
  assert.equal(bg.code, 0, bg.err);
  assert.equal(bg.out, `Binding TCP 'personal:${echoPort}' to 'localhost:${lp2}'...\n`);
  try {
    assert.equal(await roundTrip(lp2, 'background'), 'background');
    const lp3 = await freePort();
    const denied = await sys.inQube('work', path.join(ROOT, 'bin/qvm-connect-tcp'), [`${lp3}:vault:${echoPort}`]);
    assert.equal(denied.code, 0);
    assert.equal(await roundTrip(lp3, 'nothing'), '');
    killServer(lp3);
  } finally {
    killServer(lp2);
  }
  const bad = await inWork('qvm-connect-tcp', ['1:personal:99999']);
  assert.deepEqual([bad.code, bad.out], [1, 'Invalid port provided\n']);
});

/** The background server this test started for that port (found by its command line). */
function killServer(port: number): void {
  for (const pid of fs.readdirSync('/proc').filter((p) => /^\d+$/.test(p))) {
    let cmd = '';
    try {
      cmd = fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8');
    } catch {
      continue;
    }
    if (cmd.includes('qvm-connect-tcp') && cmd.includes(`--serve\0${port}:`)) process.kill(Number(pid), 'SIGTERM');
  }
}

test('helpers: the OpenInVM name buffer, its sanitizing, the qrun-in-vm line, the TCP spec', () => {
  const b = nameBuffer('/home/user/My Report (final).pdf', false);
  assert.equal(b.length, 256);
  assert.deepEqual(sanitizeOpenName(b), { name: 'My_Report__final_.pdf', viewOnly: false });
  assert.deepEqual(sanitizeOpenName(nameBuffer('x.txt', true)), { name: 'x.txt', viewOnly: true });
  const long = nameBuffer('a'.repeat(300) + '.txt', true);
  assert.equal(long[255], 0);
  assert.ok(sanitizeOpenName(long)?.name.endsWith('.txt'));
  assert.equal(sanitizeOpenName(Buffer.from('a/b\0')), null);
  assert.equal(shellLine(['echo', "it's"]), "exec bash -c 'echo it'\\''s' || exit 127\n");
  assert.deepEqual(parseTcpSpec('8080::80'), { localPort: 8080, target: '@default', port: 80 });
  assert.deepEqual(parseTcpSpec(':sys-net:22'), { localPort: 22, target: 'sys-net', port: 22 });
  assert.equal(parseTcpSpec('1:x:'), 'Please provide PORT');
  assert.equal(parseTcpSpec('0:x:22'), 'Invalid port provided');
});

test('qrexec-client-vm in a shell script whose stdout is a socket: the script still writes after the call (no SIGPIPE)', { timeout: 60_000 }, async () => {
  const client = `${ROOT}/bin/qrexec-client-vm --agent-socket=${path.join(sys.dataDir, 'qubes', 'work', 'agent.sock')}`;
  // runProgram's stdio are socketpairs (libuv), shared by the shell and the launcher
  const r = await sys.inQube('work', '/bin/sh', ['-c', `echo before; echo 'echo inside; echo inside-err >&2' | ${client} personal qubes.VMShell; echo "after $?"; echo err-after >&2`]);
  assert.deepEqual([r.code, r.out, r.err], [0, 'before\ninside\nafter 0\n', 'inside-err\nerr-after\n']);
});
