/**
 * qubes.Filecopy's qfile format and the receiver's defences (src/qube/):
 * streams crafted byte by byte here (our own encoder of the reference's
 * layout, written from libqubes-rpc-filecopy.h) are fed to the receiver
 * in-process; each defence is one test: `..` and absolute names, escaping
 * symlinks, writing through a symlink, unsafe characters, size and count
 * limits, existing files, partial files never visible (also when the
 * receiver is killed), long names, CRC. Then round trips through our
 * sender.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { PassThrough } from 'node:stream';
import { crc32, decodeHeader, encodeHeader, Errno, HEADER_SIZE, LEGAL_EOF, S_IFDIR, S_IFLNK, S_IFREG, validateFileName, validateSymlink, codePointSafeForDisplay } from '../../src/qube/qfile.js';
import { CopyFlags, DEFAULT_COPY_FLAGS, unpack } from '../../src/qube/unpack.js';
import { checkTree, FilecopyError, pack } from '../../src/qube/pack.js';
import { ROOT } from './system.js';

interface Entry {
  name: string | Buffer;
  mode: number;
  data?: Buffer | string;
  mtime?: number;
  /** Declared length when it differs from the data (truncated streams). */
  filelen?: number;
}

function entry(e: Entry): Buffer {
  const name = Buffer.concat([Buffer.isBuffer(e.name) ? e.name : Buffer.from(e.name), Buffer.from([0])]);
  const data = e.data === undefined ? Buffer.alloc(0) : Buffer.from(e.data);
  const h = encodeHeader({ namelen: name.length, mode: e.mode, filelen: BigInt(e.filelen ?? data.length), atime: 1_600_000_000, atimeNsec: 0, mtime: e.mtime ?? 1_600_000_000, mtimeNsec: 0 });
  return Buffer.concat([h, name, data]);
}
const END = Buffer.alloc(HEADER_SIZE);
const file = (name: string | Buffer, data: string | Buffer, mode = 0o644): Buffer => entry({ name, mode: S_IFREG | mode, data });
const dir = (name: string, mode = 0o755): Buffer => entry({ name, mode: S_IFDIR | mode });
const link = (name: string, target: string): Buffer => entry({ name, mode: S_IFLNK | 0o777, data: target });

interface Received {
  status: number;
  crc: bigint;
  lastName: string | null;
  dir: string;
  base: string;
}

function scratch(): { base: string; dir: string } {
  const base = fs.mkdtempSync(path.join(os.tmpdir(), 'qfile-'));
  const d = path.join(base, 'QubesIncoming', 'work');
  fs.mkdirSync(d, { recursive: true });
  return { base, dir: d };
}

async function receive(stream: Buffer, o: { flags?: number; maxBytes?: bigint; maxFiles?: number; at?: { base: string; dir: string } } = {}): Promise<Received> {
  const { base, dir: d } = o.at ?? scratch();
  const input = new PassThrough();
  const output = new PassThrough();
  const chunks: Buffer[] = [];
  output.on('data', (c: Buffer) => chunks.push(c));
  input.end(stream);
  const status = await unpack(input, output, {
    dir: d,
    stagingDir: path.join(base, 'QubesIncoming', `.qfile-work-${process.pid}`),
    flags: o.flags ?? DEFAULT_COPY_FLAGS,
    maxBytes: o.maxBytes ?? 0n,
    maxFiles: o.maxFiles ?? 0,
  });
  const r = Buffer.concat(chunks);
  const code = r.readUInt32LE(0);
  assert.equal(code, status);
  const lastName = r.length >= 20 ? r.subarray(20, 20 + r.readUInt32LE(16)).toString() : null;
  return { status, crc: r.readBigUInt64LE(8), lastName, dir: d, base };
}

/** Everything under `base`, as relative paths (staging directories included, if any were left). */
function tree(base: string): string[] {
  const out: string[] = [];
  const walk = (p: string, rel: string): void => {
    for (const n of fs.readdirSync(p).sort()) {
      const full = path.join(p, n);
      const r = rel ? `${rel}/${n}` : n;
      out.push(r);
      if (fs.lstatSync(full).isDirectory()) walk(full, r);
    }
  };
  walk(base, '');
  return out;
}

