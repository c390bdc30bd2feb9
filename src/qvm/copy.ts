/**
 * qvm-copy-to-vm and qvm-move-to-vm in dom0 (the reference's
 * file-copy-vm/qvm-copy-to-vm of qubes-core-admin-linux): dom0's files sent
 * to a qube's qubes.Filecopy, the qube started through qubesd if needed, the
 * call through the qube's qrexec daemon (`qrexec-client`). The files land in
 * the qube's ~/QubesIncoming/dom0/. qvm-copy and qvm-move are not for dom0.
 */
import { AdminError, AdminTransportError, defaultTransport } from '../qubesd-client/client.js';
import { parseCopyArgs, sendFiles, type CopyProg } from '../qube/filecopy.js';
import * as fs from 'node:fs';
import { QubesApp } from './app.js';
import { exitStatus, spawnQrexecClient } from './run.js';
import type { Readable, Writable } from 'node:stream';

export async function dom0CopyMain(prog: CopyProg, argv: readonly string[]): Promise<number> {
  if (!prog.endsWith('-to-vm')) {
    // --help and usage errors as in a qube; anything else is refused here
    const parsed = parseCopyArgs(prog, argv);
    if (typeof parsed === 'number' && (parsed !== 2 || argv.some((a) => a.startsWith('-') && a !== '--'))) return parsed;
    process.stdout.write(`${prog} is not supported in dom0; use ${prog}-to-vm instead.\n`);
    return 1;
  }
  const a = parseCopyArgs(prog, argv);
  if (typeof a === 'number') return a;
  const app = new QubesApp(defaultTransport());
  try {
    if (!(await app.get(a.target))) {
      process.stderr.write(`${prog}: error: no such domain: '${a.target}'\n`);
      return 2;
    }
    const code = await sendFiles(prog, a, async (service, stdin, stdout) => {
      const child = await spawnQrexecClient(app, a.target, service, undefined, { stdio: ['pipe', 'pipe', 'inherit'], filterStderr: true });
      (child.stdin as Writable).on('error', () => undefined);
      stdin.pipe(child.stdin as Writable);
      (child.stdout as Readable).pipe(stdout);
      return exitStatus(child);
    });
    if (code === 0 && prog === 'qvm-move-to-vm') for (const f of a.files) fs.rmSync(f, { recursive: true, force: true });
    return code;
  } catch (e) {
    if (e instanceof AdminError || e instanceof AdminTransportError) {
      process.stderr.write(`${prog}: error: ${e.message}\n`);
      return 1;
    }
    throw e;
  }
}
