import * as net from 'node:net';
import { mkdir, symlink, unlink } from 'node:fs/promises';
import { setTimeout as sleep } from 'node:timers/promises';
import { join } from 'node:path';
import {
  FrameDecoder,
  MsgType,
  ProtocolError,
  QREXEC_AGENT_MIN_VERSION,
  QREXEC_CLIENT_MIN_VERSION,
  QREXEC_CLIENT_PROTOCOL_VERSION,
  QREXEC_PROTOCOL_VERSION,
  VCHAN_BASE_PORT,
  agentToDaemonRules,
  buildDom0ServiceCommand,
  buildServiceCommand,
  clientToDaemonRules,
  encodeExec,
  encodeExecParams,
  encodeHello,
  encodeMessage,
  encodeServiceConnect,
  encodeServiceRefused,
  helloRules,
  msgTypeName,
  negotiateVersion,
  parseExec,
  parseExecParams,
  parseHello,
  parseTrigger,
  targetRefersToDom0,
  type Frame,
  type Trigger,
} from '../protocol/index.js';
import { vchanConnect, type Channel, type VchanEnv } from '../vchan/index.js';
import { qubesdCall, QubesdError, type QubesdCallOptions } from '../qubesd-client/call.js';
import { DaemonClient, DaemonClientError, type DataEndpoint } from './client.js';
import { runDom0Service, type InProcessServices } from './dom0.js';
import { askPolicy, type PolicyAllow, type PolicyOutcome, type PolicyQuery } from './policy.js';
import { PortAllocator } from './ports.js';

export type LogLevel = 'info' | 'warning' | 'error';
export type Logger = (level: LogLevel, msg: string) => void;

/**
 * The daemons of the other qubes this process serves, by domain id, name or
 * `uuid:…` (QubeHost in host.ts implements it; declared here so that this
 * file does not import host.ts, which imports this one).
 */
export interface QubeDirectory {
  find(target: string): QubeDaemon | undefined;
}

/** Configuration of the host side of one qube. */
export interface QubeDaemonOptions {
  readonly domid: number;
  readonly name: string;
  readonly uuid?: string;
  /** User substituted for `DEFAULT:` in commands (reference default "user"). */
  readonly defaultUser: string;
  /** Directory of the `qrexec.<domid>` sockets. */
  readonly socketDir: string;
  readonly vchan: VchanEnv;
  readonly policySocket: string;
  readonly policyProgram: string;
  /** Where services addressed to dom0 are looked up. */
  readonly servicePath: readonly string[];
  /** Give up connecting to the agent after this long at start (default 60 s; 0 = forever). */
  readonly startupTimeoutMs?: number;
  readonly log?: Logger;
  /** Replaces the vchan-socket connection to the agent (tests). */
  readonly connectAgent?: () => Promise<Channel>;
  /** Replaces the policy query over the socket: a policy daemon in this process (qrexec-host), or tests. */
  readonly policy?: (q: PolicyQuery) => Promise<PolicyOutcome>;
  /** The other qubes this process serves: calls to them are set up in-process. */
  readonly host?: QubeDirectory;
  /**
   * qubesd's Admin API socket: starts a stopped target whose policy says
   * autostart, and creates, starts and kills the DispVMs of `@dispvm:` targets.
   * Without it such calls are refused.
   */
  readonly qubesdSocket?: string;
  /**
   * Replaces the calls on {@link qubesdSocket}: qubesd in this process (the
   * host process), with {@link qubesdCall}'s contract (the reply's data, or
   * QubesdError).
   */
  readonly qubesd?: QubesdCaller;
  /** dom0 services this process serves itself (the Policy API), before the service path. */
  readonly inProcessServices?: InProcessServices;
  /** How long qubesd may take to start a qube, and the started qube to connect its agent (default 120 s). */
  readonly autostartTimeoutMs?: number;
}

/** An Admin API call as dom0 (see qubesdCall in src/qubesd-client/call.ts). */
export type QubesdCaller = (method: string, dest: string, opts: QubesdCallOptions) => Promise<Buffer>;

