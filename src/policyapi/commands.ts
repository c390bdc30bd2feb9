/**
 * `qubes-policy` and `qubes-policy-editor` (reference
 * qrexec/tools/qubes_policy.py, qubes_policy_editor.py): the logic; src/cli
 * holds the entry points.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { spawnSync } from 'node:child_process';
import { createInterface } from 'node:readline';
import { UsageError } from '../common/args.js';
import { formatDiagnostic, lintPolicyText } from '../policy/index.js';
import { PolicyAdminException, PolicyAdminFileNotFoundException } from './errors.js';
import { PolicyCallFailed, PolicyClient, PolicyTransportError } from './client.js';
import { formatImpactDiff } from './diff.js';

export const QUBES_POLICY_USAGE = `usage: qubes-policy {[-l]|-g|-r|-d} [include/][RPCNAME[+ARGUMENT]]
       qubes-policy {-r|-d} --diff [include/]NAME
       qubes-policy --eval SERVICE[+ARG] SOURCE TARGET
       qubes-policy --log [include/]NAME | --show TOKEN | --restore TOKEN [include/]NAME`;
export const QUBES_POLICY_HELP = `${QUBES_POLICY_USAGE}

List, print, replace or remove policy files through the Policy API (dom0
policy.List/Get/Replace/Remove; policy.include.* with "include/").

positional arguments:
  [include/][name]  a policy file name (no ".policy"); with "include/", a file
                    of the include subdirectory

options:
  -h, --help        show this help message and exit
  -l, --list        list present policy files (the default)
  -g, --get         print the content of the policy file
  -r, --replace     replace the file with standard input (token "any")
  -d, --remove      remove the file

ours (not in the reference):
  --diff            with -r or -d: change nothing, print every decision the
                    change would change for the qubes that exist now
                    (service, argument, source -> target: old => new),
                    grouped and counted (policy.Diff)
  --eval            explain how the policy decides SERVICE[+ARG] from SOURCE
                    to TARGET, as qrexec-policy-explain --json (policy.Eval)
  --log             the accepted changes of a file: time, who, service,
                    old token -> new token (policy.History)
  --show TOKEN      print a kept version (policy.Show)
  --restore TOKEN   replace the file with a kept version, validated and
                    checked as any Replace

In dom0 the calls go to the host's policy API socket
($QUBES_POLICY_API_SOCKET, default /var/run/qubes/policy-admin.sock); in a
qube through qrexec-client-vm dom0 ($QREXEC_CLIENT_VM), as the policy allows.
`;

const RPCNAME = /^[A-Za-z0-9.+\-_]*$/;

export interface Io {
  readonly stdout: (s: string) => void;
  readonly stderr: (s: string) => void;
  readonly stdin: () => string;
}

export const processIo: Io = {
  stdout: (s) => process.stdout.write(s),
  stderr: (s) => process.stderr.write(s),
  stdin: () => fs.readFileSync(0, 'utf8'),
};

/** Splits `include/NAME`; checks the characters. */
export function splitName(raw: string): { name: string; include: boolean } {
  let name = raw;
  let include = false;
  if (name === 'include' || name.startsWith('include/')) {
    name = name.slice('include/'.length);
    include = true;
  }
  if (!RPCNAME.test(name)) {
    const bad = [...new Set([...name].filter((c) => !RPCNAME.test(c)))].sort().join('');
    throw new UsageError(`invalid character(s) in RPCNAME: '${bad}'`);
  }
  return { name, include };
}

