/**
 * Qubes' filesystems on the host's disk, and the mounts that give each qube
 * its view (see docs/RUNTIME.md):
 *
 *   <data>/qubes/<name>/private/            the private volume: /rw, with /home = /rw/home
 *                                           and (AppVMs, DispVMs) /usr/local = /rw/usrlocal
 *   <data>/qubes/<name>/base/root/          a TemplateVM's (or StandaloneVM's) first root: its
 *                                           own top level (var, root, opt...; usr and etc mount
 *                                           points for base "host"), or the whole tree ("own")
 *   <data>/qubes/<name>/layers/NNNN/{root,usr,etc}
 *                                           committed layers of its changes, oldest first
 *   <data>/qubes/<name>/pending/...         the layer a running TemplateVM writes (work/: overlayfs')
 *   <data>/qubes/<name>/volume.json         { base: "host" | "own" }
 *   <data>/qubes/<name>/running             a running TemplateVM/StandaloneVM: its bwrap pid
 *
 * A template's root is its base, then its layers, and for base "host" the
 * host's /usr and /etc below its usr and etc layers. A running TemplateVM
 * writes a new layer on top, committed when it stops: an AppVM sees its
 * template's committed layers read-only under a writable layer on a tmpfs
 * that vanishes with it, so (as on Qubes) it sees the template's changes
 * after the template's shutdown and its own next start. A StandaloneVM owns
 * a copy of its template's base and layers. A DispVM is an AppVM whose
 * private volume is itself a throw-away overlay of its dispvm template's.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { spawnSync } from 'node:child_process';
import { SandboxError } from './errors.js';
import { ensureDirBeneath, isDirBeneath, openDirBeneath } from './beneath.js';
import type { MountOp, SandboxBind } from './plan.js';

export type QubeClass = 'TemplateVM' | 'AppVM' | 'StandaloneVM' | 'DispVM';

/** Where a template's root comes from. */
export type TemplateSource = { readonly kind: 'host' } | { readonly kind: 'dir'; readonly path: string } | { readonly kind: 'tarball'; readonly path: string };

/** The uid and gid of `user` (default_user) inside every qube, as on Qubes. */
export const QUBE_USER_UID = 1000;

/** Top-level directories of the host that a "host" base layers under a template's own (read-only below it). */
export const HOST_LAYERED_DIRS = ['usr', 'etc'] as const;

/** Host files a "host"-based template hides (overlayfs whiteouts in its own layer). */
export const HIDDEN_HOST_FILES = ['etc/shadow', 'etc/shadow-', 'etc/gshadow', 'etc/gshadow-', 'etc/sudoers', 'etc/ssh/ssh_host_rsa_key', 'etc/ssh/ssh_host_ecdsa_key', 'etc/ssh/ssh_host_ed25519_key', 'etc/machine-id'];

export interface VolumeInfo {
  readonly base: 'host' | 'own';
}

export function qubeDir(dataDir: string, name: string): string {
  return path.join(dataDir, 'qubes', name);
}

export function privateDir(dataDir: string, name: string): string {
  return path.join(qubeDir(dataDir, name), 'private');
}

/**
 * Makes a private volume if missing: /rw with home/user (owned by user), usrlocal/etc/qubes-rpc, config.
 * Its contents are the qube's: nothing in it is followed ({@link ensureDirBeneath}); a home or
 * usrlocal that is a symlink or a file is refused (the qube then does not start), a config that
 * is one is left alone.
 */
export function ensurePrivate(dataDir: string, name: string): string {
  const p = privateDir(dataDir, name);
  fs.mkdirSync(p, { recursive: true, mode: 0o755 });
  if (!isDirBeneath(p, 'home/user')) {
    const fd = openDirBeneath(p, '.');
    try {
      fs.fchmodSync(fd, 0o755);
    } finally {
      fs.closeSync(fd);
    }
    ensureDirBeneath(p, 'home', { mode: 0o755 });
    ensureDirBeneath(p, 'home/user', { mode: 0o700, owner: QUBE_USER_UID });
  }
  ensureDirBeneath(p, 'usrlocal/etc/qubes-rpc');
  try {
    ensureDirBeneath(p, 'config');
  } catch (e) {
    if (!(e instanceof SandboxError)) throw e;
  }
  return p;
}

export function readVolumeInfo(dataDir: string, name: string): VolumeInfo | undefined {
  try {
    const j = JSON.parse(fs.readFileSync(path.join(qubeDir(dataDir, name), 'volume.json'), 'utf8')) as { base?: unknown };
    return j.base === 'host' || j.base === 'own' ? { base: j.base } : undefined;
  } catch {
    return undefined;
  }
}