/** Most policy requests in flight per qube (reference: MAX_CLIENTS slots); more are refused. */
export const MAX_PENDING_CALLS = 256;
/** Most local client connections per qube. */
export const MAX_CLIENTS = 1024;

interface Pending {
  readonly ident: string;
  readonly identRaw: Buffer;
  state: 'pending' | 'allowed' | 'denied';
  readonly generation: number;
}

/** A command started in a call's target: in this process (`local`) or through the target's socket (`client`, open). */
interface TargetCall {
  readonly ep: DataEndpoint;
  readonly local?: QubeDaemon;
  readonly client?: DaemonClient;
}

/** Default of {@link QubeDaemonOptions.autostartTimeoutMs}. */
export const DEFAULT_AUTOSTART_TIMEOUT_MS = 120_000;

interface LocalClient {
  readonly sock: net.Socket;
  readonly decoder: FrameDecoder;
  state: 'hello' | 'cmdline' | 'running';
  readonly id: number;
}

/**
 * The host side of one qube (the reference's qrexec-daemon, as an object so
 * one process can serve many qubes on one event loop): owns the qube's control
 * vchan, serves local clients on `qrexec.<domid>` (+ name and uuid symlinks),
 * answers the qube's service calls by asking the policy and connecting the
 * call. The qube's identity is the channel: every call's source is `name`.
 *
 * Faults are contained: a protocol violation on the control vchan closes that
 * vchan (the daemon then waits for the agent to reconnect, as the reference
 * does); a misbehaving local client is disconnected; nothing blocks the loop.
 */
export class QubeDaemon {
  private readonly log: Logger;
  private readonly ports: PortAllocator;
  private control: Channel | undefined;
  private version = 0;
  private server: net.Server | undefined;
  private readonly clients = new Set<LocalClient>();
  private readonly notify = new Map<number, LocalClient>(); // port -> client to close when it ends
  private readonly pending: Pending[] = [];
  private generation = 0;
  private clientSeq = 0;
  private stopped = false;
  private readonly abort = new AbortController();
  private controlPaused = false;
  private readonly socketNames: string[];
  /** Resolves when the daemon stops for good (reconnect failure or stop()). */
  readonly done: Promise<number>;
  private resolveDone!: (code: number) => void;

  constructor(readonly opts: QubeDaemonOptions) {
    this.log = opts.log ?? (() => undefined);
    this.ports = new PortAllocator(opts.domid);
    this.socketNames = [`qrexec.${opts.domid}`, `qrexec.${opts.name}`, ...(opts.uuid ? [`qrexec.uuid:${opts.uuid}`] : [])];
    this.done = new Promise((r) => (this.resolveDone = r));
  }

  /** Connects to the agent (with the startup timeout), handshakes and opens the sockets. */
  async start(): Promise<void> {
    const t = this.opts.startupTimeoutMs ?? 60_000;
    const ch = await this.connectAgent(t > 0 ? t : undefined);
    await this.handshake(ch);
    if (this.stopped) {
      ch.destroy();
      return;
    }
    // Watch the vchan before the (asynchronous) socket set-up, so an agent
    // that disconnects meanwhile is noticed; socket set-up and tear-down are
    // serialised, so a late open never outlives the agent.
    this.attachControl(ch);
    await this.openSockets(ch);
  }

  /** Closes everything; pending calls are dropped. */
  async stop(): Promise<void> {
    if (this.stopped) return;
    this.stopped = true;
    this.abort.abort();
    this.endCalls();
    await this.closeSockets();
    this.control?.destroy();
    this.resolveDone(0);
  }

  private connectAgent(timeoutMs: number | undefined): Promise<Channel> {
    if (this.opts.connectAgent) return this.opts.connectAgent();
    const signal = this.abort.signal;
    return vchanConnect(this.opts.vchan, this.opts.domid, VCHAN_BASE_PORT, timeoutMs === undefined ? { signal } : { timeoutMs, signal });
  }

