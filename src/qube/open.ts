/**
 * Opening files and URLs in another qube (the reference's qvm-open-in-vm
 * script, qopen-in-vm.c and vm-file-editor.c of qubes-core-agent-linux):
 *
 * - `qvm-open-in-vm [--view-only] QUBE FILE|URL` and
 *   `qvm-open-in-dvm [--view-only] FILE|URL` (target @dispvm) call
 *   qubes.OpenURL with the URL on a line, or qubes.OpenInVM with a
 *   256-byte name buffer (`view-only-` prefix for --view-only) and the
 *   file's content; when the other side sends the file back (it was
 *   edited), it replaces the original (through a temporary file and a
 *   rename), or, in a read-only directory, is saved under /tmp.
 * - the qubes.OpenInVM service (`vm-file-editor`): the file is written in a
 *   fresh /tmp/SOURCE-XXXXXX directory under a sanitized name, opened with
 *   `qubes-open`, and sent back if its modification time changed (not for
 *   --view-only, where it is made read-only); then removed.
 */
import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { PassThrough, type Readable } from 'node:stream';
import { ByteReader } from './bytes.js';
import { callQube } from './call.js';
import { isValidQubeName } from './qfile.js';

export const DVM_FILENAME_SIZE = 256;
export const VIEW_ONLY_PREFIX = 'view-only-';
const URL_RE = /^[A-Za-z][A-Za-z0-9+]*:\/\//;

/** The name buffer qopen-in-vm sends: the basename (its tail when too long), NUL-padded. */
export function nameBuffer(file: string, viewOnly: boolean): Buffer {
  const buf = Buffer.alloc(DVM_FILENAME_SIZE);
  const prefix = viewOnly ? Buffer.from(VIEW_ONLY_PREFIX) : Buffer.alloc(0);
  let base = Buffer.from(file.slice(file.lastIndexOf('/') + 1));
  const room = DVM_FILENAME_SIZE - prefix.length;
  if (base.length >= room) base = base.subarray(base.length - room + 1);
  prefix.copy(buf);
  base.copy(buf, prefix.length);
  buf[DVM_FILENAME_SIZE - 1] = 0;
  return buf;
}

/** vm-file-editor's name: the prefix removed, unusual characters as `_`; null when it holds a `/`. */
export function sanitizeOpenName(buf: Buffer): { name: string; viewOnly: boolean } | null {
  let b = buf.subarray(0, DVM_FILENAME_SIZE - 1);
  const nul = b.indexOf(0);
  if (nul >= 0) b = b.subarray(0, nul);
  let viewOnly = false;
  if (b.subarray(0, VIEW_ONLY_PREFIX.length).toString('latin1') === VIEW_ONLY_PREFIX) {
    viewOnly = true;
    b = b.subarray(VIEW_ONLY_PREFIX.length);
  }
  let name = '';
  for (const c of b) {
    const ch = String.fromCharCode(c);
    if (ch === '/') return null;
    name += /[0-9A-Za-z._\-+@]/.test(ch) ? ch : '_';
  }
  return { name, viewOnly };
}

function usage(prog: string, code: number): number {
  const dvm = prog === 'qvm-open-in-dvm';
  process.stderr.write(dvm ? `Usage: ${prog} [--view-only] [--] filename\n` : `Usage: ${prog} [--view-only] [--] vmname filename\n`);
  return code;
}

/** qvm-open-in-vm / qvm-open-in-dvm. */
export async function openInVmMain(prog: 'qvm-open-in-vm' | 'qvm-open-in-dvm', argv: readonly string[], env: NodeJS.ProcessEnv = process.env): Promise<number> {
  let viewOnly = false;
  let target: string | undefined = prog === 'qvm-open-in-dvm' ? '@dispvm' : undefined;
  let file: string | undefined;
  let dashdash = false;
  for (const a of argv) {
    if (!dashdash) {
      if (a === '--') {
        dashdash = true;
        continue;
      }
      if (a === '--help') {
        const dvm = prog === 'qvm-open-in-dvm';
        process.stdout.write(dvm ? `Usage: ${prog} [--view-only] [--] filename\n` : `Usage: ${prog} [--view-only] [--] vmname filename\n`);
        return 0;
      }
      if (a === '--view-only') {
        viewOnly = true;
        continue;
      }
      if (a.startsWith('-')) {
        process.stderr.write(`${prog}: unrecognized option '${a}'\n`);
        return usage(prog, 2);
      }
    }
    if (target === undefined) target = a;
    else if (file === undefined) file = a;
    else return usage(prog, 2);
  }
  if (!target || !file) return usage(prog, 2);
  let isUrl = false;
  let st: fs.Stats | undefined;
  try {
    st = fs.statSync(file);
  } catch {
    st = undefined;
  }
  if (st?.isDirectory()) {
    process.stdout.write(`Error! "${file}" is a directory.\n`);
    return usage(prog, 2);
  }
  if (!st?.isFile()) {
    if (!URL_RE.test(file)) {
      process.stdout.write(`Error! "${file}" is not a valid file or URL.\n`);
      return usage(prog, 2);
    }
    isUrl = true;
  }
  // a service that opens another disposable from a disposable would loop without a user to ask
  if ((target === '@dispvm' || target.startsWith('@dispvm:')) && /^qubes\.(OpenInVM|OpenURL)\+/.test(env['QREXEC_SERVICE_FULL_NAME'] ?? '')) {
    process.stderr.write('Cannot prompt user, exiting to avoid possible infinite VM creation loop.\n');
    return 1;
  }
  if (isUrl) return callQube({ target, service: 'qubes.OpenURL', stdin: `${file}\n`, stdout: new PassThrough().resume() });
  const input = new PassThrough();
  input.write(nameBuffer(file, viewOnly));
  fs.createReadStream(file).pipe(input);
  const back = new PassThrough();
  const chunks: Buffer[] = [];
  back.on('data', (c: Buffer) => {
    if (!viewOnly) chunks.push(c);
  });
  const code = await callQube({ target, service: 'qubes.OpenInVM', stdin: input, stdout: back });
  const edited = Buffer.concat(chunks);
  if (code === 0 && edited.length > 0) receiveEdited(file, edited);
  return code;
}

