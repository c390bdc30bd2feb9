/**
 * What one sandbox is made of, as data, and the command line that makes it:
 * a host-side mount step (a shell in a private mount namespace of its own:
 * tmpfs and overlayfs mounts that exist only there and vanish with the
 * sandbox, since bubblewrap 0.8 has no overlay options), optionally entering a
 * network namespace the host prepared, then `bwrap` with new mount, pid, ipc,
 * uts and net namespaces.
 *
 * Everything here is pure (no system calls), so the exact view a qube gets
 * can be read and tested.
 */
import { SandboxError } from './errors.js';

/** One host-side mount of the mount step, in order. Paths are host paths. */
export type MountOp =
  | { readonly op: 'tmpfs'; readonly target: string; readonly size?: string }
  /** overlayfs: `lower` first is the top; without `upper` the mount is read-only (needs two lowers, else use bind). */
  | {
      readonly op: 'overlay';
      readonly target: string;
      /** Relative entries are taken from `cwd`. */
      readonly lower: readonly string[];
      readonly upper?: { readonly dir: string; readonly work: string };
      readonly cwd?: string;
    }
  | { readonly op: 'bind'; readonly source: string; readonly target: string; readonly readOnly: boolean }
  /**
   * A bind of directory `rel` beneath `base` where the qube may have put symlinks: the host
   * opens it without following any (see beneath.ts) and the mount step binds that directory.
   * mount(2) cannot bind a descriptor of another mount namespace, so the mount step binds the
   * path the descriptor has now and then checks that what got mounted is the very directory of
   * the descriptor (device and inode; as bwrap's --bind-fd does), else it undoes it and fails.
   * Nothing runs in between, and the descriptor is closed before the sandbox starts.
   */
  | { readonly op: 'bindBeneath'; readonly base: string; readonly rel: string; readonly target: string; readonly readOnly: boolean }
  | { readonly op: 'mkdir'; readonly path: string }
  /** Writes our pid to a cgroup's `cgroup.procs` before anything else runs. */
  | { readonly op: 'cgroup'; readonly procs: string };

/** A bind of the sandbox: `source` (host path, after the mount step) at `dest` (inside). */
export interface SandboxBind {
  readonly source: string;
  readonly dest: string;
  readonly readOnly: boolean;
}

/** Capabilities the sandbox's root keeps (every other one is dropped). */
export const SANDBOX_CAPS: readonly string[] = ['CAP_SETUID', 'CAP_SETGID', 'CAP_KILL', 'CAP_CHOWN', 'CAP_DAC_OVERRIDE', 'CAP_FOWNER'];

/** One sandbox. */
export interface SandboxPlan {
  /** The qube's name: hostname inside. */
  readonly name: string;
  /** Host-side mounts, in order (may be empty). */
  readonly mounts: readonly MountOp[];
  /** The host directory that becomes `/` (after `mounts`). */
  readonly root: string;
  /** Further binds inside, in order (after /, /proc, /dev, /tmp, /run). */
  readonly binds: readonly SandboxBind[];
  /** Small files written inside: dest -> host file with the content (bound read-only). */
  readonly files?: readonly SandboxBind[];
  /** Directories made inside (on the sandbox's tmpfs /run, for example). */
  readonly dirs?: readonly string[];
  /** A network namespace (path, e.g. /run/netns/X) to run in; none: a new one with only loopback. */
  readonly netns?: string;
  /** Environment inside (nothing of the host's is kept). */
  readonly env: Readonly<Record<string, string>>;
  /** The command (inside paths). */
  readonly command: readonly string[];
  /** Descriptor (in the launched process) on which bwrap writes its JSON info (child-pid). */
  readonly infoFd?: number;
  /** Capabilities kept by the sandbox's root (default SANDBOX_CAPS). */
  readonly caps?: readonly string[];
  readonly chdir?: string;
}

/** The whole command line: [program, ...args]. */
export interface LaunchCommand {
  readonly file: string;
  readonly args: readonly string[];
  /**
   * Directories to open (beneath.ts) and give the launched process as
   * descriptors FIRST_BENEATH_FD, FIRST_BENEATH_FD + 1...: the mount step binds and closes them.
   */
  readonly fds: readonly { readonly base: string; readonly rel: string }[];
}

/** The launched process's first descriptor of {@link LaunchCommand.fds} (0-2 stdio, 3 bwrap's info, 4 the lifeline). */
export const FIRST_BENEATH_FD = 5;

