// Safety of changes: scoped delegation cannot be escaped, policy tests refuse a breaking
// change, two editors racing with one token (exactly one wins), the editor's lint loop,
// and kill -9 during Replace (the file is whole, old or new; the policy always loads).
import { test, beforeEach, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { spawn, spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { PolicyAdmin } from '../../src/policyapi/admin.js';
import { delegationCheck } from '../../src/policyapi/delegation.js';
import { policyTestsCheck } from '../../src/policyapi/policy-tests.js';
import { PolicyClient, type PolicyTransport } from '../../src/policyapi/client.js';
import { policyEditorMain, type Io } from '../../src/policyapi/commands.js';
import { parseSystemInfo } from '../../src/policy/index.js';
import { loadPolicyFromDisk } from '../../src/policy-files/disk.js';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../..');
let dir: string;
beforeEach(() => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'policyapi-safety-'));
  fs.mkdirSync(path.join(dir, 'include'));
});
afterEach(() => fs.rmSync(dir, { recursive: true, force: true }));

let uuids = 0;
const dom = (type: string, tags: string[] = []): object => ({ tags, type, template_for_dispvms: false, default_dispvm: null, icon: 'x', label: 'red', guivm: type === 'AdminVM' ? null : 'dom0', relayvm: null, transport_rpc: null, internal: null, power_state: 'Running', uuid: `00000000-0000-0000-0000-${String(++uuids).padStart(12, '0')}` });
const info = parseSystemInfo({ domains: { dom0: dom('AdminVM'), mgmt: dom('AppVM'), work: dom('AppVM'), vault: dom('AppVM'), m1: dom('AppVM', ['created-by-mgmt']), m2: dom('AppVM', ['created-by-mgmt']) } });

void test('delegation: the management qube may only hold in-scope rules in its own file', () => {
  fs.writeFileSync(path.join(dir, 'delegations.conf'), '# file qube scope\n50-mgmt-work mgmt @tag:created-by-mgmt\n');
  fs.writeFileSync(path.join(dir, '30-user.policy'), 'qubes.X * work vault allow\n');
  fs.writeFileSync(path.join(dir, 'include/inc'), 'qubes.Y * work vault allow\n');
  const admin = new PolicyAdmin({ dir, access: [delegationCheck(dir)] });
  const replace = (who: string, name: string, content: string, service = 'policy.Replace'): { code: number; stderr: string } =>
    admin.handle(service, name, Buffer.from(`any\n${content}`), who);
  const inScope = 'qubes.Filecopy * @tag:created-by-mgmt @tag:created-by-mgmt allow\nqubes.VMShell * @tag:created-by-mgmt @tag:created-by-mgmt deny notify=no\n';
  assert.deepEqual(replace('mgmt', '50-mgmt-work', inScope), { code: 0, stdout: Buffer.alloc(0), stderr: '' });
  const escapes: [string, RegExp][] = [
    ['qubes.Filecopy * @anyvm @tag:created-by-mgmt allow', /source @anyvm is outside the scope/],
    ['qubes.Filecopy * @tag:created-by-mgmt @anyvm allow', /target @anyvm is outside the scope/],
    ['* * @tag:created-by-mgmt * allow', /target \* is outside/],
    ['qubes.Filecopy * * @tag:created-by-mgmt allow', /source \* is outside/],
    ['qubes.Filecopy * @tag:created-by-mgmt @default allow target=vault', /target @default is outside/],
    ['qubes.Filecopy * @tag:created-by-mgmt @tag:created-by-mgmt allow target=vault', /target= cannot be used/],
    ['qubes.Filecopy * @tag:created-by-mgmt @tag:created-by-mgmt ask default_target=vault', /default_target= cannot be used/],
    ['qubes.Filecopy * @tag:created-by-mgmt @dispvm:work allow', /target @dispvm:work is outside/],
    ['qubes.Filecopy * @tag:created-by-mgmt @dispvm allow', /target @dispvm is outside/],
    ['qubes.Filecopy * @tag:created-by-mgmt @adminvm allow', /target @adminvm is outside/],
    ['qubes.Filecopy * @tag:created-by-mgmt uuid:00000000-0000-0000-0000-000000000001 allow', /target uuid:.* is outside/],
    ['qubes.Filecopy * m1 vault allow', /source m1 is outside/],
    ['!include include/inc', /cannot hold directives \(!include\)/],
    ['!include-service qubes.Y * include/inc', /cannot hold directives/],
    ['!compat-4.0', /cannot hold directives/],
    ['qubes.Filecopy * @tag:other @tag:created-by-mgmt allow', /source @tag:other is outside/],
  ];
  for (const [line, why] of escapes) {
    const r = replace('mgmt', '50-mgmt-work', `${inScope}${line}\n`);
    assert.equal(r.code, 1, line);
    assert.match(r.stderr, /^PolicyAdminAccessException 50-mgmt-work is delegated to mgmt within @tag:created-by-mgmt: line 3: /, line);
    assert.match(r.stderr, why, line);
  }
  // other files, include files, removal of others: refused to the delegated qube
  for (const [svc, name] of [['policy.Replace', '30-user'], ['policy.Replace', '10-new'], ['policy.include.Replace', 'inc'], ['policy.include.Replace', '50-mgmt-work']]) {
    const r = replace('mgmt', name as string, inScope, svc);
    assert.equal(r.stderr, 'PolicyAdminAccessException mgmt may only change 50-mgmt-work', `${svc} ${name}`);
  }
  assert.equal(admin.handle('policy.Remove', '30-user', Buffer.from('any'), 'mgmt').stderr, 'PolicyAdminAccessException mgmt may only change 50-mgmt-work');
  assert.equal(fs.readFileSync(path.join(dir, '30-user.policy'), 'utf8'), 'qubes.X * work vault allow\n');
  assert.equal(fs.readFileSync(path.join(dir, '50-mgmt-work.policy'), 'utf8'), inScope);
  // the file stays within its scope whoever writes it; other files are not restricted for others
  assert.equal(replace('dom0', '50-mgmt-work', 'qubes.X * @anyvm @anyvm allow\n').code, 1);
  assert.equal(replace('dom0', '30-user', 'qubes.X * @anyvm @anyvm allow\n').code, 0);
  assert.equal(admin.handle('policy.Remove', '50-mgmt-work', Buffer.from('any'), 'mgmt').code, 0);
});