function run(cmd: string, args: string[], what: string): void {
  const r = spawnSync(cmd, args, { encoding: 'utf8' });
  if (r.status !== 0) throw new SandboxError('STORAGE', `${what}: ${cmd} ${args.join(' ')}: ${(r.stderr || r.error?.message || `exit ${r.status}`).trim()}`);
}

/** The top-level entries every root gets (mount points and the usual directories). */
const ROOT_DIRS = ['dev', 'proc', 'sys', 'tmp', 'run', 'rw', 'home', 'var', 'var/tmp', 'var/lib', 'var/log', 'var/cache', 'root', 'opt', 'srv', 'mnt', 'media'];

/** The parts of a root that are layered: '' is the top level, then (base "host") usr and etc. */
function parts(info: VolumeInfo): string[] {
  return info.base === 'host' ? ['root', ...HOST_LAYERED_DIRS] : ['root'];
}

/** Committed layer directories of `name`, newest first (relative to its qube directory). */
export function templateLayers(dataDir: string, name: string): string[] {
  let names: string[] = [];
  try {
    names = fs.readdirSync(path.join(qubeDir(dataDir, name), 'layers')).filter((n) => /^\d{4,}$/.test(n));
  } catch {
    /* none */
  }
  return names.sort().reverse().map((n) => path.join('layers', n));
}

/**
 * Commits the layer a TemplateVM (or StandaloneVM) wrote while it ran, once
 * it stopped (and, after a host crash, before its next start): it becomes its
 * newest layer, seen by AppVMs from their next start. An empty one is dropped.
 */
export function commitPendingLayer(dataDir: string, name: string): boolean {
  const q = qubeDir(dataDir, name);
  const pending = path.join(q, 'pending');
  if (!fs.existsSync(pending)) return false;
  let used = false;
  for (const part of fs.readdirSync(pending)) if (fs.readdirSync(path.join(pending, part)).length > 0) used = true;
  if (used) {
    const last = templateLayers(dataDir, name)[0];
    const next = String((last ? Number(path.basename(last)) : 0) + 1).padStart(4, '0');
    fs.mkdirSync(path.join(q, 'layers'), { recursive: true });
    fs.renameSync(pending, path.join(q, 'layers', next));
  } else fs.rmSync(pending, { recursive: true, force: true });
  fs.rmSync(path.join(q, 'work'), { recursive: true, force: true });
  return used;
}

/**
 * Creates the TemplateVM `name` (once): its own root from `source`.
 * "host": a small top level of its own, with the host's /usr and /etc as the
 * read-only layers under its own; the host's top-level links (bin ->
 * usr/bin...) copied; users: `user` (uid 1000) replaces whatever held uid
 * 1000 on the host; the host's secrets (shadow, ssh host keys...) hidden by
 * whiteouts (its first layer). "dir": a copy of the directory. "tarball": unpacked.
 */
