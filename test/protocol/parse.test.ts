import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as P from '../../src/protocol/index.js';

const field = (s: string | Buffer, n: number): Buffer => {
  const b = Buffer.alloc(n);
  (typeof s === 'string' ? Buffer.from(s, 'latin1') : s).copy(b);
  return b;
};
const t4 = (src: string, target: string, ident: string | Buffer, tail: Buffer): Buffer =>
  Buffer.concat([field(src, 64), field(target, 64), field(ident, 32), tail]);
const t3 = (target: string, ident: string | Buffer, tail: Buffer): Buffer => Buffer.concat([field(target, 64), field(ident, 32), tail]);

void test('parseTrigger: valid v3/v4/v2 requests, names sanitised', () => {
  const r = P.parseTrigger(P.MsgType.TRIGGER_SERVICE4, t4('src', 'vault', 'SOCKET5', Buffer.from('my.Service+arg\0')));
  assert.ok(r.ok);
  assert.equal(r.trigger.target, 'vault');
  assert.equal(r.trigger.requestedSource, 'src');
  assert.equal(r.trigger.ident, 'SOCKET5');
  assert.equal(r.trigger.service, 'my.Service+arg');
  assert.equal(r.trigger.identRaw.length, 32);

  const s = P.parseTrigger(P.MsgType.TRIGGER_SERVICE3, t3('@dispvm:a b/c', 'x y', Buffer.from('s$v+a r/g\xff\0', 'latin1')));
  assert.ok(s.ok);
  assert.equal(s.trigger.target, '@dispvm:a_b_c');
  assert.equal(s.trigger.ident, 'x y');
  assert.equal(s.trigger.service, 's_v+a_r_g_');

  const v2 = P.parseTrigger(P.MsgType.TRIGGER_SERVICE, Buffer.concat([field('svc+x', 64), field('t'.repeat(40), 32), field('ab', 32)]));
  assert.ok(v2.ok);
  assert.equal(v2.trigger.target, 't'.repeat(31)); // last byte forced to NUL
  assert.equal(v2.trigger.service, 'svc+x');
});

void test('parseTrigger: refusals as the reference (socket tests bad_new_style_request)', () => {
  const refused = (payload: Buffer, type: number = P.MsgType.TRIGGER_SERVICE4): string => {
    const r = P.parseTrigger(type, payload);
    assert.ok(!r.ok, 'expected refusal');
    assert.equal(r.identRaw.length, 32);
    return r.reason;
  };
  assert.equal(refused(t4('', 't', 'ab', Buffer.from('a'))), 'Service name not NUL-terminated');
  for (const name of ['\0', 'a\0', '\0a', '\0+a', 'a\0a']) {
    assert.match(refused(t4('', 't', 'ab', Buffer.from(`${name}\0`))), /contains NUL byte at offset|Empty service name/, JSON.stringify(name));
  }
  assert.equal(refused(t4('', 't', 'ab', Buffer.from('\0'))), 'Empty service name not allowed');
  assert.equal(refused(t4('', 't', 'ab', Buffer.from('+\0'))), "Service name must not start with '+'");
  assert.equal(refused(t4('', 't', 'ab', Buffer.from('+a\0'))), "Service name must not start with '+'");
  assert.equal(refused(t4('', 't', Buffer.from([1, 2, 3]), Buffer.from('s\0'))), 'bad byte 1 at offset 0 in message MSG_TRIGGER_SERVICE4');
  assert.equal(
    refused(t4('', 't', Buffer.from('a\0b'), Buffer.from('s\0'))),
    'non-NUL byte 98 at offset 2 follows NUL terminator at offset 1 in message MSG_TRIGGER_SERVICE4',
  );
  assert.equal(refused(t3('t', 'x'.repeat(32), Buffer.from('s\0')), P.MsgType.TRIGGER_SERVICE3), 'no NUL terminator in message MSG_TRIGGER_SERVICE3');
  // echoed ident is the raw bytes
  const r = P.parseTrigger(P.MsgType.TRIGGER_SERVICE4, t4('', 't', Buffer.from('a\0b'), Buffer.from('s\0')));
  assert.ok(!r.ok);
  assert.deepEqual([...r.identRaw.subarray(0, 4)], [0x61, 0, 0x62, 0]);
  // empty ident is valid (the reference accepts it)
  const e = P.parseTrigger(P.MsgType.TRIGGER_SERVICE4, t4('', 't', '', Buffer.from('s\0')));
  assert.ok(e.ok);
});