  /** Agent sends MSG_HELLO first; we answer with the negotiated version. */
  private handshake(ch: Channel): Promise<void> {
    return new Promise((resolve, reject) => {
      const d = new FrameDecoder(helloRules);
      const fail = (msg: string): void => {
        cleanup();
        ch.destroy();
        reject(new ProtocolError('BAD_VERSION', msg));
      };
      const onData = (buf: Buffer): void => {
        ch.pause();
        let hello: Frame | undefined;
        try {
          const it = d.push(buf);
          const r = it.next();
          if (!r.done) hello = r.value;
        } catch (e) {
          fail(`Invalid HELLO packet received: ${(e as Error).message}`);
          return;
        }
        if (!hello) {
          ch.resume();
          return;
        }
        const remote = parseHello(hello.payload);
        try {
          this.version = negotiateVersion(remote, QREXEC_PROTOCOL_VERSION, QREXEC_AGENT_MIN_VERSION);
        } catch {
          fail(`Incompatible agent protocol version (remote ${remote}, local ${QREXEC_PROTOCOL_VERSION}); minimum supported version is ${QREXEC_AGENT_MIN_VERSION}`);
          return;
        }
        cleanup();
        ch.write(encodeHello(this.version));
        // bytes after the HELLO in this chunk belong to the running channel
        const rest = buf.subarray(buf.length - d.bufferedBytes);
        this.pushback = rest.length > 0 ? rest : undefined;
        resolve();
      };
      const onEnd = (): void => fail('Failed to read agent HELLO');
      const cleanup = (): void => {
        ch.off('data', onData);
        ch.off('end', onEnd);
        ch.off('close', onEnd);
      };
      ch.on('data', onData);
      ch.on('end', onEnd);
      ch.on('close', onEnd);
      ch.on('error', (e: Error) => this.log('error', `control vchan: ${e.message}`));
    });
  }
  private pushback: Buffer | undefined;

  private attachControl(ch: Channel): void {
    this.control = ch;
    const gen = ++this.generation;
    const decoder = new FrameDecoder(agentToDaemonRules(this.version));
    const onData = (buf: Buffer): void => {
      if (this.control !== ch) return;
      try {
        for (const f of decoder.push(buf)) {
          this.onAgentMessage(f);
          if (this.control !== ch) return;
        }
      } catch (e) {
        this.log('error', `${this.opts.name}: closing control vchan: ${e instanceof Error ? e.message : String(e)}`);
        ch.destroy();
      }
    };
    ch.on('data', onData);
    let gone = false;
    const onGone = (): void => {
      if (gone) return;
      gone = true;
      if (this.control === ch && gen === this.generation) void this.agentGone();
    };
    ch.on('end', onGone);
    ch.on('close', onGone);
    ch.resume();
    const rest = this.pushback;
    this.pushback = undefined;
    if (rest) onData(rest);
  }

  /** Sends to the agent; while the vchan is full, stops reading the agent and the clients. */
  private sendControl(buf: Buffer): void {
    const ch = this.control;
    if (!ch || ch.destroyed) return;
    ch.write(buf);
    if (ch.writableNeedDrain && !this.controlPaused) {
      this.controlPaused = true;
      ch.pause();
      for (const c of this.clients) c.sock.pause();
      ch.once('drain', () => {
        this.controlPaused = false;
        if (this.control === ch) ch.resume();
        for (const c of this.clients) c.sock.resume();
      });
    }
  }

  private onAgentMessage(f: Frame): void {
    switch (f.type) {
      case MsgType.TRIGGER_SERVICE:
      case MsgType.TRIGGER_SERVICE3:
      case MsgType.TRIGGER_SERVICE4: {
        const r = parseTrigger(f.type, f.payload);
        if (!r.ok) {
          this.log('error', `${this.opts.name}: ${r.reason}`);
          this.sendControl(encodeServiceRefused(r.identRaw));
          return;
        }
        this.handleTrigger(r.trigger);
        return;
      }
      case MsgType.CONNECTION_TERMINATED: {
        const p = parseExecParams(f.payload);
        if (!PortAllocator.inRange(p.connectPort)) {
          throw new ProtocolError('BAD_PAYLOAD', `Invalid port in MSG_CONNECTION_TERMINATED (${p.connectPort})`);
        }
        if (this.ports.release(p.connectPort, p.connectDomain)) {
          const c = this.notify.get(p.connectPort);
          if (c) this.terminateClient(c);
          this.endCalls(`${p.connectPort}:${p.connectDomain}`);
        }
        return;
      }
      default:
        throw new ProtocolError('UNKNOWN_TYPE', `unknown message type ${msgTypeName(f.type)} from agent`);
    }
  }