export function ensureTemplate(dataDir: string, name: string, source: TemplateSource): VolumeInfo {
  const existing = readVolumeInfo(dataDir, name);
  if (existing) return existing;
  const q = qubeDir(dataDir, name);
  fs.rmSync(q, { recursive: true, force: true });
  const tmpRoot = path.join(q, 'base', 'root');
  fs.mkdirSync(tmpRoot, { recursive: true, mode: 0o755 });
  const base = source.kind === 'host' ? 'host' : 'own';
  if (source.kind === 'dir') run('cp', ['-a', '--', `${source.path}/.`, tmpRoot], `template ${name}`);
  else if (source.kind === 'tarball') run('tar', ['-x', '-f', source.path, '-C', tmpRoot, '--numeric-owner'], `template ${name}`);
  for (const d of ROOT_DIRS) fs.mkdirSync(path.join(tmpRoot, d), { recursive: true });
  fs.chmodSync(path.join(tmpRoot, 'tmp'), 0o1777);
  fs.chmodSync(path.join(tmpRoot, 'root'), 0o700);
  if (!fs.existsSync(path.join(tmpRoot, 'var', 'run'))) fs.symlinkSync('../run', path.join(tmpRoot, 'var', 'run'));
  if (base === 'host') {
    for (const d of HOST_LAYERED_DIRS) fs.mkdirSync(path.join(tmpRoot, d), { recursive: true });
    for (const e of fs.readdirSync('/', { withFileTypes: true })) {
      // merged-/usr links (bin -> usr/bin, lib64 -> usr/lib64...), as on the host
      if (e.isSymbolicLink()) {
        const to = fs.readlinkSync(path.join('/', e.name));
        if (/^\/?usr\//.test(to) && !fs.existsSync(path.join(tmpRoot, e.name))) fs.symlinkSync(to.replace(/^\//, ''), path.join(tmpRoot, e.name));
      }
    }
    const first = path.join(q, 'layers', '0001');
    for (const part of ['root', ...HOST_LAYERED_DIRS]) fs.mkdirSync(path.join(first, part), { recursive: true });
    writeUsers(path.join(first, 'etc'));
    for (const f of HIDDEN_HOST_FILES) {
      if (!fs.existsSync(path.join('/', f))) continue;
      const w = path.join(first, f);
      fs.mkdirSync(path.dirname(w), { recursive: true });
      run('mknod', [w, 'c', '0', '0'], `template ${name}: hiding /${f}`);
    }
  }
  ensurePrivate(dataDir, name);
  fs.writeFileSync(path.join(q, 'volume.json'), `${JSON.stringify({ base })}\n`);
  return { base };
}

/** /etc/passwd and /etc/group of a host-based template: the host's, with `user` as uid/gid 1000 and no other holder of 1000. */
function writeUsers(etcUpper: string): void {
  const fix = (file: string, line: string): void => {
    let lines: string[] = [];
    try {
      lines = fs.readFileSync(path.join('/etc', file), 'utf8').split('\n').filter((l) => l !== '');
    } catch {
      /* no host file */
    }
    lines = lines.filter((l) => {
      const f = l.split(':');
      return f[0] !== 'user' && f[2] !== String(QUBE_USER_UID);
    });
    lines.push(line);
    fs.writeFileSync(path.join(etcUpper, file), `${lines.join('\n')}\n`, { mode: 0o644 });
  };
  fix('passwd', `user:x:${QUBE_USER_UID}:${QUBE_USER_UID}:user:/home/user:/bin/bash`);
  fix('group', `user:x:${QUBE_USER_UID}:`);
}

/** The file that says a TemplateVM or StandaloneVM is running (its sandbox's bwrap pid); see {@link markRunning}. */
function runningMarker(dataDir: string, name: string): string {
  return path.join(qubeDir(dataDir, name), 'running');
}

/**
 * Records that the sandbox `pid` (its bwrap) now runs the root-owning qube
 * `name`, or (pid undefined) that it stopped. Read by {@link isRunning}.
 */
export function markRunning(dataDir: string, name: string, pid: number | undefined): void {
  if (pid === undefined) fs.rmSync(runningMarker(dataDir, name), { force: true });
  else fs.writeFileSync(runningMarker(dataDir, name), `${pid}\n`);
}

/** True when a sandbox of `name` is running (its marker names a live bwrap; a stale one left by a killed host does not count). */
export function isRunning(dataDir: string, name: string): boolean {
  let pid: number;
  try {
    pid = Number(fs.readFileSync(runningMarker(dataDir, name), 'utf8').trim());
  } catch {
    return false;
  }
  if (!Number.isInteger(pid) || pid <= 0) return false;
  try {
    const st = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    return !/\) [ZX] /.test(st) && fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8').includes('bwrap');
  } catch {
    return false;
  }
}

/**
 * A StandaloneVM `name`: its own copy of `template` (base, committed layers
 * and private volume), made once. As Qubes' clone, it needs the template
 * halted: a running one changes its private volume while it is copied (and
 * its own layer is not committed yet), so the copy is refused then.
 */
export function ensureStandalone(dataDir: string, name: string, template: string): VolumeInfo {
  const existing = readVolumeInfo(dataDir, name);
  if (existing) return existing;
  const t = readVolumeInfo(dataDir, template);
  if (!t) throw new SandboxError('STORAGE', `standalone ${name}: template ${template} has no volume`);
  if (isRunning(dataDir, template)) throw new SandboxError('STATE', `standalone ${name}: template ${template} is running; shut it down first (it must be halted to be copied)`);
  // the layer a template left by a host that died while it ran is part of it
  commitPendingLayer(dataDir, template);
  const from = qubeDir(dataDir, template);
  const q = qubeDir(dataDir, name);
  fs.mkdirSync(q, { recursive: true });
  for (const d of ['base', 'layers']) {
    fs.rmSync(path.join(q, d), { recursive: true, force: true });
    if (fs.existsSync(path.join(from, d))) run('cp', ['-a', '--', path.join(from, d), path.join(q, d)], `standalone ${name}`);
  }
  if (!fs.existsSync(path.join(q, 'private')) && fs.existsSync(path.join(from, 'private'))) {
    run('cp', ['-a', '--', path.join(from, 'private'), path.join(q, 'private')], `standalone ${name}`);
  }
  ensurePrivate(dataDir, name);
  fs.writeFileSync(path.join(q, 'volume.json'), `${JSON.stringify(t)}\n`);
  return t;
}

