/**
 * The Admin API from inside a qube, through qrexec under policy: a qube
 * started by bin/qubesd (process backend) calls `qrexec-client-vm dom0
 * admin.…`; its qrexec daemon asks the policy daemon, runs the dom0 socket
 * service RUN/qubes-rpc/admin.… (a symlink to qubesd.sock), and qubesd sees
 * the calling qube as the source — never a name the qube sends.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { raw, req } from './helpers.js';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../..');

function run(cmd: string, args: string[], env: NodeJS.ProcessEnv, input = ''): Promise<{ code: number | null; out: Buffer }> {
  return new Promise((resolve) => {
    const p = spawn(cmd, args, { env, stdio: ['pipe', 'pipe', 'ignore'] });
    const out: Buffer[] = [];
    p.stdout.on('data', (c: Buffer) => out.push(c));
    p.stdin.on('error', () => undefined);
    p.stdin.end(input);
    p.on('close', (code) => resolve({ code, out: Buffer.concat(out) }));
  });
}

test('admin.* from a qube through qrexec: policy decides, qubesd sees the calling qube as the source', { timeout: 90000 }, async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'qubesd-qrexec-'));
  const runDir = path.join(dir, 'run');
  const policyDir = path.join(dir, 'policy');
  fs.mkdirSync(policyDir);
  fs.writeFileSync(
    path.join(policyDir, '50-test.policy'),
    'admin.vm.List      *  mgmt  @adminvm  allow target=dom0\n' +
      'admin.vm.tag.Set   *  mgmt  work      allow target=dom0\n' +
      'admin.vm.tag.List  *  mgmt  work      allow target=dom0\n' +
      'admin.vm.property.Get * mgmt @anyvm deny notify=no\n',
  );
  const procs: ChildProcess[] = [];
  const policySock = path.join(runDir, 'policy.sock');
  try {
    const qd = spawn(process.execPath, [path.join(ROOT, 'bin/qubesd'), '--data-dir', path.join(dir, 'data'), '--run-dir', runDir], {
      stdio: 'ignore',
      env: { ...process.env, QREXEC_POLICY_SOCKET: policySock },
    });
    procs.push(qd);
    const sock = path.join(runDir, 'qubesd.sock');
    for (let i = 0; i < 300 && !(await raw(sock, req('admin.vm.List')).then((r) => r.data.length > 0, () => false)); i++) await new Promise((r) => setTimeout(r, 30));
    const pd = spawn(
      process.execPath,
      [
        path.join(ROOT, 'bin/qrexec-policy-daemon'),
        '--policy-path', policyDir,
        '--socket-path', policySock,
        '--eval-socket-path', 'none',
        '--gui-socket-path', 'none',
        '--qubesd-socket', path.join(runDir, 'qubesd.internal.sock'),
        '--qubesd-events-socket', sock,
        '--no-audit',
      ],
      { stdio: 'ignore' },
    );
    procs.push(pd);
    for (let i = 0; i < 300 && !fs.existsSync(policySock); i++) await new Promise((r) => setTimeout(r, 30));
    for (const [cls, name] of [
      ['StandaloneVM', 'mgmt'],
      ['StandaloneVM', 'work'],
    ] as const) {
      assert.equal((await raw(sock, req(`admin.vm.Create.${cls}`, 'dom0', '', `name=${name} label=red`))).data.toString(), '0\0');
    }
    assert.equal((await raw(sock, req('admin.vm.Start', 'mgmt'), { timeoutMs: 60000 })).data.toString(), '0\0');
    const xid = (await raw(sock, req('admin.vm.property.Get', 'mgmt', 'xid'))).data.toString().split(' ').at(-1) as string;
    const inMgmt = (target: string, service: string, input = ''): Promise<{ code: number | null; out: Buffer }> =>
      run(
        path.join(ROOT, 'bin/qrexec-client-vm'),
        [`--agent-socket=${path.join(dir, 'data', 'qubes', 'mgmt', 'agent.sock')}`, target, service],
        { ...process.env, VCHAN_SOCKET_DIR: path.join(runDir, 'vchan'), VCHAN_DOMAIN: xid },
        input,
      );
    const list = await inMgmt('dom0', 'admin.vm.List');
    assert.equal(list.code, 0);
    assert.match(list.out.toString(), /^0\0dom0 class=AdminVM state=Running uuid=0{8}-/);
    assert.match(list.out.toString(), /\nmgmt class=StandaloneVM state=Running /);
    // the source is mgmt: a created-by- tag may be changed only by dom0, so this is refused by qubesd itself
    const tag = await inMgmt('work', 'admin.vm.tag.Set+created-by-dom0');
    assert.equal(tag.out.toString(), '2\0PermissionDenied\0\0changing this tag is prohibited by qubes.ext.admin.AdminExtension\0');
    const tag2 = await inMgmt('work', 'admin.vm.tag.Set+from-mgmt');
    assert.equal(tag2.out.toString(), '0\0');
    assert.match((await raw(sock, req('admin.vm.tag.List', 'work'))).data.toString(), /\nfrom-mgmt\n/);
    // denied by policy: qrexec's 126, qubesd never asked
    const denied = await inMgmt('work', 'admin.vm.property.Get+netvm');
    assert.equal(denied.code, 126);
    assert.equal(denied.out.length, 0);
    // the qube cannot pick its source: whatever it sends is payload, the header is the daemon's
    const spoof = await inMgmt('work', 'admin.vm.tag.List', 'admin.vm.tag.Set+x dom0 name work\0');
    assert.equal(spoof.out.toString(), '2\0ProtocolError\0\0unexpected payload\0');
  } finally {
    for (const p of procs.reverse()) {
      p.kill('SIGTERM');
      await new Promise((r) => (p.exitCode !== null ? r(null) : p.once('exit', r)));
    }
    fs.rmSync(dir, { recursive: true, force: true });
  }
});
