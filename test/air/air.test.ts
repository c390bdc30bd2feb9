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
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import { AirTestHost, RELAY_PORT, airSkipReason, blockLink, forwardToRelay, link, netnsTag, setLink } from './hosts.js';

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
test.Who * personal-a work allow
qubes.VMShell * work ${remote} allow
qubes.VMShell * ${remote} work allow
qubes.Filecopy * work ${remote} allow
qubes.Filecopy * ${remote} work allow
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
    // the documented set-up commands: one pair command, then the RemoteVMs on each side
    const paired = a.tool('qvm-air', ['pair', '--name', 'a', '--address', `${a.linkAddress}:${RELAY_PORT}`, '--peer-host-dir', b.run, '--peer-name', 'b', '--peer-address', `${b.linkAddress}:${RELAY_PORT}`]);
    assert.equal(paired.status, 0, paired.stderr);
    assert.equal(paired.stdout, `paired a (${a.linkAddress}:${RELAY_PORT}) and b (${b.linkAddress}:${RELAY_PORT})\n`);
    a.ok('qvm-air', 'add', 'work-b', 'b', '--remote-name', 'work');
    b.ok('qvm-air', 'add', 'work-a', 'a', '--remote-name', 'work');
    // a second RemoteVM of a on b, for a relay that would pass work off as personal
    b.ok('qvm-air', 'add', 'personal-a', 'a', '--remote-name', 'personal');
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

  it('qvm-air list and qvm-ls show the RemoteVMs; the relay files are as documented', async () => {
    const l = a.ok('qvm-air', 'list');
    assert.match(l, /^host a ed25519:\S{16}\npeer b 10\.231\.0\.2:2222 via relay ed25519:\S{16}\nremote work-b = work on b via relay\n$/);
    assert.match(a.ok('qvm-ls', '--raw-data', '--fields', 'name,class', 'work-b'), /^work-b\|RemoteVM\n$/);
    const r = await b.runIn('relay', 'cd ~/.qubes-air && cat remotes && tail -1 authorized_keys | sed \"s/ ssh-ed25519 .*//\" && stat -c %a . authorized_keys id_ed25519');
    assert.equal(
      r.stdout,
      'personal-a a personal\nwork-a a work\n' +
        'command="/run/qrexec-ts/qubes-rpc/air/qubes-air-entry a",no-pty,no-port-forwarding,no-agent-forwarding,no-X11-forwarding,no-user-rc,restrict\n' +
        '700\n600\n600\n',
      r.stderr,
    );
  });

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

  /** Audit records of `h` (qrexec-audit --json), once some match `pred`. */
  async function audit(h: AirTestHost, pred: (r: Record<string, unknown>) => boolean): Promise<Record<string, unknown>[]> {
    let rows: Record<string, unknown>[] = [];
    for (let i = 0; i < 50; i++) {
      const r = h.tool('qrexec-audit', ['--db', `${h.data}/policy-audit.db`, '--json', '--limit', '0']);
      rows = r.stdout.split('\n').filter((l) => l).map((l) => JSON.parse(l) as Record<string, unknown>).filter(pred);
      if (rows.length) return rows;
      await new Promise((res) => setTimeout(res, 100));
    }
    return rows;
  }

  it('the audit log of each host records its side of a relayed call, with the peer host and its key', async () => {
    const r = await a.runIn('work', 'qrexec-client-vm work-b test.Exit+7 </dev/null; echo "rc=$?"');
    assert.equal(r.stdout, 'rc=7\n', r.stderr);
    const signed = await audit(a, (x) => x['client'] === 'qubes-air' && x['mode'] === 'sign' && x['argument'] === '+7');
    assert.equal(signed.length, 1, JSON.stringify(signed));
    assert.match(String(signed[0]?.['reason']), /signed for host b \(ed25519:[A-Za-z0-9+/]{16}\) via relay/);
    assert.equal(signed[0]?.['source'], 'work');
    const verified = await audit(b, (x) => x['client'] === 'qubes-air' && x['mode'] === 'verify' && x['argument'] === '+7');
    assert.equal(verified.length, 1, JSON.stringify(verified));
    assert.match(String(verified[0]?.['reason']), /from host a \(ed25519:[A-Za-z0-9+/]{16}\) via relay: signature verified/);
    assert.equal(verified[0]?.['source'], 'work-a');
    // and the peer's policy decided with the source as the RemoteVM
    const decided = await audit(b, (x) => x['client'] !== 'qubes-air' && x['service'] === 'test.Exit' && x['argument'] === '+7');
    assert.equal(decided[0]?.['source'], 'relay');
    assert.equal(decided[0]?.['requested_source'], 'work-a');
    assert.equal(decided[0]?.['result'], 'allow');
  });

  describe('a compromised relay', () => {
    // relay a's own qubesair.SSHProxy (its /usr/local comes first on the service path):
    // it gets dom0's signature as the real one does, then lies as /tmp/evil says
    const EVIL = `#!/bin/sh
arg=$QREXEC_SERVICE_ARGUMENT; target=\${arg%%+*}; service=\${arg#*+}
env=$(printf '%s %s %s\\n' "$QREXEC_REMOTE_DOMAIN" "$target" "$service" | qrexec-client-vm dom0 qubesair.Sign) || exit 126
src=$QREXEC_REMOTE_DOMAIN
case $(cat /tmp/evil) in
forge) src=personal ;;
replay) env=$(cat /tmp/evil-env) ;;
retarget) service=test.Exit+9 ;;
*) echo "$env" > /tmp/evil-env ;;
esac
exec ssh -F $HOME/.qubes-air/ssh_config b "qubes-air-v1 $src work $service $env"
`;
    before(() => a.service('relay', 'qubesair.SSHProxy', EVIL));
    after(() => fs.rmSync(`${a.data}/qubes/relay/private/usrlocal/etc/qubes-rpc/qubesair.SSHProxy`));

    const call = (mode: string): Promise<{ status: number; stdout: string; stderr: string }> =>
      a.runIn('relay', `echo ${mode} > /tmp/evil`).then(() => a.runIn('work', 'qrexec-client-vm work-b test.Who </dev/null'));

    it('passes one of its RemoteVMs off as another: refused by the target host\'s dom0', async () => {
      const honest = await call('save');
      assert.equal(honest.stdout, 'work-a\n', honest.stderr);
      const r = await call('forge');
      assert.equal(r.status, 126, r.stdout + r.stderr);
      assert.equal(r.stdout, '');
      assert.match(r.stderr, /signed for source work, the relay claims personal/);
      const denied = await audit(b, (x) => x['client'] === 'qubes-air' && x['result'] === 'deny' && /claims personal/.test(String(x['reason'])));
      assert.match(String(denied[0]?.['reason']), /refused a call from host a via relay/);
    });

    it('replays an envelope: refused', async () => {
      const r = await call('replay');
      assert.equal(r.status, 126, r.stdout + r.stderr);
      assert.match(r.stderr, /replayed envelope/);
    });

    it('changes the service of a signed call: refused', async () => {
      const r = await call('retarget');
      assert.equal(r.status, 126, r.stdout + r.stderr);
      assert.match(r.stderr, /signed for test\.Who\+, the relay asks for test\.Exit\+9/);
    });

    it('on the target host, calls for a RemoteVM without an envelope: refused before the policy, with an audit line naming the relay', async () => {
      const r = await b.runIn('relay', 'qrexec-client-vm --source-qube=work-a work test.Who </dev/null');
      assert.equal(r.status, 126, r.stdout + r.stderr);
      const denied = await audit(b, (x) => x['client'] === 'qubes-air' && /without a verified envelope/.test(String(x['reason'])));
      assert.match(String(denied[0]?.['reason']), /relay relay claims source work-a \(host a\)/);
    });

    it('a signature by a key the target host did not pin is refused', async () => {
      const f = `${b.data}/air/peers/a.json`;
      const saved = fs.readFileSync(f, 'utf8');
      const other = crypto.generateKeyPairSync('ed25519').publicKey.export({ type: 'spki', format: 'der' }).subarray(12).toString('base64');
      fs.writeFileSync(f, JSON.stringify({ ...JSON.parse(saved), signingKey: other }));
      try {
        const r = await call('save');
        assert.equal(r.status, 126, r.stdout + r.stderr);
        assert.match(r.stderr, /bad signature \(not made by a's key\)/);
      } finally {
        fs.writeFileSync(f, saved);
      }
    });
  });

  it('an SSH host key that is not the pinned one: the relay does not connect', async () => {
    const r0 = await a.runIn('relay', 'ssh -F ~/.qubes-air/ssh_config -O exit b 2>/dev/null; cp ~/.qubes-air/known_hosts /tmp/kh; ssh-keygen -q -t ed25519 -N "" -f /tmp/k && echo "qubes-air-b $(cut -d" " -f1,2 /tmp/k.pub)" > ~/.qubes-air/known_hosts');
    assert.equal(r0.status, 0, r0.stderr);
    try {
      const r = await a.runIn('work', 'qrexec-client-vm work-b test.Who </dev/null');
      assert.notEqual(r.status, 0);
      assert.equal(r.stdout, '');
      assert.match(r.stderr, /Host key verification failed/);
    } finally {
      await a.runIn('relay', 'cp /tmp/kh ~/.qubes-air/known_hosts');
    }
    const again = await a.runIn('work', 'qrexec-client-vm work-b test.Who </dev/null');
    assert.equal(again.stdout, 'work-a\n', again.stderr);
  });

  it('a → b: qvm-run-vm and qvm-copy-to-vm in a qube toward the RemoteVM: the command runs, the file lands on b from work-a', async () => {
    const r = await a.runIn('work', 'qvm-run-vm work-b "echo ran >/tmp/ran-by-air; echo \\$QREXEC_REMOTE_DOMAIN"; echo "rc=$?"; ' +
      'head -c 1048576 /dev/urandom > /tmp/gift && sha256sum < /tmp/gift && qvm-copy-to-vm work-b /tmp/gift; echo "copy=$?"');
    const [who, rc, sum, copy] = r.stdout.trim().split('\n');
    assert.equal(who, 'work-a', r.stderr);
    assert.equal(rc, 'rc=0');
    assert.equal(copy, 'copy=0', r.stderr);
    const there = await b.runIn('work', 'cat /tmp/ran-by-air; sha256sum < ~/QubesIncoming/work-a/gift');
    assert.equal(there.stdout, `ran\n${sum}\n`, there.stderr);
  });

  it('dom0\'s qvm-run toward a RemoteVM: refused with a clear message (dom0 has no qrexec link to it; a qube calls it through the relay)', () => {
    const r = a.tool('qvm-run', ['--pass-io', 'work-b', 'true'], undefined, 30_000);
    assert.notEqual(r.status, 0);
    assert.match(r.stderr, /^qvm-run: error: A remote qube cannot be started from here\n$/);
    assert.doesNotMatch(r.stderr, /\n\s+at /);
  });

  describe('faults', () => {
    // ConnectTimeout 5 for a new connection; keep-alives of 2 s x 3 for an open one
    const BOUND_MS = 15_000;
    const timed = async (h: AirTestHost, qube: string, cmd: string): Promise<{ r: { status: number; stdout: string; stderr: string }; ms: number }> => {
      const t0 = Date.now();
      const r = await h.runIn(qube, cmd, 60_000);
      return { r, ms: Date.now() - t0 };
    };
    /** The processes of relay `h` running the call path (entry point, client, ssh), as "comm" lines. */
    const callPath = async (h: AirTestHost): Promise<string> =>
      (await h.runIn('relay', 'for s in /proc/[0-9]*/comm; do read -r c < $s 2>/dev/null && echo $c; done | grep -x -e qubes-air-entry -e qrexec-client-v || true')).stdout;

    it('the remote host down: a call fails within the connect timeout with a clear message, over the open connection and over a new one; then it reconnects', async () => {
      const warm = await a.runIn('work', 'qrexec-client-vm work-b test.Who </dev/null');
      assert.equal(warm.stdout, 'work-a\n', warm.stderr);
      blockLink(b, true);
      try {
        for (const what of ['the open connection', 'a new connection']) {
          const { r, ms } = await timed(a, 'work', 'qrexec-client-vm work-b test.Who </dev/null');
          assert.notEqual(r.status, 0, `${what}: ${r.stdout}`);
          assert.equal(r.stdout, '');
          assert.match(r.stderr, /qubesair\.SSHProxy: the SSH connection to b failed or was lost/, what);
          assert.ok(ms < BOUND_MS, `${what}: failed after ${ms} ms`);
        }
      } finally {
        blockLink(b, false);
      }
      const again = await a.runIn('work', 'qrexec-client-vm work-b test.Who </dev/null');
      assert.equal(again.stdout, 'work-a\n', again.stderr);
    });

    it('the link cut mid-stream (32 of 64 MiB sent): the caller fails non-zero with a partial count; both relays end the call; then it reconnects', async () => {
      // the producer sends half, then holds the stream open: the cut is always mid-call
      const p = a.runIn(
        'work',
        'rm -f /tmp/f && mkfifo /tmp/f && { (head -c 33554432 /dev/zero; exec sleep 60) > /tmp/f & pid=$!; }; ' +
          'qrexec-client-vm work-b test.Echo < /tmp/f > /tmp/out; echo "rc=$?"; kill $pid; wc -c < /tmp/out',
        90_000,
      );
      // wait until the echo is under way: a's work has the output going
      let n = 0;
      for (let i = 0; i < 100 && n < 1 << 20; i++) {
        await new Promise((res) => setTimeout(res, 200));
        n = Number((await a.runIn('work', 'wc -c < /tmp/out 2>/dev/null || echo 0')).stdout.trim());
      }
      assert.ok(n >= 1 << 20, `echo never got going (${n} bytes)`);
      const t0 = Date.now();
      setLink(a, b, false);
      let r: { status: number; stdout: string; stderr: string };
      try {
        r = await p;
      } finally {
        setLink(a, b, true);
      }
      const ms = Date.now() - t0;
      const [rc, count] = r.stdout.trim().split('\n');
      assert.notEqual(rc, 'rc=0', r.stdout + r.stderr);
      assert.match(rc ?? '', /^rc=\d+$/);
      assert.ok(Number(count) < 67108864, `partial transfer: ${count}`);
      assert.match(r.stderr, /the SSH connection to b failed or was lost/);
      assert.ok(ms < BOUND_MS, `the caller failed after ${ms} ms`);
      // the far end: b's relay ended its side too (sshd's keep-alive or a reset), and says the call failed
      let log = '';
      for (let i = 0; i < 60 && !/test\.Echo/.test(log); i++) {
        log = (await b.runIn('relay', 'cat ~/.qubes-air/entry.log')).stdout;
        if (!/test\.Echo/.test(log)) await new Promise((res) => setTimeout(res, 250));
      }
      assert.match(log, /call from a: work -> work test\.Echo\+ failed \(the SSH connection was lost\)/);
      assert.equal(await callPath(b), '', 'relay b still runs the call');
      assert.equal(await callPath(a), '', 'relay a still runs the call');
      const again = await a.runIn('work', 'echo back | qrexec-client-vm work-b test.Echo');
      assert.equal(again.stdout, 'back\n', again.stderr);
    });

    it('qvm-air stop ends the open connections (no call gets through); start: the next call reconnects', async () => {
      const logins = async (): Promise<number> => Number((await b.runIn('relay', "grep -c 'Accepted publickey' ~/.qubes-air/sshd.log")).stdout.trim());
      const warm = await a.runIn('work', 'qrexec-client-vm work-b test.Who </dev/null');
      assert.equal(warm.stdout, 'work-a\n', warm.stderr);
      const before = await logins();
      b.ok('qvm-air', 'stop', 'relay');
      const r = await b.runIn('relay', 'for s in /proc/[0-9]*/comm; do read -r c < $s && echo $c; done | grep -cx sshd || true');
      assert.equal(r.stdout, '0\n', 'sshd processes left in relay b');
      const { r: down, ms } = await timed(a, 'work', 'qrexec-client-vm work-b test.Who </dev/null');
      assert.notEqual(down.status, 0, down.stdout);
      assert.equal(down.stdout, '');
      assert.match(down.stderr, /the SSH connection to b failed or was lost/);
      assert.ok(ms < BOUND_MS, `failed after ${ms} ms`);
      b.ok('qvm-air', 'start', 'relay');
      const again = await a.runIn('work', 'qrexec-client-vm work-b test.Who </dev/null');
      assert.equal(again.stdout, 'work-a\n', again.stderr);
      assert.equal(await logins(), before + 1);
      // and a restart with a call open: the call fails, the next one reconnects
      const open = a.runIn('work', 'rm -f /tmp/f && mkfifo /tmp/f && { (echo x; exec sleep 60) > /tmp/f & pid=$!; }; qrexec-client-vm work-b test.Echo < /tmp/f; echo "rc=$?"; kill $pid', 60_000);
      await new Promise((res) => setTimeout(res, 1500));
      b.ok('qvm-air', 'start', 'relay');
      const cut = await open;
      assert.match(cut.stdout, /^x\nrc=(?!0\n)\d+\n$/, cut.stderr);
      const third = await a.runIn('work', 'qrexec-client-vm work-b test.Who </dev/null');
      assert.equal(third.stdout, 'work-a\n', third.stderr);
    });

    it('the relay restarted: its sshd starts with it (no qvm-air start), and the next call gets through', async () => {
      const sshds = async (): Promise<string> => (await b.runIn('relay', 'for s in /proc/[0-9]*/comm; do read -r c < $s 2>/dev/null && echo $c; done | grep -cx sshd || true')).stdout.trim();
      b.ok('qvm-shutdown', '--wait', 'relay');
      b.ok('qvm-start', 'relay');
      // the site's port forward follows the relay's new address
      b.readRelayAddress();
      forwardToRelay(b);
      let n = '0';
      for (let i = 0; i < 50 && n === '0'; i++) {
        n = await sshds();
        if (n === '0') await new Promise((res) => setTimeout(res, 200));
      }
      assert.notEqual(n, '0', 'no sshd in relay b after its start');
      const r = await a.runIn('work', 'qrexec-client-vm work-b test.Who </dev/null');
      assert.equal(r.stdout, 'work-a\n', r.stderr);
    });
  });

  it('a signing key rotation without a gap: a offers its next key, b imports it, a switches; every call verifies; then b drops the old key', async () => {
    const who = async (): Promise<void> => {
      const r = await a.runIn('work', 'qrexec-client-vm work-b test.Who </dev/null');
      assert.equal(r.stdout, 'work-a\n', r.stderr);
    };
    const fp = (text: string): string => /(ed25519:[A-Za-z0-9+/]{16})/.exec(text)?.[1] ?? '';
    const offer = (): string => a.ok('qvm-air', 'export', 'relay', `${a.linkAddress}:${RELAY_PORT}`);
    const importOnB = (text: string): void => {
      const r = b.tool('qvm-air', ['import', 'relay', '-'], text);
      assert.equal(r.status, 0, r.stderr);
    };
    const oldFp = fp(a.ok('qvm-air', 'list'));
    const oldPem = fs.readFileSync(`${a.data}/air/signing-key.pem`);
    const nextFp = fp(a.ok('qvm-air', 'rotate'));
    assert.ok(nextFp && nextFp !== oldFp, nextFp);
    assert.match(a.ok('qvm-air', 'list'), new RegExp(`^next key ${nextFp.replace(/[+/]/g, '\\$&')} `, 'm'));
    importOnB(offer());
    assert.match(b.ok('qvm-air', 'list'), new RegExp(`^peer a .* ${oldFp.replace(/[+/]/g, '\\$&')} \\(next ${nextFp.replace(/[+/]/g, '\\$&')}\\)$`, 'm'));
    await who();
    assert.match(a.ok('qvm-air', 'rotate', '--finish'), new RegExp(`now signs with ${nextFp.replace(/[+/]/g, '\\$&')}`));
    // the gap a rotation used to have: b has not imported the new offer yet, and the call verifies
    await who();
    const verified = await audit(b, (x) => x['client'] === 'qubes-air' && x['mode'] === 'verify' && x['result'] === 'allow');
    assert.match(String(verified.at(-1)?.['reason']), new RegExp(`from host a \\(${nextFp.replace(/[+/]/g, '\\$&')}\\)`));
    importOnB(offer());
    assert.doesNotMatch(b.ok('qvm-air', 'list'), /\(next /);
    await who();
    // the old key, stolen: no longer accepted
    const newPem = fs.readFileSync(`${a.data}/air/signing-key.pem`);
    fs.writeFileSync(`${a.data}/air/signing-key.pem`, oldPem);
    try {
      const r = await a.runIn('work', 'qrexec-client-vm work-b test.Who </dev/null');
      assert.equal(r.status, 126, r.stdout + r.stderr);
      assert.match(r.stderr, /bad signature \(not made by a's key\)/);
    } finally {
      fs.writeFileSync(`${a.data}/air/signing-key.pem`, newPem);
    }
    await who();
  });

  it('qvm-air remove: refused while RemoteVMs stand for the peer; with --force the peer is forgotten, its open connection dropped, and it cannot log in again', async () => {
    const refused = a.tool('qvm-air', ['remove', 'b']);
    assert.equal(refused.status, 1, refused.stdout);
    assert.match(refused.stderr, /^qvm-air: the RemoteVMs work-b stand for qubes of b: remove them first, or use --force\n$/);
    // b's relay holds an open connection to a's relay
    const warm = await b.runIn('work', 'qrexec-client-vm work-a test.Who </dev/null');
    assert.equal(warm.stdout, 'work-b\n', warm.stderr);
    const removed = a.tool('qvm-air', ['remove', 'b', '--force']);
    assert.equal(removed.status, 0, removed.stderr);
    assert.equal(removed.stdout, 'peer b removed, with its RemoteVMs work-b\n');
    assert.doesNotMatch(a.ok('qvm-air', 'list'), /peer b|work-b/);
    assert.doesNotMatch(a.ok('qvm-ls', '--raw-list'), /work-b/);
    const files = await a.runIn('relay', 'cd ~/.qubes-air && cat authorized_keys known_hosts ssh_config remotes');
    assert.equal(files.status, 0, files.stderr);
    assert.doesNotMatch(files.stdout, /qubes-air:b|qubes-air-b|Host b\b|work-b/);
    // neither over the connection b had opened nor over a new one
    for (let i = 0; i < 2; i++) {
      const r = await b.runIn('work', 'qrexec-client-vm work-a test.Who </dev/null');
      assert.notEqual(r.status, 0, r.stdout);
      assert.equal(r.stdout, '');
      assert.match(r.stderr, /the SSH connection to a failed or was lost/);
    }
  });
});
