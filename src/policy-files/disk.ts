/**
 * The policy engine's view of the disk: a PolicySource over node:fs, and
 * the standard way to load a policy from directories.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { CommandError, describeSystemError, isSystemError, systemErrorReason } from '../common/errors.js';
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
  return new PolicyIoError(p, describeSystemError(e, p), isSystemError(e) ? systemErrorReason(e) : undefined);
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

/**
 * The policy directories a tool reads: those given, else the default ones
 * that exist. None at all is an error (exit status `exitCode`): a tool must
 * not silently decide by an empty policy.
 */
export function policyDirsOrDefault(given: readonly string[] | undefined, exitCode: number): readonly string[] {
  if (given !== undefined) return given;
  const found = DEFAULT_POLICY_DIRS.filter((d) => stat(d)?.isDirectory());
  if (found.length > 0) return found;
  throw new CommandError(`${DEFAULT_POLICY_DIRS[DEFAULT_POLICY_DIRS.length - 1]}: policy directory does not exist (use --policy-dir DIR)`, exitCode);
}
