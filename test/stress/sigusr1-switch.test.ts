/**
 * Issue #8, the single-socket switch: a service that sends SIGUSR1 to
 * QREXEC_AGENT_PID and then writes its output to its stdin socket, and exits
 * at once, loses nothing, also under CPU load (two busy loops started here)
 * and with several calls running in one agent. One agent serves every call,
 * so the signal reaches it as an event among the service's exit and its
 * pipes' EOF (the reference forks an agent process per call and sees the
 * signal before anything that happened after it). And a service that writes
 * to its stdin socket without a switch (or with an agent that has no native
 * addon, where the switch is ignored) must not die of SIGPIPE: its stdout
 * still arrives, as in the reference, whose descriptor of that socket stays
 * open until the call is over. The same for a caller's local program
 * (qrexec-client-vm TARGET SERVICE PROGRAM): its SIGUSR1 goes to the native
 * launcher, which tells the agent, while the agent reads the program's output
 * itself; and to qrexec-client-vm's Node code. Each call's bytes and exit
 * code are checked; the loss count is printed.
 */
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { DOMAIN, Fixture, ROOT, T, TARGET_DOMAIN, connectRetry, msg, sortMessages, u32, type Conn } from '../agent/peer.js';

const addonBuilt = fs.existsSync(path.join(ROOT, 'native', 'build', 'qrexec_native.node'));
const CALLS_PER_SHAPE = 30;
const PARALLEL = 4;

interface Shape {
  readonly name: string;
  readonly script: string;
  /** What the caller sends (then EOF). */
  readonly stdin: (token: string) => string;
  readonly stdout: (token: string) => string;
  readonly code: number;
}

const switched: Shape[] = [
  {
    // the scenario of test/agent/service-sigusr1.test.ts: switch, read, answer on fd 0, exit
    name: 'test.SwRead',
    script: '#!/bin/sh\nkill -USR1 "$QREXEC_AGENT_PID"\nread x\necho "a $x" >&0\n',
    stdin: (t) => `${t}\n`,
    stdout: (t) => `a ${t}\n`,
    code: 0,
  },
  {
    name: 'test.SwNow',
    script: '#!/bin/sh\nkill -USR1 "$QREXEC_AGENT_PID"\necho "now $1" >&0\nexit 3\n',
    stdin: () => '',
    stdout: (t) => `now ${t}\n`,
    code: 3,
  },
  {
    name: 'test.SwMixed',
    script: '#!/bin/sh\necho "before $1"\nkill -USR1 "$QREXEC_AGENT_PID"\necho "after $1" >&0\n',
    stdin: () => '',
    stdout: (t) => `before ${t}\nafter ${t}\n`,
    code: 0,
  },
];

// no switch: what goes to fd 0 is nobody's; stdout is the caller's
const unswitched: Shape = {
  name: 'test.Fd0Junk',
  script: '#!/bin/sh\nread x\necho "junk $x" >&0\necho "out $x"\nexit 5\n',
  stdin: (t) => `${t}\n`,
  stdout: (t) => `out ${t}\n`,
  code: 5,
};
const ignoredSwitch: Shape = {
  name: 'test.IgnoredSw',
  script: '#!/bin/sh\nkill -USR1 "$QREXEC_AGENT_PID"\nread x\necho "on fd 0 $x" >&0\necho "on stdout $x"\n',
  stdin: (t) => `${t}\n`,
  stdout: (t) => `on stdout ${t}\n`,
  code: 0,
};

let load: ChildProcess[] = [];
before(() => {
  load = [0, 1].map(() => spawn('/bin/sh', ['-c', 'while :; do :; done'], { stdio: 'ignore' }));
});
after(() => {
  for (const p of load) p.kill('SIGKILL');
});

/** The agent's log without its lines for every call. */
const quietLog = (f: Fixture): string =>
  f.agentLog
    .split('\n')
    .filter((l) => !/executed:|exited with/.test(l))
    .slice(-30)
    .join('\n');

