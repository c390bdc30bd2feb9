// A hostile qube on the data vchan of a qube→qube call (issue 15), both ways,
// with the real host, real agents and real qrexec-client-vm launchers:
// - "caller" scenarios: evil calls a service of vault and attacks vault's agent;
// - "target" scenarios: work calls evil, which attacks work's agent (that
//   runs the launcher's call) and the launcher.
// For each: the attacked call ends (or stalls harmlessly), and meanwhile a
// well-behaved call work → vault completes. Afterwards: both agents still
// run, their peak RSS stayed within 50 MB of the baseline, their descriptors
// are back to the baseline, vault's agent has no service process left, and
// the 200,000-frame floods of complaints did not flood the logs.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import type { Writable } from 'node:stream';
import {
  EVIL,
  HostileWorld,
  T,
  servicesOf,
  fdTargets,
  floodUntilStalled,
  msg,
  procStats,
  seeded,
  u32,
  within,
  type Conn,
  type LocalCall,
  type ProcStats,
} from './hostile-peer.js';

const SERVICES = {
  'test.Echo': '#!/bin/sh\necho "$1"\nexec cat\n',
  'test.Cat': '#!/bin/sh\nexec cat\n',
  'test.Count': '#!/bin/sh\nexec wc -c\n',
  'test.Sleep': '#!/bin/sh\nexec sleep 2\n',
  'test.Yes': '#!/bin/sh\nexec yes\n',
  'test.YesErr': '#!/bin/sh\nexec yes 1>&2\n',
};
/** A flood stops here: a bounded victim stalls it long before. */
const FLOOD_LIMIT = 64 << 20;
/** What a victim may take of a flood into a reader that does not read. */
const FLOOD_BOUND = 16 << 20;
const MB = 1024 * 1024;

let h: HostileWorld;
const base = new Map<string, ProcStats>();
const baseLog = new Map<string, number>();
/** Per-scenario measurements, printed at the end (and kept in the note). */
const report: Record<string, Record<string, number | string>> = {};
const note = (name: string, k: string, v: number | string): void => {
  (report[name] ??= {})[k] = v;
};

before(async () => {
  h = await HostileWorld.create(SERVICES);
  for (let i = 0; i < 5; i++) await h.goodCall(`warm${i}`, 20000);
  await new Promise((r) => setTimeout(r, 300));
  for (const a of ['work', 'vault'] as const) {
    base.set(a, await procStats(h.pid(a)));
    baseLog.set(a, h.agentLogBytes.get(a) ?? 0);
  }
});
after(async () => {
  await h?.close();
});

const hello = async (c: Conn): Promise<void> => {
  await c.handshake(3);
};
const STDIN64 = msg(T.DATA_STDIN, Buffer.alloc(65536, 0x69));
const STDOUT64 = msg(T.DATA_STDOUT, Buffer.alloc(65536, 0x6f));
const STDERR64 = msg(T.DATA_STDERR, Buffer.alloc(65536, 0x65));
const exitCode = (n: number): Buffer => {
  const b = Buffer.alloc(4);
  b.writeInt32LE(n | 0, 0);
  return msg(T.DATA_EXIT_CODE, b);
};
/** `n` copies of frame `f`, as one buffer. */
const many = (f: Buffer, n: number): Buffer => Buffer.concat(Array.from({ length: n }, () => f));
/** Until the peer closes; its messages. */
const untilClosed = (c: Conn, what: string): Promise<unknown> => within(c.recvAll(), what, 10000);

interface Scenario {
  readonly name: string;
  /** `id`: short and unique (vchan request ids, service arguments). */
  readonly run: (name: string, id: string) => Promise<void>;
}

/** Evil calls `service` in vault and runs `attack` on the caller's end; the vchan is closed afterwards. */
function asCaller(name: string, service: string, attack: (c: Conn, name: string) => Promise<void>): Scenario {
  return {
    name: `hostile caller: ${name}`,
    run: async (n, id) => {
      const { conn, end } = await h.evilCalls(id, service);
      try {
        await attack(conn, n);
      } finally {
        end();
      }
    },
  };
}