/** qubes-policy: returns the exit status. @throws UsageError */
export async function qubesPolicyMain(argv: readonly string[], client: PolicyClient, io: Io = processIo): Promise<number> {
  type MethodName = 'list' | 'get' | 'replace' | 'remove';
  let method = 'list' as MethodName;
  const pos: string[] = [];
  let diff = false;
  let evalCall = false;
  let history: 'log' | 'show' | 'restore' | null = null;
  const flags: Record<string, MethodName> = { '-l': 'list', '--list': 'list', '-g': 'get', '--get': 'get', '-r': 'replace', '--replace': 'replace', '-d': 'remove', '--remove': 'remove' };
  for (const a of argv) {
    const f = flags[a];
    if (f) method = f;
    else if (a === '--diff') diff = true;
    else if (a === '--eval') evalCall = true;
    else if (a === '--log' || a === '--show' || a === '--restore') history = a.slice(2) as 'log' | 'show' | 'restore';
    else if (a.startsWith('-') && a !== '-') throw new UsageError(`unrecognized arguments: ${a}`);
    else pos.push(a);
  }
  if (evalCall) {
    if (pos.length !== 3) throw new UsageError('--eval needs SERVICE[+ARG] SOURCE TARGET');
    try {
      io.stdout(JSON.stringify(await client.eval(pos[0] as string, pos[1] as string, pos[2] as string), null, 2) + '\n');
    } catch (e) {
      return reportFailure(e, io);
    }
    return 0;
  }
  if (history !== null) return historyCommand(history, pos, client, io);
  if (diff && method !== 'replace' && method !== 'remove') throw new UsageError('--diff works with -r or -d');
  if (pos.length > 1) throw new UsageError(`unrecognized arguments: ${pos.slice(1).join(' ')}`);
  const { name, include } = pos[0] ? splitName(pos[0]) : { name: '', include: false };
  if (method === 'list' && name) throw new UsageError("--list doesn't work with a file name");
  if (method !== 'list' && !name) throw new UsageError('you need to provide a file name');
  try {
    switch (method) {
      case 'list':
        io.stdout((await client.list(include)).join('\n') + '\n');
        break;
      case 'get': {
        const [content] = await client.get(name, include);
        io.stdout(content.replace(/\s+$/, '') + '\n');
        break;
      }
      case 'replace':
        if (diff) io.stdout(formatImpactDiff(await client.diff(name, io.stdin(), 'any', include)));
        else await client.replace(name, io.stdin(), 'any', include);
        break;
      case 'remove':
        if (diff) io.stdout(formatImpactDiff(await client.diff(name, null, 'any', include)));
        else await client.remove(name, 'any', include);
        break;
    }
  } catch (e) {
    return reportFailure(e, io);
  }
  return 0;
}

async function historyCommand(what: 'log' | 'show' | 'restore', pos: readonly string[], client: PolicyClient, io: Io): Promise<number> {
  const want = what === 'restore' ? 2 : 1;
  if (pos.length !== want) throw new UsageError(what === 'restore' ? '--restore needs TOKEN [include/]NAME' : `--${what} needs ${what === 'log' ? '[include/]NAME' : 'TOKEN'}`);
  try {
    if (what === 'log') {
      const { name, include } = splitName(pos[0] as string);
      for (const e of await client.history(name, include)) {
        io.stdout(`${new Date(e.timeMs).toISOString()} ${e.caller} ${e.service} ${e.old ?? 'none'} -> ${e.new ?? 'removed'}\n`);
      }
    } else if (what === 'show') {
      io.stdout((await client.show(pos[0] as string))[0]);
    } else {
      const { name, include } = splitName(pos[1] as string);
      const [content] = await client.show(pos[0] as string);
      await client.replace(name, content, 'any', include);
    }
  } catch (e) {
    return reportFailure(e, io);
  }
  return 0;
}

/** The reference's handling of a failed call: the exception's message, or "Command failed" and the output. */
export function reportFailure(e: unknown, io: Io, prog = 'qubes-policy'): number {
  if (e instanceof PolicyTransportError) {
    io.stderr(`${prog}: ${e.message}\n`);
    return 1;
  }
  if (e instanceof PolicyAdminException) {
    io.stderr(e.message + '\n');
    return 1;
  }
  if (e instanceof PolicyCallFailed) {
    io.stderr('Command failed\n');
    const out = e.stdout.replace(/\s+$/, '');
    if (out) io.stderr(out + '\n');
    if (e.stderr.trim()) io.stderr(e.stderr.trim() + '\n');
    return 1;
  }
  io.stderr(`${e instanceof Error ? e.message : String(e)}\n`);
  return 1;
}

