/** src/common/args.ts: our conventions and the argparse ones the policy daemon's tools keep. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { last, numberOption, opt, parseArgs, UsageError, type OptionSpec } from '../../src/common/args.js';

const SPECS: readonly OptionSpec[] = [
  { name: 'just-evaluate' },
  { name: 'assume-yes-for-ask' },
  { name: 'path', value: true, repeat: true },
  { name: 'socket-path', short: 's', value: true },
  { name: 'tty' },
  { name: 'timeout', value: true },
];

const fails = (argv: string[], message: string, argparse = false): void =>
  assert.throws(() => parseArgs(argv, SPECS, { argparse }), (e: unknown) => e instanceof UsageError && e.message === message);

test('default conventions', () => {
  const p = parseArgs(['--path', 'a', '--path=b', '-s', 'S', '--tty', 'x', '--', '--y'], SPECS);
  assert.deepEqual(p.options.get('path'), ['a', 'b']);
  assert.equal(opt(p, 'socket-path'), 'S');
  assert.ok(p.flags.has('tty'));
  assert.deepEqual(p.positional, ['x', '--y']);
  assert.equal(p.help, false);
  assert.equal(parseArgs(['-sX'], SPECS).options.get('socket-path')?.[0], 'X');
  assert.equal(parseArgs(['-h'], SPECS).help, true);
  assert.equal(parseArgs(['a', '--help'], SPECS).help, true);
  fails(['--just'], 'unknown option --just');
  fails(['--timeout', '1', '--timeout', '2'], 'option --timeout given twice');
  fails(['--timeout'], 'option --timeout needs a value');
  fails(['--tty=yes'], 'option --tty takes no value');
  fails(['-Z'], 'unknown option -Z');
});

test('argparse conventions: prefixes, last value wins, argparse wording', () => {
  const a = { argparse: true };
  const p = parseArgs(['--just', '--assume', '--timeout', '1', '--time=2', '-', '--so', 'P'], SPECS, a);
  assert.ok(p.flags.has('just-evaluate') && p.flags.has('assume-yes-for-ask'));
  assert.equal(last(p, 'timeout'), '2');
  assert.equal(numberOption(p, 'timeout', 5), 2);
  assert.equal(numberOption(p, 'absent', 5), 5);
  assert.deepEqual(p.positional, ['-']);
  assert.equal(last(p, 'socket-path'), 'P');
  assert.equal(parseArgs(['--hel'], SPECS, a).help, true);
  fails(['--t'], 'unrecognized arguments: --t', true); // --tty or --timeout
  fails(['--bogus'], 'unrecognized arguments: --bogus', true);
  fails(['-Z'], 'unrecognized arguments: -Z', true);
  fails(['--socket-path'], 'argument --socket-path: expected one argument', true);
  fails(['--tty=x'], "argument --tty: ignored explicit argument 'x'", true);
  assert.throws(
    () => numberOption(parseArgs(['--timeout', '-5'], SPECS, a), 'timeout', 1),
    (e: unknown) => e instanceof UsageError && e.message === "argument --timeout: invalid value: '-5'",
  );
});