void test('parseExec / parseExecParams / parseServiceRefused / parseExitCode', () => {
  const p = P.parseExec(Buffer.concat([Buffer.from('0100000001020000', 'hex'), Buffer.from('user:id\0')]));
  assert.deepEqual([p.connectDomain, p.connectPort, p.cmdline.toString()], [1, 513, 'user:id']);
  assert.throws(() => P.parseExec(Buffer.from('0100000001020000', 'hex')), /too short/);
  assert.throws(() => P.parseExec(Buffer.from('0100000001020000ab', 'hex')), /not NUL-terminated/);
  assert.deepEqual(P.parseExecParams(Buffer.from('2a00000002020000', 'hex')), { connectDomain: 42, connectPort: 514 });
  assert.equal(P.parseServiceRefused(field('SOCKET3', 32)).ident, 'SOCKET3');
  assert.equal(P.parseExitCode(Buffer.from('7f000000', 'hex')), 127);
  assert.equal(P.parseExitCode(Buffer.from('7f00', 'hex')), 255);
});

void test('parseCommand: table from doc/execution.rst and libqrexec', () => {
  const ok: [string, boolean, object][] = [
    ['user:QUBESRPC qubes.Service+arg work', true, { username: 'user', nogui: false, rpc: { descriptor: 'qubes.Service+arg', serviceName: 'qubes.Service', arg: 'arg', sourceDomain: 'work' } }],
    ['root:nogui:QUBESRPC a.B work', true, { username: 'root', nogui: true, rpc: { descriptor: 'a.B+', serviceName: 'a.B', arg: undefined, sourceDomain: 'work' } }],
    ['QUBESRPC s+ src keyword adminvm', false, { nogui: false, rpc: { descriptor: 's+', serviceName: 's', arg: '', sourceDomain: 'src', requestedTarget: { type: 'keyword', value: 'adminvm' } } }],
    ['QUBESRPC s+a src name dom0', false, { rpc: { requestedTarget: { type: 'name', value: 'dom0' } } }],
    ['user:echo hello world', true, { username: 'user', nogui: false, command: 'echo hello world', rpc: undefined }],
    ['DEFAULT:nogui:ls', true, { username: 'DEFAULT', nogui: true, command: 'ls' }],
  ];
  for (const [line, strip, want] of ok) {
    const got = P.parseCommand(line, strip);
    assertSubset(got, want, line);
  }
  const bad: [string, boolean, string][] = [
    ['QUBESRPC s src', true, 'Bad command from dom0 (QUBESRPC s src): no colon'],
    ['u:QUBESRPCx s src', true, '"QUBESRPC" not followed by space'],
    ['u:QUBESRPC s', true, 'No space found after service descriptor'],
    ['u:QUBESRPC  s src', true, 'Service descriptor is empty (too many spaces after QUBESRPC?)'],
    ['u:QUBESRPC +arg src', true, 'Service name empty'],
    ['u:QUBESRPC s ', true, 'Source domain is empty (too many spaces after service descriptor?)'],
    [`u:QUBESRPC ${'s'.repeat(256)} src`, true, 'Service name too long to execute (length 256)'],
    [`u:QUBESRPC s+${'a'.repeat(64999)} src`, true, 'Command too long (length 65001)'],
  ];
  for (const [line, strip, msg] of bad) {
    assert.throws(() => P.parseCommand(line, strip), (e: unknown) => e instanceof P.ProtocolError && e.code === 'BAD_COMMAND' && e.message === msg, line.slice(0, 40));
  }
  assert.ok(P.parseCommand(`u:QUBESRPC s+${'a'.repeat(64998)} src`, true).rpc);
  assert.equal(P.buildServiceCommand('user', 'a.B', 'work'), 'user:QUBESRPC a.B+ work');
  assert.equal(P.buildServiceCommand('user', 'a.B+x', 'work'), 'user:QUBESRPC a.B+x work');
  assert.equal(P.buildDom0ServiceCommand('a.B', 'work', '@adminvm'), 'QUBESRPC a.B+ work keyword adminvm');
  assert.equal(P.buildDom0ServiceCommand('a.B+c', 'work', 'dom0'), 'QUBESRPC a.B+c work name dom0');
  assert.ok(P.targetRefersToDom0('dom0') && P.targetRefersToDom0('@adminvm') && !P.targetRefersToDom0('@dispvm'));
});

function assertSubset(got: unknown, want: object, msg: string): void {
  for (const [k, v] of Object.entries(want)) {
    const g = (got as Record<string, unknown>)[k];
    if (v !== null && typeof v === 'object') assertSubset(g, v as object, `${msg}.${k}`);
    else assert.equal(g, v, `${msg}.${k}`);
  }
}