/** Work calls evil (qrexec-client-vm), which runs `attack` on the service's end; then the launcher must exit. */
function asTarget(name: string, attack: (c: Conn, call: LocalCall, name: string) => Promise<void>, expectStatus?: number): Scenario {
  return {
    name: `hostile target: ${name}`,
    run: async (n, id) => {
      const call = h.clientVm('evil', `test.Hostile+${id}`);
      const { conn, end } = await h.evilServes(id);
      try {
        await attack(conn, call, n);
      } finally {
        end();
      }
      const st = await within(call.status, `${n}: qrexec-client-vm exiting`, 10000);
      note(n, 'status', st);
      if (expectStatus !== undefined) assert.equal(st, expectStatus, `${n}: exit status`);
    },
  };
}

/** A well-behaved call during the attack; its time is noted. */
async function concurrentCall(n: string): Promise<void> {
  note(n, 'good_call_ms', await h.goodCall(`good${Object.keys(report).length}x${Math.floor(Math.random() * 1e6)}`));
}

/** A random frame sequence from `seed`: valid, invalid and truncated frames mixed. */
function randomFrames(seed: number): Buffer[] {
  const rnd = seeded(seed);
  const pick = <V>(xs: readonly V[]): V => xs[Math.floor(rnd() * xs.length)] as V;
  const types = [T.DATA_STDIN, T.DATA_STDOUT, T.DATA_STDERR, T.DATA_EXIT_CODE, T.HELLO, T.EXEC_CMDLINE, T.TRIGGER_SERVICE3, 0, 0xffffffff];
  const out: Buffer[] = [];
  for (let i = 0; i < 300; i++) {
    const type = rnd() < 0.1 ? Math.floor(rnd() * 2 ** 32) : pick(types);
    const r = rnd();
    const len = r < 0.6 ? Math.floor(rnd() * 200) : r < 0.8 ? pick([0, 4, 65536, 65537]) : Math.floor(rnd() * 2 ** 32);
    if (len > 70000) {
      out.push(u32(type, len)); // no body: the victim must not wait for, or allocate, 4 GiB
      break;
    }
    const body = Buffer.alloc(len);
    for (let j = 0; j < Math.min(len, 64); j++) body[j] = Math.floor(rnd() * 256);
    const f = Buffer.concat([u32(type, len), body]);
    out.push(rnd() < 0.02 ? f.subarray(0, Math.floor(rnd() * f.length)) : f);
  }
  return out;
}