test('a transfer: files, directories, symlinks, modes and times; status 0 and the CRC of every byte read', async () => {
  const stream = Buffer.concat([dir('d', 0o750), file('d/a.txt', 'hello', 0o640), link('d/l', 'a.txt'), entry({ name: 'd', mode: S_IFDIR | 0o750, mtime: 1_500_000_000 }), file('top', ''), END]);
  const r = await receive(stream);
  assert.equal(r.status, 0);
  assert.equal(r.crc, BigInt(crc32(0, stream)));
  assert.equal(r.lastName, 'top');
  assert.equal(fs.readFileSync(path.join(r.dir, 'd/a.txt'), 'utf8'), 'hello');
  assert.equal(fs.statSync(path.join(r.dir, 'd/a.txt')).mode & 0o7777, 0o640);
  assert.equal(fs.readlinkSync(path.join(r.dir, 'd/l')), 'a.txt');
  assert.equal(fs.statSync(path.join(r.dir, 'd')).mode & 0o7777, 0o750);
  assert.equal(fs.statSync(path.join(r.dir, 'd')).mtimeMs, 1_500_000_000_000);
  assert.deepEqual(tree(r.base), ['QubesIncoming', 'QubesIncoming/work', 'QubesIncoming/work/d', 'QubesIncoming/work/d/a.txt', 'QubesIncoming/work/d/l', 'QubesIncoming/work/top']);
});

test('defence: a `..` component or an absolute name is refused (EILSEQ); nothing is written outside', async () => {
  for (const bad of ['../escape', 'a/../../escape', '/tmp/abs', './x', 'a//b', 'a/', '.', '..']) {
    const r = await receive(Buffer.concat([dir('a'), file(bad, 'x'), END]));
    assert.equal(r.status, Errno.EILSEQ, bad);
    assert.deepEqual(tree(r.base), ['QubesIncoming', 'QubesIncoming/work', 'QubesIncoming/work/a'], bad);
  }
});

test('defence: symlinks that would leave their top-level directory are refused (ENOLINK), others kept', async () => {
  for (const [name, target] of [
    ['l', 'anything'],
    ['a/l', '../outside'],
    ['a/l', '/etc/passwd'],
    ['a/b/l', '../../outside'],
  ] as const) {
    const r = await receive(Buffer.concat([dir('a'), dir('a/b'), link(name, target), END]));
    assert.equal(r.status, Errno.ENOLINK, `${name} -> ${target}`);
    assert.equal(r.lastName, target);
    assert.ok(!fs.existsSync(path.join(r.dir, name)), name);
  }
  const ok = await receive(Buffer.concat([dir('a'), dir('a/b'), link('a/b/l', '../c'), link('a/m', 'b/l'), END]));
  assert.equal(ok.status, 0);
  assert.equal(fs.readlinkSync(path.join(ok.dir, 'a/b/l')), '../c');
  // --allow-unsafe-symlinks accepts them
  const unsafe = await receive(Buffer.concat([dir('a'), link('a/l', '/etc/passwd'), END]), { flags: DEFAULT_COPY_FLAGS | CopyFlags.ALLOW_UNSAFE_SYMLINKS });
  assert.equal(unsafe.status, 0);
});

test('defence: nothing is written through a symlink, sent or already there (ELOOP / EEXIST)', async () => {
  const at = scratch();
  const outside = path.join(at.base, 'outside');
  fs.mkdirSync(outside);
  fs.symlinkSync(outside, path.join(at.dir, 'evil'));
  const r = await receive(Buffer.concat([file('evil/x', 'pwned'), END]), { at });
  assert.equal(r.status, Errno.ELOOP);
  assert.deepEqual(fs.readdirSync(outside), []);
  // a symlink the sender made inside its tree, then a file through it
  const r2 = await receive(Buffer.concat([dir('a'), dir('a/b'), link('a/l', 'b'), file('a/l/x', 'through'), END]));
  assert.equal(r2.status, Errno.ELOOP);
  assert.deepEqual(fs.readdirSync(path.join(r2.dir, 'a/b')), []);
  // a file over a dangling symlink pointing outside: not followed, not replaced
  const at3 = scratch();
  fs.symlinkSync(path.join(at3.base, 'created-outside'), path.join(at3.dir, 'dangling'));
  const r3 = await receive(Buffer.concat([file('dangling', 'x'), END]), { at: at3 });
  assert.equal(r3.status, Errno.EEXIST);
  assert.ok(!fs.existsSync(path.join(at3.base, 'created-outside')));
  // a directory name that is a symlink there: its mode is not set through it
  const at4 = scratch();
  fs.symlinkSync(outside, path.join(at4.dir, 'd'));
  const r4 = await receive(Buffer.concat([dir('d', 0o777), END]), { at: at4 });
  assert.equal(r4.status, Errno.ELOOP);
  assert.notEqual(fs.statSync(outside).mode & 0o777, 0o777);
});