void test('policy tests: a change that breaks one is refused with the failing lines; the file is unchanged', () => {
  fs.mkdirSync(path.join(dir, 'tests'));
  fs.writeFileSync(path.join(dir, 'tests/basic.test'), '# expectations\nqubes.Filecopy work vault ask\nqubes.Gpg+sign work @default allow target=vault\nqubes.VMShell work vault deny\n');
  fs.writeFileSync(path.join(dir, '30-user.policy'), 'qubes.Filecopy * work vault ask\nqubes.Gpg * work @default allow target=vault\n');
  const admin = new PolicyAdmin({ dir, checks: [policyTestsCheck(dir, () => info)] });
  const ok = admin.handle('policy.Replace', '30-user', Buffer.from('any\nqubes.Filecopy * work vault ask\nqubes.Gpg * work @default allow target=vault\nqubes.X * work vault allow\n'), 'dom0');
  assert.equal(ok.code, 0, ok.stderr);
  const r = admin.handle('policy.Replace', '30-user', Buffer.from('any\nqubes.Filecopy * work vault allow\nqubes.VMShell * work vault allow\nqubes.Gpg * work @default allow target=work\n'), 'dom0');
  assert.equal(r.code, 1);
  assert.equal(
    r.stderr,
    'PolicyAdminTestFailedException Policy tests failed:\n' +
      'basic.test:2: qubes.Filecopy work vault ask: got allow target=vault (30-user.policy:1)\n' +
      'basic.test:3: qubes.Gpg+sign work @default allow target=vault: got deny (30-user.policy:3)\n' +
      'basic.test:4: qubes.VMShell work vault deny: got allow target=vault (30-user.policy:2)',
  );
  assert.match(fs.readFileSync(path.join(dir, '30-user.policy'), 'utf8'), /qubes.X/);
  assert.equal(admin.handle('policy.Remove', '30-user', Buffer.from('any'), 'dom0').code, 1);
});