const scenarios: Scenario[] = [
  // ----- evil calls vault: vault's agent is attacked
  ...(
    [
      ['stdout', 'test.Yes'],
      ['stderr', 'test.YesErr'],
    ] as const
  ).map(([stream, service]) =>
    asCaller(`${stream} flood into a caller that does not read`, service, async (c, n) => {
      await hello(c);
      c.sock.pause();
      await new Promise((r) => setTimeout(r, 1000));
      await concurrentCall(n);
    }),
  ),
  asCaller('stdin flood into a service that does not read', 'test.Sleep', async (c, n) => {
    await hello(c);
    const took = await floodUntilStalled(c.sock, () => STDIN64, FLOOD_LIMIT);
    note(n, 'flood_accepted_bytes', took);
    await concurrentCall(n);
    assert.ok(took < FLOOD_BOUND, `${n}: the agent took ${took} bytes`);
  }),
  asCaller('1M one-byte frames', 'test.Count', async (c, n) => {
    await hello(c);
    const one = msg(T.DATA_STDIN, 'x');
    for (let i = 0; i < 10; i++) c.send(many(one, 100_000));
    c.send(msg(T.DATA_STDIN));
    await concurrentCall(n);
    const got = (await untilClosed(c, n)) as { type: number; data: Buffer }[];
    assert.equal(got.filter((m) => m.type === T.DATA_STDOUT).map((m) => m.data.toString()).join('').trim(), '1000000');
  }),
  asCaller('a frame of length 2^32-1 and no body', 'test.Cat', async (c, n) => {
    await hello(c);
    c.send(u32(T.DATA_STDIN, 0xffffffff));
    await untilClosed(c, n);
  }),
  asCaller('a frame of 64 KiB + 1', 'test.Cat', async (c, n) => {
    await hello(c);
    c.send(msg(T.DATA_STDIN, Buffer.alloc(65537)));
    await untilClosed(c, n);
  }),
  asCaller('an unknown type', 'test.Cat', async (c, n) => {
    await hello(c);
    c.send(msg(0x194, 'x'));
    await untilClosed(c, n);
  }),
  asCaller('a control message (MSG_EXEC_CMDLINE)', 'test.Cat', async (c, n) => {
    await hello(c);
    c.send(msg(T.EXEC_CMDLINE, Buffer.concat([u32(0, 0), Buffer.from('root:id\0')])));
    await untilClosed(c, n);
  }),
  asCaller('a second MSG_HELLO', 'test.Cat', async (c, n) => {
    await hello(c);
    c.send(msg(T.HELLO, u32(3)));
    await untilClosed(c, n);
  }),
  asCaller('200,000 STDERR and EXIT_CODE frames from the caller (wrong side)', 'test.Count', async (c, n) => {
    await hello(c);
    c.send(many(msg(T.DATA_STDERR, 'e'), 100_000));
    c.send(many(exitCode(7), 100_000));
    c.send(Buffer.concat([msg(T.DATA_STDIN, 'abc'), msg(T.DATA_STDIN)]));
    const got = (await untilClosed(c, n)) as { type: number; data: Buffer }[];
    assert.equal(got.find((m) => m.type === T.DATA_STDOUT && m.data.length > 0)?.data.toString().trim(), '3');
    assert.equal(got.find((m) => m.type === T.DATA_EXIT_CODE)?.data.readInt32LE(0), 0);
  }),
  asCaller('STDOUT from the caller (counts as stdin, as in the reference)', 'test.Count', async (c, n) => {
    await hello(c);
    c.send(Buffer.concat([msg(T.DATA_STDOUT, 'xy'), msg(T.DATA_STDIN)]));
    const got = (await untilClosed(c, n)) as { type: number; data: Buffer }[];
    assert.equal(got.find((m) => m.type === T.DATA_STDOUT && m.data.length > 0)?.data.toString().trim(), '2');
  }),
  asCaller('data after EOF', 'test.Count', async (c, n) => {
    await hello(c);
    c.send(Buffer.concat([msg(T.DATA_STDIN, 'abc'), msg(T.DATA_STDIN), msg(T.DATA_STDIN, 'defgh')]));
    const got = (await untilClosed(c, n)) as { type: number; data: Buffer }[];
    assert.equal(got.find((m) => m.type === T.DATA_STDOUT && m.data.length > 0)?.data.toString().trim(), '3');
  }),
  asCaller('exit codes -1, 256, 2^31-1, twice, from the caller', 'test.Count', async (c, n) => {
    await hello(c);
    c.send(Buffer.concat([exitCode(-1), exitCode(256), exitCode(2 ** 31 - 1), exitCode(2 ** 31 - 1), msg(T.DATA_STDIN, 'ab'), msg(T.DATA_STDIN)]));
    const got = (await untilClosed(c, n)) as { type: number; data: Buffer }[];
    assert.equal(got.find((m) => m.type === T.DATA_STDOUT && m.data.length > 0)?.data.toString().trim(), '2');
  }),
  asCaller('opens the vchan and stays silent (no MSG_HELLO)', 'test.Cat', async (c, n) => {
    c.sock.pause();
    await new Promise((r) => setTimeout(r, 1000));
    await concurrentCall(n);
  }),
  asCaller('MSG_HELLO, then silent', 'test.Cat', async (c, n) => {
    await hello(c);
    await new Promise((r) => setTimeout(r, 1000));
    await concurrentCall(n);
  }),
  asCaller('close mid-header', 'test.Cat', async (c) => {
    await hello(c);
    c.send(u32(T.DATA_STDIN).subarray(0, 3));
  }),
  asCaller('close mid-body', 'test.Cat', async (c) => {
    await hello(c);
    c.send(Buffer.concat([u32(T.DATA_STDIN, 100), Buffer.alloc(50)]));
  }),
  ...[1, 2, 3].map((seed) =>
    asCaller(`random frames, seed ${seed}`, 'test.Cat', async (c) => {
      await hello(c);
      for (const f of randomFrames(seed)) c.send(f);
      await new Promise((r) => setTimeout(r, 200));
    }),
  ),

  // ----- work calls evil: work's agent (running the launcher's call) is attacked
  ...(
    [
      ['stdout flood into a caller that does not read its stdout', STDOUT64],
      ['stderr flood into a caller that does not read its stderr (issue 15 §1)', STDERR64],
    ] as const
  ).map(([name, frame]) =>
    asTarget(name, async (c, call, n) => {
      await hello(c);
      const took = await floodUntilStalled(c.sock, () => frame, FLOOD_LIMIT);
      note(n, 'flood_accepted_bytes', took);
      await concurrentCall(n);
      assert.ok(took < FLOOD_BOUND, `${n}: the agent took ${took} bytes`);
      // the reader reads at last: the stalled call goes on, and ends
      call.proc.stdout?.resume();
      call.proc.stderr?.resume();
    }),
  ),
  asTarget('stdin flood from the caller into a target that does not read', async (c, call, n) => {
    await hello(c);
    c.sock.pause();
    const took = await floodUntilStalled(call.proc.stdin as Writable, () => Buffer.alloc(65536, 0x69), FLOOD_LIMIT);
    note(n, 'flood_accepted_bytes', took);
    await concurrentCall(n);
    assert.ok(took < FLOOD_BOUND, `${n}: the caller took ${took} bytes`);
  }),
  asTarget('1M one-byte frames', async (c, call, n) => {
    let got = 0;
    call.proc.stdout?.on('data', (d: Buffer) => (got += d.length));
    await hello(c);
    const one = msg(T.DATA_STDOUT, 'x');
    for (let i = 0; i < 10; i++) c.send(many(one, 100_000));
    c.send(Buffer.concat([msg(T.DATA_STDOUT), msg(T.DATA_STDERR), exitCode(0)]));
    await concurrentCall(n);
    assert.equal(await within(call.status, n, 20000), 0);
    assert.equal(got, 1_000_000);
  }, 0),
  ...(
    [
      ['a frame of length 2^32-1 and no body', u32(T.DATA_STDOUT, 0xffffffff)],
      ['a frame of 64 KiB + 1', msg(T.DATA_STDOUT, Buffer.alloc(65537))],
      ['an unknown type', msg(0x194, 'x')],
      ['a control message (MSG_SERVICE_CONNECT)', msg(T.SERVICE_CONNECT, Buffer.alloc(40))],
      ['a second MSG_HELLO', msg(T.HELLO, u32(3))],
    ] as const
  ).map(([name, frame]) =>
    asTarget(name, async (c, call, n) => {
      call.proc.stdout?.resume();
      await hello(c);
      c.send(frame);
      await untilClosed(c, n);
      assert.notEqual(await within(call.status, n, 10000), 0);
    }),
  ),
  asTarget('200,000 frames after EOF and STDIN from the target (wrong side)', async (c, call, n) => {
    let out = '';
    call.proc.stdout?.on('data', (d: Buffer) => (out += d.toString()));
    await hello(c);
    c.send(Buffer.concat([msg(T.DATA_STDIN, 'ab'), msg(T.DATA_STDOUT)]));
    c.send(many(msg(T.DATA_STDOUT, 'x'), 200_000));
    c.send(Buffer.concat([msg(T.DATA_STDERR), exitCode(4)]));
    assert.equal(await within(call.status, n, 20000), 4);
    assert.equal(out, 'ab');
  }, 4),
  asTarget('data after EOF', async (c, call, n) => {
    let out = '';
    call.proc.stdout?.on('data', (d: Buffer) => (out += d.toString()));
    await hello(c);
    c.send(Buffer.concat([msg(T.DATA_STDOUT, 'abc'), msg(T.DATA_STDOUT), msg(T.DATA_STDOUT, 'def'), msg(T.DATA_STDERR), exitCode(0)]));
    assert.equal(await within(call.status, n, 10000), 0);
    assert.equal(out, 'abc');
  }, 0),
  ...[-1, 256, 2 ** 31 - 1, -(2 ** 31)].map((code) =>
    asTarget(`exit code ${code}`, async (c, call) => {
      call.proc.stdout?.resume();
      await hello(c);
      c.send(Buffer.concat([msg(T.DATA_STDOUT), msg(T.DATA_STDERR), exitCode(code)]));
      await untilClosed(c, `exit code ${code}`);
      // a failure, and a log line naming the peer (beyond the reference, which passes 256 on as 0)
      await within(call.status, `exit code ${code}`, 10000);
      assert.match(h.agentLog.get('work') ?? '', new RegExp(`domain ${EVIL} port [0-9]+ sent exit code ${code}, outside 0-255: the call fails with 255`));
    }, 255),
  ),
  asTarget('an exit code sent twice (the first counts)', async (c, call) => {
    call.proc.stdout?.resume();
    await hello(c);
    c.send(Buffer.concat([msg(T.DATA_STDOUT), msg(T.DATA_STDERR), exitCode(3), exitCode(0)]));
    await untilClosed(c, 'exit code twice');
  }, 3),
  asTarget('an exit code without the EOFs, then silent: the call still ends', async (c, call) => {
    call.proc.stdout?.resume();
    await hello(c);
    c.send(exitCode(6));
    await within(call.status, 'exit code, then silent', 10000);
  }, 6),
  asTarget('connects and stays silent (no MSG_HELLO)', async (c, call, n) => {
    c.sock.pause();
    await new Promise((r) => setTimeout(r, 1000));
    await concurrentCall(n);
    void call;
  }),
  asTarget('MSG_HELLO, then silent', async (c, call, n) => {
    await hello(c);
    await new Promise((r) => setTimeout(r, 1000));
    await concurrentCall(n);
    void call;
  }),
  asTarget('close mid-header', async (c) => {
    await hello(c);
    c.send(u32(T.DATA_STDOUT).subarray(0, 3));
  }),
  asTarget('close mid-body', async (c) => {
    await hello(c);
    c.send(Buffer.concat([u32(T.DATA_STDOUT, 100), Buffer.alloc(50)]));
  }),
  ...[1, 2, 3].map((seed) =>
    asTarget(`random frames, seed ${seed}`, async (c, call) => {
      call.proc.stdout?.resume();
      call.proc.stderr?.resume();
      await hello(c);
      for (const f of randomFrames(seed)) c.send(f);
      await new Promise((r) => setTimeout(r, 200));
    }),
  ),
];

