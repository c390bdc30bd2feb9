/**
 * The sending side of qubes.Filecopy (the reference's qfile-agent and
 * qrexec-lib pack.c, read to learn the behaviour): walks the given files and
 * directories and writes the qfile stream (see qfile.ts); stops at the
 * receiver's first error; at the end checks the receiver's status and CRC.
 * Also the checks qvm-copy makes before sending (qubes-fs-tree-check):
 * whether every name passes the receiver's default checks, and the total
 * size.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { Readable, Writable } from 'node:stream';
import { PeerError } from '../common/errors.js';
import { ByteReader } from './bytes.js';
import {
  Errno,
  HEADER_SIZE,
  NameFlags,
  RESULT_SIZE,
  crc32,
  encodeHeader,
  errnoOf,
  resultMessage,
  sanitizeRemoteName,
  strerror,
  validateFileName,
  validateSymlink,
} from './qfile.js';

/** The transfer failed; the message is the reference's, `status` the receiver's when it sent one. */
export class FilecopyError extends PeerError {
  override name = 'FilecopyError';
}

export interface PackOptions {
  readonly ignoreSymlinks?: boolean;
  /** Relative paths are resolved here (default: the process's cwd). */
  readonly cwd?: string;
  /** Called with the bytes of file data sent so far. */
  readonly progress?: (sent: number) => void;
}

const sec = (ns: bigint): number => Number(ns / 1_000_000_000n);
const nsec = (ns: bigint): number => Number(ns % 1_000_000_000n);

/**
 * Sends `files` on `out`, reading the receiver's answer from `input`.
 * Resolves when the receiver confirmed everything; rejects with a
 * FilecopyError otherwise.
 */
export async function pack(files: readonly string[], out: Writable, input: Readable, o: PackOptions = {}): Promise<void> {
  const reader = new ByteReader(input);
  let crc = 0;
  let sent = 0;
  let outFailed = false;
  out.on('error', () => (outFailed = true));

  const write = async (b: Buffer): Promise<void> => {
    crc = crc32(crc, b);
    if (outFailed) return;
    if (!out.write(b)) {
      await new Promise<void>((resolve) => {
        const done = (): void => {
          out.off('drain', done);
          out.off('close', done);
          out.off('error', done);
          resolve();
        };
        out.on('drain', done);
        out.on('close', done);
        out.on('error', done);
      });
    }
  };

  /** The receiver's answer (after our end marker, or early when it stopped us). */
  const result = async (): Promise<void> => {
    const h = await reader.exactly(RESULT_SIZE);
    if (h === null) throw new FilecopyError('File copy: the receiving side ended without a status');
    const code = h.readUInt32LE(0);
    const remoteCrc = h.readBigUInt64LE(8);
    let name: Buffer = Buffer.alloc(0);
    let hadName = false;
    const ext = await reader.exactly(4);
    if (ext !== null) {
      const len = Math.min(ext.readUInt32LE(0), 16384);
      hadName = len > 0;
      name = (await reader.exactly(len)) ?? Buffer.alloc(0);
    }
    if (code !== 0) throw new FilecopyError(resultMessage(code, sanitizeRemoteName(name), hadName), code);
    if (remoteCrc !== BigInt(crc)) throw new FilecopyError('File transfer failed: checksum mismatch');
  };
  /** pack.c checks for an early answer after each file. */
  const early = async (): Promise<void> => {
    if (reader.available > 0 || reader.atEnd || outFailed) await result();
  };

  const entry = async (full: Buffer, name: Buffer, st: fs.BigIntStats): Promise<void> => {
    const nameBuf = Buffer.concat([name, Buffer.from([0])]);
    const header = (filelen: bigint): Buffer =>
      encodeHeader({
        namelen: nameBuf.length,
        mode: Number(st.mode),
        filelen,
        atime: sec(st.atimeNs),
        atimeNsec: nsec(st.atimeNs),
        mtime: sec(st.mtimeNs),
        mtimeNsec: nsec(st.mtimeNs),
      });
    if (st.isFile()) {
      let fd: number;
      try {
        fd = fs.openSync(full, 'r');
      } catch (e) {
        throw new FilecopyError(`open ${name}: ${strerror(errnoOf(e))}`);
      }
      try {
        await write(Buffer.concat([header(st.size), nameBuf]));
        const buf = Buffer.allocUnsafe(65536);
        let left = Number(st.size);
        while (left > 0) {
          const n = fs.readSync(fd, buf, 0, Math.min(buf.length, left), null);
          if (n === 0) throw new FilecopyError(`Copying file ${name}: Unexpected end of data while reading`);
          await write(Buffer.from(buf.subarray(0, n)));
          left -= n;
          sent += n;
          o.progress?.(sent);
          if (outFailed) break;
        }
      } finally {
        fs.closeSync(fd);
      }
    } else if (st.isDirectory()) {
      await write(Buffer.concat([header(0n), nameBuf]));
    } else if (st.isSymbolicLink()) {
      const target = fs.readlinkSync(full, { encoding: 'buffer' });
      await write(Buffer.concat([header(BigInt(target.length)), nameBuf, target]));
    } else {
      // a fifo, socket or device: the receiver refuses it (EINVAL), as the reference's
      await write(Buffer.concat([header(0n), nameBuf]));
    }
    await early();
  };

  const walk = async (dir: string, name: Buffer): Promise<void> => {
    const full = Buffer.concat([Buffer.from(`${dir}/`), name]);
    let st: fs.BigIntStats;
    try {
      st = fs.lstatSync(full, { bigint: true });
    } catch (e) {
      throw new FilecopyError(`stat ${name}: ${strerror(errnoOf(e))}`);
    }
    if (st.isSymbolicLink() && o.ignoreSymlinks) return;
    await entry(full, name, st);
    if (!st.isDirectory()) return;
    let names: Buffer[];
    try {
      names = fs.readdirSync(full, { encoding: 'buffer' });
    } catch (e) {
      throw new FilecopyError(`opendir ${name}: ${strerror(errnoOf(e))}`);
    }
    for (const n of names) await walk(dir, Buffer.concat([name, Buffer.from('/'), n]));
    // sent again: its mode and times are set after its contents
    await entry(full, name, st);
  };

  const cwd = o.cwd ?? process.cwd();
  for (const [i, f] of files.entries()) {
    if (f === '') throw new FilecopyError(`Invalid empty argument ${i + 1}`);
    const abs = path.resolve(cwd, f);
    const base = path.basename(abs) || '/';
    await walk(path.dirname(abs), Buffer.from(base));
  }
  await write(Buffer.alloc(HEADER_SIZE));
  out.end();
  await result();
}

