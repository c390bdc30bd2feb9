/**
 * qrexec-agent: the qube side of qrexec (agent/qrexec-agent.c).
 *
 * - Control vchan (server, port 512, remote domain 0): MSG_HELLO, then
 *   MSG_EXEC_CMDLINE / MSG_JUST_EXEC (run something, its stdio over a data
 *   vchan we connect to), MSG_SERVICE_CONNECT (a local caller's call was
 *   allowed: connect it) and MSG_SERVICE_REFUSED. We send
 *   MSG_TRIGGER_SERVICE{,3,4} for local callers and MSG_CONNECTION_TERMINATED
 *   when a data connection is over.
 * - Agent socket: local callers. The reference's qrexec-client-vm sends
 *   MSG_TRIGGER_SERVICE4 and gets exec_params back, then serves the data vchan
 *   itself. Our launcher (native/qrexec-client-vm.c) sends the same request
 *   with its stdio attached (SCM_RIGHTS); the agent then runs the whole call
 *   and reports the exit code (see that file for the records).
 */
import * as fs from 'node:fs';
import * as net from 'node:net';
import type { Readable, Writable } from 'node:stream';
import {
  EXEC_PARAMS_SIZE,
  ExitCode,
  FrameDecoder,
  HEADER_SIZE,
  MAX_SERVICE_NAME_LEN,
  MsgType,
  PEER_INFO_SIZE,
  ProtocolError,
  ProtocolVersion,
  QREXEC_AGENT_MIN_VERSION,
  QREXEC_PROTOCOL_VERSION,
  SERVICE_PARAMS_SIZE,
  TRIGGER_SERVICE_PARAMS4_SIZE,
  VCHAN_BASE_PORT,
  daemonToAgentRules,
  encodeConnectionTerminated,
  encodeHello,
  encodeMessage,
  msgTypeName,
  negotiateVersion,
  parseExec,
  parseHello,
  type Frame,
  type LengthRules,
} from '../protocol/index.js';
import { DEFAULT_DATA_LIMITS, startPump, vchanConnect, vchanListen, type DataLimits, type Pump, type VchanEnv } from '../vchan/index.js';
import {
  justExec,
  prepareCall,
  startService,
  waitForSession,
  type ExecContext,
  type FailedService,
  type PreparedCall,
  type StartedService,
} from '../services/exec.js';
import { drainSignalRecords, loadNative, type NativeHelper } from '../native/addon.js';
import { describeSystemError, QrexecError } from '../common/errors.js';
import { flushed, openLocal, type LocalStream } from '../native/local-stream.js';
import { SignalRelays, type Relay } from './sigrelay.js';

/** The reference's default agent socket. */
export const DEFAULT_AGENT_SOCKET = '/var/run/qubes/qrexec-agent';
/** How long a local caller may take to send its request. */
const REQUEST_TIMEOUT_MS = 10_000;

/** Records between the agent and the fast launcher (see native/qrexec-client-vm.c). */
export const LauncherRecord = {
  ACCEPTED: 0xfffffff0,
  EXIT: 0xfffffff1,
  SIGUSR1: 1,
  CHILD_EXIT: 2,
  /** Both ways: the agent asks, the launcher answers once it reported every SIGUSR1 it got. */
  SYNC: 3,
} as const;
/** The launcher's options memfd. */
export const LAUNCHER_OPTS_MAGIC = 0x314c5851;
export const LauncherFlag = { REPLACE_STDOUT: 1, REPLACE_STDERR: 2, LOCAL_PROGRAM: 4, STDIN_SOCKET: 8, SYNC: 16 } as const;

export interface AgentOptions {
  /** Path of the agent socket for local callers. */
  readonly agentSocket: string;
  readonly vchan: VchanEnv;
  readonly exec: ExecContext;
  readonly log: (msg: string) => void;
  /** Data vchan set-up and idle timeouts (default DEFAULT_DATA_LIMITS). */
  readonly limits?: DataLimits;
}

interface LauncherOptions {
  readonly flags: number;
  readonly prefix: Buffer;
}

/** A local caller waiting for dom0's answer. */
interface PendingCaller {
  readonly id: number;
  readonly sock: net.Socket;
  /** Passed descriptors [sink, source, stderr] and options: a fast launcher. */
  readonly fast?: { fds: number[]; opts: LauncherOptions };
}