void test('hostile peers on the data vchan, both directions, concurrently', { concurrency: 8 }, async (t) => {
  // HOSTILE_ONLY=REGEX runs only the scenarios it matches (to measure one alone)
  const only = process.env['HOSTILE_ONLY'] ? new RegExp(process.env['HOSTILE_ONLY']) : undefined;
  const run = scenarios.map((s, i) => [s, i] as const).filter(([s]) => !only || only.test(s.name));
  await Promise.all(run.map(([s, i]) => t.test(s.name, () => s.run(s.name, `s${i}`))));
});

void test('after the attacks: agents up, RSS within +50 MB, descriptors back, no service left, logs bounded', async (t) => {
  for (const a of ['work', 'vault'] as const) {
    const p = h.agents.get(a);
    assert.equal(p?.exitCode, null, `${a}'s agent exited`);
    assert.equal(p?.signalCode, null, `${a}'s agent was killed`);
    assert.ok(await h.goodCall(`after${a}`) >= 0);
  }
  // service processes end once their pipes close (test.Sleep after 2 s)
  const vaultPid = h.pid('vault');
  const deadline = Date.now() + 15000;
  while ((await servicesOf(vaultPid)).length > 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 100));
  assert.deepEqual(await servicesOf(vaultPid), [], "vault's agent has service processes left");
  for (const a of ['work', 'vault'] as const) {
    const b = base.get(a) as ProcStats;
    let now = await procStats(h.pid(a));
    while (now.fds > b.fds && Date.now() < deadline) {
      await new Promise((r) => setTimeout(r, 100));
      now = await procStats(h.pid(a));
    }
    const logged = (h.agentLogBytes.get(a) ?? 0) - (baseLog.get(a) ?? 0);
    note(`agent ${a}`, 'baseline_rss_mb', +(b.rssKb / 1024).toFixed(1));
    note(`agent ${a}`, 'peak_rss_mb', +(now.hwmKb / 1024).toFixed(1));
    note(`agent ${a}`, 'rss_after_mb', +(now.rssKb / 1024).toFixed(1));
    note(`agent ${a}`, 'fds_baseline', b.fds);
    note(`agent ${a}`, 'fds_after', now.fds);
    note(`agent ${a}`, 'log_bytes_during_attacks', logged);
    assert.ok(now.hwmKb - b.rssKb <= 50 * 1024, `${a}'s agent peaked at ${now.hwmKb} kB from ${b.rssKb} kB`);
    assert.ok(now.fds <= b.fds, `${a}'s agent has ${now.fds} descriptors, ${b.fds} before: ${(await fdTargets(h.pid(a))).join(' ')}`);
    // two 200,000-frame complaint floods and ~20 other attacks per agent: a few kB, not megabytes
    assert.ok(logged < 64 * 1024, `${a}'s agent logged ${logged} bytes:\n${(h.agentLog.get(a) ?? '').slice(-3000)}`);
  }
  t.diagnostic(JSON.stringify(report));
  void MB;
});