/**
 * The host-side mount step: interprets its arguments as mount operations up
 * to `--`, then execs the rest. Paths arrive as separate arguments (no
 * quoting problems); overlay option strings are checked by {@link planCheck}.
 */
export const MOUNT_STEP_SCRIPT = `set -e
while [ "$#" -gt 0 ]; do
  op=$1; shift
  case $op in
    --) break ;;
    C) echo $$ > "$1"; shift ;;
    D) mkdir -p -- "$1"; shift ;;
    T) mkdir -p -- "$1"; mount -t tmpfs -o "mode=0755$2" tmpfs "$1"; shift 2 ;;
    O) mkdir -p -- "$1"
       if [ -n "$3" ]; then mkdir -p -- "$3" "$4"; (cd "$5" && mount -t overlay overlay -o "lowerdir=$2,upperdir=$3,workdir=$4" "$1")
       else (cd "$5" && mount -t overlay overlay -o "lowerdir=$2" "$1"); fi
       shift 5 ;;
    B) mkdir -p -- "$2"; mount --bind -- "$1" "$2"; if [ "$3" = ro ]; then mount -o remount,bind,ro -- "$2"; fi; shift 3 ;;
    F) mkdir -p -- "$2"; mount --bind "/proc/self/fd/$1" "$2"
       if [ "$(stat -L -c %d:%i "/proc/self/fd/$1")" != "$(stat -c %d:%i -- "$2")" ]; then
         umount -l -- "$2"; echo "mount step: $2 is not the directory the host opened" >&2; exit 1
       fi
       eval "exec $1<&-"
       if [ "$3" = ro ]; then mount -o remount,bind,ro -- "$2"; fi; shift 3 ;;
    *) echo "mount step: bad operation $op" >&2; exit 1 ;;
  esac
done
exec "$@"
`;

const BAD_OVERLAY_CHARS = /[,:\n\\]/;

/** Rejects plans the mount step could misread (overlay paths holding `,` `:`, relative paths, a bad name). */
export function planCheck(p: SandboxPlan): void {
  if (!/^[A-Za-z][A-Za-z0-9_.-]{0,62}$/.test(p.name)) throw new SandboxError('BAD_SPEC', `bad qube name '${p.name}'`);
  const abs = (x: string, what: string): void => {
    if (!x.startsWith('/') || x.includes('\n') || x.includes('\0')) throw new SandboxError('BAD_SPEC', `${what}: not an absolute path: ${JSON.stringify(x)}`);
  };
  for (const m of p.mounts) {
    if (m.op === 'overlay') {
      for (const d of [m.target, ...m.lower, ...(m.upper ? [m.upper.dir, m.upper.work] : [])]) {
        if (m.cwd === undefined || !m.lower.includes(d) || d.startsWith('/')) abs(d, 'overlay');
        else if (d.split('/').includes('..') || d === '') throw new SandboxError('BAD_SPEC', `overlay lower ${d}: bad relative path`);
        if (BAD_OVERLAY_CHARS.test(d)) throw new SandboxError('BAD_SPEC', `overlay path holds one of , : \\ or a newline: ${d}`);
      }
      if (m.cwd !== undefined) abs(m.cwd, 'overlay cwd');
      if (m.lower.length === 0 || (!m.upper && m.lower.length < 2)) throw new SandboxError('BAD_SPEC', `overlay ${m.target}: a read-only overlay needs two lower layers (use a read-only bind)`);
    } else if (m.op === 'bind') {
      abs(m.source, 'bind');
      abs(m.target, 'bind');
    } else if (m.op === 'bindBeneath') {
      abs(m.base, 'bind base');
      abs(m.target, 'bind');
      if (m.rel === '' || m.rel.startsWith('/') || m.rel.split('/').includes('..')) throw new SandboxError('BAD_SPEC', `bind beneath ${m.base}: bad relative path ${m.rel}`);
    } else if (m.op === 'tmpfs') {
      abs(m.target, 'tmpfs');
      if (m.size !== undefined && !/^[0-9]+[kmg%]?$/.test(m.size)) throw new SandboxError('BAD_SPEC', `bad tmpfs size ${m.size}`);
    } else if (m.op === 'mkdir') abs(m.path, 'mkdir');
    else abs(m.procs, 'cgroup');
  }
  abs(p.root, 'root');
  for (const b of [...p.binds, ...(p.files ?? [])]) {
    abs(b.source, 'bind source');
    abs(b.dest, 'bind destination');
  }
  if (p.command.length === 0) throw new SandboxError('BAD_SPEC', 'no command');
}

