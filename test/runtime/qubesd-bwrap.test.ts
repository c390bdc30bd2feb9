/**
 * `bin/qubesd --runtime bwrap` run alone: a started sandbox gets its
 * host-side qrexec daemon (a qrexec-daemon child, as with the process
 * backend), so qrexec-client reaches it; qubesd passes the netvm, maxmem
 * and vcpus to the backend (veth through sys-net, cgroup limits). Root only.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { BIN, waitFor } from '../e2e/harness.js';
import { sandboxSkipReason } from './world.js';
import { detectCgroups } from '../../src/runtime/sandbox/index.js';

const skip = sandboxSkipReason();

void test('qubesd --runtime bwrap: qrexec-client reaches a started sandbox; netvm, maxmem and vcpus reach the backend', { skip: skip ?? false, timeout: 120_000 }, async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'qdb-'));
  const data = path.join(dir, 'data');
  const rundir = path.join(dir, 'run');
  const q = spawn(BIN('qubesd'), ['--data-dir', data, '--run-dir', rundir, '--runtime', 'bwrap'], { stdio: ['ignore', 'ignore', 'pipe'] });
  let err = '';
  q.stderr?.on('data', (d: Buffer) => (err += d.toString()));
  const exited = new Promise((r) => q.once('exit', r));
  const env = { ...process.env, QUBESD_SOCKET: path.join(rundir, 'qubesd.sock') };
  const tool = (name: string, ...args: string[]): string => {
    const r = spawnSync(BIN(name), args, { env, encoding: 'utf8', timeout: 60_000 });
    assert.equal(r.status, 0, `${name} ${args.join(' ')}: ${r.stderr}`);
    return r.stdout;
  };
  try {
    await waitFor(() => Promise.resolve(fs.existsSync(path.join(rundir, 'qubesd.sock'))), 20_000, 'qubesd up');
    tool('qvm-create', '-C', 'TemplateVM', '-l', 'black', 'tpl');
    tool('qubes-prefs', 'default_template', 'tpl');
    tool('qvm-create', '-l', 'red', '--prop', 'provides_network=True', 'sys-net');
    tool('qvm-prefs', 'sys-net', 'netvm', 'none');
    tool('qubes-prefs', 'default_netvm', 'sys-net');
    tool('qvm-create', '-l', 'blue', 'work');
    tool('qvm-prefs', 'work', 'maxmem', '300');
    tool('qvm-prefs', 'work', 'vcpus', '1');
    tool('qvm-start', 'work');
    assert.equal(tool('qvm-ls', '--running', '--raw-list'), 'dom0\nsys-net\nwork\n');
    const c = spawnSync(BIN('qrexec-client'), [`--socket-dir=${path.join(rundir, 'qrexec')}`, '-d', 'work', 'DEFAULT:hostname; id -u; ip -o -4 addr show dev eth0 | wc -l'], {
      env: { ...process.env, VCHAN_SOCKET_DIR: path.join(rundir, 'vchan'), VCHAN_DOMAIN: '0', VCHAN_SOCKET_LAYOUT: 'per-domain' },
      encoding: 'utf8',
      timeout: 30_000,
    });
    assert.equal(c.stdout, 'work\n1000\n1\n', c.stderr);
    // the addresses are Qubes' (qubes/vm/mix/net.py), the ones qvm-ls and qvm-prefs show:
    // 10.137.0.<qid>/32 on eth0, the netvm's own IP as gateway, and it routes
    const ipOf = (vm: string): string => tool('qvm-prefs', vm, 'ip').trim();
    assert.match(ipOf('work'), /^10\.137\.0\.\d+$/);
    assert.equal(tool('qvm-prefs', 'work', 'visible_gateway').trim(), ipOf('sys-net'));
    const inQube = (vm: string, cmd: string): string => spawnSync(BIN('qrexec-client'), [`--socket-dir=${path.join(rundir, 'qrexec')}`, '-d', vm, `DEFAULT:${cmd}`], {
      env: { ...process.env, VCHAN_SOCKET_DIR: path.join(rundir, 'vchan'), VCHAN_DOMAIN: '0', VCHAN_SOCKET_LAYOUT: 'per-domain' },
      encoding: 'utf8',
      timeout: 30_000,
    }).stdout;
    assert.equal(inQube('work', "ip -o -4 addr show dev eth0 | awk '{print $4}'; ip -4 route show default | awk '{print $3}'"), `${ipOf('work')}/32\n${ipOf('sys-net')}\n`);
    assert.equal(tool('qvm-ls', '--raw-data', '-O', 'name,ip', 'work'), `work|${ipOf('work')}\n`);
    // work reaches a listener in sys-net at its gateway address
    inQube('sys-net', `/run/qrexec-ts/node -e "require('net').createServer((s) => s.end('hi ' + s.remoteAddress)).listen(7777, '${ipOf('sys-net')}')" </dev/null >/dev/null 2>&1 & sleep 0.5`);
    const got = inQube('work', `/run/qrexec-ts/node -e "const s = require('net').connect(7777, '${ipOf('sys-net')}'); s.on('data', (d) => process.stdout.write(d)); s.on('error', (e) => console.log(e.code))"`);
    assert.equal(got, `hi ${ipOf('work')}`, 'sys-net sees work by its own address (no NAT between a qube and its netvm)');
    // maxmem and vcpus became the sandbox's cgroup limits
    const cg = detectCgroups();
    const memLimit = (d: string): number => Number(fs.readFileSync(path.join(d, cg.kind === 'v2' ? 'memory.max' : 'memory.limit_in_bytes'), 'utf8'));
    const base = cg.kind === 'v2' ? cg.base : cg.kind === 'v1' ? cg.bases.get('memory') : undefined;
    if (base) {
      const g = fs.readdirSync(base).find((e) => e.endsWith('-work') && fs.existsSync(path.join(base, e, 'cgroup.procs')) && fs.readFileSync(path.join(base, e, 'cgroup.procs'), 'utf8').trim() !== '');
      assert.ok(g, 'the sandbox has its memory cgroup');
      assert.equal(memLimit(path.join(base, g)), 300 * 1024 * 1024);
      const cpuBase = cg.kind === 'v2' ? cg.base : cg.kind === 'v1' ? cg.bases.get('cpu') : undefined;
      if (cpuBase) {
        const quota = cg.kind === 'v2' ? fs.readFileSync(path.join(cpuBase, g, 'cpu.max'), 'utf8').split(' ')[0] : fs.readFileSync(path.join(cpuBase, g, 'cpu.cfs_quota_us'), 'utf8').trim();
        assert.equal(quota, '100000');
      }
    }
    tool('qvm-shutdown', '--wait', 'work');
    tool('qvm-shutdown', '--wait', 'sys-net');
  } finally {
    q.kill('SIGTERM');
    await exited;
    fs.rmSync(dir, { recursive: true, force: true });
  }
  assert.doesNotMatch(err, /WARNING|error/, err);
});
