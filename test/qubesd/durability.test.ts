/**
 * kill -9 of bin/qubesd in the middle of a burst of Creates and Sets: after
 * a restart every acknowledged change is there and no change is half there;
 * the stale sockets are replaced and keep mode 0660.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { raw, req, startQubesdProcess as startQubesd } from './helpers.js';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../..');

async function callOk(sock: string, method: string, dest: string, arg: string, payload: string): Promise<boolean> {
  try {
    const r = await raw(sock, req(method, dest, arg, payload), { timeoutMs: 3000 });
    return r.data.toString('latin1') === '0\0';
  } catch {
    return false;
  }
}

test('kill -9 during a burst of Creates and Sets: acknowledged changes survive, none is half applied', async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'qubesd-kill-'));
  const sock = path.join(dir, 'run', 'qubesd.sock');
  let p = await startQubesd(dir);
  try {
    assert.ok(await callOk(sock, 'admin.vm.Create.TemplateVM', 'dom0', '', 'name=tpl label=black'));
    assert.ok(await callOk(sock, 'admin.property.Set', 'dom0', 'default_template', 'tpl'));
    const created: string[] = [];
    const setOk = new Map<string, string>();
    let stop = false;
    const creator = (async () => {
      for (let i = 0; !stop; i++) {
        const name = `q${i}`;
        if (await callOk(sock, 'admin.vm.Create.AppVM', 'dom0', '', `name=${name} label=red`)) created.push(name);
        else break;
      }
    })();
    // eight concurrent setters: their Sets share group fsyncs (bin/qubesd runs the store in GROUP mode)
    const setters = [0, 1, 2, 3, 4, 5, 6, 7].map(async (k) => {
      for (let i = 0; !stop; i++) {
        const v = `${k}-${i}`;
        if (await callOk(sock, 'admin.vm.feature.Set', 'tpl', `f${k}`, v)) setOk.set(`f${k}`, v);
        else break;
        // one setter of vcpus: with several, a later Set of a lower value is legitimate
        if (k !== 0) continue;
        if (await callOk(sock, 'admin.vm.property.Set', 'tpl', 'vcpus', String(i + 1))) setOk.set('vcpus', String(i + 1));
        else break;
      }
    });
    await new Promise((r) => setTimeout(r, 400 + Math.random() * 400));
    p.kill('SIGKILL');
    stop = true;
    await Promise.all([creator, ...setters]);
    await new Promise<void>((r) => (p.exitCode !== null || p.signalCode !== null ? r() : p.once('exit', () => r())));
    assert.ok(created.length > 3, `only ${created.length} creates before the kill`);
    // stale sockets are replaced
    assert.ok(fs.existsSync(sock));
    p = await startQubesd(dir);
    assert.equal(fs.statSync(sock).mode & 0o777, 0o660);
    const list = (await raw(sock, req('admin.vm.List', 'dom0'))).data.toString();
    const names = new Set(list.slice(2).split('\n').filter((l) => l).map((l) => l.split(' ')[0]));
    for (const n of created) assert.ok(names.has(n), `acknowledged create of ${n} lost`);
    // no half change: every qube that exists has its label and its created-by tag (one transaction)
    for (const n of names) {
      if (n === 'dom0' || n === undefined) continue;
      const label = (await raw(sock, req('admin.vm.property.Get', n, 'label'))).data.toString();
      assert.match(label, /^0\0default=False type=label (red|black)$/, n);
      const tags = (await raw(sock, req('admin.vm.tag.List', n))).data.toString();
      assert.ok(tags.includes('created-by-dom0\n'), `${n} has no created-by tag: ${JSON.stringify(tags)}`);
    }
    for (const [k, v] of setOk) {
      if (k === 'vcpus') {
        const got = (await raw(sock, req('admin.vm.property.Get', 'tpl', 'vcpus'))).data.toString();
        // the last acknowledged value, or a later one whose reply was lost in the kill
        assert.ok(Number(got.split(' ').at(-1)) >= Number(v), `vcpus ${got} < acknowledged ${v}`);
      } else {
        const got = (await raw(sock, req('admin.vm.feature.Get', 'tpl', k))).data.toString().slice(2);
        const [gk, gi] = got.split('-').map(Number) as [number, number];
        const [vk, vi] = v.split('-').map(Number) as [number, number];
        assert.ok(gk === vk && gi >= vi, `${k}=${got}, acknowledged ${v}`);
      }
    }
  } finally {
    p.kill('SIGKILL');
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test('SIGTERM: qubesd stops cleanly and removes its sockets', async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'qubesd-term-'));
  const p = await startQubesd(dir);
  const code = await new Promise<number | null>((r) => {
    p.once('exit', (c) => r(c));
    p.kill('SIGTERM');
  });
  assert.equal(code, 0);
  assert.deepEqual(fs.readdirSync(path.join(dir, 'run')).filter((f) => f.endsWith('.sock')), []);
  fs.rmSync(dir, { recursive: true, force: true });
});

test('a second qubesd on the same run dir refuses to start (the socket is live)', async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'qubesd-twice-'));
  const p = await startQubesd(dir);
  try {
    const p2 = spawn(process.execPath, [path.join(ROOT, 'bin/qubesd'), '--data-dir', path.join(dir, 'data2'), '--run-dir', path.join(dir, 'run')], {
      stdio: ['ignore', 'ignore', 'pipe'],
    });
    let err = '';
    p2.stderr?.on('data', (d: Buffer) => (err += d.toString()));
    const code = await new Promise<number | null>((r) => p2.once('exit', (c) => r(c)));
    assert.equal(code, 1);
    assert.match(err, /qubesd: error: socket already exists: .*qubesd\.sock' \(another qubesd is running\)/);
    // the first one still serves
    assert.match((await raw(path.join(dir, 'run', 'qubesd.sock'), req('admin.vm.List', 'dom0'))).data.toString(), /^0\0dom0 /);
  } finally {
    p.kill('SIGKILL');
    fs.rmSync(dir, { recursive: true, force: true });
  }
});