/** What a qube's filesystem view is made of. */
export interface QubeVolumes {
  readonly klass: QubeClass;
  readonly name: string;
  /** AppVM and DispVM: the TemplateVM whose root they see. */
  readonly template?: string;
  /** DispVM: the AppVM (template_for_dispvms) whose private volume it starts from. */
  readonly dispvmTemplate?: string;
}

/** The host-side mounts and the binds of a qube's filesystems. `scratch` is a per-sandbox empty directory. */
export interface VolumeMounts {
  readonly mounts: MountOp[];
  /** The assembled root (a host path inside the mount step's namespace). */
  readonly root: string;
  readonly binds: SandboxBind[];
}

/**
 * The mounts of a qube's view. Throw-away layers live on a tmpfs mounted at
 * `scratch` in the sandbox's private mount namespace: they vanish with it.
 */
export function volumeMounts(dataDir: string, v: QubeVolumes, scratch: string, tmpfsSize?: string): VolumeMounts {
  const mounts: MountOp[] = [{ op: 'tmpfs', target: scratch, ...(tmpfsSize !== undefined ? { size: tmpfsSize } : {}) }];
  const root = path.join(scratch, 'root');
  const binds: SandboxBind[] = [];
  const ownsRoot = v.klass === 'TemplateVM' || v.klass === 'StandaloneVM';
  const rootOwner = ownsRoot ? v.name : v.template;
  if (rootOwner === undefined) throw new SandboxError('BAD_SPEC', `${v.klass} ${v.name} has no template`);
  const info = readVolumeInfo(dataDir, rootOwner);
  if (!info) throw new SandboxError('STORAGE', `${rootOwner}: no root volume (template not created)`);
  const tq = qubeDir(dataDir, rootOwner);
  if (ownsRoot) commitPendingLayer(dataDir, rootOwner); // left by a host that died while it ran
  const layers = templateLayers(dataDir, rootOwner);
  for (const part of parts(info)) {
    const target = part === 'root' ? root : path.join(root, part);
    const below = part === 'root' ? path.join('base', 'root') : path.join('/', part);
    // relative to the qube's directory (the mount step's cwd): short options for many layers
    const lower = [...layers.map((l) => path.join(l, part)).filter((l) => fs.existsSync(path.join(tq, l))), below];
    const upper = ownsRoot ? { dir: path.join(tq, 'pending', part), work: path.join(tq, 'work', part) } : { dir: path.join(scratch, 'upper', part), work: path.join(scratch, 'work', part) };
    mounts.push({ op: 'overlay', target, lower, upper, cwd: tq });
  }
  // /home and /usr/local are directories of the private volume, whose contents are the qube's:
  // they are bound by descriptor (bindBeneath), never by a path the host would resolve
  const sub = ownsRoot ? ['home'] : ['home', 'usrlocal'];
  const inside: Record<string, string> = { home: '/home', usrlocal: '/usr/local' };
  if (v.klass === 'DispVM') {
    if (v.dispvmTemplate === undefined) throw new SandboxError('BAD_SPEC', `DispVM ${v.name} has no dispvm template`);
    // throw-away overlays of its dispvm template's volume (which may be running and changing it)
    const from = ensurePrivate(dataDir, v.dispvmTemplate);
    const priv = path.join(scratch, 'private');
    mounts.push({ op: 'overlay', target: priv, lower: [from], upper: { dir: path.join(scratch, 'upper', 'private'), work: path.join(scratch, 'work', 'private') } });
    binds.push({ source: priv, dest: '/rw', readOnly: false });
    for (const d of sub) {
      const lower = path.join(scratch, 'lower', d);
      const merged = path.join(scratch, 'merged', d);
      mounts.push({ op: 'bindBeneath', base: from, rel: d, target: lower, readOnly: true });
      mounts.push({ op: 'overlay', target: merged, lower: [lower], upper: { dir: path.join(scratch, 'upper', d), work: path.join(scratch, 'work', d) } });
      binds.push({ source: merged, dest: `/rw/${d}`, readOnly: false }, { source: merged, dest: inside[d] ?? `/${d}`, readOnly: false });
    }
  } else {
    const priv = ensurePrivate(dataDir, v.name);
    binds.push({ source: priv, dest: '/rw', readOnly: false });
    for (const d of sub) {
      const at = path.join(scratch, 'bind', d);
      mounts.push({ op: 'bindBeneath', base: priv, rel: d, target: at, readOnly: false });
      binds.push({ source: at, dest: inside[d] ?? `/${d}`, readOnly: false });
    }
  }
  return { mounts, root, binds };
}
