/**
 * qvm-run in dom0, with the reference's options and behaviour
 * (qubesadmin/tools/qvm_run.py and QubesLocal.run_service in
 * qubesadmin/app.py): the qube is started through qubesd (admin.vm.Start,
 * or unpaused) unless --no-autostart; a `--dispvm[=T]` call creates its
 * DispVM with admin.vm.CreateDisposable and kills it at the end; the command
 * goes to the target's qrexec daemon through `qrexec-client` as
 * `USER:QUBESRPC SERVICE+ARG dom0`: qubes.VMShell with `COMMAND; exit\n` as
 * prefix data, qubes.VMExec(+args) / qubes.VMRootExec / qubes.VMRootShell
 * when the qube's features say it supports them, or any service with
 * --service.
 *
 * Exit status: the highest exit status of the calls; 1 when a qube is not
 * started (--no-autostart) or paused; 255 when qubesd refuses something
 * (the reference's `return -1`); 2 on usage errors.
 */
import { spawn, type ChildProcess, type StdioOptions } from 'node:child_process';
import { constants as osConstants } from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { UsageError } from '../common/args.js';
import { AdminError, AdminTransportError } from '../qubesd-client/client.js';
import type { Qube, QubesApp } from './app.js';
import { COMMON_OPTS, flag, list, value, type Opt, type Parsed } from './argparse.js';
import { isRunning, type ToolSpec } from './common.js';
import { dom0Qrexec } from './qrexec-env.js';

const QREXEC_CLIENT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../cli/qrexec-client.js');

const USAGE =
  'usage: qvm-run [--verbose] [--quiet] [--help] [--user USER] [--autostart] [--no-autostart] [--pass-io] [--localcmd COMMAND] [--gui] [--no-gui] [--colour-output COLOUR] [--colour-stderr COLOUR] [--no-colour-output] [--no-colour-stderr] [--filter-escape-chars] [--no-filter-escape-chars] [--service] [--no-shell] [--dispvm [DISPOSABLE_TEMPLATE] | --all] [--exclude EXCLUDE] [VMNAME] COMMAND ...';

const HELP = `${USAGE}

positional arguments:
  VMNAME                name of the domain
  COMMAND               command or service to run
  ARG                   command arguments (implies --no-shell)

options:
  -h, --help            show this help message and exit
  --verbose, -v         increase verbosity
  --quiet, -q           decrease verbosity
  --user USER, -u USER  run command in a qube as USER (available only from dom0)
  --autostart, --auto, -a
                        option ignored, this is default
  --no-autostart, --no-auto, -n
                        do not autostart/unpause qube
  --pass-io, -p         pass stdio from remote program
  --localcmd COMMAND    with --pass-io, pass stdio to the given program
  --gui                 run the command with GUI (default on if "DISPLAY" is set, guivm property is set and gui feature is True)
  --no-gui, --nogui     run the command without GUI
  --colour-output COLOUR, --color-output COLOUR
                        mark the qube output with given ANSI colour (ie. "31" for red)
  --colour-stderr COLOUR, --color-stderr COLOUR
                        mark the qube stderr with given ANSI colour (ie. "31" for red)
  --no-colour-output, --no-color-output
                        disable colouring the stdio
  --no-colour-stderr, --no-color-stderr
                        disable colouring the stderr
  --filter-escape-chars
                        filter terminal escape sequences (default if output is terminal)
  --no-filter-escape-chars
                        do not filter terminal escape sequences; DANGEROUS when output is a terminal emulator
  --service             run a qrexec service (named by COMMAND) instead of shell command
  --no-shell            treat COMMAND as a simple executable, not a shell command
  --dispvm [DISPOSABLE_TEMPLATE]
                        start a service in new disposable qube; optionally specify a disposable template, else the system default will be used (give it as --dispvm=TEMPLATE)
  --all                 run command on all running qubes
  --exclude EXCLUDE     exclude the qube from --all

Where qrexec is: QREXEC_SOCKET_DIR, VCHAN_SOCKET_DIR and VCHAN_SOCKET_LAYOUT,
else beside the qubesd socket (QUBESD_SOCKET): RUN/qrexec and RUN/vchan.
`;

