/**
 * Every command in bin/ (enumerated, so that new commands are covered):
 * `--help` prints usage on stdout and exits 0; a bogus option is a usage
 * error (exit 2, a `<command>: ...` line naming it); and, where a command
 * takes them, a bad output path, a missing directory and an unreadable file
 * give one clear `<command>: <message>` line saying what is wrong, never a
 * stack trace.
 */
import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../..');
const BIN = path.join(ROOT, 'bin');
const EX = path.join(ROOT, 'examples');
const SI = path.join(EX, 'system-info.json');
const UUID = '6d7c8a6e-1f1e-4a86-9a3b-0d6f4e1c2b3a';

/** Fixture paths, filled in before(). */
const fx = { tmp: '', missing: '', badOut: '', unreadable: '', vchan: '', fakeDaemonDir: '' };

interface Case {
  /** What is tested (for the test name). */
  readonly what: string;
  readonly args: () => string[];
  readonly env?: () => Record<string, string>;
  readonly stdin?: string;
  readonly code: number;
  /** A line of stderr, starting with `<command>: `, must match this (exactly one such line). */
  readonly err: RegExp;
  /** stderr may hold other lines (the usage, a daemon's log) besides the error line. */
  readonly moreLines?: boolean;
  readonly timeoutMs?: number;
}

const usage = (what: string, args: () => string[], err: RegExp, env?: () => Record<string, string>): Case => ({
  what: `usage error: ${what}`,
  args,
  code: 2,
  err,
  moreLines: true,
  ...(env ? { env } : {}),
});

