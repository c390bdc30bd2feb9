/**
 * Qubes Air across two real hosts on this machine: each a full qrexec-ts
 * host in its own network namespace, joined by a veth; the only path between
 * them is SSH between their relay qubes (test/air/hosts.ts). A call from a
 * qube to a RemoteVM is decided by the local policy, carried by
 * qubesair.SSHProxy to the peer's relay, and decided again there by the
 * peer's policy with the source as the RemoteVM that stands for the caller.
 * Root only (namespaces, sandboxes).
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { AirTestHost, RELAY_PORT, airSkipReason, forwardToRelay, link, netnsTag } from './hosts.js';
import { addRemote, airHost, importOffer, initHost, makeOffer, setupRelay, startRelay } from '../../src/air/index.js';

const skip = airSkipReason();

const SERVICES: Record<string, string> = {
  'test.Echo': '#!/bin/sh\nexec cat\n',
  'test.Exit': '#!/bin/sh\nexit "$QREXEC_SERVICE_ARGUMENT"\n',
  'test.Who': '#!/bin/sh\necho "$QREXEC_REMOTE_DOMAIN"\n',
};

/** The policy of a host whose RemoteVM for the peer's work is `remote`. */
const policy = (remote: string): string => `test.Echo * work ${remote} allow
test.Exit * work ${remote} allow
test.Who * work ${remote} allow
test.RemoteDeny * work ${remote} allow
test.Missing * work ${remote} allow
test.Echo * ${remote} work allow
test.Exit * ${remote} work allow
test.Who * ${remote} work allow
test.Missing * ${remote} work allow
* * @anyvm @anyvm deny
`;

void describe('Qubes Air: two hosts in network namespaces, calls through their relays over SSH', { skip: skip ?? false, timeout: 300_000 }, () => {
  let a: AirTestHost;
  let b: AirTestHost;

  before(async () => {
    const tag = netnsTag();
    a = AirTestHost.create(tag, 'a');
    b = AirTestHost.create(tag, 'b');
    link(a, b);
    await Promise.all([a.start(), b.start()]);
    for (const h of [a, b]) {
      h.makeQubes();
      forwardToRelay(h);
      for (const [n, s] of Object.entries(SERVICES)) h.service('work', n, s);
    }
    const ha = airHost(a.run);
    const hb = airHost(b.run);
    initHost(ha, 'a');
    initHost(hb, 'b');
    await Promise.all([setupRelay(ha, 'relay'), setupRelay(hb, 'relay')]);
    const [oa, ob] = await Promise.all([makeOffer(ha, 'relay', `${a.linkAddress}:${RELAY_PORT}`), makeOffer(hb, 'relay', `${b.linkAddress}:${RELAY_PORT}`)]);
    await Promise.all([importOffer(ha, 'relay', ob), importOffer(hb, 'relay', oa)]);
    await Promise.all([addRemote(ha, 'work-b', 'b', 'work'), addRemote(hb, 'work-a', 'a', 'work')]);
    await Promise.all([startRelay(ha, 'relay'), startRelay(hb, 'relay')]);
    a.policy(policy('work-b'));
    b.policy(policy('work-a'));
  });

  after(async () => {
    await Promise.all([a?.stop(), b?.stop()]);
  });

  for (const [from, to, remote, seenAs] of [
    ['a', 'b', 'work-b', 'work-a'],
    ['b', 'a', 'work-a', 'work-b'],
  ] as const) {
    it(`${from} → ${to}: allowed by both policies; the peer sees the source as its RemoteVM ${seenAs}`, async () => {
      const h = from === 'a' ? a : b;
      const r = await h.runIn('work', `echo hello | qrexec-client-vm ${remote} test.Echo; echo "rc=$?"; qrexec-client-vm ${remote} test.Who </dev/null`);
      assert.equal(r.stdout, `hello\nrc=0\n${seenAs}\n`, r.stderr);
    });

    it(`${from} → ${to}: denied by the local policy (126, the call never leaves)`, async () => {
      const h = from === 'a' ? a : b;
      const r = await h.runIn('work', `qrexec-client-vm ${remote} test.LocalDeny </dev/null`);
      assert.equal(r.status, 126, r.stderr);
      assert.match(r.stderr, /Request refused/);
    });

    it(`${from} → ${to}: denied by the remote policy (126)`, async () => {
      const h = from === 'a' ? a : b;
      const r = await h.runIn('work', `qrexec-client-vm ${remote} test.RemoteDeny </dev/null`);
      assert.equal(r.status, 126, r.stderr);
      assert.match(r.stderr, /Request refused/);
    });

    it(`${from} → ${to}: a service missing on the peer exits 127; exit codes come back`, async () => {
      const h = from === 'a' ? a : b;
      const r = await h.runIn('work', `qrexec-client-vm ${remote} test.Missing </dev/null; echo "missing=$?"; for n in 0 3 42; do qrexec-client-vm ${remote} test.Exit+$n </dev/null; echo "exit$n=$?"; done`);
      assert.equal(r.stdout, 'missing=127\nexit0=0\nexit3=3\nexit42=42\n', r.stderr);
    });
  }

  it('one SSH connection per peer carries every call (ControlMaster): one login on each relay so far', async () => {
    for (const [h, peer] of [[a, 'b'], [b, 'a']] as const) {
      const r = await h.runIn('relay', `test -S /tmp/qubes-air-${peer}.ctl && echo master; grep -c 'Accepted publickey' ~/.qubes-air/sshd.log`);
      assert.equal(r.stdout, 'master\n1\n', `${h.name}: ${r.stderr}`);
    }
  });

  it('a → b: 64 MiB through echo, the same checksum back', async () => {
    const r = await a.runIn(
      'work',
      'head -c 67108864 /dev/urandom > /tmp/in && sha256sum < /tmp/in && qrexec-client-vm work-b test.Echo < /tmp/in | sha256sum; echo "rc=$?"',
      120_000,
    );
    const [sent, got, rc] = r.stdout.trim().split('\n');
    assert.equal(rc, 'rc=0', r.stderr);
    assert.match(sent ?? '', /^[0-9a-f]{64} {2}-$/);
    assert.equal(got, sent, r.stderr);
  });
});
