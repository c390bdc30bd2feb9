/**
 * Host file operations inside a directory a qube can write (its private
 * volume), without following anything the qube put there. A qube's root can
 * replace `/rw/home` with a symlink to `/etc`: that name means its own /etc
 * inside, but the host's /etc to a host process that resolves it. So below a
 * trusted base (a host path whose every component only the host can change),
 * each component is opened on its own with O_NOFOLLOW|O_DIRECTORY through the
 * parent's descriptor (`/proc/self/fd/N/name`: the magic link is the open
 * directory itself, and only `name` is looked up, never followed). A symlink
 * or a file there fails the walk; nothing is created, changed or bound
 * through it. Every check is made on the descriptor that is then used, so a
 * qube changing names meanwhile (its dispvm template may be running) cannot
 * slip anything in between.
 */
import * as fs from 'node:fs';
import { SandboxError } from './errors.js';

const O_DIR = fs.constants.O_RDONLY | fs.constants.O_DIRECTORY | fs.constants.O_NOFOLLOW;

function components(rel: string): string[] {
  const parts = rel.split('/').filter((c) => c !== '' && c !== '.');
  if (parts.includes('..')) throw new SandboxError('BAD_SPEC', `bad relative path ${rel}`);
  return parts;
}

function at(dirFd: number, name: string): string {
  return `/proc/self/fd/${dirFd}/${name}`;
}

function notADir(base: string, rel: string, e: unknown): SandboxError {
  const code = (e as NodeJS.ErrnoException).code;
  // O_DIRECTORY|O_NOFOLLOW on a symlink fails with ENOTDIR, as on a file
  const why = code === 'ELOOP' || code === 'ENOTDIR' ? 'is a symlink or not a directory' : code === 'ENOENT' ? 'is missing' : `cannot be opened (${code ?? String(e)})`;
  return new SandboxError('STORAGE', `${base}: ${rel} ${why}; the host does not follow it`);
}

/** A descriptor (O_RDONLY|O_DIRECTORY) of directory `rel` beneath `base`, no symlink followed below `base`. Close it. */
export function openDirBeneath(base: string, rel: string): number {
  let fd: number;
  try {
    fd = fs.openSync(base, O_DIR);
  } catch (e) {
    throw notADir(base, '.', e);
  }
  const done: string[] = [];
  for (const c of components(rel)) {
    done.push(c);
    let next: number;
    try {
      next = fs.openSync(at(fd, c), O_DIR);
    } catch (e) {
      fs.closeSync(fd);
      throw notADir(base, done.join('/'), e);
    }
    fs.closeSync(fd);
    fd = next;
  }
  return fd;
}

/** Options of {@link ensureDirBeneath}, for the directories it makes (existing ones are left as they are). */
export interface MadeDir {
  readonly mode?: number;
  /** uid and gid of the last component, when made. */
  readonly owner?: number;
}

/**
 * Makes the directories of `rel` beneath `base` that are missing (mkdir does
 * not follow a last component, and each step goes through the parent's
 * descriptor). Throws where a component is a symlink or not a directory.
 * Returns whether the last component was made.
 */
export function ensureDirBeneath(base: string, rel: string, made: MadeDir = {}): boolean {
  const parts = components(rel);
  let fd = openDirBeneath(base, '.');
  let created = false;
  try {
    parts.forEach((c, i) => {
      created = false;
      try {
        fs.mkdirSync(at(fd, c), { mode: made.mode ?? 0o755 });
        created = true;
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw e;
      }
      let next: number;
      try {
        next = fs.openSync(at(fd, c), O_DIR);
      } catch (e) {
        throw notADir(base, parts.slice(0, i + 1).join('/'), e);
      }
      fs.closeSync(fd);
      fd = next;
      if (created && made.mode !== undefined) fs.fchmodSync(fd, made.mode);
      if (created && i === parts.length - 1 && made.owner !== undefined && process.geteuid?.() === 0) fs.fchownSync(fd, made.owner, made.owner);
    });
  } finally {
    fs.closeSync(fd);
  }
  return created;
}

/** Whether `rel` beneath `base` is a directory reached without symlinks (lstat-like, never follows). */
export function isDirBeneath(base: string, rel: string): boolean {
  try {
    fs.closeSync(openDirBeneath(base, rel));
    return true;
  } catch {
    return false;
  }
}
