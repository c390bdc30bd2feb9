import { test } from 'node:test';
import assert from 'node:assert/strict';
import { parseToken, PolicySyntaxError, type TokenContext } from '../../src/policy/index.js';

const pos = { file: 'f.policy', line: 7 };

// [token, context, kind or error message]
const TABLE: Array<[string, TokenContext, string]> = [
  ['work', 'source', 'name'],
  ['uuid:11111111-1111-1111-1111-111111111111', 'source', 'name'],
  ['dom0', 'target', 'name'],
  ['$anyvm', 'source', 'name'],
  ['*', 'source', 'wildcard'],
  ['*', 'target', 'wildcard'],
  ['*', 'redirect', "f.policy:7: invalid redirect token: '*'"],
  ['*', 'intendedtarget', "f.policy:7: invalid intendedtarget token: '*'"],
  ['@adminvm', 'source', 'adminvm'],
  ['@adminvm', 'redirect', 'adminvm'],
  ['@adminvm', 'intendedtarget', 'adminvm'],
  ['@anyvm', 'source', 'anyvm'],
  ['@anyvm', 'target', 'anyvm'],
  ['@anyvm', 'redirect', "f.policy:7: invalid redirect token: '@anyvm'"],
  ['@anyvm', 'intendedtarget', "f.policy:7: invalid intendedtarget token: '@anyvm'"],
  ['@default', 'target', 'default'],
  ['@default', 'intendedtarget', 'default'],
  ['@default', 'source', "f.policy:7: invalid source token: '@default'"],
  ['@default', 'redirect', "f.policy:7: invalid redirect token: '@default'"],
  ['@dispvm', 'target', 'dispvm'],
  ['@dispvm', 'redirect', 'dispvm'],
  ['@dispvm', 'source', "f.policy:7: invalid source token: '@dispvm'"],
  ['@dispvm:default-dvm', 'source', 'dispvm-template'],
  ['@dispvm:default-dvm', 'redirect', 'dispvm-template'],
  ['@dispvm:uuid:44444444-4444-4444-4444-444444444444', 'intendedtarget', 'dispvm-template'],
  ['@dispvm:@tag:dvm', 'target', 'dispvm-tag'],
  ['@dispvm:@tag:dvm', 'source', 'dispvm-tag'],
  ['@dispvm:@tag:dvm', 'redirect', "f.policy:7: invalid redirect token: '@dispvm:@tag:dvm'"],
  ['@dispvm:', 'target', "f.policy:7: invalid empty @dispvm: token: '@dispvm:'"],
  ['@dispvm:@tag:', 'target', "f.policy:7: invalid empty @dispvm:@tag: token: '@dispvm:@tag:'"],
  ['@dispvm:@anyvm', 'target', "f.policy:7: invalid target token: '@dispvm:@anyvm'"],
  ['@tag:trusted', 'source', 'tag'],
  ['@tag:', 'source', "f.policy:7: invalid empty @tag: token: '@tag:'"],
  ['@tag:x', 'redirect', "f.policy:7: invalid redirect token: '@tag:x'"],
  ['@tag:x', 'intendedtarget', "f.policy:7: invalid intendedtarget token: '@tag:x'"],
  ['@type:AppVM', 'target', 'type'],
  ['@type:', 'target', "f.policy:7: invalid empty @type: token: '@type:'"],
  ['@type:@x', 'target', "f.policy:7: invalid target token: '@type:@x'"],
  ['@typo', 'source', "f.policy:7: invalid source token: '@typo'"],
  ['@', 'source', "f.policy:7: invalid source token: '@'"],
  ['', 'redirect', 'f.policy:7: invalid empty redirect token'],
];

for (const [text, ctx, want] of TABLE) {
  test(`token ${JSON.stringify(text)} in ${ctx}: ${want}`, () => {
    if (want.startsWith('f.policy:')) {
      assert.throws(
        () => parseToken(text, ctx, pos),
        (e: unknown) => e instanceof PolicySyntaxError && e.message === want && e.line === 7 && e.file === 'f.policy',
      );
    } else {
      assert.equal(parseToken(text, ctx, pos).kind, want);
    }
  });
}