  private handleTrigger(t: Trigger): void {
    if (this.pending.length >= MAX_PENDING_CALLS) {
      this.log('error', `${this.opts.name}: Service request denied, too many pending requests`);
      this.sendControl(encodeServiceRefused(t.identRaw));
      return;
    }
    const p: Pending = { ident: t.ident, identRaw: t.identRaw, state: 'pending', generation: this.generation };
    this.pending.push(p);
    const q: PolicyQuery = {
      source: this.opts.name,
      intendedTarget: t.target,
      serviceAndArg: t.service,
      ...(t.requestedSource ? { requestedSource: t.requestedSource } : {}),
    };
    const ask = this.opts.policy ?? ((qq: PolicyQuery) => askPolicy(qq, { socketPath: this.opts.policySocket, program: this.opts.policyProgram, log: (m) => this.log('error', m) }));
    ask(q)
      .then(async (d) => {
        if (d.result !== 'allow') {
          if (d.result === 'error') this.log('error', `${this.opts.name}: ${d.reason}`);
          this.refuse(p);
          return;
        }
        await this.connectCall(p, t, d);
      })
      .catch((e: unknown) => {
        this.log('error', `${this.opts.name}: call ${t.service} to ${t.target} failed: ${e instanceof Error ? e.message : String(e)}`);
        this.refuse(p);
      })
      .finally(() => {
        const i = this.pending.indexOf(p);
        if (i >= 0) this.pending.splice(i, 1);
      });
  }

  private refuse(p: Pending): void {
    if (p.state !== 'pending' || p.generation !== this.generation) return;
    p.state = 'denied';
    this.sendControl(encodeServiceRefused(p.identRaw));
  }

  private async connectCall(p: Pending, t: Trigger, d: PolicyAllow): Promise<void> {
    const service = d.service ?? t.service;
    const source = d.policySource ?? this.opts.name;
    if (p.state !== 'pending' || p.generation !== this.generation) return;
    if (targetRefersToDom0(d.target)) {
      const cmd = buildDom0ServiceCommand(service, source, d.requestedTarget);
      const port = this.ports.allocate(0);
      if (port === 0) throw new Error('Failed to allocate new vchan port, too many clients?');
      if (p.state !== 'pending' || p.generation !== this.generation) {
        this.ports.release(port, 0);
        return;
      }
      p.state = 'allowed';
      this.sendControl(encodeServiceConnect(0, port, p.identRaw));
      const ch = await vchanConnect(this.opts.vchan, this.opts.domid, port, { timeoutMs: 5000 });
      await runDom0Service(ch, cmd, this.opts.servicePath, (m) => this.log('info', `${this.opts.name}: ${m}`), undefined, this.opts.inProcessServices);
      return;
    }
    const target = d.targetUuid ?? d.target;
    if (p.state !== 'pending' || p.generation !== this.generation) return;
    const cmd = buildServiceCommand(d.user, service, source);
    if (target.startsWith('@dispvm:')) {
      await this.connectDispVm(p, target, d.targetUuid !== undefined, d.autostart, cmd);
      return;
    }
    // A target served by this process: the caller's agent is told its data
    // vchan first, so that it listens before the target's agent connects
    // (which otherwise finds no socket yet and waits for it).
    let announced = false;
    const announce = (ep: DataEndpoint): void => {
      if (p.state !== 'pending' || p.generation !== this.generation) return;
      p.state = 'allowed';
      announced = true;
      this.sendControl(encodeServiceConnect(ep.domain, ep.port, p.identRaw));
    };
    let call = await this.execInTarget(target, cmd, announce);
    if (!call) {
      if (!d.autostart) throw new Error(`qube ${target} is not running`);
      await this.qubesdStart(target);
      call = await this.execWhenStarted(target, cmd);
    }
    call.client?.close();
    if (announced) return;
    if (p.state !== 'pending' || p.generation !== this.generation) return;
    p.state = 'allowed';
    this.sendControl(encodeServiceConnect(call.ep.domain, call.ep.port, p.identRaw));
  }

