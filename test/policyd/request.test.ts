import { test } from 'node:test';
import assert from 'node:assert/strict';
import { MAX_LINE, MAX_SERVICE_AND_ARG, RequestParser, formatRequest, type ParseStep } from '../../src/policyd/request.js';

function parse(parts: readonly (string | Buffer)[], eof = false): ParseStep {
  const p = new RequestParser();
  let step: ParseStep = { kind: 'more' };
  for (const part of parts) {
    step = p.push(typeof part === 'string' ? Buffer.from(part, 'latin1') : part);
    if (step.kind !== 'more') return step;
  }
  return eof ? p.end() : step;
}

const GOOD = 'source=work\nintended_target=vault\nservice_and_arg=qubes.Filecopy+x\n\n';

test('a complete request, whole or split at every byte', () => {
  const want = {
    kind: 'done',
    request: {
      source: 'work',
      intendedTarget: 'vault',
      serviceAndArg: 'qubes.Filecopy+x',
      requestedSource: undefined,
      assumeYesForAsk: false,
      justEvaluate: false,
    },
  };
  assert.deepEqual(parse([GOOD]), want);
  for (let i = 1; i < GOOD.length; i++) assert.deepEqual(parse([GOOD.slice(0, i), GOOD.slice(i)]), want, `split at ${i}`);
  assert.deepEqual(parse([...GOOD]), want);
});

test('optional keys, values with "=", empty target, data after the empty line ignored', () => {
  const s = parse([
    'source=work\nintended_target=\nservice_and_arg=a+b=c\nrequested_source=remote\nassume_yes_for_ask=yes\njust_evaluate=no\n\ngarbage\x00',
  ]);
  assert.equal(s.kind, 'done');
  if (s.kind === 'done') {
    assert.equal(s.request.intendedTarget, '');
    assert.equal(s.request.serviceAndArg, 'a+b=c');
    assert.equal(s.request.requestedSource, 'remote');
    assert.equal(s.request.assumeYesForAsk, true);
    assert.equal(s.request.justEvaluate, false);
  }
});

test('EOF ends a request, as in the reference (with or without a final newline)', () => {
  assert.equal(parse(['source=a\nintended_target=b\nservice_and_arg=c\n'], true).kind, 'done');
  assert.equal(parse(['source=a\nintended_target=b\nservice_and_arg=c'], true).kind, 'done');
  assert.deepEqual(parse(['source=a\nintended_target=b\n'], true), { kind: 'error', reason: 'required argument missing' });
  assert.deepEqual(parse([], true), { kind: 'error', reason: 'required argument missing' });
});

const BAD: [string, string | Buffer, string][] = [
  ['unknown key', 'source=a\nfoo=b\n', 'unknown argument foo'],
  ['domain_id (rejected since 2023)', 'domain_id=1\n', 'unknown argument domain_id'],
  ['process_ident', 'source=a\nprocess_ident=1\n', 'unknown argument process_ident'],
  ['__proto__', '__proto__=x\n', 'unknown argument __proto__'],
  ['empty key', '=x\n', 'unknown argument '],
  ['duplicate', 'source=a\nsource=a\n', 'duplicate argument source'],
  ['missing keys', 'source=a\nintended_target=b\n\n', 'required argument missing'],
  ['bad boolean', 'just_evaluate=true\n', 'invalid bool value true for argument just_evaluate'],
  ['bad boolean 2', 'assume_yes_for_ask=YES\n', 'invalid bool value YES for argument assume_yes_for_ask'],
  ['line without =', 'source\n', "line without '=': source"],
  ['NUL in a value', 'source=a\x00b\n', 'non-printable byte 0x00 in request'],
  ['CR (CRLF lines)', 'source=a\r\n', 'non-printable byte 0x0d in request'],
  ['TAB', 'source=a\tb\n', 'non-printable byte 0x09 in request'],
  ['DEL', 'source=a\x7f\n', 'non-printable byte 0x7f in request'],
  ['non-ASCII', Buffer.from('source=wörk\n', 'utf8'), 'non-ASCII byte 0xc3 in request'],
  ['long name', `source=${'a'.repeat(64)}\n`, 'value of source is 64 bytes long, the limit is 63'],
  ['long target', `intended_target=${'a'.repeat(100)}\n`, 'value of intended_target is 100 bytes long, the limit is 63'],
  [
    'long service',
    `service_and_arg=${'a'.repeat(MAX_SERVICE_AND_ARG + 1)}\n`,
    `line longer than ${MAX_LINE} bytes`,
  ],
];

for (const [name, input, reason] of BAD) {
  test(`rejects: ${name}`, () => {
    assert.deepEqual(parse([input], true), { kind: 'error', reason });
  });
}

test('the longest legal service+argument is accepted', () => {
  const s = parse([`source=a\nintended_target=b\nservice_and_arg=${'x'.repeat(MAX_SERVICE_AND_ARG)}\n\n`]);
  assert.equal(s.kind, 'done');
});

test('a 1 MB and a 10 MB line are rejected as soon as they pass the limit, without buffering them', () => {
  for (const size of [1 << 20, 10 << 20]) {
    const p = new RequestParser();
    const chunk = Buffer.alloc(64 * 1024, 0x61);
    let step: ParseStep = p.push(Buffer.from('service_and_arg='));
    let fed = 16;
    while (step.kind === 'more' && fed < size) {
      step = p.push(chunk);
      fed += chunk.length;
    }
    assert.deepEqual(step, { kind: 'error', reason: `line longer than ${MAX_LINE} bytes` });
    assert.ok(fed < 3 * 64 * 1024, `stopped after ${fed} bytes`);
  }
});

test('errors are final', () => {
  const p = new RequestParser();
  assert.equal(p.push(Buffer.from('bogus=1\n')).kind, 'error');
  assert.equal(p.push(Buffer.from(GOOD)).kind, 'error');
  assert.equal(p.end().kind, 'error');
});

test('formatRequest round-trips', () => {
  const r = { source: 's', intendedTarget: '@default', serviceAndArg: 'x+y', requestedSource: 'r', justEvaluate: true, assumeYesForAsk: true };
  const s = parse([formatRequest(r)]);
  assert.deepEqual(s, { kind: 'done', request: r });
});