export const EDITOR_USAGE = 'usage: qubes-policy-editor [-h] [[include/]FILE]';
export const EDITOR_HELP = `${EDITOR_USAGE}

Edit a policy file safely: fetch it through the Policy API, open it in
$VISUAL, else $EDITOR, else vi; check it (qubes-policy-lint) and, on errors,
ask "What now?" ((e)dit again, (q)uit without saving); then replace it with
the token of the version fetched, so that a change made meanwhile by someone
else is reported instead of overwritten.

positional arguments:
  [include/]FILE  the file to edit, without ".policy" (default 30-user)

options:
  -h, --help      show this help message and exit
`;

export interface EditorHooks {
  /** Runs the editor on a file; false when it failed. */
  readonly edit?: (file: string) => boolean;
  /** Asks the user; null at end of input. */
  readonly ask?: (prompt: string) => Promise<string | null>;
  readonly io?: Io;
}

/** qubes-policy-editor: returns the exit status. @throws UsageError */
export async function policyEditorMain(argv: readonly string[], client: PolicyClient, hooks: EditorHooks = {}): Promise<number> {
  const io = hooks.io ?? processIo;
  if (argv.length > 1) throw new UsageError(`unrecognized arguments: ${argv.slice(1).join(' ')}`);
  if (argv[0]?.startsWith('-')) throw new UsageError(`unrecognized arguments: ${argv[0]}`);
  const raw = argv[0] ?? '30-user';
  const split = splitName(raw);
  const include = split.include;
  const name = split.name.endsWith('.policy') ? split.name.slice(0, -'.policy'.length) : split.name;
  const edit = hooks.edit ?? runEditor;
  const ask = hooks.ask ?? askLine;
  // Get, not List: a management qube may be allowed one file and not the list
  let token = 'new';
  let content = '';
  try {
    [content, token] = await client.get(name, include);
  } catch (e) {
    if (e instanceof PolicyTransportError) return reportFailure(e, io, 'qubes-policy-editor');
    if (!(e instanceof PolicyAdminFileNotFoundException)) {
      io.stderr(`Failed to get policy '${name}': ${e instanceof Error ? e.message : String(e)}\n`);
      return 1;
    }
  }
  const tmpDir = fs.mkdtempSync(path.join(os.tmpdir(), 'qubes-policy-editor-'));
  const tmp = path.join(tmpDir, include ? `include_${name}` : `${name}.policy`);
  try {
    fs.writeFileSync(tmp, content);
    for (;;) {
      if (!edit(tmp)) {
        io.stderr('Failed to open editor\n');
        return 1;
      }
      const errors = lintPolicyText(fs.readFileSync(tmp), tmp, { includeService: include }).filter((d) => d.severity === 'error');
      if (errors.length === 0) break;
      io.stdout(errors.map((d) => formatDiagnostic(d, true)).join('\n') + '\n');
      io.stderr('Linting failed, do you want to:\n  (e)dit again\n  (q)uit without saving changes?\n');
      let reply: string | null;
      do {
        reply = await ask('What now? ');
        if (reply === null || reply === 'q') return 0;
      } while (reply !== 'e');
    }
    try {
      await client.replace(name, fs.readFileSync(tmp, 'utf8'), token, include);
    } catch (e) {
      // keep the edited text: the user may want it
      const keep = path.join(os.tmpdir(), `qubes-policy-editor-${process.pid}-${path.basename(tmp)}`);
      fs.copyFileSync(tmp, keep);
      io.stderr(`Failed to replace policy '${name}' with file '${keep}': ${e instanceof Error ? e.message : String(e)}\n`);
      return 1;
    }
    return 0;
  } finally {
    fs.rmSync(tmpDir, { recursive: true, force: true });
  }
}

function runEditor(file: string): boolean {
  const r = spawnSync('/bin/sh', ['-c', '${VISUAL:-${EDITOR:-vi}} -- "$1"', 'sh', file], { stdio: 'inherit' });
  return r.status === 0;
}

function askLine(prompt: string): Promise<string | null> {
  process.stderr.write(prompt);
  return new Promise((resolve) => {
    const rl = createInterface({ input: process.stdin });
    let done = false;
    rl.once('line', (l) => {
      done = true;
      rl.close();
      resolve(l);
    });
    rl.once('close', () => {
      if (!done) resolve(null);
    });
  });
}
