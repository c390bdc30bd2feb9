/**
 * The policy engine's view of the disk: a PolicySource over node:fs, and
 * the standard way to load a policy from directories.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { loadRules, Policy, PolicyIoError, type DirEntry, type LoadCache, type PolicySource } from '../policy/index.js';

/** Qubes paths: the runtime overlay shadows the persistent directory. */
export const DEFAULT_POLICY_DIRS = ['/run/qubes/policy.d', '/etc/qubes/policy.d'] as const;
export const DEFAULT_LEGACY_DIR = '/etc/qubes-rpc/policy';

function stat(p: string): fs.Stats | undefined {
  try {
    return fs.statSync(p);
  } catch {
    return undefined;
  }
}

function ioError(p: string, e: unknown): PolicyIoError {
  const err = e as NodeJS.ErrnoException;
  return new PolicyIoError(p, `[Errno ${err.errno ?? '?'}] ${err.code ?? ''} ${err.message ?? String(e)}`.trim());
}

/** The real file system. */
export const diskSource: PolicySource = {
  readDir(dir: string): DirEntry[] {
    let dirents: fs.Dirent[];
    try {
      dirents = fs.readdirSync(dir, { withFileTypes: true });
    } catch (e) {
      throw ioError(dir, e);
    }
    return dirents.map((d) => {
      if (d.isSymbolicLink()) {
        const st = stat(path.join(dir, d.name));
        return { name: d.name, isFile: st?.isFile() ?? false, isDir: st?.isDirectory() ?? false };
      }
      return { name: d.name, isFile: d.isFile(), isDir: d.isDirectory() };
    });
  },
  readFile(p: string): Uint8Array {
    try {
      return fs.readFileSync(p);
    } catch (e) {
      throw ioError(p, e);
    }
  },
  isFile: (p) => stat(p)?.isFile() ?? false,
  isDir: (p) => stat(p)?.isDirectory() ?? false,
  resolve(p: string): string {
    const abs = path.resolve(p);
    try {
      return fs.realpathSync(abs);
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code;
      if (code === 'ENOENT' || code === 'ENOTDIR') return abs; // pathlib resolve(strict=False)
      throw ioError(p, e);
    }
  },
};

export interface DiskPolicyOptions {
  policyDirs?: readonly string[] | undefined;
  legacyDir?: string | undefined;
  /** Parse only the files that changed since an earlier load with the same cache. */
  cache?: LoadCache | undefined;
}

/**
 * Load a policy from disk.
 * @throws PolicySyntaxError (with file and line) if anything is wrong: the caller must then deny everything.
 */
export function loadPolicyFromDisk(opts: DiskPolicyOptions = {}): Policy {
  return new Policy(
    loadRules(diskSource, {
      policyDirs: opts.policyDirs ?? DEFAULT_POLICY_DIRS,
      legacyDir: opts.legacyDir ?? DEFAULT_LEGACY_DIR,
      ...(opts.cache ? { cache: opts.cache } : {}),
    }),
  );
}