const OPTS: readonly Opt[] = [
  ...COMMON_OPTS,
  { long: ['user'], short: 'u', nargs: 1 },
  { long: ['autostart', 'auto'], short: 'a', nargs: 0 },
  { long: ['no-autostart', 'no-auto'], short: 'n', nargs: 0, dest: 'no_autostart' },
  { long: ['pass-io'], short: 'p', nargs: 0, dest: 'passio' },
  { long: ['localcmd'], nargs: 1 },
  { long: ['gui'], nargs: 0 },
  { long: ['no-gui', 'nogui'], nargs: 0, dest: 'no_gui' },
  { long: ['colour-output', 'color-output'], nargs: 1, dest: 'color_output' },
  { long: ['colour-stderr', 'color-stderr'], nargs: 1, dest: 'color_stderr' },
  { long: ['no-colour-output', 'no-color-output'], nargs: 0, dest: 'no_color_output' },
  { long: ['no-colour-stderr', 'no-color-stderr'], nargs: 0, dest: 'no_color_stderr' },
  { long: ['filter-escape-chars'], nargs: 0, dest: 'filter_esc' },
  { long: ['no-filter-escape-chars'], nargs: 0, dest: 'no_filter_esc' },
  { long: ['service'], nargs: 0 },
  { long: ['no-shell'], nargs: 0, dest: 'no_shell' },
  { long: ['dispvm'], nargs: '?' },
  { long: ['all'], nargs: 0, dest: 'all_domains' },
  { long: ['exclude'], nargs: 'append' },
];

/** Python's shlex.quote. */
export function shellQuote(s: string): string {
  if (s === '') return "''";
  if (/^[\w@%+=:,./-]+$/.test(s) && /^[\x00-\x7f]*$/.test(s)) return s;
  return `'${s.replace(/'/g, `'"'"'`)}'`;
}

/** qubesadmin.utils.encode_for_vmexec: bytes outside [a-zA-Z0-9_.] as -HH, '-' as '--', args joined by '+'. */
export function encodeForVmexec(args: readonly string[]): string {
  return args
    .map((a) => {
      let out = '';
      for (const b of Buffer.from(a, 'utf8')) {
        const c = String.fromCharCode(b);
        if (/[a-zA-Z0-9_.]/.test(c)) out += c;
        else if (c === '-') out += '--';
        else out += `-${b.toString(16).toUpperCase().padStart(2, '0')}`;
      }
      return out;
    })
    .join('+');
}

/** A qube, or a DispVM to be created from a disposable template (qubesadmin's DispVMWrapper). */
interface Target {
  /** The name the messages use (`@dispvm`, `@dispvm:T` before creation). */
  name: string;
  /** The qube to ask for features (a DispVM's template). */
  readonly featureSource: string;
  readonly qube?: Qube;
  readonly dispvmTemplate?: string | true;
  created?: string;
}

async function checkWithTemplate(app: QubesApp, vm: string, feature: string): Promise<string | undefined> {
  try {
    return await app.call(vm, 'admin.vm.feature.CheckWithTemplate', feature);
  } catch (e) {
    if (e instanceof AdminError && e.excType === 'QubesFeatureNotFoundError') return undefined;
    throw e;
  }
}
const truthy = (v: string | undefined): boolean => v !== undefined && v !== '' && v !== '0' && v.toLowerCase() !== 'false';

async function state(app: QubesApp, vm: string): Promise<string> {
  const r = await app.call(vm, 'admin.vm.CurrentState');
  return /(?:^| )power_state=(\S+)/.exec(r)?.[1] ?? 'NA';
}

async function hasGui(app: QubesApp, vm: string): Promise<boolean> {
  if (process.env['DISPLAY'] === undefined) return false;
  const g = await app.call(vm, 'admin.vm.property.Get', 'guivm').catch(() => '');
  if (!/ type=vm \S/.test(g)) return false;
  const f = await checkWithTemplate(app, vm, 'gui');
  return f === undefined || truthy(f);
}

interface Call {
  readonly service: string;
  readonly user: string | undefined;
  readonly prefix?: string;
}