  /**
   * Runs `cmd` in `target` for a call of this qube: in-process when this
   * process serves the target (no socket round trip), else through the
   * target's `qrexec.<target>` socket (the client is returned open, for a
   * caller that waits for the call's end). Undefined when the target's
   * daemon is not there or has no agent.
   */
  private async execInTarget(target: string, cmd: string, announce?: (ep: DataEndpoint) => void): Promise<TargetCall | undefined> {
    const local = this.opts.host?.find(target);
    const ep = local?.execForCall(cmd, this.opts.domid, announce);
    if (local && ep) return { ep, local };
    let c: DaemonClient;
    try {
      c = await DaemonClient.connect(this.opts.socketDir, target);
    } catch (e) {
      if (e instanceof DaemonClientError && e.code === 'NOT_RUNNING') return undefined;
      throw e;
    }
    try {
      return { ep: await c.exec(cmd, this.opts.domid), client: c };
    } catch (e) {
      c.close();
      throw e;
    }
  }

  /**
   * {@link execInTarget} once the qube qubesd was asked to start is there.
   * Real qubesd answers admin.vm.Start when the qube's daemon is up; here a
   * qube's host side may be waiting for its agent already, so we retry
   * (backing off to 200 ms) until autostartTimeoutMs.
   */
  private async execWhenStarted(target: string, cmd: string): Promise<TargetCall> {
    const timeoutMs = this.autostartTimeoutMs;
    const deadline = Date.now() + timeoutMs;
    for (let delay = 5; ; delay = Math.min(delay * 2, 200)) {
      const call = await this.execInTarget(target, cmd);
      if (call) return call;
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`qube ${target} was started but its qrexec agent did not connect within ${timeoutMs / 1000} s`);
      await sleep(Math.min(delay, left), undefined, { signal: this.abort.signal });
    }
  }

  private get autostartTimeoutMs(): number {
    return this.opts.autostartTimeoutMs ?? DEFAULT_AUTOSTART_TIMEOUT_MS;
  }

  private qubesd(why: string): QubesdCaller {
    if (this.opts.qubesd) return this.opts.qubesd;
    const sock = this.opts.qubesdSocket;
    if (sock === undefined) throw new Error(`${why} needs qubesd, which this daemon does not use (--qubesd-socket=none)`);
    return (method, dest, opts) => qubesdCall(sock, method, dest, opts);
  }

  /** admin.vm.Start; a qube that is already running is fine (QubesVMNotHaltedError), as the reference. */
  private async qubesdStart(target: string): Promise<void> {
    const call = this.qubesd(`qube ${target} is not running and autostart`);
    try {
      await call('admin.vm.Start', target, { keywordDest: true, timeoutMs: this.autostartTimeoutMs });
    } catch (e) {
      if (e instanceof QubesdError && e.excType === 'QubesVMNotHaltedError') return;
      throw new Error(`qubesd could not start VM ${target}: ${(e as Error).message}`);
    }
  }

  /**
   * A call to `@dispvm:TEMPLATE` (or `@dispvm:uuid:…`), as the reference's
   * qrexec_execute_vm: admin.vm.CreateDisposable of the template (payload
   * `uuid` when the policy gave uuids: the reply is then the DispVM's
   * `uuid:…`), admin.vm.Start, the call, and admin.vm.Kill when the call
   * ends (its data port's MSG_CONNECTION_TERMINATED in the DispVM's daemon)
   * or when setting it up fails after the start. qubesd removes a killed
   * DispVM (auto_cleanup), and one that failed to start, itself. The end is
   * awaited outside the call's pending slot.
   */
  private async connectDispVm(p: Pending, target: string, useUuid: boolean, autostart: boolean, cmd: string): Promise<void> {
    if (!autostart) throw new Error(`Target ${target} with autostart=False makes no sense`);
    const qubesd = this.qubesd(`Target ${target}: a disposable VM`);
    const template = target.slice('@dispvm:'.length);
    const timeoutMs = this.autostartTimeoutMs;
    let reply: string;
    try {
      reply = (await qubesd('admin.vm.CreateDisposable', template, { keywordDest: true, timeoutMs, ...(useUuid ? { payload: Buffer.from('uuid') } : {}) })).toString('latin1');
    } catch (e) {
      throw new Error(`qubesd could not create disposable VM: ${(e as Error).message}`);
    }
    if (!(useUuid ? /^uuid:[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i : /^[A-Za-z][A-Za-z0-9_.-]{0,30}$/).test(reply)) {
      throw new Error(`invalid response to admin.vm.CreateDisposable: ${JSON.stringify(reply.slice(0, 80))}`);
    }
    const dispvm = reply;
    this.log('info', `${this.opts.name}: created disposable VM ${dispvm} from ${template}`);
    // a DispVM that fails to start is removed by qubesd itself
    await this.qubesdStart(dispvm);
    let call: TargetCall | undefined;
    try {
      call = await this.execWhenStarted(dispvm, cmd);
      if (p.state !== 'pending' || p.generation !== this.generation) throw new Error(`the call to ${dispvm} was cancelled (${this.opts.name}'s agent went away)`);
      p.state = 'allowed';
      this.sendControl(encodeServiceConnect(call.ep.domain, call.ep.port, p.identRaw));
    } catch (e) {
      call?.client?.close();
      await this.killDispVm(qubesd, dispvm);
      throw e;
    }
    const ended = call.client ? call.client.waitClosed() : (call.local as QubeDaemon).callEnded(call.ep.port, this.opts.domid);
    void ended.then(() => this.killDispVm(qubesd, dispvm));
  }

  /** admin.vm.Kill of a DispVM we created; a failure is logged (qubesd may have removed it already). */
  private async killDispVm(call: QubesdCaller, dispvm: string): Promise<void> {
    try {
      await call('admin.vm.Kill', dispvm, { keywordDest: true });
    } catch (e) {
      if (e instanceof QubesdError && e.excType === 'QubesVMNotStartedError') return;
      this.log('warning', `${this.opts.name}: could not kill disposable VM ${dispvm}: ${(e as Error).message}`);
    }
  }

  /**
   * Resolves when the call this daemon set up on data `port` for domain
   * `connectDomain` ends (its MSG_CONNECTION_TERMINATED), or when the agent
   * goes away or the daemon stops (no end notice will come then).
   */
  callEnded(port: number, connectDomain: number): Promise<void> {
    if (this.stopped || !this.control) return Promise.resolve();
    return new Promise((resolve) => {
      const key = `${port}:${connectDomain}`;
      const waiting = this.endWaiters.get(key);
      if (waiting) waiting.push(resolve);
      else this.endWaiters.set(key, [resolve]);
    });
  }
  private readonly endWaiters = new Map<string, (() => void)[]>();

  /** Calls the callEnded waiters of `key` (`port:domain`), or of every call. */
  private endCalls(key?: string): void {
    const keys = key === undefined ? [...this.endWaiters.keys()] : [key];
    for (const k of keys) {
      const waiting = this.endWaiters.get(k);
      this.endWaiters.delete(k);
      for (const w of waiting ?? []) w();
    }
  }

  /**
   * Starts `cmdline` (`USER:COMMAND`, `DEFAULT:` → the default user) in this
   * qube for a call whose data vchan the qube `connectDomain` serves: what a
   * local client's MSG_EXEC_CMDLINE does, without the socket. Returns the data
   * endpoint, or undefined when this qube's agent is not connected (the
   * caller then fails as it would on a missing socket). `announce` is called
   * with the endpoint just before the message goes out.
   * @throws when no data port is free.
   */
  execForCall(cmdline: string, connectDomain: number, announce?: (ep: DataEndpoint) => void): DataEndpoint | undefined {
    if (this.stopped || !this.control || this.control.destroyed) return undefined;
    const port = this.ports.allocate(connectDomain);
    if (port === 0) throw new Error('Failed to allocate new vchan port, too many clients?');
    const cmd = cmdline.startsWith('DEFAULT:') ? `${this.opts.defaultUser}${cmdline.slice(7)}` : cmdline;
    let msg: Buffer;
    try {
      msg = encodeExec(MsgType.EXEC_CMDLINE, connectDomain, port, cmd);
    } catch (e) {
      this.ports.release(port, connectDomain);
      throw e;
    }
    const ep = { domain: this.opts.domid, port };
    announce?.(ep);
    this.sendControl(msg);
    return ep;
  }

  /** The agent disconnected: drop clients and pending calls, wait for it to come back (no timeout). */
  private async agentGone(): Promise<void> {
    this.control = undefined;
    // as the reference: calls look ended (a DispVM may be killed early rather than leaked)
    this.endCalls();
    if (this.stopped) return;
    this.log('warning', `${this.opts.name}: qrexec-agent has disconnected`);
    await this.closeSockets();
    for (const p of this.pending) p.state = 'denied';
    this.pending.length = 0;
    this.generation++;
    try {
      // bounded as the first connection is: on Xen the reference's reconnect
      // fails once the domain is gone; here a socket that never comes back
      // would keep this daemon waiting forever
      const t = this.opts.startupTimeoutMs ?? 60_000;
      const ch = await this.connectAgent(t > 0 ? t : undefined);
      if (this.stopped) {
        ch.destroy();
        return;
      }
      await this.handshake(ch);
      if (this.stopped) {
        ch.destroy();
        return;
      }
      this.attachControl(ch);
      await this.openSockets(ch);
      this.log('info', `${this.opts.name}: qrexec-agent has reconnected`);
    } catch (e) {
      this.log('error', `${this.opts.name}: Failed to reconnect to qrexec-agent, terminating: ${(e as Error).message}`);
      this.stopped = true;
      this.resolveDone(1);
    }
  }

  // ------------------------------------------------------------ local clients

  /** Runs socket set-up and tear-down one after the other. */
  private socketOps(fn: () => Promise<void>): Promise<void> {
    const p = this.socketQueue.then(fn);
    this.socketQueue = p.catch(() => undefined);
    return p;
  }
  private socketQueue: Promise<void> = Promise.resolve();

  /** Opens the client sockets, unless the agent of `ch` is already gone (or we stopped) by then. */
  private openSockets(ch: Channel): Promise<void> {
    return this.socketOps(async () => {
      if (this.stopped || this.control !== ch) return;
      await this.openSocketsNow();
    });
  }

  private closeSockets(): Promise<void> {
    return this.socketOps(() => this.closeSocketsNow());
  }

  private async openSocketsNow(): Promise<void> {
    const dir = this.opts.socketDir;
    await mkdir(dir, { recursive: true });
    const main = join(dir, this.socketNames[0] as string);
    await unlink(main).catch(() => undefined);
    const server = net.createServer((sock) => this.onClient(sock));
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(main, () => resolve());
    });
    server.on('error', (e) => this.log('error', `${this.opts.name}: socket server: ${e.message}`));
    for (const name of this.socketNames.slice(1)) {
      const p = join(dir, name);
      await unlink(p).catch(() => undefined);
      await symlink(this.socketNames[0] as string, p).catch((e: Error) => this.log('error', `symlink(${name}): ${e.message}`));
    }
    this.server = server;
  }

  private async closeSocketsNow(): Promise<void> {
    const s = this.server;
    this.server = undefined;
    for (const name of this.socketNames) await unlink(join(this.opts.socketDir, name)).catch(() => undefined);
    if (s) s.close();
    for (const c of [...this.clients]) this.terminateClient(c);
  }

  private onClient(sock: net.Socket): void {
    if (this.clients.size >= MAX_CLIENTS || !this.control) {
      this.log('error', `${this.opts.name}: too many clients, refusing a connection`);
      sock.destroy();
      return;
    }
    const c: LocalClient = { sock, decoder: new FrameDecoder(helloRules), state: 'hello', id: ++this.clientSeq };
    this.clients.add(c);
    sock.on('error', () => undefined);
    sock.on('close', () => this.terminateClient(c));
    sock.on('data', (buf: Buffer) => {
      if (!this.clients.has(c)) return;
      if (c.state === 'running') {
        this.log('error', `${this.opts.name}: Unexpected data received from client ${c.id}`);
        this.terminateClient(c);
        return;
      }
      try {
        for (const f of c.decoder.push(buf)) {
          if ((c.state as LocalClient["state"]) === "running") {
            this.log('error', `${this.opts.name}: Unexpected data received from client ${c.id}`);
            this.terminateClient(c);
            return;
          }
          this.onClientMessage(c, f);
          if (!this.clients.has(c)) return;
          if ((c.state as LocalClient['state']) === 'running' && c.decoder.bufferedBytes > 0) {
            this.log('error', `${this.opts.name}: Unexpected data received from client ${c.id}`);
            this.terminateClient(c);
            return;
          }
        }
      } catch (e) {
        this.log('error', `${this.opts.name}: client ${c.id}: ${e instanceof Error ? e.message : String(e)}`);
        this.terminateClient(c);
      }
    });
    sock.on('end', () => this.terminateClient(c));
    sock.write(encodeHello(QREXEC_CLIENT_PROTOCOL_VERSION));
    if (this.controlPaused) sock.pause();
  }

  private terminateClient(c: LocalClient): void {
    if (!this.clients.delete(c)) return;
    c.sock.destroy();
    for (const [port, n] of this.notify) if (n === c) this.notify.delete(port);
  }

  private onClientMessage(c: LocalClient, f: Frame): void {
    if (c.state === 'hello') {
      const v = parseHello(f.payload);
      if (v < QREXEC_CLIENT_MIN_VERSION) {
        this.log('error', `Incompatible client protocol version (remote ${v}, local ${QREXEC_PROTOCOL_VERSION}); minimum supported version is ${QREXEC_CLIENT_MIN_VERSION}`);
        this.terminateClient(c);
        return;
      }
      c.state = 'cmdline';
      c.decoder.setRules(clientToDaemonRules);
      return;
    }
    // state 'cmdline': one request
    const params = parseExec(f.payload);
    const body = params.cmdline; // without the final NUL
    if (f.type === MsgType.SERVICE_CONNECT) {
      const nul = body.indexOf(0);
      const ident = body.subarray(0, nul < 0 ? body.length : nul).toString('latin1');
      const p = this.pending.find((x) => x.state === 'pending' && x.ident === ident);
      if (!p) {
        this.log('error', `${this.opts.name}: Connection with ident ${ident} not requested or already handled`);
        this.terminateClient(c);
        return;
      }
      p.state = 'allowed';
    } else if (params.connectPort !== 0) {
      this.log('error', `Client provided port ${params.connectPort} in non-MSG_SERVICE_CONNECT request (type ${f.type})`);
    }
    let port = params.connectPort;
    if (port === 0) {
      port = this.ports.allocate(params.connectDomain);
      if (port === 0) {
        this.log('error', 'Failed to allocate new vchan port, too many clients?');
        this.terminateClient(c);
        return;
      }
      this.notify.set(port, c);
      c.sock.write(encodeExecParams(f.type, this.opts.domid, port));
    } else if (!PortAllocator.inRange(port)) {
      this.log('error', `Invalid connect port ${port}`);
      this.terminateClient(c);
      return;
    }
    let cmdline: Buffer = body;
    if (f.type !== MsgType.SERVICE_CONNECT && body.subarray(0, 8).toString('latin1') === 'DEFAULT:') {
      cmdline = Buffer.concat([Buffer.from(this.opts.defaultUser, 'utf8'), body.subarray(7)]);
    }
    const payload = Buffer.allocUnsafe(8 + cmdline.length + 1);
    payload.writeUInt32LE(params.connectDomain >>> 0, 0);
    payload.writeUInt32LE(port, 4);
    cmdline.copy(payload, 8);
    payload[8 + cmdline.length] = 0;
    this.sendControl(encodeMessage(f.type, payload));
    c.state = 'running';
  }
}