/** A client of `admin` in this process; Replace waits for `gate` (to line two editors up). */
function localClient(admin: PolicyAdmin, caller: string, gate: Promise<void> = Promise.resolve()): PolicyClient {
  const t: PolicyTransport = {
    call: async (service, arg, payload) => {
      if (service.endsWith('.Replace')) await gate;
      return admin.serve(service, arg ?? '', Buffer.from(payload), caller);
    },
  };
  return new PolicyClient(t);
}
const quietIo = (err: string[]): Io => ({ stdout: () => undefined, stderr: (s) => void err.push(s), stdin: () => '' });

void test('two editors with the same token: exactly one wins, the other gets the token mismatch', async () => {
  fs.writeFileSync(path.join(dir, '30-user.policy'), 'qubes.X * work vault deny\n');
  const admin = new PolicyAdmin({ dir });
  for (let round = 0; round < 10; round++) {
    let fetched = 0;
    let open: () => void = () => undefined;
    const gate = new Promise<void>((r) => (open = r));
    const errs: string[][] = [[], []];
    const runs = [0, 1].map((k) =>
      policyEditorMain(['30-user'], localClient(admin, `editor${k}`, gate), {
        edit: (f) => {
          fs.writeFileSync(f, `# by ${k} in ${round}\nqubes.X * work vault allow\n`);
          if (++fetched === 2) open();
          return true;
        },
        ask: () => Promise.resolve('q'),
        io: quietIo(errs[k] as string[]),
      }),
    );
    const codes = await Promise.all(runs);
    assert.deepEqual([...codes].sort(), [0, 1], `round ${round}`);
    const loser = codes.indexOf(1);
    const winner = 1 - loser;
    assert.match((errs[loser] as string[]).join(''), /^Failed to replace policy '30-user' with file '.*': Token mismatch\n$/);
    assert.equal(fs.readFileSync(path.join(dir, '30-user.policy'), 'utf8'), `# by ${winner} in ${round}\nqubes.X * work vault allow\n`);
  }
});

void test('editor: lint errors ask "What now?"; e edits again, q quits without a change; a new file gets token new', async () => {
  const admin = new PolicyAdmin({ dir });
  const texts = ['bad line\n', 'qubes.X * work vault allow\n'];
  const asked: string[] = [];
  const code = await policyEditorMain(['40-new'], localClient(admin, 'dom0'), {
    edit: (f) => {
      fs.writeFileSync(f, texts.shift() as string);
      return true;
    },
    ask: (p) => {
      asked.push(p);
      return Promise.resolve('e');
    },
    io: quietIo([]),
  });
  assert.equal(code, 0);
  assert.deepEqual(asked, ['What now? ']);
  assert.equal(fs.readFileSync(path.join(dir, '40-new.policy'), 'utf8'), 'qubes.X * work vault allow\n');
  const q = await policyEditorMain(['40-new'], localClient(admin, 'dom0'), {
    edit: (f) => {
      fs.writeFileSync(f, 'still bad\n');
      return true;
    },
    ask: () => Promise.resolve('q'),
    io: quietIo([]),
  });
  assert.equal(q, 0);
  assert.equal(fs.readFileSync(path.join(dir, '40-new.policy'), 'utf8'), 'qubes.X * work vault allow\n');
  // someone created the file after our Get found nothing: token new refuses
  const errs: string[] = [];
  const raced = await policyEditorMain(['50-raced'], localClient(admin, 'dom0'), {
    edit: (f) => {
      fs.writeFileSync(path.join(dir, '50-raced.policy'), 'qubes.Y * work vault deny\n');
      fs.writeFileSync(f, 'qubes.Y * work vault allow\n');
      return true;
    },
    io: quietIo(errs),
  });
  assert.equal(raced, 1);
  assert.match(errs.join(''), /File exists but token is 'new'/);
});