/** The agent. `start()` waits for dom0, then serves until the control vchan closes. */
export class Agent {
  private readonly log: (msg: string) => void;
  private readonly limits: DataLimits;
  private ctrl: net.Socket | undefined;
  private version = 0;
  private readonly pending = new Map<number, PendingCaller>();
  private nextId = 1;
  private server: net.Server | undefined;
  /** The control vchan listener while dom0 has not connected yet. */
  private ctrlListener: { close(): void } | undefined;
  private waiting: Promise<void> | undefined;
  private readonly native: NativeHelper | null = loadNative();
  private closed = false;
  /** Running executable services whose stdin socket a SIGUSR1 may switch to, by pid. */
  private readonly switchable = new Map<number, SwitchableService>();
  /** Per-call SIGUSR1 targets (undefined when not built: the agent itself is then every call's target). */
  private relays: SignalRelays | undefined;
  /** Running switchable calls by their relay's pid. */
  private readonly byRelay = new Map<number, SwitchableService>();
  /** Relays given to calls whose pump is not running yet: whether they were signalled meanwhile. */
  private readonly awaiting = new Map<number, boolean>();
  /** Resolves when the control channel is gone. */
  readonly done: Promise<void>;
  private resolveDone: () => void = () => undefined;

  constructor(private readonly opts: AgentOptions) {
    this.log = opts.log;
    this.limits = opts.limits ?? DEFAULT_DATA_LIMITS;
    this.done = new Promise((r) => (this.resolveDone = r));
  }

  /** Negotiated control protocol version (0 before the handshake). */
  get protocolVersion(): number {
    return this.version;
  }

  /**
   * Listens on the control vchan (at once: the socket is bound before this
   * returns its promise), waits for dom0's handshake, then opens the agent
   * socket. The signal relay server starts while dom0 connects.
   */
  async start(): Promise<void> {
    const listener = await vchanListen(this.opts.vchan, 0, VCHAN_BASE_PORT);
    // close() while we wait for dom0 (SIGTERM) stops the wait
    this.ctrlListener = listener;
    if (this.closed) listener.close();
    else if (loadNative()) this.relays = SignalRelays.start((relay) => this.relaySignal(relay), this.log);
    const ctrl = await listener.accepted;
    this.ctrlListener = undefined;
    this.ctrl = ctrl;
    ctrl.setNoDelay?.(true);
    await this.handshake(ctrl);
    await this.listenAgentSocket();
  }