/** The service, user and prefix data of one call (run_command_single). */
async function planCall(app: QubesApp, t: Target, o: RunOptions): Promise<Call> {
  const useExec = o.cmdArgs.length > 0 || o.noShell;
  let user = o.user;
  let service: string;
  let shellCmd: string | undefined;
  if (o.service) service = o.cmd;
  else if (useExec) {
    const all = [o.cmd, ...o.cmdArgs];
    if (truthy(await checkWithTemplate(app, t.featureSource, 'vmexec'))) {
      service = 'qubes.VMExec';
      if (o.gui && t.dispvmTemplate !== undefined) service = 'qubes.VMExecGUI';
      else if (user === 'root' && truthy(await checkWithTemplate(app, t.featureSource, 'supported-rpc.qubes.VMRootExec'))) {
        service = 'qubes.VMRootExec';
        user = undefined;
      }
      service += `+${encodeForVmexec(all)}`;
    } else {
      service = 'qubes.VMShell';
      if (o.gui && t.dispvmTemplate !== undefined) service += '+WaitForSession';
      shellCmd = all.map(shellQuote).join(' ');
    }
  } else {
    service = 'qubes.VMShell';
    if (o.gui && t.dispvmTemplate !== undefined) service += '+WaitForSession';
    else if (user === 'root' && truthy(await checkWithTemplate(app, t.featureSource, 'supported-rpc.qubes.VMRootExec'))) {
      service = 'qubes.VMRootShell';
      user = undefined;
    }
    shellCmd = o.cmd;
  }
  if (shellCmd === undefined) return { service, user };
  const windows = (await checkWithTemplate(app, t.featureSource, 'os')) === 'Windows';
  const prefix = `${shellCmd.replace(/\n+$/, '')}${windows ? '& exit\n' : '; exit\n'}`;
  if (prefix.includes('\0')) throw new UsageError('prefix_data cannot contain NUL character');
  return { service, user, prefix };
}

interface RunOptions {
  readonly cmd: string;
  readonly cmdArgs: readonly string[];
  readonly user: string | undefined;
  readonly service: boolean;
  readonly noShell: boolean;
  readonly passio: boolean;
  readonly localcmd: string | undefined;
  readonly filterEsc: boolean;
  gui: boolean;
}

/** How `qrexec-client` is run for a call. */
export interface ClientCall {
  /** `-t` / `-T`. */
  readonly filterStdout?: boolean;
  readonly filterStderr?: boolean;
  readonly localcmd?: string;
  /** `-e`: exit once the command is sent. */
  readonly noWait?: boolean;
  readonly prefix?: string;
  /** `-w SECONDS`. */
  readonly timeout?: number;
  readonly stdio: StdioOptions;
}

/**
 * Starts the qube `dest` (admin.vm.Start; a running one is fine), then
 * `qrexec-client -d DEST USER:QUBESRPC SERVICE+ARG dom0` with qrexec found
 * as dom0Qrexec says. The user is DEFAULT unless given.
 */
export async function spawnQrexecClient(app: QubesApp, dest: string, service: string, user: string | undefined, c: ClientCall): Promise<ChildProcess> {
  try {
    await app.call(dest, 'admin.vm.Start');
  } catch (e) {
    if (!(e instanceof AdminError && e.excType === 'QubesVMNotHaltedError')) throw e;
  }
  if (dest === 'dom0') throw new AdminError('QubesException', 'calls to dom0 itself are not supported');
  const xidText = await app.call(dest, 'admin.vm.property.Get', 'xid').catch(() => '');
  const xid = Number(/ (-?\d+)$/.exec(xidText)?.[1] ?? NaN);
  const q = dom0Qrexec(app.transport, Number.isFinite(xid) ? xid : null);
  const args = [`--socket-dir=${q.socketDir}`, '-d', dest];
  if (c.filterStdout) args.push('-t');
  if (c.filterStderr) args.push('-T');
  if (c.localcmd !== undefined) args.push('-l', c.localcmd);
  if (c.noWait) args.push('-e');
  if (c.prefix !== undefined) args.push('-p', c.prefix);
  if (c.timeout !== undefined) args.push('-w', String(c.timeout));
  args.push(`${user ?? 'DEFAULT'}:QUBESRPC ${service}${service.includes('+') ? '' : '+'} dom0`);
  const program = process.env['QREXEC_CLIENT'];
  const [file, argv] = program ? [program, args] : [process.execPath, [QREXEC_CLIENT, ...args]];
  return spawn(file, argv, { stdio: c.stdio, env: { ...process.env, ...q.env } });
}

/** A child's exit status (125 when it could not start, 128+N for a signal). */
export function exitStatus(child: ChildProcess): Promise<number> {
  return new Promise((resolve) => {
    child.on('error', () => resolve(125));
    child.on('exit', (code, sig) => resolve(code ?? 128 + (sig ? (osConstants.signals[sig] ?? 15) : 15)));
  });
}