/** Per command: the cases beyond --help and a bogus option. */
const CASES: Record<string, Case[]> = {
  'qrexec-agent': [
    usage('bad timeout', () => ['--data-idle-timeout=abc'], /data-idle-timeout/),
    {
      what: 'missing vchan directory',
      args: () => [`--agent-socket=${fx.tmp}/agent.sock`],
      env: () => ({ VCHAN_SOCKET_DIR: fx.missing, VCHAN_DOMAIN: '1' }),
      code: 1,
      err: /missing does not exist/,
    },
    {
      what: 'agent socket in a missing directory',
      args: () => [`--agent-socket=${fx.badOut}`],
      env: () => ({ VCHAN_SOCKET_DIR: fx.vchan, VCHAN_DOMAIN: '1' }),
      code: 1,
      err: /missing does not exist/,
    },
  ],
  'qrexec-audit': [
    usage('negative limit', () => ['--limit', '-5'], /--limit/),
    { what: 'database in a missing directory', args: () => ['--db', fx.badOut], code: 1, err: /missing does not exist/ },
    { what: 'unreadable database', args: () => ['--db', fx.unreadable], code: 1, err: /unreadable:? (permission denied|is a directory)/ },
  ],
  'qrexec-client': [
    usage('no -d', () => ['root:echo hi'], /-d/),
    usage('bad -w', () => ['-w', 'abc', '-d', 'work', 'root:echo hi'], /timeout/),
    usage('bogus short option', () => ['-Z', '-d', 'work', 'root:echo hi'], /-- 'Z'/),
    {
      what: 'missing socket directory',
      args: () => [`--socket-dir=${fx.missing}`, '-d', 'work', 'root:echo hi'],
      code: 125,
      err: /missing does not exist/,
    },
    {
      what: 'missing vchan directory',
      args: () => [`--socket-dir=${fx.fakeDaemonDir}`, '-d', 'work', 'root:echo hi'],
      env: () => ({ VCHAN_SOCKET_DIR: fx.missing }),
      code: 125,
      err: /missing does not exist/,
    },
  ],
  'qrexec-client-vm': [
    usage('no service', () => ['vault'], /qrexec-client-vm: /),
    {
      what: 'agent socket missing',
      args: () => [`--agent-socket=${fx.badOut}`, 'vault', 'test.Echo'],
      code: 1,
      err: /missing does not exist/,
    },
  ],
  'qrexec-daemon': [
    usage('no uuid', () => ['1', 'work'], /uuid/i),
    usage('no domain name', () => ['-u', UUID, '1'], /qrexec-daemon: /),
    {
      what: 'missing vchan directory',
      args: () => [`--socket-dir=${fx.tmp}`, '-D', '-u', UUID, '1', 'work'],
      env: () => ({ VCHAN_SOCKET_DIR: fx.missing }),
      code: 1,
      err: /missing does not exist/,
    },
  ],
  'qrexec-host': [
    usage('no --qube', () => [], /--qube/),
    {
      what: 'missing policy directory',
      args: () => ['--qube', `1:work:${UUID}`, '--policy-path', fx.missing, '--qrexec-socket-dir', fx.tmp, '--socket-path', `${fx.tmp}/host-policy.sock`, '--qubesd-admin-socket', 'none', '--policy-api-dir', 'none', '--no-audit'],
      env: () => ({ VCHAN_SOCKET_DIR: fx.vchan }),
      code: 1,
      err: /missing: policy directory does not exist/,
    },
    {
      what: 'missing vchan directory',
      args: () => ['--qube', `1:work:${UUID}`, '--policy-path', `${EX}/policy.d`, '--legacy-dir', `${EX}/legacy`, '--qrexec-socket-dir', fx.tmp, '--socket-path', `${fx.tmp}/host-policy2.sock`, '--qubesd-admin-socket', 'none', '--policy-api-dir', 'none', '--no-audit'],
      env: () => ({ VCHAN_SOCKET_DIR: fx.missing }),
      code: 1,
      err: /missing does not exist/,
    },
  ],
  'qrexec-legacy-convert': [
    { what: 'bad output path', args: () => ['--legacy-dir', `${EX}/legacy`, '--output', fx.badOut], code: 1, err: /missing does not exist/ },
    { what: 'missing directory', args: () => ['--legacy-dir', fx.missing], code: 1, err: /missing does not exist/ },
  ],
  'qrexec-policy-agent': [
    usage('no front end', () => [], /--tty/),
    { what: 'socket in a missing directory', args: () => ['--tty', '-s', fx.badOut], code: 1, err: /missing does not exist/ },
  ],
  'qrexec-policy-daemon': [
    usage('bad --audit-retention or similar', () => ['--policy-path'], /--policy-path/),
    {
      what: 'missing policy directory',
      args: () => ['--policy-path', fx.missing, '--socket-path', `${fx.tmp}/pd1.sock`, '--no-audit'],
      code: 1,
      err: /missing: policy directory does not exist/,
    },
    {
      what: 'socket in a missing directory',
      args: () => ['--policy-path', `${EX}/policy.d`, '--legacy-dir', `${EX}/legacy`, '--socket-path', fx.badOut, '--no-audit'],
      code: 1,
      err: /missing does not exist/,
    },
  ],
  'qrexec-policy-eval': [
    usage('no --policy-dir', () => ['--system-info', SI], /--policy-dir/),
    { what: 'missing policy directory', args: () => ['--policy-dir', fx.missing, '--system-info', SI], code: 2, stdin: '', err: /missing: policy directory does not exist/ },
    { what: 'unreadable system info', args: () => ['--policy-dir', `${EX}/policy.d`, '--system-info', fx.unreadable], code: 2, stdin: '', err: /unreadable:? (permission denied|is a directory)/ },
  ],
  'qrexec-policy-exec': [
    usage('no service', () => ['work', 'vault'], /qrexec-policy-exec: /),
    { what: 'missing policy directory', args: () => ['--path', fx.missing, 'work', 'vault', 'qubes.Gpg'], code: 1, err: /missing: policy directory does not exist/ },
  ],
  'qrexec-policy-explain': [
    usage('no --system-info', () => ['work', 'vault', 'qubes.Gpg'], /--system-info/),
    { what: 'missing policy directory', args: () => ['--policy-dir', fx.missing, '--system-info', SI, 'work', 'vault', 'qubes.Gpg'], code: 2, err: /missing: policy directory does not exist/ },
    { what: 'unreadable system info', args: () => ['--policy-dir', `${EX}/policy.d`, '--system-info', fx.unreadable, 'work', 'vault', 'qubes.Gpg'], code: 2, err: /unreadable:? (permission denied|is a directory)/ },
  ],
  'qrexec-policy-graph': [
    usage('no --system-info', () => [], /--system-info/),
    { what: 'bad output path', args: () => ['--policy-dir', `${EX}/policy.d`, '--legacy-dir', `${EX}/legacy`, '--system-info', SI, '--output', fx.badOut], code: 1, err: /missing does not exist/ },
    { what: 'missing policy directory', args: () => ['--policy-dir', fx.missing, '--system-info', SI], code: 1, err: /missing: policy directory does not exist/ },
    { what: 'unreadable system info', args: () => ['--policy-dir', `${EX}/policy.d`, '--system-info', fx.unreadable], code: 1, err: /unreadable:? (permission denied|is a directory)/ },
  ],
  'qrexec-policy-test': [
    usage('no directory', () => ['--system-info', SI], /qrexec-policy-test: /),
    { what: 'missing policy directory', args: () => ['--system-info', SI, fx.missing], code: 1, err: /missing: policy directory does not exist/ },
    { what: 'unreadable system info', args: () => ['--system-info', fx.unreadable, `${EX}/policy.d`], code: 1, err: /unreadable:? (permission denied|is a directory)/ },
  ],
  'qubes-policy': [
    { what: 'missing Policy API socket', args: () => ['-l'], env: () => ({ QUBES_POLICY_API_SOCKET: fx.badOut }), code: 1, err: /missing does not exist/ },
  ],
  'qubes-policy-editor': [
    { what: 'missing Policy API socket', args: () => ['30-user'], env: () => ({ QUBES_POLICY_API_SOCKET: fx.badOut, EDITOR: 'true' }), code: 1, err: /missing does not exist/ },
  ],
  'qubes-policy-backup': [
    usage('no action', () => [], /create FILE/),
    { what: 'bad output path', args: () => ['--dir', `${EX}/policy.d`, 'create', fx.badOut], code: 1, err: /missing does not exist/ },
    { what: 'missing directory', args: () => ['--dir', fx.missing, 'create', '-'], code: 1, err: /missing does not exist/ },
    { what: 'unreadable backup', args: () => ['--dir', `${fx.tmp}/restore`, 'restore', fx.unreadable], code: 1, err: /unreadable:? (permission denied|is a directory)/ },
  ],
  'qubes-policy-lint': [usage('no file', () => [], /FILE/)],
  'qubes-host': [
    usage('bad runtime', () => ['--runtime', 'xen'], /--runtime/),
    { what: 'data dir under a file', args: () => ['--data-dir', '/dev/null/host', '--run-dir', `${fx.tmp}/hrun`, '--runtime', 'none', '--no-demo-system'], code: 1, err: /\/dev\/null is not a directory/ },
  ],
  'qvm-air': [
    usage('no command', () => [], /a command is required/),
    usage('unknown command', () => ['fly'], /unknown command 'fly'/),
    { what: 'missing qubesd socket', args: () => ['sync', 'relay'], env: () => ({ QUBESD_SOCKET: fx.badOut }), code: 1, err: /missing does not exist/ },
    { what: 'unreadable offer', args: () => ['import', 'relay', fx.unreadable], env: () => ({ QUBESD_SOCKET: fx.badOut }), code: 1, err: /cannot read the offer: .*unreadable/ },
  ],
  qubesd: [
    usage('no --data-dir', () => ['--run-dir', fx.tmp], /--data-dir/),
    { what: 'data dir under a file', args: () => ['--data-dir', '/dev/null/qubesd', '--run-dir', `${fx.tmp}/qrun`, '--runtime', 'none'], code: 1, err: /\/dev\/null is not a directory/ },
  ],
};