/** One call: its stdout and exit code as the caller saw them, or what went wrong. */
async function call(f: Fixture, shape: Shape, token: string): Promise<{ port: number; problem?: string }> {
  const { target, port } = await f.exec(T.EXEC_CMDLINE, `QUBESRPC ${shape.name}+${token} domX`);
  const input = shape.stdin(token);
  if (input) target.send(msg(T.DATA_STDIN, input));
  target.send(msg(T.DATA_STDIN));
  const all = sortMessages(await target.recvAll());
  const out = all.filter((m) => m.type === T.DATA_STDOUT && m.data.length > 0);
  const stdout = out.map((m) => m.data.toString()).join('');
  const tail = all.filter((m) => !out.includes(m)).map((m) => `${m.type.toString(16)}:${m.data.toString('hex')}`);
  const want = [`191:`, `192:`, `193:${u32(shape.code).toString('hex')}`];
  if (stdout !== shape.stdout(token) || JSON.stringify(tail) !== JSON.stringify(want)) {
    return { port, problem: `${shape.name}+${token}: stdout ${JSON.stringify(stdout)} (want ${JSON.stringify(shape.stdout(token))}), end ${tail.join(' ')}` };
  }
  return { port };
}

/**
 * Runs every shape `CALLS_PER_SHAPE` times in one agent: the shapes that
 * signal one call at a time, the others PARALLEL - 1 at a time alongside.
 * (Two services' signals sent while the agent has not taken the first yet
 * are one signal for the kernel: standard signals do not queue, so the
 * second call's switch is lost. The reference has one agent process per call.)
 */
async function round(f: Fixture, shapes: readonly Shape[], label: string): Promise<string[]> {
  for (const s of shapes) f.service('rpc', s.name, s.script);
  const queue = (list: readonly Shape[]): Array<{ shape: Shape; token: string }> => {
    const jobs: Array<{ shape: Shape; token: string }> = [];
    for (let i = 0; i < CALLS_PER_SHAPE; i++) for (const shape of list) jobs.push({ shape, token: `t${i}` });
    return jobs;
  };
  const signalling = queue(shapes.filter((s) => s.script.includes('kill -USR1')));
  const others = queue(shapes.filter((s) => !s.script.includes('kill -USR1')));
  const problems: string[] = [];
  const ports: number[] = [];
  const worker = async (jobs: Array<{ shape: Shape; token: string }>): Promise<void> => {
    for (let j = jobs.shift(); j; j = jobs.shift()) {
      const r = await call(f, j.shape, j.token);
      ports.push(r.port);
      if (r.problem) problems.push(r.problem);
    }
  };
  const total = signalling.length + others.length;
  await Promise.all([worker(signalling), ...Array.from({ length: PARALLEL - 1 }, () => worker(others))]);
  // every call was reported over, once
  const terminated: number[] = [];
  while (terminated.length < ports.length) {
    const m = await f.dom0?.recv();
    assert.ok(m, 'dom0 connection closed');
    if (m.type === T.CONNECTION_TERMINATED) terminated.push(m.data.readUInt32LE(4));
  }
  assert.deepEqual([...terminated].sort((a, b) => a - b), [...ports].sort((a, b) => a - b));
  assert.equal(f.agent?.exitCode, null, `agent exited: ${f.agentLog}`);
  const line = `stress ${label}: ${total} calls under load, ${problems.length} lost or wrong`;
  console.log(line);
  return problems;
}

describe('stress: the single-socket switch (SIGUSR1) under CPU load', () => {
  it('with the native addon: output written to the stdin socket after the switch, and stdout without one, all arrive', { skip: !addonBuilt && 'native addon not built', timeout: 180_000 }, async () => {
    const f = new Fixture();
    try {
      f.startAgent();
      await f.connectDom0();
      const problems = await round(f, [...switched, unswitched], 'switch (addon)');
      assert.deepEqual(problems, [], `agent log:\n${quietLog(f)}`);
    } finally {
      await f.stop();
    }
  });

  it('without the native addon: the switch is ignored, the service is not killed by SIGPIPE, its stdout arrives', { timeout: 180_000 }, async () => {
    const f = new Fixture();
    try {
      f.startAgent({ QREXEC_TS_NO_NATIVE: '1' });
      await f.connectDom0();
      const problems = await round(f, [ignoredSwitch, unswitched], 'ignored switch (no addon)');
      assert.deepEqual(problems, [], `agent log:\n${quietLog(f)}`);
    } finally {
      await f.stop();
    }
  });
});

const relayBuilt = fs.existsSync(path.join(ROOT, 'native', 'build', 'qrexec-sigrelay'));
const TOGETHER = 8;
const TOGETHER_ROUNDS = 3;