test('defence: names with control, bidi-override or invalid UTF-8 bytes are refused unless allow-all-names', async () => {
  for (const bad of [Buffer.from('a\x01b'), Buffer.from('evil\u202etxt.exe'), Buffer.from([0x61, 0xff, 0x62]), Buffer.from([0xc0, 0xaf]), Buffer.from('x\u0301'), Buffer.from('\u05d0')]) {
    const r = await receive(Buffer.concat([file(bad, 'x'), END]));
    assert.equal(r.status, Errno.EILSEQ, bad.toString('hex'));
    assert.deepEqual(fs.readdirSync(r.dir), []);
  }
  const ok = await receive(Buffer.concat([file('Grüße, 日本語 – ok.txt', 'x'), END]));
  assert.equal(ok.status, 0);
  const all = await receive(Buffer.concat([file(Buffer.from('a\x01b'), 'x'), END]), { flags: DEFAULT_COPY_FLAGS | CopyFlags.ALLOW_UNSAFE_CHARACTERS });
  assert.equal(all.status, 0);
  assert.ok(fs.existsSync(path.join(all.dir, 'a\x01b')));
});

test('defence: the size and count limits (EDQUOT), checked before the data is written', async () => {
  const big = await receive(Buffer.concat([file('a', '12345'), file('b', '678901'), END]), { maxBytes: 10n });
  assert.equal(big.status, Errno.EDQUOT);
  assert.deepEqual(fs.readdirSync(big.dir), ['a']);
  const one = await receive(Buffer.concat([file('huge', 'x'.repeat(11)), END]), { maxBytes: 10n });
  assert.equal(one.status, Errno.EDQUOT);
  assert.deepEqual(fs.readdirSync(one.dir), []);
  const many = await receive(Buffer.concat([file('1', ''), file('2', ''), file('3', ''), END]), { maxFiles: 2 });
  assert.equal(many.status, Errno.EDQUOT);
  assert.deepEqual(fs.readdirSync(many.dir).sort(), ['1', '2']);
  // a declared length beyond any limit, with no data behind it
  const liar = await receive(Buffer.concat([entry({ name: 'x', mode: S_IFREG | 0o644, filelen: 2 ** 40 }), END]), { maxBytes: 1n << 30n });
  assert.equal(liar.status, Errno.EDQUOT);
});

test('defence: a transfer that ends inside a file leaves no partial file and no staging directory (LEGAL_EOF)', async () => {
  const r = await receive(Buffer.concat([file('done', 'complete'), entry({ name: 'partial', mode: S_IFREG | 0o644, filelen: 1000, data: 'only a part' })]));
  assert.equal(r.status, LEGAL_EOF);
  assert.deepEqual(tree(r.base), ['QubesIncoming', 'QubesIncoming/work', 'QubesIncoming/work/done']);
  const noEnd = await receive(file('x', 'y'));
  assert.equal(noEnd.status, Errno.EREMOTEIO);
});