/** Every qvm-* and qubes-prefs talks to qubesd: a missing socket is said so (arguments: ['work'] unless listed). */
const QUBESD_CLIENTS: Record<string, string[]> = {
  'qvm-ls': [],
  'qvm-create': ['-l', 'red', 'new'],
  'qvm-clone': ['work', 'copy'],
  'qvm-run': ['work', 'true'],
  'qubes-prefs': [],
  'qvm-copy-to-vm': ['work', '/etc/hostname'],
  'qvm-move-to-vm': ['work', '/etc/hostname'],
};

/** qvm-* commands that run inside a qube and call through qrexec, never qubesd. */
const IN_QUBE = new Set(['qvm-copy', 'qvm-move', 'qvm-open-in-vm', 'qvm-open-in-dvm', 'qvm-connect-tcp', 'qvm-run-vm']);

const STACK = /^\s+at /m;

interface Result {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

function run(cmd: string, args: string[], env: Record<string, string>, stdin: string | undefined, timeoutMs: number): Promise<Result> {
  return new Promise((resolve, reject) => {
    const base: NodeJS.ProcessEnv = { ...process.env };
    for (const k of ['VCHAN_SOCKET_DIR', 'VCHAN_DOMAIN', 'QUBESD_SOCKET', 'QUBES_POLICY_API_SOCKET', 'QREXEC_POLICY_SOCKET']) delete base[k];
    const child = spawn(path.join(BIN, cmd), args, { cwd: fx.tmp, env: { ...base, ...env }, stdio: ['pipe', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    child.stdin.on('error', () => undefined);
    if (stdin !== undefined) child.stdin.end(stdin);
    else child.stdin.end();
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error(`${cmd} ${args.join(' ')}: still running after ${timeoutMs} ms\nstdout: ${stdout}\nstderr: ${stderr}`));
    }, timeoutMs);
    child.on('error', reject);
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      resolve({ code, signal, stdout, stderr });
    });
  });
}

