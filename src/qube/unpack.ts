/**
 * The receiving side of qubes.Filecopy (the reference's qfile-unpacker and
 * qrexec-lib unpack.c, read to learn the behaviour): reads the qfile stream
 * from the sender and writes the files under one directory, normally
 * ~/QubesIncoming/SOURCE/, then answers with the status and CRC.
 *
 * Defences, each as the reference has it:
 * - names: relative, canonical (no `.`, `..`, `//`, trailing `/`), printable
 *   and safe to display unless --allow-all-names; longer than
 *   MAX_PATH_LENGTH-1 refused;
 * - symlinks: two components deep at least, and their target cannot leave the
 *   top-level directory they are in; nothing is ever created through an
 *   existing symlink (each parent component is checked to be a real
 *   directory, the last one is created with O_EXCL / link(2), which do not
 *   follow);
 * - existing files are never replaced (EEXIST);
 * - limits on the total size and the number of files (EDQUOT);
 * - a file is written in a private staging directory beside the receiving one
 *   and linked into place only when complete and synced, so a transfer that
 *   fails (or is killed) leaves no partial file visible; a killed receiver's
 *   staging directory is removed by the next one.
 * Where the reference also keeps setuid/setgid bits (its bind mount is
 * nosuid), we drop them: modes are masked with 0777.
 * The reference chroots into the directory; Node cannot, so the checks above
 * are done on each path instead (the sender cannot change our filesystem
 * between them: its stream is processed in order).
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { Readable, Writable } from 'node:stream';
import { ByteReader } from './bytes.js';
import {
  Errno,
  HEADER_SIZE,
  LEGAL_EOF,
  MAX_PATH_LENGTH,
  NameFlags,
  S_IFDIR,
  S_IFLNK,
  S_IFMT,
  S_IFREG,
  crc32,
  decodeHeader,
  encodeResult,
  errnoOf,
  validateFileName,
  validateSymlink,
  type FileHeader,
} from './qfile.js';

/** What the sender may send (copy_flags of libqubes-rpc-filecopy.h). */
export const CopyFlags = {
  ALLOW_SYMLINKS: 1,
  ALLOW_DIRECTORIES: 2,
  ALLOW_UNSAFE_CHARACTERS: 4,
  ALLOW_NON_CANONICAL_SYMLINKS: 8,
  ALLOW_UNSAFE_SYMLINKS: 16,
} as const;

/** qfile-unpacker's defaults. */
export const DEFAULT_COPY_FLAGS = CopyFlags.ALLOW_SYMLINKS | CopyFlags.ALLOW_DIRECTORIES | CopyFlags.ALLOW_NON_CANONICAL_SYMLINKS;

export interface UnpackOptions {
  /** The receiving directory (exists). */
  readonly dir: string;
  /** A private directory on the same filesystem for files being written (made and removed here). */
  readonly stagingDir: string;
  readonly flags?: number;
  /** Total bytes allowed (0: no limit). */
  readonly maxBytes?: bigint;
  /** Number of files allowed (0: no limit). */
  readonly maxFiles?: number;
  /** Called with each received non-directory name (-v). */
  readonly verbose?: (name: string) => void;
}

/** Ends the transfer with this status; `name` is the last name reported. */
class Stop extends Error {
  constructor(
    readonly code: number,
    readonly lastName: Buffer | null,
  ) {
    super(`qfile status ${code}`);
  }
}

const nameOf = (b: Buffer): string => b.toString('utf8');
/** DIR/NAME as bytes: names are byte strings, not necessarily UTF-8. */
const fsPath = (dir: string, name: Buffer): Buffer => Buffer.concat([Buffer.from(`${dir}/`), name]);

/**
 * Each parent of `name` (all components but the last) must be a real
 * directory: ELOOP for a symlink, ENOTDIR for anything else, as openat with
 * O_DIRECTORY|O_NOFOLLOW reports; ENOENT when missing.
 */
