/**
 * What `npm start` suggests trying, as shell commands run from the
 * repository's root in another terminal. `--once` runs the same commands,
 * exactly as printed, and checks what they print.
 */
import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';

export const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../..');

export interface TourStep {
  /** What it shows. */
  readonly what: string;
  /** The shell command, run from the repository's root. */
  readonly command: string;
  /** Its exit status and a pattern its output must match (`--once`). */
  readonly status: number;
  readonly expect: RegExp;
  /** It triggers an ask prompt at the host's terminal; `--once` answers this target. */
  readonly answer?: string;
}

export interface TourOptions {
  /** The host's policy directory (the file the tour edits is in it). */
  readonly policyDir: string;
  /** The host's data dir (the process backend's agent sockets are in it). */
  readonly dataDir: string;
  /** The runtime the host runs qubes with (`bwrap`, `process`). */
  readonly runtime: string;
  /** Printed first when the host does not run with the default data dir. */
  readonly exportLine?: string;
  /** Where the ask is answered (default: in the host terminal). */
  readonly askWhere?: string;
}

const has = (tool: string): boolean => fs.existsSync(path.join(ROOT, 'bin', tool));

/** A command run in qube `vm` as its user, with its output. */
function inQube(vm: string, cmd: string): string {
  if (has('qvm-run')) return `bin/qvm-run -p ${vm} '${cmd}'`;
  return `bin/qrexec-client -d ${vm} 'DEFAULT:${cmd}'`;
}

/** The tour, with the tools there are in bin/. */
export function tourSteps(o: TourOptions): TourStep[] {
  const sandboxed = o.runtime === 'bwrap';
  const steps: TourStep[] = [
    { what: 'the qubes, from qubesd', command: 'bin/qvm-ls', status: 0, expect: /^work +Running +AppVM/m },
    {
      what: sandboxed ? 'a command in work (a sandbox: its own hostname, user and network)' : "a command in work (a plain process: the host's hostname)",
      command: inQube('work', 'cat /etc/hostname'),
      status: 0,
      expect: sandboxed ? /^work$/m : /\S/,
    },
    ...(has('qvm-run')
      ? [
          {
            what: 'a disposable qube from default-dvm, for one command, gone after it',
            command: "bin/qvm-run --dispvm=default-dvm -p 'hostname'",
            status: 0,
            expect: sandboxed ? /^disp\d+$/m : /\S/,
          },
        ]
      : []),
    ...(has('qvm-copy-to-vm') ? copySteps(o, sandboxed) : callSteps(o, sandboxed)),
  ];
  return steps;
}

const editWhat = (o: TourOptions): string =>
  `edit the policy through the Policy API (or edit ${path.join(o.policyDir, '30-user.policy')}: reloaded when saved): allow it without asking`;
const editCommand = (rule: string): string => `{ echo '${rule}'; bin/qubes-policy -g 30-user; } | bin/qubes-policy -r 30-user`;

/** A file copy from work to personal (qvm-copy-to-vm in work, qubes.Filecopy in personal). */
function copySteps(o: TourOptions, sandboxed: boolean): TourStep[] {
  // in a sandbox our commands are on PATH (/run/qrexec-ts/bin); a process qube runs the host's
  const copy = sandboxed ? 'qvm-copy-to-vm' : path.join(ROOT, 'bin', 'qvm-copy-to-vm');
  const send = inQube('work', `echo hello from work > hello.txt && ${copy} personal hello.txt`);
  const read = inQube('personal', 'cat QubesIncoming/work/hello.txt && rm QubesIncoming/work/hello.txt');
  return [
    { what: `copy a file from work to personal: the policy asks, answer ${o.askWhere ?? 'in the host terminal'}`, command: send, status: 0, expect: /^/, answer: 'personal' },
    { what: 'the file in personal (~/QubesIncoming/work/)', command: read, status: 0, expect: /^hello from work$/m },
    { what: editWhat(o), command: editCommand('qubes.Filecopy * work personal allow'), status: 0, expect: /^$/ },
    { what: 'the same copy, allowed now', command: send, status: 0, expect: /^/ },
    { what: 'and the file in personal again', command: read, status: 0, expect: /^hello from work$/m },
    { what: 'how the policy decides it', command: 'bin/qubes-policy --eval qubes.Filecopy work personal', status: 0, expect: /"result": "allow"/ },
  ];
}

/** Without qvm-copy: a call from work to personal (qubes.VMExec+cat, built into the agent). */
function callSteps(o: TourOptions, sandboxed: boolean): TourStep[] {
  // qrexec-client-vm in a qube: the project is bound read-only at /run/qrexec-ts in
  // a sandbox; a process qube is a plain process whose agent socket is in its dir
  const clientVm = sandboxed ? '/run/qrexec-ts/bin/qrexec-client-vm' : `${path.join(ROOT, 'bin', 'qrexec-client-vm')} --agent-socket=${path.join(o.dataDir, 'qubes', 'work', 'agent.sock')}`;
  return [
    {
      what: `work calls personal: the policy asks, answer ${o.askWhere ?? 'in the host terminal'}`,
      command: inQube('work', `echo hello from work | ${clientVm} personal qubes.VMExec+cat`),
      status: 0,
      expect: /hello from work/,
      answer: 'personal',
    },
    { what: editWhat(o), command: editCommand('qubes.VMExec +cat work personal allow'), status: 0, expect: /^$/ },
    { what: 'the same call, allowed now', command: inQube('work', `echo again | ${clientVm} personal qubes.VMExec+cat`), status: 0, expect: /again/ },
    { what: 'how the policy decides it', command: 'bin/qubes-policy --eval qubes.VMExec+cat work personal', status: 0, expect: /"result": "allow"/ },
  ];
}

/** The tour as printed at the start. */
export function tourText(o: TourOptions): string {
  let t = 'Try, in another terminal, from this directory:\n';
  if (o.exportLine) t += `  ${o.exportLine}\n`;
  for (const s of tourSteps(o)) t += `  # ${s.what}\n  ${s.command}\n`;
  return t;
}

export interface StepResult {
  readonly step: TourStep;
  readonly status: number | null;
  readonly output: string;
  readonly ok: boolean;
}

/** Runs one step as printed (`sh -c`), from the repository's root. */
export function runStep(step: TourStep, env: NodeJS.ProcessEnv, timeoutMs = 60_000): Promise<StepResult> {
  return new Promise((resolve) => {
    const p = spawn('/bin/sh', ['-c', step.command], { cwd: ROOT, env, stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    p.stdout.on('data', (d: Buffer) => (out += d.toString()));
    p.stderr.on('data', (d: Buffer) => (out += d.toString()));
    const timer = setTimeout(() => p.kill('SIGKILL'), timeoutMs);
    p.on('close', (code) => {
      clearTimeout(timer);
      resolve({ step, status: code, output: out, ok: code === step.status && step.expect.test(out) });
    });
  });
}