/** What qubes-fs-tree-check reports: every name's verdict and the total size. */
export interface TreeCheck {
  /** Total bytes of regular files (FILECOPY_TOTAL_BYTES). */
  readonly totalBytes: number;
  /** Some names pass only with allow-all-names (qvm-copy then calls qubes.Filecopy+allow-all-names). */
  readonly needAllNames: boolean;
}

/**
 * Checks the names the transfer would send, as the receiver will with its
 * default flags: a name or symlink that is refused even with allow-all-names
 * is an error here, before anything is sent.
 */
export function checkTree(files: readonly string[], o: PackOptions = {}): TreeCheck {
  let totalBytes = 0;
  let needAllNames = false;
  const check = (nb: Buffer, full: Buffer, st: fs.Stats): void => {
    const name = nb.toString();
    let strict: number;
    let loose: number;
    if (st.isSymbolicLink()) {
      const t = fs.readlinkSync(full, { encoding: 'buffer' });
      strict = validateSymlink(nb, t, NameFlags.ALLOW_NON_CANONICAL_SYMLINKS);
      loose = validateSymlink(nb, t, NameFlags.ALLOW_NON_CANONICAL_SYMLINKS | NameFlags.ALLOW_UNSAFE_CHARACTERS);
      if (loose !== 0) {
        throw new FilecopyError(loose === -Errno.ENOLINK ? `Cannot verify that link at "${name}" would not be broken by copy` : `Forbidden character in file or link target: "${sanitizeRemoteName(nb)}"`);
      }
    } else {
      strict = validateFileName(nb, 0);
      loose = validateFileName(nb, NameFlags.ALLOW_UNSAFE_CHARACTERS);
      if (loose !== 0) throw new FilecopyError(`Forbidden file name: "${sanitizeRemoteName(nb)}"`);
    }
    if (strict !== 0) needAllNames = true;
  };
  const walk = (dir: string, name: Buffer): void => {
    const full = Buffer.concat([Buffer.from(`${dir}/`), name]);
    let st: fs.Stats;
    try {
      st = fs.lstatSync(full);
    } catch (e) {
      throw new FilecopyError(`${name.toString()}: ${strerror(errnoOf(e))}`);
    }
    if (st.isSymbolicLink() && o.ignoreSymlinks) return;
    check(name, full, st);
    if (st.isFile()) totalBytes += st.size;
    if (st.isDirectory()) for (const n of fs.readdirSync(full, { encoding: 'buffer' })) walk(dir, Buffer.concat([name, Buffer.from('/'), n]));
  };
  const cwd = o.cwd ?? process.cwd();
  for (const f of files) {
    const abs = path.resolve(cwd, f);
    walk(path.dirname(abs), Buffer.from(path.basename(abs) || '/'));
  }
  return { totalBytes, needAllNames };
}