function checkParents(dir: string, name: Buffer): void {
  let end = name.indexOf(0x2f);
  while (end >= 0) {
    const part = name.subarray(name.lastIndexOf(0x2f, end - 1) + 1, end);
    let st: fs.Stats;
    try {
      st = fs.lstatSync(fsPath(dir, name.subarray(0, end)));
    } catch (e) {
      throw new Stop(errnoOf(e), Buffer.from(part));
    }
    if (st.isSymbolicLink()) throw new Stop(Errno.ELOOP, Buffer.from(part));
    if (!st.isDirectory()) throw new Stop(Errno.ENOTDIR, Buffer.from(part));
    end = name.indexOf(0x2f, end + 1);
  }
}

function times(h: FileHeader, name: Buffer): [number, number] {
  if (h.atimeNsec > 999_999_999 || h.mtimeNsec > 999_999_999) throw new Stop(Errno.EINVAL, name);
  return [h.atime + h.atimeNsec / 1e9, h.mtime + h.mtimeNsec / 1e9];
}

/**
 * Receives one transfer from `input`, answers on `output`. Resolves with the
 * status sent (0: everything received; else an errno, or LEGAL_EOF).
 */
export async function unpack(input: Readable, output: Writable, o: UnpackOptions): Promise<number> {
  const flags = o.flags ?? DEFAULT_COPY_FLAGS;
  // the name checks' flags (qrexec-lib shifts the copy flags by 2)
  const nameFlags = (flags >> 2) & (NameFlags.ALLOW_UNSAFE_CHARACTERS | NameFlags.ALLOW_NON_CANONICAL_SYMLINKS | NameFlags.ALLOW_UNSAFE_SYMLINKS);
  const maxBytes = o.maxBytes ?? 0n;
  const maxFiles = o.maxFiles ?? 0;
  const reader = new ByteReader(input);
  let crc = 0;
  let totalBytes = 0n;
  let totalFiles = 0;
  let lastName: Buffer | null = Buffer.alloc(0);
  let staged = 0;
  fs.mkdirSync(o.stagingDir, { mode: 0o700 });

  const read = async (n: number, name: Buffer | null): Promise<Buffer> => {
    const b = await reader.exactly(n);
    if (b === null) throw new Stop(LEGAL_EOF, name);
    crc = crc32(crc, b);
    return b;
  };

  const receiveRegular = async (h: FileHeader, name: Buffer): Promise<void> => {
    if (validateFileName(name, nameFlags) !== 0) throw new Stop(Errno.EILSEQ, name);
    checkParents(o.dir, name);
    if (h.filelen > 0x7fff_ffff_ffff_ffffn || (maxBytes && h.filelen > maxBytes)) throw new Stop(Errno.EDQUOT, name);
    if (maxBytes && totalBytes > maxBytes - h.filelen) throw new Stop(Errno.EDQUOT, name);
    totalBytes += h.filelen;
    const tmp = path.join(o.stagingDir, String(staged++));
    const fd = fs.openSync(tmp, fs.constants.O_WRONLY | fs.constants.O_CREAT | fs.constants.O_EXCL | fs.constants.O_NOFOLLOW, 0o600);
    try {
      let left = h.filelen;
      while (left > 0n) {
        const chunk = await reader.some(Number(left > 65536n ? 65536n : left));
        if (chunk === null) throw new Stop(LEGAL_EOF, name);
        crc = crc32(crc, chunk);
        try {
          let off = 0;
          while (off < chunk.length) off += fs.writeSync(fd, chunk, off);
        } catch (e) {
          throw new Stop(errnoOf(e), name);
        }
        left -= BigInt(chunk.length);
      }
      const [at, mt] = times(h, name);
      try {
        fs.fchmodSync(fd, h.mode & 0o777);
        fs.futimesSync(fd, at, mt);
        fs.fsyncSync(fd);
      } catch (e) {
        throw new Stop(errnoOf(e), name);
      }
    } catch (e) {
      fs.closeSync(fd);
      fs.rmSync(tmp, { force: true });
      throw e;
    }
    fs.closeSync(fd);
    try {
      // link(2) never follows nor replaces what is there: EEXIST, as O_EXCL
      fs.linkSync(tmp, fsPath(o.dir, name));
    } catch (e) {
      throw new Stop(errnoOf(e), name);
    } finally {
      fs.rmSync(tmp, { force: true });
    }
  };

  const receiveDir = (h: FileHeader, name: Buffer): void => {
    if (validateFileName(name, nameFlags) !== 0) throw new Stop(Errno.EILSEQ, name);
    checkParents(o.dir, name);
    const p = fsPath(o.dir, name);
    try {
      // first time: made writable for its contents; the second time sets the sender's mode and times
      fs.mkdirSync(p, { mode: 0o700 });
      return;
    } catch (e) {
      if (errnoOf(e) !== Errno.EEXIST) throw new Stop(errnoOf(e), name);
    }
    let st: fs.Stats;
    try {
      st = fs.lstatSync(p);
    } catch (e) {
      throw new Stop(errnoOf(e), name);
    }
    if (st.isSymbolicLink()) throw new Stop(Errno.ELOOP, name);
    if (!st.isDirectory()) throw new Stop(Errno.ENOTDIR, name);
    totalBytes += BigInt(st.size);
    const [at, mt] = times(h, name);
    try {
      fs.chmodSync(p, h.mode & 0o777);
      fs.utimesSync(p, at, mt);
    } catch (e) {
      throw new Stop(errnoOf(e), name);
    }
  };

  const receiveLink = async (h: FileHeader, name: Buffer): Promise<void> => {
    if (h.filelen > BigInt(MAX_PATH_LENGTH - 1)) throw new Stop(Errno.ENAMETOOLONG, name);
    totalBytes += h.filelen;
    if (maxBytes && totalBytes > maxBytes) throw new Stop(Errno.EDQUOT, name);
    const target = await read(Number(h.filelen), name);
    const rc = validateSymlink(name, target, nameFlags);
    if (rc !== 0) throw new Stop(-rc, target);
    if (target.includes(0)) throw new Stop(Errno.EILSEQ, target);
    checkParents(o.dir, name);
    try {
      fs.symlinkSync(target, fsPath(o.dir, name));
    } catch (e) {
      throw new Stop(errnoOf(e), name);
    }
  };

  let status = 0;
  try {
    let marker = false;
    for (;;) {
      const hb = await reader.exactly(HEADER_SIZE);
      if (hb === null) break;
      crc = crc32(crc, hb);
      const h = decodeHeader(hb);
      if (h.namelen === 0) {
        marker = true;
        break;
      }
      totalFiles++;
      if (maxFiles && totalFiles > maxFiles) throw new Stop(Errno.EDQUOT, lastName ?? Buffer.alloc(0));
      if (h.namelen > MAX_PATH_LENGTH - 1) throw new Stop(Errno.ENAMETOOLONG, null);
      const raw = await read(h.namelen, null);
      const nul = raw.indexOf(0);
      const name = nul < 0 ? raw : raw.subarray(0, nul);
      lastName = name;
      const type = h.mode & S_IFMT;
      if (type === S_IFREG) await receiveRegular(h, name);
      else if (type === S_IFLNK && flags & CopyFlags.ALLOW_SYMLINKS) await receiveLink(h, name);
      else if (type === S_IFDIR && flags & CopyFlags.ALLOW_DIRECTORIES) receiveDir(h, name);
      else throw new Stop(Errno.EINVAL, name);
      if (type !== S_IFDIR) o.verbose?.(nameOf(name));
    }
    if (!marker) status = Errno.EREMOTEIO;
  } catch (e) {
    if (!(e instanceof Stop)) throw e;
    status = e.code;
    // null: no name at all (the reference sends no result_header_ext then)
    lastName = e.lastName;
  } finally {
    fs.rmSync(o.stagingDir, { recursive: true, force: true });
  }
  input.pause();
  await new Promise<void>((resolve) => {
    output.write(encodeResult(status, crc, lastName), () => resolve());
    output.once('error', () => resolve());
  });
  return status;
}

/** Removes staging directories of receivers that are gone (`.qfile-*-PID` in `parent`). */
export function cleanStaleStaging(parent: string): void {
  let names: string[];
  try {
    names = fs.readdirSync(parent);
  } catch {
    return;
  }
  for (const n of names) {
    const m = /^\.qfile-.*-(\d+)$/.exec(n);
    if (!m) continue;
    try {
      process.kill(Number(m[1]), 0);
      continue;
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'EPERM') continue;
    }
    fs.rmSync(path.join(parent, n), { recursive: true, force: true });
  }
}
