import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as P from '../../src/protocol/index.js';

// Expected bytes are written out by hand from libqrexec/qrexec.h (little-endian u32s).
const hex = (s: string): Buffer => Buffer.from(s.replace(/\s+/g, ''), 'hex');
const z = (n: number): string => '00'.repeat(n);
const ascii = (s: string): string => Buffer.from(s, 'latin1').toString('hex');

void test('encoders produce the exact wire bytes', () => {
  const table: [string, Buffer, Buffer][] = [
    ['HELLO v4', P.encodeHello(4), hex('00030000 04000000 04000000')],
    ['HELLO v3', P.encodeHello(3), hex('00030000 04000000 03000000')],
    ['EXEC_CMDLINE', P.encodeExec(P.MsgType.EXEC_CMDLINE, 1, 513, 'user:id'), hex(`00020000 10000000 01000000 01020000 ${ascii('user:id')}00`)],
    ['JUST_EXEC', P.encodeExec(P.MsgType.JUST_EXEC, 0, 0, 'u:x'), hex(`01020000 0c000000 00000000 00000000 ${ascii('u:x')}00`)],
    ['SERVICE_CONNECT', P.encodeServiceConnect(2, 514, 'SOCKET7'), hex(`02020000 28000000 02000000 02020000 ${ascii('SOCKET7')}${z(25)}`)],
    ['SERVICE_REFUSED', P.encodeServiceRefused('SOCKET7'), hex(`03020000 20000000 ${ascii('SOCKET7')}${z(25)}`)],
    ['CONNECTION_TERMINATED', P.encodeConnectionTerminated(3, 515), hex('11020000 08000000 03000000 03020000')],
    ['reply exec_params', P.encodeExecParams(P.MsgType.JUST_EXEC, 42, 514), hex('01020000 08000000 2a000000 02020000')],
    [
      'TRIGGER_SERVICE3',
      P.encodeTriggerService3({ target: 'vault', ident: 'SOCKET9', service: 'a.B+c' }),
      hex(`12020000 66000000 ${ascii('vault')}${z(59)} ${ascii('SOCKET9')}${z(25)} ${ascii('a.B+c')}00`),
    ],
    [
      'TRIGGER_SERVICE4',
      P.encodeTriggerService4({ source: 'src', target: '@default', ident: 'S1', service: 'x' }),
      hex(`13020000 a2000000 ${ascii('src')}${z(61)} ${ascii('@default')}${z(56)} ${ascii('S1')}${z(30)} ${ascii('x')}00`),
    ],
    [
      'TRIGGER_SERVICE (v2)',
      P.encodeTriggerService2({ target: 't', ident: 'i', service: 's' }),
      hex(`10020000 80000000 73${z(63)} 74${z(31)} 69${z(31)}`),
    ],
    ['DATA_STDOUT header', P.encodeDataHeader(P.MsgType.DATA_STDOUT, 65536), hex('91010000 00000100')],
    ['DATA_STDIN EOF', P.encodeMessage(P.MsgType.DATA_STDIN), hex('90010000 00000000')],
    ['EXIT_CODE 127', P.encodeExitCode(127), hex('93010000 04000000 7f000000')],
  ];
  for (const [name, got, want] of table) assert.equal(got.toString('hex'), want.toString('hex'), name);
});

void test('message type values match qrexec.h', () => {
  assert.deepEqual(
    [P.MsgType.EXEC_CMDLINE, P.MsgType.JUST_EXEC, P.MsgType.SERVICE_CONNECT, P.MsgType.SERVICE_REFUSED],
    [0x200, 0x201, 0x202, 0x203],
  );
  assert.deepEqual(
    [P.MsgType.TRIGGER_SERVICE, P.MsgType.CONNECTION_TERMINATED, P.MsgType.TRIGGER_SERVICE3, P.MsgType.TRIGGER_SERVICE4],
    [0x210, 0x211, 0x212, 0x213],
  );
  assert.equal(P.MsgType.HELLO, 0x300);
  assert.deepEqual([P.MsgType.DATA_STDIN, P.MsgType.DATA_STDOUT, P.MsgType.DATA_STDERR, P.MsgType.DATA_EXIT_CODE], [0x190, 0x191, 0x192, 0x193]);
  assert.equal(P.msgTypeName(0x212), 'MSG_TRIGGER_SERVICE3');
  assert.equal(P.msgTypeName(0x999), '0x999');
});

void test('encoders refuse oversized or NUL-containing fields', () => {
  const cases: [string, () => unknown, P.ProtocolErrorCode][] = [
    ['ident 32 bytes', () => P.encodeServiceRefused('x'.repeat(32)), 'BAD_LENGTH'],
    ['target 64 bytes', () => P.encodeTriggerService3({ target: 't'.repeat(64), ident: 'i', service: 's' }), 'BAD_LENGTH'],
    ['service 65000 bytes (65001 with NUL)', () => P.encodeTriggerService3({ target: 't', ident: 'i', service: 's'.repeat(65000) }), 'BAD_LENGTH'],
    ['empty service', () => P.encodeTriggerService3({ target: 't', ident: 'i', service: '' }), 'BAD_LENGTH'],
    ['NUL in service', () => P.encodeTriggerService4({ target: 't', ident: 'i', service: 'a\0b' }), 'BAD_PAYLOAD'],
    ['cmdline too long', () => P.encodeExec(P.MsgType.EXEC_CMDLINE, 0, 0, 'x'.repeat(65535 - 8)), 'BAD_LENGTH'],
  ];
  for (const [name, f, code] of cases) {
    assert.throws(f, (e: unknown) => e instanceof P.ProtocolError && e.code === code, name);
  }
  // the longest allowed ones encode
  assert.equal(P.encodeTriggerService3({ target: 't'.repeat(63), ident: 'i'.repeat(31), service: 's'.repeat(64999) }).length, 8 + 96 + 65000);
  assert.equal(P.encodeExec(P.MsgType.EXEC_CMDLINE, 0, 0, 'x'.repeat(65535 - 9)).length, 8 + 65535);
});

void test('version negotiation: minimum of both, refuse below the minimum', () => {
  assert.equal(P.negotiateVersion(4, 4, 2), 4);
  assert.equal(P.negotiateVersion(3, 4, 2), 3);
  assert.equal(P.negotiateVersion(2, 4, 2), 2);
  assert.equal(P.negotiateVersion(99, 4, 2), 4);
  assert.throws(() => P.negotiateVersion(1, 4, 2), /Incompatible protocol version \(remote 1, local 4\); minimum supported version is 2/);
  assert.throws(() => P.negotiateVersion(2, 4, 3), (e: unknown) => e instanceof P.ProtocolError && e.code === 'BAD_VERSION');
  assert.equal(P.parseHello(hex('05000000')), 5);
  assert.equal(P.maxDataChunk(2), 4096);
  assert.equal(P.maxDataChunk(3), 65536);
  assert.equal(P.maxDataChunk(4), 65536);
});