/** One call of qvm-run; resolves with its exit status. */
async function runService(app: QubesApp, t: Target, call: Call, o: RunOptions, wait: boolean, timeout: number | undefined): Promise<number> {
  const child = await spawnQrexecClient(app, t.created ?? t.qube?.name ?? t.name, call.service, call.user, {
    filterStdout: o.filterEsc,
    filterStderr: o.filterEsc || process.stderr.isTTY === true,
    ...(o.localcmd !== undefined ? { localcmd: o.localcmd } : {}),
    noWait: !wait,
    ...(call.prefix !== undefined ? { prefix: call.prefix } : {}),
    ...(timeout !== undefined ? { timeout } : {}),
    stdio: o.passio ? (o.localcmd !== undefined ? ['ignore', 'ignore', 'inherit'] : 'inherit') : 'ignore',
  });
  return exitStatus(child);
}

function positionals(p: Parsed): { vmname: string | undefined; cmd: string; cmdArgs: string[] } {
  const pos = [...p.positional];
  if (pos.length === 0) throw new UsageError('the following arguments are required: COMMAND, ARG');
  // argparse: VMNAME (optional) takes a string only when COMMAND has one too before the first option-like one
  if (p.leadingArgs >= 2) return { vmname: pos[0], cmd: pos[1] as string, cmdArgs: pos.slice(2) };
  return { vmname: undefined, cmd: pos[0] as string, cmdArgs: pos.slice(1) };
}