function mountArgs(m: MountOp, fds: { base: string; rel: string }[]): string[] {
  switch (m.op) {
    case 'bindBeneath':
      fds.push({ base: m.base, rel: m.rel });
      return ['F', String(FIRST_BENEATH_FD + fds.length - 1), m.target, m.readOnly ? 'ro' : 'rw'];
    case 'cgroup':
      return ['C', m.procs];
    case 'mkdir':
      return ['D', m.path];
    case 'tmpfs':
      return ['T', m.target, m.size !== undefined ? `,size=${m.size}` : ''];
    case 'overlay':
      return ['O', m.target, m.lower.join(':'), m.upper?.dir ?? '', m.upper?.work ?? '', m.cwd ?? '/'];
    case 'bind':
      return ['B', m.source, m.target, m.readOnly ? 'ro' : 'rw'];
  }
}

/** bwrap's arguments for the plan (after the program name). */
export function bwrapArgs(p: SandboxPlan): string[] {
  const a: string[] = [
    '--die-with-parent',
    '--new-session',
    '--unshare-ipc',
    '--unshare-pid',
    '--unshare-uts',
    '--unshare-cgroup-try',
    ...(p.netns === undefined ? ['--unshare-net'] : []),
    '--hostname',
    p.name,
    '--bind',
    p.root,
    '/',
    '--proc',
    '/proc',
    '--dev',
    '/dev',
    // /tmp and /dev/shm are everyone's, sticky, as on a Qubes qube (services run as `user`)
    '--perms',
    '1777',
    '--tmpfs',
    '/tmp',
    '--tmpfs',
    '/run',
    '--perms',
    '1777',
    '--tmpfs',
    '/dev/shm',
  ];
  for (const d of p.dirs ?? []) a.push('--perms', '0755', '--dir', d);
  for (const b of p.binds) a.push(b.readOnly ? '--ro-bind' : '--bind', b.source, b.dest);
  for (const f of p.files ?? []) a.push('--ro-bind', f.source, f.dest);
  a.push('--cap-drop', 'ALL');
  for (const c of p.caps ?? SANDBOX_CAPS) a.push('--cap-add', c);
  a.push('--clearenv');
  for (const [k, v] of Object.entries(p.env)) a.push('--setenv', k, v);
  a.push('--chdir', p.chdir ?? '/');
  if (p.infoFd !== undefined) a.push('--info-fd', String(p.infoFd));
  a.push('--', ...p.command);
  return a;
}

/** The programs a launch command runs. */
export interface LaunchTools {
  readonly bwrap: string;
  readonly unshare: string;
  readonly nsenter: string;
  readonly sh: string;
  /** native/build/qrexec-mountstep: the mount step in one exec (same operations, `N NS` enters the network namespace). */
  readonly mountstep?: string;
}

/**
 * The full command: the mount step, then bwrap. With native/qrexec-mountstep
 * built, that one program makes its private mount namespace, does the mounts,
 * enters the prepared network namespace (`N NS`) and execs bwrap. Without it,
 * `unshare --mount --propagation private sh -c SCRIPT` doing the mounts, then
 * (with a prepared network namespace) `nsenter --net=NS`, then bwrap: the
 * same steps, but a fork and exec of mkdir, mount or stat for each.
 * Without host-side mounts and network namespace, just bwrap.
 */
export function launchCommand(p: SandboxPlan, tools: LaunchTools): LaunchCommand {
  planCheck(p);
  const bw = [tools.bwrap, ...bwrapArgs(p)];
  if (p.mounts.length === 0 && p.netns === undefined) return { file: tools.bwrap, args: bwrapArgs(p), fds: [] };
  const fds: { base: string; rel: string }[] = [];
  const ops = p.mounts.flatMap((m) => mountArgs(m, fds));
  if (tools.mountstep !== undefined) return { file: tools.mountstep, args: [...ops, ...(p.netns !== undefined ? ['N', p.netns] : []), '--', ...bw], fds };
  const tail = p.netns !== undefined ? [tools.nsenter, `--net=${p.netns}`, '--', ...bw] : bw;
  return { file: tools.unshare, args: ['--mount', '--propagation', 'private', '--', tools.sh, '-c', MOUNT_STEP_SCRIPT, 'qrexec-sandbox', ...ops, '--', ...tail], fds };
}