async function waitMarks(dir: string, prefix: string, n: number): Promise<void> {
  const deadline = Date.now() + 60_000;
  while (fs.readdirSync(dir).filter((x) => x.startsWith(prefix)).length < n) {
    if (Date.now() > deadline) throw new Error(`only ${fs.readdirSync(dir).filter((x) => x.startsWith(prefix)).length} of ${n} ${prefix} marks`);
    await new Promise((r) => setTimeout(r, 5));
  }
}

describe('stress: services that signal (SIGUSR1) at the same moment', () => {
  // The agent is stopped while every service signals: its signals are then
  // pending together, and a standard signal does not queue (the kernel keeps
  // one). Each call must still switch: its QREXEC_AGENT_PID is its own.
  it('every call switches, though all signals are sent while the agent is stopped', { skip: !(addonBuilt && relayBuilt) && 'native parts not built', timeout: 180_000 }, async () => {
    const f = new Fixture();
    const agent = (): ChildProcess => {
      assert.ok(f.agent?.pid);
      return f.agent;
    };
    try {
      f.startAgent();
      await f.connectDom0();
      const problems: string[] = [];
      for (let r = 0; r < TOGETHER_ROUNDS; r++) {
        const marks = fs.mkdtempSync(path.join(f.dir, 'marks-'));
        const go = path.join(marks, 'go');
        f.service(
          'rpc',
          'test.SwTogether',
          `#!/bin/sh\n: > "${marks}/ready.$1"\nwhile [ ! -e "${go}" ]; do sleep 0.005; done\nkill -USR1 "$QREXEC_AGENT_PID"\n: > "${marks}/sent.$1"\necho "together $1" >&0\n`,
        );
        const calls = await Promise.all(Array.from({ length: TOGETHER }, (_, i) => f.exec(T.EXEC_CMDLINE, `QUBESRPC test.SwTogether+r${r}c${i} domX`)));
        for (const c of calls) c.target.send(msg(T.DATA_STDIN));
        await waitMarks(marks, 'ready.', TOGETHER);
        agent().kill('SIGSTOP');
        try {
          fs.writeFileSync(go, '');
          await waitMarks(marks, 'sent.', TOGETHER);
        } finally {
          agent().kill('SIGCONT');
        }
        const outs = await Promise.all(calls.map(async (c) => sortMessages(await c.target.recvAll())));
        for (const [i, all] of outs.entries()) {
          const stdout = all.filter((m) => m.type === T.DATA_STDOUT).map((m) => m.data.toString()).join('');
          const exit = all.find((m) => m.type === T.DATA_EXIT_CODE)?.data.readUInt32LE(0);
          if (stdout !== `together r${r}c${i}\n` || exit !== 0) problems.push(`r${r}c${i}: stdout ${JSON.stringify(stdout)}, exit ${exit}`);
        }
      }
      console.log(`stress simultaneous signals: ${TOGETHER * TOGETHER_ROUNDS} calls, ${problems.length} lost or wrong`);
      assert.deepEqual(problems, [], `agent log:\n${quietLog(f)}`);
    } finally {
      await f.stop();
    }
  });
});

const LAUNCHER = path.join(ROOT, 'native', 'build', 'qrexec-client-vm');
const NODE_CLIENT = path.join(ROOT, 'dist', 'src', 'cli', 'qrexec-client-vm.js');
// (a Node.js start per call through qrexec-client-vm's Node code: fewer)
const CALLER_CALLS = { launcher: 25, node: 8 };

/** Local programs that switch and exit at once: what the service must get on its stdin. */
const programs: Array<{ script: string; want: (t: string) => string }> = [
  { script: 'kill -USR1 "$QREXEC_AGENT_PID"; echo "now $1" >&0', want: (t) => `now ${t}\n` },
  { script: 'echo "before $1"; kill -USR1 "$QREXEC_AGENT_PID"; echo "after $1" >&0; exit 4', want: (t) => `before ${t}\nafter ${t}\n` },
];

/** Plays the service end of one caller's data vchan: its stdin until EOF, then EOF and exit code 7. */
async function serveOne(svc: Conn): Promise<string> {
  await svc.handshake();
  let got = '';
  for (;;) {
    const m = await svc.recv();
    if (!m || m.type !== T.DATA_STDIN) return `${got}<unexpected ${m ? m.type.toString(16) : 'close'}>`;
    if (m.data.length === 0) break;
    got += m.data.toString();
  }
  svc.send(msg(T.DATA_STDOUT));
  svc.send(msg(T.DATA_STDERR));
  svc.send(msg(T.DATA_EXIT_CODE, u32(7)));
  return got;
}