export const QVM_RUN: ToolSpec = {
  prog: 'qvm-run',
  usage: USAGE,
  help: HELP,
  opts: OPTS,
  how: { remainder: true },
  async run(p, app, io) {
    const pos = positionals(p);
    const dispvm = p.values.has('dispvm') ? (value(p, 'dispvm') as string) : flag(p, 'dispvm') ? true : undefined;
    if (dispvm !== undefined && flag(p, 'all_domains')) throw new UsageError('argument --all: not allowed with argument --dispvm');
    let { vmname, cmd, cmdArgs } = pos;
    // the reference's "ugly hack": with --dispvm, VMNAME is the command
    if (dispvm !== undefined && vmname !== undefined) {
      cmdArgs = [cmd, ...cmdArgs];
      cmd = vmname;
      vmname = undefined;
    }
    let qubes: Qube[] = [];
    if (vmname !== undefined) {
      const q = await app.get(vmname);
      if (!q) throw new UsageError(`no such domain: '${vmname}'`);
      qubes = [q];
    } else if (flag(p, 'all_domains')) {
      const exclude = list(p, 'exclude');
      qubes = (await app.list()).filter((q) => q.klass !== 'AdminVM' && !exclude.includes(q.name));
    } else if (list(p, 'exclude').length && dispvm === undefined) throw new UsageError('--exclude can only be used with --all');

    const passio = flag(p, 'passio');
    const localcmd = value(p, 'localcmd');
    const filterEsc = flag(p, 'no_filter_esc') ? false : flag(p, 'filter_esc') || process.stdout.isTTY === true;
    let colorOut: string | false | undefined = flag(p, 'no_color_output') ? false : value(p, 'color_output');
    let colorErr: string | false | undefined = flag(p, 'no_color_stderr') ? false : value(p, 'color_stderr');
    if (passio) {
      if (colorOut === undefined && filterEsc) colorOut = '31';
      if (colorErr === undefined && process.stderr.isTTY) colorErr = '31';
    }
    if (qubes.length > 1 && passio && localcmd === undefined) throw new UsageError('--passio cannot be used when more than 1 qube is chosen and no --localcmd is used');
    if (localcmd !== undefined && !passio) throw new UsageError('--localcmd have no effect without --pass-io');
    if (colorOut && !filterEsc) throw new UsageError('--color-output must be used with --filter-escape-chars');
    if (flag(p, 'service') && flag(p, 'no_shell')) throw new UsageError('--no-shell does not apply to --service');

    let verbose = 1 + (p.flags.get('verbose') ?? 0) - (p.flags.get('quiet') ?? 0);
    if (passio) verbose -= 1;
    const say = (msg: string): void => {
      if (verbose > 0) io.err(colorErr ? `\x1b[0m${msg}\x1b[0;${colorErr}m\n` : `${msg}\n`);
    };
    const guiFlag = flag(p, 'no_gui') ? false : flag(p, 'gui') ? true : undefined;
    const o: RunOptions = { cmd, cmdArgs, user: value(p, 'user'), service: flag(p, 'service'), noShell: flag(p, 'no_shell'), passio, localcmd, filterEsc, gui: guiFlag ?? false };

    let targets: Target[];
    if (dispvm !== undefined) {
      if (list(p, 'exclude').length) throw new UsageError('Cannot use --exclude with --dispvm');
      let tmpl = dispvm === true ? null : dispvm;
      if (tmpl === null) {
        const d = await app.call('dom0', 'admin.property.Get', 'default_dispvm').catch(() => '');
        tmpl = / type=vm (\S+)$/.exec(d)?.[1] ?? 'dom0';
      }
      targets = [{ name: dispvm === true ? '@dispvm' : `@dispvm:${dispvm}`, featureSource: tmpl, dispvmTemplate: dispvm }];
      if (guiFlag === undefined) o.gui = await hasGui(app, tmpl);
    } else if (flag(p, 'all_domains')) {
      targets = [];
      for (const q of qubes) {
        const st = await q.powerState();
        if (!isRunning(st) || st === 'Paused' || truthy(await q.feature('internal'))) continue;
        targets.push({ name: q.name, featureSource: q.name, qube: q });
      }
    } else {
      if (qubes.length !== 1) throw new UsageError('');
      targets = [{ name: (qubes[0] as Qube).name, featureSource: (qubes[0] as Qube).name, qube: qubes[0] as Qube }];
      if (guiFlag === undefined) o.gui = await hasGui(app, (qubes[0] as Qube).name);
    }

    if (colorOut) io.out(`\x1b[0;${colorOut}m`);
    if (colorErr) io.err(`\x1b[0;${colorErr}m`);
    let retcode = 0;
    const running: Promise<[Target, number]>[] = [];
    try {
      for (const t of targets) {
        if (t.qube) {
          const st = await state(app, t.name);
          if (flag(p, 'no_autostart') && !isRunning(st)) {
            say(`Qube '${t.name}' not started`);
            retcode = Math.max(retcode, 1);
            continue;
          }
          if (st === 'Paused') {
            if (flag(p, 'no_autostart')) {
              say(`Qube '${t.name}' is paused`);
              retcode = Math.max(retcode, 1);
              continue;
            }
            try {
              await app.call(t.name, 'admin.vm.Unpause');
            } catch (e) {
              if (!(e instanceof AdminError)) throw e;
              say(`Qube '${t.name}' cannot be unpaused`);
              retcode = Math.max(retcode, 1);
              continue;
            }
          }
        }
        try {
          say(`Running '${o.cmd}' on ${t.name}`);
          if (!t.dispvmTemplate && o.gui) {
            const user = (await app.call(t.name, 'admin.vm.property.Get', 'default_user')).replace(/^.* type=str ?/, '');
            await runService(app, t, { service: 'qubes.WaitForSession', user: undefined, prefix: `${user}\n` }, { ...o, passio: false }, true, undefined);
          }
          const call = await planCall(app, t, o);
          let timeout: number | undefined;
          if (t.dispvmTemplate !== undefined) {
            t.created = await app.call(t.dispvmTemplate === true ? 'dom0' : t.dispvmTemplate, 'admin.vm.CreateDisposable');
            const to = await app.call(t.created, 'admin.vm.property.Get', 'qrexec_timeout').catch(() => '');
            const n = / (\d+)$/.exec(to)?.[1];
            if (n !== undefined) timeout = Number(n);
          }
          const wait = !(passio === false && localcmd === undefined && o.service && t.dispvmTemplate === undefined);
          running.push(runService(app, t, call, o, wait, timeout).then((c) => [t, c] as [Target, number]));
        } catch (e) {
          if (e instanceof AdminError || e instanceof AdminTransportError) {
            if (colorOut) io.out('\x1b[0m');
            io.err(`${t.name}: ${e.message}\n`);
            retcode = 255;
            return retcode;
          }
          throw e;
        }
      }
      for (const [t, code] of await Promise.all(running)) {
        if (code) say(`${t.name}: command failed with code: ${code}`);
        retcode = Math.max(retcode, code);
      }
    } finally {
      for (const t of targets) {
        if (t.created === undefined) continue;
        try {
          await app.call(t.created, 'admin.vm.Kill');
        } catch (e) {
          if (!(e instanceof AdminError)) throw e;
        }
      }
      if (colorOut) io.out('\x1b[0m');
      if (colorErr) io.err('\x1b[0m');
    }
    return retcode;
  },
};
