/** The GUI domain's server without a browser: parsing, prompts, socket services. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';
import { GuiServer, HeaderError, parseAsk, parseHeader, Prompts } from '../../src/gui/index.js';

test('call headers: service, argument and source; junk refused', () => {
  assert.deepEqual(parseHeader('policy.Ask+ dom0'), { service: 'policy.Ask', argument: '', source: 'dom0' });
  assert.deepEqual(parseHeader('gui.Http+x dom0 name sys-gui'), { service: 'gui.Http', argument: 'x', source: 'dom0' });
  assert.deepEqual(parseHeader('gui.Http dom0'), { service: 'gui.Http', argument: '', source: 'dom0' });
  for (const bad of ['', 'gui.Http', 'gui.Http d\x01m0', 'gui.Http <b>']) assert.throws(() => parseHeader(bad), HeaderError, JSON.stringify(bad));
});

test('policy.Ask params: labels from icons, default only when offered, bad entries refused', () => {
  const a = parseAsk({ source: 'work', service: 'qubes.Filecopy', argument: '+', targets: ['vault', 'personal', 'vault'], default_target: 'vault', icons: { work: 'appvm-blue', vault: 'appvm-black', personal: 'weird' } });
  assert.equal(a.sourceLabel, 'blue');
  assert.deepEqual(a.targets, [{ name: 'vault', label: 'black' }, { name: 'personal', label: null }]);
  assert.equal(a.defaultTarget, 'vault');
  assert.equal(parseAsk({ source: 'work', service: 's', argument: '+', targets: ['vault'], default_target: 'other' }).defaultTarget, null);
  assert.equal(parseAsk({ source: 'work', service: 's', argument: '+', targets: ['vault'], default_target: '' }).defaultTarget, null);
  for (const bad of [
    { source: 'work', service: 's', argument: '+', targets: [], default_target: '' },
    { source: 'work', service: '<script>', argument: '+', targets: ['v'], default_target: '' },
    { source: 'wo rk', service: 's', argument: '+', targets: ['v'], default_target: '' },
    { source: 'work', service: 's', argument: '+', targets: [1], default_target: '' },
    [],
  ]) assert.throws(() => parseAsk(bad));
});

test('prompts: only offered targets, not before the arm, a timeout denies', async () => {
  let now = 1000;
  const p = new Prompts({ askTimeoutMs: 80, armMs: 1000, historySize: 2, now: () => now });
  const input = { source: 'work', sourceLabel: null, service: 's', argument: '+', targets: [{ name: 'vault', label: null }], defaultTarget: 'vault' };
  const a = p.ask(input);
  assert.equal(p.answer(a.id, 'personal'), 'bad-target');
  assert.equal(p.answer(a.id, 'vault'), 'too-early');
  now += 1000;
  assert.equal(p.answer(a.id, 'vault'), 'ok');
  assert.equal(await a.answer, 'vault');
  assert.equal(p.answer(a.id, null), 'unknown');
  const b = p.ask(input);
  assert.equal(await b.answer, null, 'timed out');
  assert.equal(p.asks().length, 0);
  for (let i = 0; i < 3; i++) p.notify({ resolution: 'deny', service: 's', argument: '+', source: 'work', target: 'vault' });
  assert.deepEqual(p.history().map((n) => n.id), [2, 3], 'bounded history');
});

function call(sock: string, data: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const c = net.connect({ path: sock, allowHalfOpen: true });
    let out = '';
    c.on('data', (d: Buffer) => (out += d.toString()));
    c.on('end', () => resolve(out));
    c.on('close', () => resolve(out));
    c.on('error', reject);
    c.end(data);
  });
}

test('socket services: policy.Ask answered through the prompts, sources other than dom0 refused, junk denied', async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'qrexec-gui-unit-'));
  const assets = path.join(dir, 'assets');
  fs.mkdirSync(assets);
  fs.writeFileSync(path.join(assets, 'index.html'), '<html>%CSRF%</html>');
  const s = new GuiServer({ name: 'sys-gui', rpcDir: path.join(dir, 'rpc'), assetsDir: assets, log: () => undefined });
  await s.listen();
  try {
    const sock = (n: string): string => path.join(dir, 'rpc', n);
    const params = JSON.stringify({ source: 'work', service: 'test.Echo', argument: '+', targets: ['vault'], default_target: 'vault', icons: {} });
    const asked = call(sock('policy.Ask'), `policy.Ask+ dom0\0${params}`);
    while (s.prompts.asks().length === 0) await new Promise((r) => setTimeout(r, 10));
    const id = (s.prompts.asks()[0] as { id: string }).id;
    s.prompts.answer(id, null);
    assert.equal(await asked, 'deny');
    assert.equal(await call(sock('policy.Ask'), 'policy.Ask+ dom0\0{not json'), 'deny');
    assert.equal(await call(sock('policy.Ask'), `policy.Ask+ dom0\0${JSON.stringify({ source: 'work' })}`), 'deny');
    assert.equal(await call(sock('policy.Ask'), `policy.Ask+ work\0${params}`), '', 'work may not ask');
    assert.equal(s.prompts.asks().length, 0);
    assert.equal(await call(sock('gui.Token'), 'gui.Token+ work\0'), '', 'nor fetch the token');
    assert.equal(await call(sock('gui.Token'), 'gui.Token+ dom0\0'), `${s.token}\n`);
    assert.equal(await call(sock('policy.Notify'), `policy.Notify+ dom0\0${JSON.stringify({ resolution: 'deny', service: 'x', argument: '+', source: 'work', target: 'vault' })}`), '');
    assert.equal(s.prompts.history().length, 1);
  } finally {
    await s.close();
    fs.rmSync(dir, { recursive: true, force: true });
  }
});
