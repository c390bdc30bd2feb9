/**
 * The policy directory as the Policy API changes it: a view of the disk with
 * proposed changes applied (for validation), and atomic, durable writes.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { createHash } from 'node:crypto';
import { PolicyIoError, type DirEntry, type PolicySource } from '../policy/index.js';
import { diskSource } from '../policy-files/disk.js';

/** `sha256:<hex>` of a file's bytes (reference compute_token). */
export function computeToken(data: Uint8Array): string {
  return 'sha256:' + createHash('sha256').update(data).digest('hex');
}

/**
 * The disk with some files replaced (content) or removed (null); keys are
 * resolved absolute paths. Reading a removed file fails with the reference's
 * "including a file that will be removed".
 */
export function overlaySource(overrides: ReadonlyMap<string, Uint8Array | null>, base: PolicySource = diskSource): PolicySource {
  const inDir = (dir: string): [string, Uint8Array | null][] => [...overrides].filter(([p]) => path.dirname(p) === dir);
  return {
    readDir(dir) {
      const d = base.resolve(dir);
      const changed = inDir(d);
      let entries: DirEntry[];
      try {
        entries = base.readDir(dir);
      } catch (e) {
        if (changed.length === 0) throw e;
        entries = [];
      }
      const names = new Set(changed.map(([p]) => path.basename(p)));
      const out = entries.filter((e) => !names.has(e.name));
      for (const [p, c] of changed) if (c !== null) out.push({ name: path.basename(p), isFile: true, isDir: false });
      return out;
    },
    readFile(p) {
      const r = base.resolve(p);
      if (overrides.has(r)) {
        const c = overrides.get(r);
        if (c === null || c === undefined) throw new PolicyIoError(p, `including a file that will be removed: ${r}`);
        return c;
      }
      return base.readFile(p);
    },
    isFile(p) {
      const r = base.resolve(p);
      // a removed file still "exists" for an include, whose read then says it will be removed
      if (overrides.has(r)) return true;
      return base.isFile(p);
    },
    isDir(p) {
      return base.isDir(p) || inDir(base.resolve(p)).some(([, c]) => c !== null);
    },
    resolve: (p) => base.resolve(p),
  };
}

/** Prefix of our temporary files: a dot, so the loader never reads them (nor `policy.List` lists them). */
export const TEMP_PREFIX = '.policy-api-';

/**
 * Writes `data` to `file` atomically and durably: a temporary file in
 * `tempDir` (same file system), written and fsync'ed, renamed over the
 * file, then the directory fsync'ed. A reader sees the old or the new file,
 * whole; after a crash the file is one of them.
 */
export function writeAtomic(file: string, data: Uint8Array, tempDir: string, mode = 0o664): void {
  const tmp = path.join(tempDir, `${TEMP_PREFIX}${path.basename(path.dirname(file))}-${path.basename(file)}.tmp`);
  const fd = fs.openSync(tmp, 'w', mode);
  try {
    let off = 0;
    while (off < data.length) off += fs.writeSync(fd, data, off, data.length - off);
    fs.fchmodSync(fd, mode);
    fs.fsyncSync(fd);
  } finally {
    fs.closeSync(fd);
  }
  fs.renameSync(tmp, file);
  syncDir(path.dirname(file));
  if (path.dirname(file) !== tempDir) syncDir(tempDir);
}

/** Removes a file durably. */
export function removeDurably(file: string): void {
  fs.unlinkSync(file);
  syncDir(path.dirname(file));
}

export function syncDir(dir: string): void {
  const fd = fs.openSync(dir, 'r');
  try {
    fs.fsyncSync(fd);
  } finally {
    fs.closeSync(fd);
  }
}

/** Temporary files a killed writer left behind. */
export function removeStaleTemps(dir: string): void {
  let names: string[];
  try {
    names = fs.readdirSync(dir);
  } catch {
    return;
  }
  for (const n of names) if (n.startsWith(TEMP_PREFIX)) fs.rmSync(path.join(dir, n), { force: true });
}

/** A file's bytes, or null when it is not a regular file (following symlinks). */
export function readIfFile(p: string): Buffer | null {
  try {
    if (!fs.statSync(p).isFile()) return null;
    return fs.readFileSync(p);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === 'ENOENT' || code === 'ENOTDIR') return null;
    throw e;
  }
}