/** The edited file replaces the original (recv_file), or goes to /tmp when the directory is read-only. */
function receiveEdited(file: string, data: Buffer): void {
  const tmp = `${file}.${process.pid}.${Date.now().toString(36)}`;
  try {
    fs.writeFileSync(tmp, data, { flag: 'wx', mode: fs.statSync(file).mode & 0o777 });
    fs.renameSync(tmp, file);
  } catch {
    fs.rmSync(tmp, { force: true });
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'file_edited_in_dvm.'));
    const saved = path.join(dir, path.basename(file));
    fs.writeFileSync(saved, data, { mode: 0o600 });
    process.stderr.write(
      `The file ${file} has been edited in a disposable qube and the modified content has been received, but this file is in read-only directory and thus cannot be modified safely. The edited file has been saved to ${saved}\n`,
    );
  }
}

/** The program that opens a file or URL: ~/.local/bin/qubes-open, else qubes-open or xdg-open on PATH. */
export function opener(env: NodeJS.ProcessEnv = process.env): string | null {
  const own = path.join(env['HOME'] || '/home/user', '.local', 'bin', 'qubes-open');
  const candidates = [own, ...(env['PATH'] ?? '').split(':').filter((d) => d).flatMap((d) => [path.join(d, 'qubes-open'), path.join(d, 'xdg-open')])];
  for (const c of candidates) {
    try {
      fs.accessSync(c, fs.constants.X_OK);
      return c;
    } catch {
      // next
    }
  }
  return null;
}

function runOpener(target: string, env: NodeJS.ProcessEnv): Promise<number> {
  const prog = opener(env);
  if (!prog) {
    process.stderr.write('No program to open it: install xdg-open, or put one at ~/.local/bin/qubes-open\n');
    return Promise.resolve(127);
  }
  const log = fs.openSync(path.join(os.tmpdir(), 'mimeopen.log'), fs.constants.O_WRONLY | fs.constants.O_CREAT | fs.constants.O_APPEND | fs.constants.O_NOFOLLOW, 0o600);
  return new Promise((resolve) => {
    const p = spawn(prog, [target], { stdio: ['ignore', log, 'inherit'], env });
    fs.closeSync(log);
    p.on('error', () => resolve(127));
    p.on('exit', (code) => resolve(code ?? 1));
  });
}

/** The qubes.OpenInVM service. */
export async function fileEditorMain(input: Readable = process.stdin, env: NodeJS.ProcessEnv = process.env): Promise<number> {
  const source = env['QREXEC_REMOTE_DOMAIN'];
  if (!source) {
    process.stderr.write('Cannot get remote domain name\n');
    return 1;
  }
  if (!isValidQubeName(source) && source !== 'dom0') {
    process.stderr.write(`Invalid remote domain name: ${source}\n`);
    return 1;
  }
  const reader = new ByteReader(input);
  const head = await reader.exactly(DVM_FILENAME_SIZE);
  if (!head) return 1;
  const n = sanitizeOpenName(head);
  if (!n) {
    process.stderr.write('filename contains /\n');
    return 1;
  }
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), `${source}-`));
  const file = path.join(dir, n.name || '_');
  try {
    const fd = fs.openSync(file, fs.constants.O_WRONLY | fs.constants.O_CREAT | fs.constants.O_EXCL | fs.constants.O_NOFOLLOW, 0o600);
    try {
      for (;;) {
        const c = await reader.some(65536);
        if (!c) break;
        let off = 0;
        while (off < c.length) off += fs.writeSync(fd, c, off);
      }
    } finally {
      fs.closeSync(fd);
    }
    if (n.viewOnly) fs.chmodSync(file, 0o400);
    const before = fs.statSync(file).mtimeMs;
    const status = await runOpener(file, env);
    if (status !== 0) process.stderr.write(`Unable to handle mimetype of the requested file (exit status: ${status})!\n`);
    const after = fs.statSync(file).mtimeMs;
    if (!n.viewOnly && after !== before) {
      await new Promise<void>((resolve) => {
        const s = fs.createReadStream(file);
        s.pipe(process.stdout, { end: false });
        s.on('end', () => resolve());
        s.on('error', () => resolve());
      });
    }
    return 0;
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

/** The qubes.OpenURL service: one line, http(s) or ftp only. */
export async function openUrlMain(input: Readable = process.stdin, env: NodeJS.ProcessEnv = process.env): Promise<number> {
  const reader = new ByteReader(input);
  let line = Buffer.alloc(0);
  for (;;) {
    const c = await reader.some(4096);
    if (!c) break;
    line = Buffer.concat([line, c]);
    const nl = line.indexOf(0x0a);
    if (nl >= 0) {
      line = line.subarray(0, nl);
      break;
    }
    if (line.length > 65536) break;
  }
  input.destroy();
  const url = line.toString('utf8');
  if (!/^(https?|ftp):\/\//.test(url) || /[\x00-\x1f\x7f]/.test(url)) {
    process.stderr.write('Invalid URL\n');
    return 1;
  }
  return runOpener(url, env);
}