test('defence: a receiver killed in the middle of a file leaves nothing visible; the next one removes its staging', { timeout: 30_000 }, async () => {
  const base = fs.mkdtempSync(path.join(os.tmpdir(), 'qfile-kill-'));
  const p = spawn(process.execPath, [path.join(ROOT, 'bin/qfile-unpacker')], { env: { ...process.env, HOME: base, QREXEC_REMOTE_DOMAIN: 'work' }, stdio: ['pipe', 'pipe', 'inherit'] });
  p.stdin.write(Buffer.concat([file('whole', 'w'), entry({ name: 'big', mode: S_IFREG | 0o644, filelen: 1 << 20 }), Buffer.alloc(4096, 1)]));
  const incoming = path.join(base, 'QubesIncoming');
  for (let i = 0; i < 200 && !fs.existsSync(path.join(incoming, 'work', 'whole')); i++) await new Promise((r) => setTimeout(r, 20));
  await new Promise((r) => setTimeout(r, 100));
  p.kill('SIGKILL');
  await new Promise((r) => p.once('exit', r));
  assert.deepEqual(fs.readdirSync(path.join(incoming, 'work')), ['whole']);
  assert.equal(fs.readdirSync(incoming).filter((n) => n.startsWith('.qfile-')).length, 1, 'the killed one left its (hidden) staging');
  const again = spawn(process.execPath, [path.join(ROOT, 'bin/qfile-unpacker')], { env: { ...process.env, HOME: base, QREXEC_REMOTE_DOMAIN: 'work' }, stdio: ['pipe', 'pipe', 'inherit'] });
  again.stdin.end(Buffer.concat([file('next', 'n'), END]));
  const code = await new Promise((r) => again.once('exit', r));
  assert.equal(code, 0);
  assert.deepEqual(fs.readdirSync(incoming).sort(), ['work']);
  assert.deepEqual(fs.readdirSync(path.join(incoming, 'work')).sort(), ['next', 'whole']);
});

test('defence: an existing file is never replaced (EEXIST); an overlong name (ENAMETOOLONG); unknown types (EINVAL)', async () => {
  const at = scratch();
  fs.writeFileSync(path.join(at.dir, 'keep'), 'original');
  const r = await receive(Buffer.concat([file('keep', 'replaced'), END]), { at });
  assert.equal(r.status, Errno.EEXIST);
  assert.equal(fs.readFileSync(path.join(at.dir, 'keep'), 'utf8'), 'original');
  const hb = encodeHeader({ namelen: 20000, mode: S_IFREG | 0o644, filelen: 0n, atime: 0, atimeNsec: 0, mtime: 0, mtimeNsec: 0 });
  const long = await receive(Buffer.concat([hb, Buffer.alloc(20000, 0x61)]));
  assert.equal(long.status, Errno.ENAMETOOLONG);
  assert.equal(long.lastName, null);
  const fifo = await receive(Buffer.concat([entry({ name: 'p', mode: 0o010644 }), END]));
  assert.equal(fifo.status, Errno.EINVAL);
  const noDirs = await receive(Buffer.concat([dir('d'), END]), { flags: CopyFlags.ALLOW_SYMLINKS });
  assert.equal(noDirs.status, Errno.EINVAL);
  const badTime = await receive(Buffer.concat([Buffer.from(encodeHeader({ ...decodeHeader(file('t', '').subarray(0, 32)), atimeNsec: 1_000_000_000 })), Buffer.from('t\0'), END]));
  assert.equal(badTime.status, Errno.EINVAL);
});

test('name checks as unicode.c: canonical relative paths; symlink depth rule', () => {
  const ok = (s: string): boolean => validateFileName(Buffer.from(s)) === 0;
  assert.ok(ok('a') && ok('a/b') && ok('.hidden') && ok('a..b') && ok('...'));
  assert.ok(!ok('') && !ok('/a') && !ok('a/./b') && !ok('a/../b') && !ok('a//b') && !ok('a/'));
  const sl = (n: string, t: string): number => validateSymlink(Buffer.from(n), Buffer.from(t));
  assert.equal(sl('a/b', 'c'), 0);
  assert.equal(sl('a/b/c', '../d'), 0);
  assert.equal(sl('a/b', '../c'), -Errno.ENOLINK);
  assert.equal(sl('a', 'b'), -Errno.ENOLINK);
  assert.equal(sl('a/b', 'c/'), 0);
  assert.ok(codePointSafeForDisplay(0xe9) && !codePointSafeForDisplay(0x202e) && !codePointSafeForDisplay(0x200b) && !codePointSafeForDisplay(0x0627));
});

