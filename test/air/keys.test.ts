/**
 * Qubes Air signing keys without a host: a rotation (the next key made,
 * offered, then signing), verification against the keys a peer pinned, and
 * the offer's next key checked as strictly as its key.
 */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { parseOffer } from '../../src/air/setup.js';
import {
  EnvelopeError,
  ReplayGuard,
  ensureSigningKey,
  finishRotation,
  loadSigningKey,
  nextPublicKeyOf,
  prepareRotation,
  publicKeyFromRaw,
  publicKeyOf,
  signCall,
  verifyCall,
} from '../../src/air/sign.js';

const claim = { from: 'a', to: 'b', source: 'work', target: 'work', service: 'test.Echo+' } as const;
const dir = (): string => fs.mkdtempSync(path.join(os.tmpdir(), 'qubes-air-keys-'));

void describe('Qubes Air signing keys', () => {
  it('a rotation: the next key signs nothing until --finish, then it signs and the old key is gone', () => {
    const d = dir();
    try {
      ensureSigningKey(d);
      const old = publicKeyOf(d);
      assert.equal(nextPublicKeyOf(d), undefined);
      const next = prepareRotation(d);
      assert.notEqual(next, old);
      // prepared twice: the same next key (an offer already sent stays good)
      assert.equal(prepareRotation(d), next);
      assert.equal(publicKeyOf(d), old, 'the old key still signs');
      assert.equal(finishRotation(d), next);
      assert.equal(publicKeyOf(d), next);
      assert.equal(nextPublicKeyOf(d), undefined);
      assert.deepEqual(fs.readdirSync(d).sort(), ['signing-key.pem']);
      assert.throws(() => finishRotation(d), /no key rotation is under way/);
    } finally {
      fs.rmSync(d, { recursive: true, force: true });
    }
  });

  it('a peer that pinned both keys accepts either; one that pinned only the new key refuses the old', () => {
    const d = dir();
    try {
      ensureSigningKey(d);
      const oldKey = loadSigningKey(d);
      const old = publicKeyOf(d);
      const next = prepareRotation(d);
      const byOld = signCall(oldKey, claim);
      finishRotation(d);
      const byNew = signCall(loadSigningKey(d), claim);
      const both = { ...claim, keys: [publicKeyFromRaw(old), publicKeyFromRaw(next)] };
      const g = new ReplayGuard();
      assert.equal(verifyCall(byOld, both, g).keyIndex, 0);
      assert.equal(verifyCall(byNew, both, g).keyIndex, 1);
      const onlyNew = { ...claim, keys: [publicKeyFromRaw(next)] };
      assert.throws(() => verifyCall(signCall(oldKey, claim), onlyNew, new ReplayGuard()), (e: unknown) => e instanceof EnvelopeError && /bad signature \(not made by a's key\)/.test(e.message));
      assert.throws(() => verifyCall(byNew, { ...claim, keys: [] }, new ReplayGuard()), EnvelopeError);
    } finally {
      fs.rmSync(d, { recursive: true, force: true });
    }
  });

  it('an offer\'s nextSigningKey is optional, and checked as its signingKey is', () => {
    const key = Buffer.alloc(32, 7).toString('base64');
    const ssh = `ssh-ed25519 ${'A'.repeat(68)}`;
    const base = { qubesAir: 1, host: 'a', address: '10.0.0.1:2222', relayHostKey: ssh, relayClientKey: ssh, signingKey: key };
    assert.equal(parseOffer(JSON.stringify(base)).nextSigningKey, undefined);
    assert.equal(parseOffer(JSON.stringify({ ...base, nextSigningKey: key })).nextSigningKey, key);
    for (const bad of ['', 'x', 42, `${key}\n`, key.slice(1)]) {
      assert.throws(() => parseOffer(JSON.stringify({ ...base, nextSigningKey: bad })), /invalid nextSigningKey/);
    }
  });
});