  /** Stops serving: closes the agent socket and the control vchan. */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.relays?.close();
    this.ctrlListener?.close();
    this.server?.close();
    try {
      fs.unlinkSync(this.opts.agentSocket);
    } catch {
      /* already gone */
    }
    for (const p of this.pending.values()) this.dropCaller(p);
    this.pending.clear();
    this.ctrl?.destroy();
    this.resolveDone();
  }

  private handshake(ctrl: net.Socket): Promise<void> {
    return new Promise((resolve, reject) => {
      let helloSeen = false;
      const rules: LengthRules = (t) => {
        if (!helloSeen) {
          helloSeen = true;
          return t === MsgType.HELLO ? { min: PEER_INFO_SIZE, max: PEER_INFO_SIZE } : undefined;
        }
        return daemonToAgentRules(t);
      };
      const decoder = new FrameDecoder(rules);
      let handshaken = false;
      ctrl.on('data', (buf: Buffer) => {
        try {
          for (const f of decoder.push(buf)) {
            if (this.closed) return;
            const onHello = (): void => {
              handshaken = true;
              resolve();
            };
            this.onControlFrame(f, handshaken, onHello, reject);
          }
        } catch (e) {
          if (!(e instanceof ProtocolError)) throw e;
          this.fatal(`control vchan: ${e.message}`);
          if (!handshaken) reject(e);
        }
      });
      const gone = (): void => {
        if (!handshaken) reject(new Error('control vchan closed during the handshake'));
        this.fatal('Error while vchan read, exiting');
      };
      ctrl.on('end', gone);
      ctrl.on('close', gone);
      ctrl.on('error', (e) => this.log(`control vchan: ${e.message}`));
      ctrl.write(encodeHello(QREXEC_PROTOCOL_VERSION));
    });
  }

  private onControlFrame(f: Frame, handshaken: boolean, onHello: () => void, reject: (e: Error) => void): void {
    if (handshaken) {
      this.onControl(f);
      return;
    }
    try {
      this.version = negotiateVersion(parseHello(f.payload), QREXEC_PROTOCOL_VERSION, QREXEC_AGENT_MIN_VERSION);
    } catch (e) {
      this.fatal(`Incompatible daemon: ${(e as Error).message}`);
      reject(e as Error);
      return;
    }
    onHello();
  }

  private fatal(msg: string): void {
    if (this.closed) return;
    this.log(msg);
    this.close();
  }

  private sendCtrl(b: Buffer): void {
    if (!this.closed && this.ctrl && !this.ctrl.destroyed) this.ctrl.write(b);
  }

  private onControl(f: Frame): void {
    switch (f.type) {
      case MsgType.EXEC_CMDLINE:
      case MsgType.JUST_EXEC:
      case MsgType.SERVICE_CONNECT: {
        let p;
        try {
          p = parseExec(f.payload);
        } catch (e) {
          // The reference forces the last byte to NUL; a message without a body is fatal there.
          if (f.payload.length <= EXEC_PARAMS_SIZE) {
            this.fatal(`${msgTypeName(f.type)}: ${(e as Error).message}`);
            return;
          }
          p = {
            connectDomain: f.payload.readUInt32LE(0),
            connectPort: f.payload.readUInt32LE(4),
            cmdline: f.payload.subarray(EXEC_PARAMS_SIZE, f.payload.length - 1),
          };
        }
        const nul = p.cmdline.indexOf(0);
        const cmdline = (nul >= 0 ? p.cmdline.subarray(0, nul) : p.cmdline).toString('utf8');
        if (f.type === MsgType.SERVICE_CONNECT) this.serviceConnect(cmdline, p.connectDomain, p.connectPort);
        else this.execRequest(f.type, cmdline, p.connectDomain, p.connectPort);
        return;
      }
      case MsgType.SERVICE_REFUSED: {
        const raw = f.payload.subarray(0, SERVICE_PARAMS_SIZE);
        const nul = raw.indexOf(0);
        const ident = raw.toString('latin1', 0, nul < 0 ? raw.length : nul);
        const m = /^SOCKET([0-9]+)/.exec(ident);
        const caller = m ? this.pending.get(Number(m[1])) : undefined;
        if (!caller) {
          this.log(`Received REFUSED for unknown service request '${ident}'`);
          return;
        }
        this.pending.delete(caller.id);
        this.dropCaller(caller);
        return;
      }
      default:
        this.fatal(`msg type from daemon is ${f.type} ?`);
    }
  }

  // ------------------------------------------------------------ calls from dom0

  private execRequest(type: number, cmdline: string, domain: number, port: number): void {
    const call = prepareCall(cmdline, this.opts.exec);
    if (typeof call === 'string') {
      this.log(call);
      this.runCall(type, null, cmdline, domain, port);
      return;
    }
    if (call.cmd.rpc && !call.cmd.nogui && call.config.waitForSession) {
      if (!this.waiting) {
        this.waiting = waitForSession(call.cmd.rpc.sourceDomain, call.user, this.opts.exec).finally(() => {
          this.waiting = undefined;
        });
      }
      void this.waiting.then(() => this.runCall(type, call, cmdline, domain, port));
      return;
    }
    this.runCall(type, call, cmdline, domain, port);
  }

  private runCall(type: number, call: PreparedCall | null, cmdline: string, domain: number, port: number): void {
    const log = (m: string): void => this.log(m);
    const peer = `domain ${domain}${call?.cmd.rpc ? ` (${call.cmd.rpc.sourceDomain})` : ''} port ${port}`;
    const limits = this.limits;
    const setupMs = limits.setupTimeoutMs > 0 ? limits.setupTimeoutMs : undefined;
    let dataUp: (ok: boolean) => void = () => undefined;
    const dataReady = new Promise<boolean>((r) => (dataUp = r));
    // the call's own SIGUSR1 target (QREXEC_AGENT_PID), when relays are built
    let relay: Relay | undefined;
    const withRelay = (c: PreparedCall): Promise<StartedService | FailedService> => {
      const relays = this.relays;
      if (!relays) return startService(c, this.opts.exec, dataReady);
      // asked for executables only (a socket service has no QREXEC_AGENT_PID)
      const agentPidFor = async (): Promise<number | undefined> => {
        const pid = await relays.take();
        if (pid === undefined) return undefined;
        relay = relays.relay(pid);
        this.awaiting.set(pid, false);
        return pid;
      };
      // the relay server also spawns the service (a fork of a small process)
      return startService(c, { ...this.opts.exec, agentPidFor, ...(relays.canSpawn ? { spawner: relays } : {}) }, dataReady);
    };
    // started at once: a socket service connects while the data vchan does; executables wait for it
    const started: Promise<StartedService | FailedService> | undefined =
      type === MsgType.JUST_EXEC
        ? undefined
        : call
          ? withRelay(call).catch((e: Error) => ({ code: ExitCode.PROBLEM, reason: e.message }))
          : Promise.resolve({ code: ExitCode.PROBLEM, reason: 'bad command' });
    // the relay's SIGUSR1 is pending until it is released: seen at once
    const relayPending = (r: Relay) => (): void => {
      if (r.signalled()) this.relaySignal(r.pid);
    };
    const dropRelay = (): void => {
      if (!relay) return;
      this.awaiting.delete(relay.pid);
      relay.release();
      relay = undefined;
    };
    void (async () => {
      let ch: net.Socket;
      try {
        ch = await vchanConnect(this.opts.vchan, domain, port, { ...(setupMs === undefined ? {} : { timeoutMs: setupMs }), allowHalfOpen: true });
      } catch (e) {
        dataUp(false);
        void started?.then((s) => {
          if (!('code' in s)) for (const x of [s.sink, s.source, s.errSource]) x?.destroy();
          dropRelay();
        });
        log(`Data vchan connection failed: ${(e as Error).message}`);
        this.sendCtrl(encodeConnectionTerminated(domain, port));
        return;
      }
      dataUp(true);
      ch.setNoDelay?.(true);
      // nothing runs on this vchan: only the exit code is sent
      const exitOnly = (code: Promise<{ code: number; eofs: boolean }>): Pump =>
        startPump({ channel: ch, role: 'service', sink: null, source: null, single: false, log, peer, limits, exitOnly: code });
      let pump: Pump;
      if (started === undefined) {
        const code = call ? justExec(call, this.opts.exec).catch(() => ExitCode.PROBLEM) : Promise.resolve(ExitCode.PROBLEM);
        pump = exitOnly(code.then((c) => ({ code: c, eofs: false })));
      } else {
        const s = await started;
        if ('code' in s) {
          dropRelay();
          log(s.reason);
          log(`failed to spawn process (exited ${s.code}): ${cmdline}`);
          pump = exitOnly(Promise.resolve({ code: s.code, eofs: true }));
        } else {
          log(`executed: ${s.what}`);
          // A socket service gets its descriptor now that the data vchan is up,
          // not after the handshake: it works on the request meanwhile, as an
          // executable, which is started at this point too, does.
          if (s.sinkPrefix) s.sink?.write(s.sinkPrefix);
          pump = startPump({
            channel: ch,
            role: 'service',
            sink: s.sink,
            source: s.source,
            errSource: s.errSource,
            single: s.single,
            ...(s.localExit ? { localExit: s.localExit } : {}),
            exitOnClientEof: s.exitOnClientEof,
            exitOnServiceEof: s.exitOnServiceEof,
            log,
            peer,
            limits,
            // the service's SIGUSR1 may still be queued when its output's EOF
            // (its exit) is seen: hand it on first (see serviceSignal, relaySignal)
            ...(s.stdinReadFd !== undefined ? { beforeOutputEof: relay ? relayPending(relay) : drainSignalRecords } : {}),
          });
          const pid = s.child?.pid;
          if (s.stdinReadFd !== undefined && pid !== undefined) {
            const entry: SwitchableService = { pump, stdinReadFd: s.stdinReadFd, switched: false };
            const own = relay;
            if (own) this.byRelay.set(own.pid, entry);
            else this.switchable.set(pid, entry);
            if (own && this.awaiting.get(own.pid) === true) this.switchTo(entry);
            if (own) this.awaiting.delete(own.pid);
            void pump.done.then(() => {
              if (own) {
                if (this.byRelay.get(own.pid) === entry) this.byRelay.delete(own.pid);
                dropRelay();
              } else if (this.switchable.get(pid) === entry) this.switchable.delete(pid);
              if (!entry.switched) closeFd(entry.stdinReadFd); // else the pump closed its stream
            });
          } else {
            dropRelay();
            closeFd(s.stdinReadFd);
          }
          if (s.release) void pump.done.then(s.release);
          void pump.done.then((st) => {
            if (s.localExit) log(`pid ${s.child?.pid ?? '?'} exited with ${st}`);
            else log('Socket service closed');
          });
        }
      }
      // As the reference's per-call agent process, which leaves process_io when the
      // vchan is closed: a caller that went away (killed) ends the call now, even if
      // its service still runs (a @dispvm call's DispVM is then killed by dom0).
      const closed = new Promise<void>((r) => (ch.destroyed ? r() : ch.once('close', () => r())));
      await Promise.race([pump.done, closed]);
      this.sendCtrl(encodeConnectionTerminated(domain, port));
    })();
  }

  /**
   * A SIGUSR1 sent by `senderPid` (cli.ts watches it when the native addon is
   * built): as the reference's per-call agent process, the service asks that
   * its output be read from its stdin socket from now on. The call is the one
   * whose service process is the sender or one of its ancestors (a shell
   * running `kill`, a helper it started): `lineage`, the sender and its
   * parents up to us, read from /proc by the signal handler (at most 16
   * steps). A signal from any other process, or for
   * a call without a stdin socket, changes nothing and is logged. The first
   * signal of a call switches it; later ones have no effect (the reference
   * ignores SIGUSR1 after the first). Unlike the reference, a sender that is
   * not the service process itself must still exist when the signal arrives:
   * one that already exited and was reaped (`sh -c 'kill ...'` on a busy
   * machine) has no known parent, and its signal is ignored.
   */
  serviceSignal(senderPid: number, lineage: readonly number[]): void {
    // an entry lives while its call runs, also after the service exited (as in
    // the reference, `kill -USR1 ...; echo data >&0; exit` works); its pid is
    // only someone else's after pid_max wrapped meanwhile
    const found =
      senderPid > 0 && senderPid !== process.pid
        ? [senderPid, ...lineage].map((p) => this.switchable.get(p)).find((s) => s !== undefined)
        : undefined;
    if (!found) {
      this.log(`SIGUSR1 from pid ${senderPid} ignored: not a running service's process (ancestry ${lineage.join(' ') || 'unknown'})`);
      return;
    }
    this.switchTo(found);
  }

  /**
   * A SIGUSR1 sent to a call's relay (its QREXEC_AGENT_PID): as
   * the reference's per-call agent process, any sender switches that call.
   * A signal that comes before the call's pump runs is kept for it.
   */
  private relaySignal(relay: number): void {
    const found = this.byRelay.get(relay);
    if (found) this.switchTo(found);
    else if (this.awaiting.has(relay)) this.awaiting.set(relay, true);
  }

  private switchTo(found: SwitchableService): void {
    if (found.switched) return; // the first signal switched it
    found.switched = true;
    const sock = new net.Socket({ fd: found.stdinReadFd, readable: true, writable: false, allowHalfOpen: true });
    sock.on('error', () => undefined);
    found.pump.useStdinSocket(sock);
  }

  // ------------------------------------------------------------ local callers

  private async listenAgentSocket(): Promise<void> {
    const path = this.opts.agentSocket;
    try {
      fs.unlinkSync(path);
    } catch {
      /* not there */
    }
    const server = net.createServer({ pauseOnConnect: true, allowHalfOpen: true }, (sock) => this.onCaller(sock));
    this.server = server;
    await new Promise<void>((resolve, reject) => {
      server.once('error', (e) => reject(new QrexecError(`cannot listen on the agent socket ${path}: ${describeSystemError(e, path)}`)));
      server.listen(path, () => {
        server.off('error', reject);
        resolve();
      });
    });
    fs.chmodSync(path, 0o666);
    server.on('error', (e) => this.log(`agent socket: ${e.message}`));
  }

  /** A local caller connected: read its request (and descriptors, if any). */
  private onCaller(sock: net.Socket): void {
    sock.on('error', () => undefined);
    const fd = (sock as unknown as { _handle?: { fd?: number } })._handle?.fd;
    const native = this.native;
    if (!native || fd === undefined || fd < 0) {
      this.readRequest(sock, Buffer.alloc(0), []);
      return;
    }
    const attempt = (waited: boolean): void => {
      if (sock.destroyed || this.closed) return;
      let got: { data: Buffer; fds: number[] } | null;
      try {
        got = native.recvFds(fd, HEADER_SIZE + TRIGGER_SERVICE_PARAMS4_SIZE + MAX_SERVICE_NAME_LEN + 1, 4);
      } catch (e) {
        this.log(`Failed to retrieve request from qrexec-client-vm: ${(e as Error).message}`);
        sock.destroy();
        return;
      }
      if (got === null) {
        if (waited) {
          this.log(`qrexec-client-vm sent no request in ${REQUEST_TIMEOUT_MS / 1000} s, closing`);
          sock.destroy();
          return;
        }
        try {
          native.waitReadable(fd, REQUEST_TIMEOUT_MS, (readable) => attempt(!readable));
        } catch (e) {
          this.log(`Failed to wait for a request from qrexec-client-vm: ${(e as Error).message}`);
          sock.destroy();
        }
        return;
      }
      if (got.data.length === 0) {
        for (const d of got.fds) closeFd(d);
        sock.destroy(); // EOF before any request
        return;
      }
      this.readRequest(sock, got.data, got.fds);
    };
    attempt(false);
  }

  private readRequest(sock: net.Socket, first: Buffer, fds: number[]): void {
    const chunks: Buffer[] = first.length ? [first] : [];
    let have = first.length;
    let need = -1;
    const fail = (why: string): void => {
      this.log(`Invalid request received from qrexec-client-vm, is it outdated? (${why})`);
      for (const d of fds) closeFd(d);
      fds = [];
      sock.destroy();
    };
    const check = (): boolean => {
      if (need < 0 && have >= HEADER_SIZE) {
        const head = chunks.length === 1 ? (chunks[0] as Buffer) : Buffer.concat(chunks);
        const type = head.readUInt32LE(0);
        const len = head.readUInt32LE(4);
        if (type !== MsgType.TRIGGER_SERVICE4 || len <= TRIGGER_SERVICE_PARAMS4_SIZE || len > TRIGGER_SERVICE_PARAMS4_SIZE + MAX_SERVICE_NAME_LEN) {
          fail(`${msgTypeName(type)} of ${len} bytes`);
          return true;
        }
        need = HEADER_SIZE + len;
      }
      if (need >= 0 && have >= need) {
        const all = Buffer.concat(chunks, have);
        sock.removeListener('data', onData);
        sock.removeListener('end', onEnd);
        // Bytes after the request: the fast launcher's records; the reference client sends none.
        const extra = all.subarray(need);
        this.onRequest(sock, all.subarray(HEADER_SIZE, need), fds, extra);
        return true;
      }
      return false;
    };
    const onData = (b: Buffer): void => {
      chunks.push(b);
      have += b.length;
      check();
    };
    const onEnd = (): void => fail('connection closed');
    if (check()) return;
    sock.on('data', onData);
    sock.on('end', onEnd);
    sock.resume();
  }

  /** A complete MSG_TRIGGER_SERVICE4 body from a local caller. */
  private onRequest(sock: net.Socket, params: Buffer, fds: number[], extra: Buffer): void {
    let fast: PendingCaller['fast'];
    if (fds.length > 0) {
      const opts = fds.length === 4 ? readLauncherOptions(fds[3] as number) : undefined;
      closeFd(fds[3]);
      if (!opts) {
        for (const d of fds.slice(0, 3)) closeFd(d);
        this.log('Invalid request received from qrexec-client-vm: bad descriptors or options');
        sock.destroy();
        return;
      }
      fast = { fds: fds.slice(0, 3), opts };
    }
    const id = this.nextId++;
    const ident = Buffer.alloc(SERVICE_PARAMS_SIZE);
    ident.write(`SOCKET${id}`, 'latin1');
    const p = Buffer.from(params);
    ident.copy(p, 128);
    const source = p.subarray(0, 64);
    const target = p.subarray(64, 128);
    const service = p.subarray(TRIGGER_SERVICE_PARAMS4_SIZE);
    let msg: Buffer;
    if (this.version >= ProtocolVersion.V4) {
      msg = encodeMessage(MsgType.TRIGGER_SERVICE4, p);
    } else if (this.version === ProtocolVersion.V3) {
      msg = encodeMessage(MsgType.TRIGGER_SERVICE3, Buffer.concat([target, ident, service]));
    } else {
      const nul = service.indexOf(0);
      const tnul = target.indexOf(0);
      if (nul < 0 || nul >= 64 || tnul < 0 || tnul >= 32) {
        this.log('service call does not fit in protocol version 2, refusing');
        for (const d of fast?.fds ?? []) closeFd(d);
        sock.destroy();
        return;
      }
      const v2 = Buffer.alloc(128);
      service.copy(v2, 0, 0, nul);
      target.copy(v2, 64, 0, tnul);
      ident.copy(v2, 96);
      msg = encodeMessage(MsgType.TRIGGER_SERVICE, v2);
    }
    void source;
    const caller: PendingCaller = fast ? { id, sock, fast } : { id, sock };
    this.pending.set(id, caller);
    sock.on('close', () => {
      if (this.pending.get(id) === caller) {
        // gone before dom0 answered: forget it; a later SERVICE_CONNECT finds nobody
        this.pending.delete(id);
        for (const d of fast?.fds ?? []) closeFd(d);
      }
    });
    if (extra.length > 0 && !fast) {
      this.log('qrexec-client-vm sent data after its request');
    }
    this.sendCtrl(msg);
  }

  private dropCaller(c: PendingCaller): void {
    for (const d of c.fast?.fds ?? []) closeFd(d);
    c.sock.destroy();
  }

  private serviceConnect(ident: string, domain: number, port: number): void {
    const m = /^SOCKET([0-9]+)$/.exec(ident);
    const caller = m ? this.pending.get(Number(m[1])) : undefined;
    if (!caller) {
      this.log(`Got MSG_SERVICE_CONNECT from qrexec-daemon with invalid ident (${ident}), ignoring`);
      if (m) this.sendCtrl(encodeConnectionTerminated(domain, port));
      return;
    }
    this.pending.delete(caller.id);
    const terminated = (): void => this.sendCtrl(encodeConnectionTerminated(domain, port));
    if (!caller.fast) {
      const b = Buffer.alloc(EXEC_PARAMS_SIZE);
      b.writeUInt32LE(domain, 0);
      b.writeUInt32LE(port, 4);
      caller.sock.write(b);
      let sent = false;
      const once = (): void => {
        if (!sent) {
          sent = true;
          terminated();
        }
      };
      caller.sock.on('data', () => caller.sock.destroy());
      caller.sock.on('end', () => caller.sock.destroy());
      caller.sock.on('close', once);
      caller.sock.resume();
      return;
    }
    void this.runFastCaller(caller, domain, port).finally(terminated);
  }

  /** The fast launcher's call: we are the vchan server and serve its descriptors. */
  private async runFastCaller(caller: PendingCaller, domain: number, port: number): Promise<void> {
    const fast = caller.fast as NonNullable<PendingCaller['fast']>;
    const sock = caller.sock;
    // the launcher never shuts its side down: its EOF (the socket is half-open) means it is gone
    // (killed), which must end the call as its close does (the reference's client holds the vchan)
    sock.once('end', () => sock.destroy());
    const [sinkFd, sourceFd, errFd] = fast.fds as [number, number, number];
    const flags = fast.opts.flags;
    const record = (a: number, b: number): void => {
      const r = Buffer.alloc(8);
      r.writeUInt32LE(a >>> 0, 0);
      r.writeUInt32LE(b >>> 0, 4);
      if (!sock.destroyed) sock.write(r);
    };
    let listener;
    try {
      listener = await vchanListen(this.opts.vchan, domain, port);
    } catch (e) {
      this.log(`Data vchan connection failed: ${(e as Error).message}`);
      for (const d of fast.fds) closeFd(d);
      sock.destroy();
      return;
    }
    record(LauncherRecord.ACCEPTED, 0);
    const setupMs = this.limits.setupTimeoutMs;
    const timer = setupMs > 0 ? setTimeout(() => listener.close(), setupMs) : undefined;
    const onGone = (): void => listener.close();
    sock.once('close', onGone);
    let ch: net.Socket;
    try {
      ch = await listener.accepted;
    } catch (e) {
      this.log(`Data vchan connection failed: ${(e as Error).message}`);
      for (const d of fast.fds) closeFd(d);
      record(LauncherRecord.EXIT, 1);
      sock.end();
      return;
    } finally {
      clearTimeout(timer);
      sock.off('close', onGone);
    }
    ch.setNoDelay?.(true);
    const single = (flags & LauncherFlag.STDIN_SOCKET) !== 0;
    const ownStdout = !single && (flags & LauncherFlag.LOCAL_PROGRAM) === 0;
    // the launcher's own stdout and stderr: closed at the end, not shut down (openLocal)
    const sinkS = openLocal(sinkFd, ownStdout ? 'write' : 'duplex', { inherited: ownStdout });
    let sourceS: LocalStream;
    if (single) {
      closeFd(sourceFd);
      sourceS = sinkS;
    } else {
      sourceS = openLocal(sourceFd, 'read');
    }
    const errS = openLocal(errFd, 'write', { inherited: true });
    let resolveLocal: (n: number) => void = () => undefined;
    const localExit =
      (flags & LauncherFlag.LOCAL_PROGRAM) !== 0 ? new Promise<number>((r) => (resolveLocal = r)) : undefined;
    // The local program's SIGUSR1 reaches the launcher, which tells us; its
    // output's EOF reaches us directly, maybe first. At that EOF a launcher
    // that can (SYNC) is asked to report every SIGUSR1 it got so far.
    let syncs = 0;
    const waiting = new Map<number, () => void>();
    const syncLauncher = (): Promise<void> =>
      new Promise<void>((resolve) => {
        if (sock.destroyed) return resolve();
        const n = ++syncs;
        waiting.set(n, resolve);
        record(LauncherRecord.SYNC, n);
      });
    const canSwitch = (flags & LauncherFlag.LOCAL_PROGRAM) !== 0 && (flags & LauncherFlag.SYNC) !== 0 && sinkS.kind === 'socket';
    const pump = startPump({
      channel: ch,
      role: 'client',
      sink: sinkS.stream as Writable,
      source: sourceS.stream as Readable,
      single,
      errSink: errS.stream as Writable,
      prefix: fast.opts.prefix,
      ...(localExit ? { localExit } : {}),
      replaceStdout: (flags & LauncherFlag.REPLACE_STDOUT) !== 0,
      replaceStderr: (flags & LauncherFlag.REPLACE_STDERR) !== 0,
      log: (m) => this.log(m),
      peer: `domain ${domain} port ${port}`,
      limits: this.limits,
      ...(canSwitch ? { beforeOutputEof: syncLauncher } : {}),
    });
    // records from the launcher
    let pendingRec: Buffer = Buffer.alloc(0);
    sock.on('data', (b: Buffer) => {
      pendingRec = pendingRec.length ? Buffer.concat([pendingRec, b]) : b;
      while (pendingRec.length >= 8) {
        const a = pendingRec.readUInt32LE(0);
        const v = pendingRec.readUInt32LE(4);
        pendingRec = pendingRec.subarray(8);
        if (a === LauncherRecord.CHILD_EXIT) resolveLocal(v);
        else if (a === LauncherRecord.SIGUSR1 && sinkS.kind === 'socket') pump.useStdinSocket(sinkS.stream as net.Socket);
        else if (a === LauncherRecord.SYNC) {
          waiting.get(v)?.();
          waiting.delete(v);
        }
      }
      if (pendingRec.length > 64) sock.destroy();
    });
    // the launcher closing before the call is over ends it; after, it is the normal end
    let over = false;
    sock.on('close', () => {
      for (const w of waiting.values()) w();
      waiting.clear();
      resolveLocal(255);
      if (!over) pump.abort('qrexec-client-vm went away');
    });
    sock.resume();
    const status = await pump.done;
    over = true;
    for (const s of new Set([sinkS, sourceS, errS])) s.release();
    // the exit status only once the output is written: whoever waits for the
    // launcher's exit (a shell redirecting to a file) then finds all of it
    await Promise.all([sinkS, errS].map((s) => flushed(s.stream as Writable)));
    record(LauncherRecord.EXIT, status & 0xff);
    sock.end();
  }
}

/** A running service that may switch its output to its stdin socket. */
interface SwitchableService {
  readonly pump: Pump;
  /** StartedService.stdinReadFd: ours until a switch wraps it in a stream the pump owns. */
  readonly stdinReadFd: number;
  switched: boolean;
}

function closeFd(fd: number | undefined): void {
  if (fd === undefined) return;
  try {
    fs.closeSync(fd);
  } catch {
    /* already closed */
  }
}

/** Reads the launcher's options memfd; undefined when malformed. */
function readLauncherOptions(fd: number): LauncherOptions | undefined {
  try {
    const st = fs.fstatSync(fd);
    if (!st.isFile() || st.size < 12 || st.size > 4 * 1024 * 1024) return undefined;
    const b = Buffer.alloc(st.size);
    if (fs.readSync(fd, b, 0, st.size, 0) !== st.size) return undefined;
    if (b.readUInt32LE(0) !== LAUNCHER_OPTS_MAGIC) return undefined;
    const flags = b.readUInt32LE(4);
    const len = b.readUInt32LE(8);
    if (flags & ~0x1f || len !== st.size - 12) return undefined;
    return { flags, prefix: b.subarray(12) };
  } catch {
    return undefined;
  }
}
