import { test } from 'node:test';
import assert from 'node:assert/strict';
import { QrexecError } from '../../src/common/errors.js';

test('QrexecError is an Error with its own name', () => {
  const e = new QrexecError('x');
  assert.ok(e instanceof Error);
  assert.equal(e.name, 'QrexecError');
});