function exitOf(c: ChildProcess): Promise<number | null> {
  return new Promise((resolve) => {
    if (c.exitCode !== null || c.signalCode !== null) resolve(c.exitCode);
    else c.once('exit', (code) => resolve(code));
  });
}

/** Runs `calls` calls of each program through `start` (which returns the caller process and the vchan's port). */
async function callerRound(f: Fixture, label: string, calls: number, start: (program: string[], port: number) => Promise<ChildProcess>): Promise<string[]> {
  const problems: string[] = [];
  let port = 2000;
  for (let i = 0; i < calls; i++) {
    for (const [k, p] of programs.entries()) {
      const token = `c${i}p${k}`;
      const at = port++;
      const svcConn = connectRetry(path.join(f.dir, `vchan.${DOMAIN}.${TARGET_DOMAIN}.${at}.sock`));
      const caller = await start(['/bin/sh', '-c', p.script, 'sh', token], at);
      let err = '';
      caller.stderr?.on('data', (d: Buffer) => (err += d.toString()));
      const got = await serveOne(await svcConn);
      const code = await exitOf(caller);
      if (got !== p.want(token) || code !== 7) problems.push(`${token}: service got ${JSON.stringify(got)} (want ${JSON.stringify(p.want(token))}), exit ${code}${err ? `, stderr ${JSON.stringify(err)}` : ''}`);
    }
  }
  console.log(`stress ${label}: ${calls * programs.length} calls under load, ${problems.length} lost or wrong`);
  return problems;
}

describe('stress: a caller\'s local program switching (SIGUSR1) under CPU load', () => {
  it('the native launcher beside our agent', { skip: !(fs.existsSync(LAUNCHER) && addonBuilt) && 'native parts not built', timeout: 180_000 }, async () => {
    const f = new Fixture();
    try {
      f.startAgent();
      const dom0 = await f.connectDom0();
      const problems = await callerRound(f, 'launcher', CALLER_CALLS.launcher, async (program, port) => {
        const c = spawn(LAUNCHER, [`--agent-socket=${f.agentSocket}`, 'vault', 'qubes.Svc', ...program], { env: f.env(), stdio: ['ignore', 'ignore', 'pipe'] });
        // (the previous calls' MSG_CONNECTION_TERMINATED may come first)
        let trigger = await dom0.recv();
        while (trigger?.type === T.CONNECTION_TERMINATED) trigger = await dom0.recv();
        assert.ok(trigger);
        assert.equal(trigger.type, T.TRIGGER_SERVICE4);
        dom0.send(msg(T.SERVICE_CONNECT, Buffer.concat([u32(TARGET_DOMAIN), u32(port), trigger.data.subarray(128, 160)])));
        return c;
      });
      assert.deepEqual(problems, [], `agent log:\n${quietLog(f)}`);
    } finally {
      await f.stop();
    }
  });

  it('qrexec-client-vm\'s Node code beside a reference-like agent', { timeout: 240_000 }, async () => {
    const f = new Fixture();
    // the reference agent answers a request with (domain, port) and is done
    let nextPort = 0;
    const server = net.createServer((c) => {
      c.on('error', () => undefined);
      let got = Buffer.alloc(0);
      c.on('data', (d: Buffer) => {
        got = Buffer.concat([got, d]);
        if (got.length >= 8 && got.length >= 8 + got.readUInt32LE(4)) c.write(Buffer.concat([u32(TARGET_DOMAIN), u32(nextPort)]));
      });
    });
    const agentSocket = path.join(f.dir, 'ref-agent.sock');
    try {
      await new Promise<void>((r) => server.listen(agentSocket, () => r()));
      const problems = await callerRound(f, 'client-vm (Node)', CALLER_CALLS.node, async (program, port) => {
        nextPort = port;
        return spawn(process.execPath, [NODE_CLIENT, `--agent-socket=${agentSocket}`, 'target', 'qubes.Svc', ...program], { env: f.env(), stdio: ['ignore', 'ignore', 'pipe'] });
      });
      assert.deepEqual(problems, []);
    } finally {
      server.close();
      await f.stop();
    }
  });
});
