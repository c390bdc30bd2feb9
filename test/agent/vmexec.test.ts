/** qubes.VMExec argument encoding: decoding tables, strict rejection, round trips, and the built-in service. */
import assert from 'node:assert/strict';
import { afterEach, describe, it } from 'node:test';
import fc from 'fast-check';
import { decodeVmExecArg, encodeVmExecArgs, VmExecDecodeError } from '../../src/services/vmexec.js';
import { Fixture, T, msg } from './peer.js';

describe('qubes.VMExec argument decoding', () => {
  const good: [string, string[]][] = [
    ['ls', ['ls']],
    ['ls+-2Dl', ['ls', '-l']],
    ['ls+--l', ['ls', '-l']],
    ['echo+a-20b', ['echo', 'a b']],
    ['sh+--c+echo-20-24HOME', ['sh', '-c', 'echo $HOME']],
    ['a+', ['a', '']],
    ['a++b', ['a', '', 'b']],
    ['x+---41', ['x', '-A']],
    ['x+-2B', ['x', '+']],
    ['x+-C3-A9', ['x', 'é']],
    ['A.b_c9', ['A.b_c9']],
  ];
  for (const [enc, argv] of good) {
    it(`decodes ${enc}`, () => assert.deepEqual(decodeVmExecArg(enc), argv));
  }
  const bad: [string, RegExp][] = [
    ['', /empty command/],
    ['+ls', /empty command/],
    ['ls+-l', /'-' can be used only/],
    ['ls+-', /'-' can be used only/],
    ['ls+-2', /'-' can be used only/],
    ['ls+-2d', /'-' can be used only/],
    ['ls+-G0', /'-' can be used only/],
    ['ls+a/b', /illegal character "\/"/],
    ['ls+a b', /illegal character " "/],
    ['ls+é', /illegal character/],
    ['ls+a-00b', /NUL byte/],
    ['ls+-FF', /not valid UTF-8/],
    ['ls+$x', /illegal character/],
  ];
  for (const [enc, why] of bad) {
    it(`rejects ${JSON.stringify(enc)}`, () => assert.throws(() => decodeVmExecArg(enc), (e: Error) => e instanceof VmExecDecodeError && why.test(e.message)));
  }
  it('encodes like qvm-run and round-trips any argv', () => {
    assert.equal(encodeVmExecArgs(['ls', '-l', 'a b']), 'ls+--l+a-20b');
    fc.assert(
      fc.property(fc.array(fc.string({ unit: 'grapheme' }).filter((s) => !s.includes('\0')), { minLength: 1, maxLength: 5 }), (argv) => {
        fc.pre((argv[0] as string).length > 0);
        assert.deepEqual(decodeVmExecArg(encodeVmExecArgs(argv)), argv);
      }),
      { numRuns: 500 },
    );
  });
});

describe('built-in qubes.VMExec service', () => {
  let fx: Fixture | undefined;
  afterEach(async () => {
    await fx?.stop();
  });
  it('runs the decoded command, and rejects a malformed argument with status 1', async () => {
    fx = new Fixture();
    fx.startAgent();
    await fx.connectDom0();
    let { target } = await fx.exec(T.EXEC_CMDLINE, `QUBESRPC qubes.VMExec+${encodeVmExecArgs(['printf', '%s|', 'a b', '-x'])} dom0`);
    target.send(msg(T.DATA_STDIN));
    let out = '';
    let code = -1;
    for (const m of await target.recvAll()) {
      if (m.type === T.DATA_STDOUT) out += m.data.toString();
      if (m.type === T.DATA_EXIT_CODE) code = m.data.readUInt32LE(0);
    }
    assert.equal(out, 'a b|-x|');
    assert.equal(code, 0);
    ({ target } = await fx.exec(T.EXEC_CMDLINE, 'QUBESRPC qubes.VMExec+rm+-rf dom0'));
    target.send(msg(T.DATA_STDIN));
    let err = '';
    for (const m of await target.recvAll()) {
      if (m.type === T.DATA_STDERR) err += m.data.toString();
      if (m.type === T.DATA_EXIT_CODE) code = m.data.readUInt32LE(0);
    }
    assert.equal(code, 1);
    assert.match(err, /Decode error: part 1: '-' can be used only/);
    assert.match(fx.agentLog, /qubes\.VMExec: executing \["printf","%s\|","a b","-x"\]/);
  });
});