function check(cmd: string, c: Case, r: Result): void {
  const show = `${cmd} ${c.args().join(' ')}\nexit ${r.code}\nstdout:\n${r.stdout}\nstderr:\n${r.stderr}`;
  assert.equal(r.code, c.code, `exit status\n${show}`);
  assert.doesNotMatch(r.stderr, STACK, `a stack trace\n${show}`);
  assert.doesNotMatch(r.stderr, /\[Errno|:None:/, `Python wording\n${show}`);
  const lines = r.stderr.split('\n').filter((l) => l !== '');
  const mine = lines.filter((l) => l.startsWith(`${cmd}: `) && c.err.test(l));
  assert.equal(mine.length, 1, `want exactly one "${cmd}: " line matching ${c.err}\n${show}`);
  if (!c.moreLines) assert.equal(lines.length, 1, `want one line on stderr\n${show}`);
}

/** A qrexec daemon's client socket that answers any call with a data port (what qrexec-client needs to reach its vchan). */
function fakeDaemon(sockPath: string): net.Server {
  const u32 = (...v: number[]): Buffer => {
    const b = Buffer.alloc(4 * v.length);
    v.forEach((x, i) => b.writeUInt32LE(x >>> 0, 4 * i));
    return b;
  };
  const server = net.createServer((s) => {
    s.on('error', () => undefined);
    s.write(Buffer.concat([u32(0x300, 4), u32(3)])); // MSG_HELLO, version 3
    let buf = Buffer.alloc(0);
    s.on('data', (d: Buffer) => {
      buf = Buffer.concat([buf, d]);
      while (buf.length >= 8) {
        const type = buf.readUInt32LE(0);
        const len = buf.readUInt32LE(4);
        if (buf.length < 8 + len) return;
        buf = buf.subarray(8 + len);
        if (type === 0x200 || type === 0x201) s.write(Buffer.concat([u32(type, 8), u32(1, 513)])); // connect to domain 1, port 513
      }
    });
  });
  server.listen(sockPath);
  return server;
}

let daemon: net.Server | undefined;

before(async () => {
  fx.tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'cli-errors-'));
  fx.missing = path.join(fx.tmp, 'missing');
  fx.badOut = path.join(fx.missing, 'x');
  fx.vchan = path.join(fx.tmp, 'vchan');
  fs.mkdirSync(fx.vchan);
  fs.mkdirSync(path.join(fx.tmp, 'restore'));
  fx.unreadable = path.join(fx.tmp, 'unreadable');
  if (process.getuid?.() === 0) {
    fs.mkdirSync(fx.unreadable); // root reads any file: a directory where a file is wanted
  } else {
    fs.writeFileSync(fx.unreadable, '{}', { mode: 0o000 });
  }
  fx.fakeDaemonDir = path.join(fx.tmp, 'daemon');
  fs.mkdirSync(fx.fakeDaemonDir);
  daemon = fakeDaemon(path.join(fx.fakeDaemonDir, 'qrexec.work'));
  await new Promise((r) => daemon?.once('listening', r));
});

after(() => {
  daemon?.close();
  fs.rmSync(fx.tmp, { recursive: true, force: true });
});

const commands = fs
  .readdirSync(BIN)
  .filter((n) => {
    const st = fs.statSync(path.join(BIN, n));
    return st.isFile() && (st.mode & 0o111) !== 0;
  })
  .sort();

test('the table names only commands that exist', () => {
  assert.ok(commands.length > 10, `bin/ has ${commands.length} commands`);
  for (const name of [...Object.keys(CASES), ...Object.keys(QUBESD_CLIENTS)]) assert.ok(commands.includes(name), `bin/${name} is gone`);
});

describe('every command in bin/', { concurrency: 3 }, () => {
  for (const cmd of commands) {
    test(`${cmd} --help: usage on stdout, exit 0`, async () => {
      const r = await run(cmd, ['--help'], {}, undefined, 20_000);
      assert.equal(r.code, 0, `${cmd} --help: exit ${r.code}\n${r.stdout}${r.stderr}`);
      assert.match(r.stdout, /usage/i, `${cmd} --help: no usage on stdout\n${r.stderr}`);
      assert.equal(r.stderr, '', `${cmd} --help wrote to stderr`);
    });
    test(`${cmd} --bogus-option: usage error, exit 2`, async () => {
      const r = await run(cmd, ['--bogus-option'], {}, undefined, 20_000);
      check(cmd, { what: 'bogus', args: () => ['--bogus-option'], code: 2, err: /bogus-option/, moreLines: true }, r);
      assert.equal(r.stdout, '', `${cmd} --bogus-option wrote to stdout`);
    });
    const qubesdArgs = QUBESD_CLIENTS[cmd] ?? (cmd.startsWith('qvm-') && !IN_QUBE.has(cmd) ? ['work'] : undefined);
    const cases: Case[] = [...(CASES[cmd] ?? [])];
    if (qubesdArgs !== undefined && !cases.some((c) => c.what.includes('qubesd'))) {
      cases.push({ what: 'missing qubesd socket', args: () => qubesdArgs, env: () => ({ QUBESD_SOCKET: fx.badOut }), code: 1, err: /missing does not exist/ });
    }
    for (const c of cases) {
      test(`${cmd}: ${c.what}`, async () => {
        const r = await run(cmd, c.args(), c.env?.() ?? {}, c.stdin, c.timeoutMs ?? 20_000);
        check(cmd, c, r);
      });
    }
  }
});