async function roundTrip(files: string[], cwd: string, o: { ignoreSymlinks?: boolean; flags?: number; tamper?: (b: Buffer) => Buffer } = {}): Promise<{ dir: string; base: string; err?: FilecopyError }> {
  const at = scratch();
  const toRecv = new PassThrough();
  const fromRecv = new PassThrough();
  const recvIn = new PassThrough();
  toRecv.on('data', (c: Buffer) => recvIn.write(o.tamper ? o.tamper(c) : c));
  toRecv.on('end', () => recvIn.end());
  const receiving = unpack(recvIn, fromRecv, { dir: at.dir, stagingDir: path.join(at.base, 'QubesIncoming', '.qfile-rt'), flags: o.flags ?? DEFAULT_COPY_FLAGS });
  let err: FilecopyError | undefined;
  try {
    await pack(files, toRecv, fromRecv, { cwd, ...(o.ignoreSymlinks ? { ignoreSymlinks: true } : {}) });
  } catch (e) {
    if (!(e instanceof FilecopyError)) throw e;
    err = e;
    toRecv.end();
  }
  await receiving;
  return { ...at, ...(err ? { err } : {}) };
}

test('our sender and receiver: a tree with an empty file, a 3 MB file, a symlink, modes and times', { timeout: 30_000 }, async () => {
  const src = fs.mkdtempSync(path.join(os.tmpdir(), 'qfile-src-'));
  fs.mkdirSync(path.join(src, 'proj/sub'), { recursive: true });
  fs.writeFileSync(path.join(src, 'proj/empty'), '');
  const big = Buffer.alloc(3 << 20);
  for (let i = 0; i < big.length; i++) big[i] = (i * 7919) & 0xff;
  fs.writeFileSync(path.join(src, 'proj/sub/big.bin'), big, { mode: 0o600 });
  fs.symlinkSync('../empty', path.join(src, 'proj/sub/link'));
  fs.utimesSync(path.join(src, 'proj/sub'), 1_234_567_890, 1_234_567_890);
  fs.writeFileSync(path.join(src, 'single.txt'), 'one');
  const r = await roundTrip(['proj', path.join(src, 'single.txt')], src);
  assert.equal(r.err, undefined);
  assert.deepEqual(fs.readFileSync(path.join(r.dir, 'proj/sub/big.bin')), big);
  assert.equal(fs.statSync(path.join(r.dir, 'proj/sub/big.bin')).mode & 0o777, 0o600);
  assert.equal(fs.readlinkSync(path.join(r.dir, 'proj/sub/link')), '../empty');
  assert.equal(fs.statSync(path.join(r.dir, 'proj/sub')).mtimeMs, 1_234_567_890_000);
  assert.equal(fs.readFileSync(path.join(r.dir, 'single.txt'), 'utf8'), 'one');
  const ign = await roundTrip(['proj'], src, { ignoreSymlinks: true });
  assert.ok(!fs.existsSync(path.join(ign.dir, 'proj/sub/link')));
  // a receiver's refusal reaches the sender with the reference's message
  fs.symlinkSync('/etc/passwd', path.join(src, 'proj/escape'));
  const refused = await roundTrip(['proj'], src);
  assert.match(refused.err?.message ?? '', /^Cannot verify that link at "\/etc\/passwd" would not be broken by copy$/);
  assert.throws(() => checkTree(['proj'], { cwd: src }), /Cannot verify that link at "proj\/escape"/);
  fs.rmSync(path.join(src, 'proj/escape'));
  // a changed byte on the way: the receiver's CRC differs from the sender's
  let flipped = false;
  const tampered = await roundTrip(['single.txt'], src, {
    tamper: (b) => {
      const i = b.indexOf('one');
      if (i < 0 || flipped) return b;
      flipped = true;
      const c = Buffer.from(b);
      c[i] = 0x4f;
      return c;
    },
  });
  assert.equal(tampered.err?.message, 'File transfer failed: checksum mismatch');
  assert.equal(checkTree(['proj'], { cwd: src }).needAllNames, false);
  fs.writeFileSync(path.join(src, 'bad\x01name'), '');
  assert.equal(checkTree(['bad\x01name'], { cwd: src }).needAllNames, true);
});