void test('kill -9 during Replace, many times: the file is the old or the new version, whole, and the policy loads', async () => {
  const big = (tag: string): string => Array.from({ length: 4000 }, (_, i) => `# ${tag}\nsvc.S${i} * work vault allow`).join('\n') + '\n';
  const a = big('A');
  const b = big('B');
  fs.writeFileSync(path.join(dir, 'a.txt'), a);
  fs.writeFileSync(path.join(dir, 'b.txt'), b);
  const pdir = path.join(dir, 'p');
  fs.mkdirSync(path.join(pdir, 'include'), { recursive: true });
  fs.writeFileSync(path.join(pdir, '50-big.policy'), a);
  const helper = path.join(path.dirname(fileURLToPath(import.meta.url)), 'replace-loop.js');
  const seen = new Set<string>();
  for (let i = 0; i < 15; i++) {
    const p = spawn(process.execPath, [helper, pdir, path.join(dir, 'a.txt'), path.join(dir, 'b.txt')], { stdio: ['ignore', 'pipe', 'inherit'] });
    await new Promise<void>((r) => p.stdout.once('data', () => r()));
    await new Promise((r) => setTimeout(r, 20 + Math.floor(Math.random() * 200)));
    p.kill('SIGKILL');
    await new Promise((r) => p.once('exit', r));
    const now = fs.readFileSync(path.join(pdir, '50-big.policy'), 'utf8');
    assert.ok(now === a || now === b, `round ${i}: the file is neither version (${now.length} bytes)`);
    seen.add(now === a ? 'A' : 'B');
    assert.equal(loadPolicyFromDisk({ policyDirs: [pdir] }).rules.length, 4000);
    // a killed writer's temporary file is never read as policy, and is removed at the next start
    new PolicyAdmin({ dir: pdir });
    assert.deepEqual(fs.readdirSync(pdir).filter((n) => n.startsWith('.')), []);
  }
  assert.ok(seen.size >= 1);
});

void test('qubes-policy-backup: create, change, restore brings every file back; a backup that would not load is refused', () => {
  const run = (args: string[], input?: string): { status: number | null; stdout: string; stderr: string } =>
    spawnSync(path.join(ROOT, 'bin/qubes-policy-backup'), ['--dir', dir, ...args], { encoding: 'utf8', ...(input !== undefined ? { input } : {}) });
  fs.writeFileSync(path.join(dir, '30-user.policy'), '!include include/inc\n');
  fs.writeFileSync(path.join(dir, 'include/inc'), 'qubes.X * work vault allow\n');
  fs.mkdirSync(path.join(dir, 'tests'));
  fs.writeFileSync(path.join(dir, 'tests/a.test'), 'qubes.X work vault allow\n');
  const backup = path.join(os.tmpdir(), `policy-backup-${process.pid}.json`);
  assert.equal(run(['create', backup]).status, 0);
  fs.writeFileSync(path.join(dir, '30-user.policy'), 'qubes.Y * work vault allow\n');
  fs.rmSync(path.join(dir, 'include/inc'));
  fs.writeFileSync(path.join(dir, '40-extra.policy'), 'qubes.Z * work vault allow\n');
  const r = run(['restore', backup]);
  assert.equal(r.status, 0, r.stderr);
  assert.equal(r.stderr, 'restored 3 files, removed 1\n');
  assert.equal(fs.readFileSync(path.join(dir, '30-user.policy'), 'utf8'), '!include include/inc\n');
  assert.equal(fs.readFileSync(path.join(dir, 'include/inc'), 'utf8'), 'qubes.X * work vault allow\n');
  assert.equal(fs.existsSync(path.join(dir, '40-extra.policy')), false);
  const bad = JSON.parse(fs.readFileSync(backup, 'utf8')) as { files: Record<string, string> };
  delete bad.files['include/inc'];
  const refused = run(['restore', '-'], JSON.stringify(bad));
  assert.equal(refused.status, 1);
  assert.match(refused.stderr, /^qubes-policy-backup: the backed-up policy does not load: .*30-user\.policy:1: /);
  assert.equal(fs.readFileSync(path.join(dir, 'include/inc'), 'utf8'), 'qubes.X * work vault allow\n');
  assert.equal(run(['bogus']).status, 2);
  fs.rmSync(backup);
});
