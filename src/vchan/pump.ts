/**
 * One data vchan of a call, either end, in a qube or in dom0: the MSG_HELLO
 * exchange (both sides send first), then the MSG_DATA_* stream between the
 * vchan and local streams, with chunks of at most the negotiated size, EOF as
 * an empty message, and the exit code, by the reference's rules
 * (libqrexec/process_io.c) for both roles:
 *
 * - `service`: we run the service (the agent, dom0 services). Remote
 *   MSG_DATA_STDIN goes to the service's stdin; its stdout/stderr go out as
 *   MSG_DATA_STDOUT/STDERR; the exit code is sent once stdout and stderr
 *   ended and the process exited.
 * - `client`: we are the caller (qrexec-client-vm, qrexec-client). Local
 *   input goes out as MSG_DATA_STDIN; remote stdout/stderr are written
 *   locally; the result is the remote exit code (or the local program's
 *   status when that failed).
 *
 * Memory stays bounded: local reads pause while the vchan cannot take more,
 * and the vchan is paused while a local writer (the sink, or a client's
 * stderr) is slow. Beyond the reference: the peer's MSG_HELLO must come within
 * the set-up timeout, an established call may be closed after an idle
 * timeout, an exit code outside 0-255 is a failure (255), and one call logs
 * at most COMPLAINTS_LOGGED_PER_CALL protocol complaints.
 */
import type * as net from 'node:net';
import type { Readable, Writable } from 'node:stream';
import {
  FrameDecoder,
  MsgType,
  ProtocolError,
  QREXEC_DATA_MIN_VERSION,
  QREXEC_PROTOCOL_VERSION,
  dataRules,
  encodeDataHeader,
  encodeExitCode,
  encodeHello,
  encodeMessage,
  helloRules,
  maxDataChunk,
  negotiateVersion,
  parseHello,
  type Frame,
  replaceUnsafeBytes,
} from '../protocol/index.js';
import type { Channel } from './channel.js';
import { COMPLAINTS_LOGGED_PER_CALL, DEFAULT_DATA_LIMITS, type DataLimits } from './limits.js';
import { isSocketStream, onPeerHangup, socketWriter, takeReadable } from './local-socket.js';

/** A local stream we write to; `end()` signals EOF (shutdown for sockets). */
export type LocalSink = Writable;
/** A local stream we read from. */
export type LocalSource = Readable;

/** Options of one call's data pump. */
export interface PumpOptions {
  readonly channel: Channel;
  readonly role: 'service' | 'client';
  /** Where remote data goes (service: process stdin; client: local stdout). */
  readonly sink: LocalSink | null;
  /** Local data to send (service: process stdout; client: local stdin). */
  readonly source: LocalSource | null;
  /** `sink` and `source` are one socket (socket services, --use-stdin-socket). */
  readonly single: boolean;
  /** Service: the process's stderr. */
  readonly errSource?: LocalSource | null;
  /** Client: where remote stderr goes. */
  readonly errSink?: Writable | null;
  /** Bytes to write to `sink` before any remote data (a socket service's descriptor). */
  readonly sinkPrefix?: Buffer;
  /** Client: bytes sent as MSG_DATA_STDIN before `source` is read (--prefix-data). */
  readonly prefix?: Buffer;
  /** A local process: resolves with its exit status (128+signal when killed). */
  readonly localExit?: Promise<number>;
  /** Socket services: end the call when the client sends EOF. */
  readonly exitOnClientEof?: boolean;
  /** Socket services: end the call when the service's output ends. */
  readonly exitOnServiceEof?: boolean;
  /** Client: replace unsafe bytes of remote stdout / stderr (-t / -T). */
  readonly replaceStdout?: boolean;
  readonly replaceStderr?: boolean;
  readonly log?: (msg: string) => void;
  /** Who is at the other end, for log lines (e.g. `domain 3 (work)`). */
  readonly peer?: string;
  /** Set-up and idle timeouts (default: DEFAULT_DATA_LIMITS). */
  readonly limits?: DataLimits;
  /** Invoked with the negotiated version once the handshake is done. */
  readonly onHandshake?: (version: number) => void;
  /**
   * Service: nothing runs; after the handshake send only this exit code (with
   * stdout/stderr EOF first when `eofs`), as for a call that failed to start
   * or an MSG_JUST_EXEC call. The agent sends stdout's EOF first; dom0 stderr's
   * (`stderrFirst`), as the reference's handle_failed_exec.
   */
  readonly exitOnly?: Promise<{ readonly code: number; readonly eofs: boolean; readonly stderrFirst?: boolean }>;
  /**
   * Called once when `source` ends, before its EOF is handled: a stdin-socket
   * switch (useStdinSocket) asked for before the end, but not handed on yet,
   * happens first. The end waits for a returned promise.
   */
  readonly beforeOutputEof?: () => Promise<void> | void;
}

/** Control of a running pump. */
export interface Pump {
  /** Resolves with the call's status (service: the sent exit code or -1 when none was; client: the exit status). */
  readonly done: Promise<number>;
  /** The negotiated protocol version; -1 until the handshake is done (or when it failed). */
  readonly version: number;
  /** The child asked to use its stdin socket for output too (SIGUSR1): switch `source` to `sink`. */
  useStdinSocket(sock: LocalSource & LocalSink): void;
  /** Abort: close everything, no exit code. */
  abort(reason: string): void;
}

/**
 * Starts the handshake (sending our MSG_HELLO) and then the data stream.
 * The channel is ended when the pump finishes.
 */
export function startPump(o: PumpOptions): Pump {
  const ch = o.channel;
  // A vchan that is a real socket is written through a second descriptor
  // (socketWriter): a failed write (the peer closed) then cannot discard what
  // the peer sent before it, which the reference's loop still reads. We end
  // our writing side ourselves, so the reading one must not do it for us.
  const out: Channel = socketWriter(ch) ?? ch;
  if (out !== ch) (ch as net.Socket).allowHalfOpen = true;
  const log = o.log ?? (() => undefined);
  const peer = o.peer ?? 'the peer';
  const limits = o.limits ?? DEFAULT_DATA_LIMITS;
  // a hostile peer must not be able to fill the log: past the first few, a
  // call's complaints are only counted
  let complaints = 0;
  const complain = (m: string): void => {
    complaints++;
    if (complaints <= COMPLAINTS_LOGGED_PER_CALL) log(m);
    else if (complaints === COMPLAINTS_LOGGED_PER_CALL + 1) log(`${peer}: more protocol complaints in this call are only counted`);
  };
  const isService = o.role === 'service';
  const outType = isService ? MsgType.DATA_STDOUT : MsgType.DATA_STDIN;
  const inType = isService ? MsgType.DATA_STDIN : MsgType.DATA_STDOUT;
  // only MSG_HELLO first; then data messages of at most the negotiated chunk
  // (the rules switch between two frames of one read, see onFrame)
  const decoder = new FrameDecoder(helloRules);
  let version = -1;
  let chunk = 0;
  let finished = false;
  let started = false;
  // A socket sink is only shut down when its direction ends, as the reference's
  // close_stdio: it can still be read after a SIGUSR1 switch. Known now, while
  // the descriptor is open.
  const sinkIsSocket = o.sink !== null && isSocketStream(o.sink);
  // A socket service's one socket is written through a second descriptor
  // (socketWriter): a failed write then cannot discard output still queued
  // for reading.
  const sharedSocket = isService && o.single && sinkIsSocket && (o.sink as unknown) === o.source;
  const splitWriter = sharedSocket ? socketWriter(o.sink as object) : undefined;
  const localSink: LocalSink | null = splitWriter ?? o.sink;
  let sink: LocalSink | null = localSink;
  let source: LocalSource | null = o.source;
  let errSource: LocalSource | null = (isService && o.errSource) || null;
  let single = o.single;
  const hasLocal = o.localExit !== undefined;
  let localStatus: number | undefined;
  let remoteStatus: number | undefined;
  let warnedDirection = false;
  let errEnded = false;
  let resolveDone: (n: number) => void = () => undefined;
  const done = new Promise<number>((r) => (resolveDone = r));
  const sources = new Set<LocalSource>();
  let stopHangupWatch: () => void = () => undefined;

  // Set-up and idle timeouts (the reference has neither). `active`: a frame
  // went either way since the idle check last looked; the check runs four
  // times per timeout and closes after four quiet looks, so a call is closed
  // after between 1 and 1.25 timeouts without a frame, never sooner.
  let active = false;
  let setupTimer: NodeJS.Timeout | undefined;
  let idleTimer: NodeJS.Timeout | undefined;
  const stopTimers = (): void => {
    clearTimeout(setupTimer);
    clearInterval(idleTimer);
  };
  const startIdleTimer = (): void => {
    const ms = limits.idleTimeoutMs;
    if (ms <= 0 || finished) return;
    let quiet = 0;
    idleTimer = setInterval(() => {
      if (active) {
        active = false;
        quiet = 0;
      } else if (++quiet >= 4) {
        log(`${peer}: no frame either way for ${ms / 1000} s: closing the data vchan`);
        finish(-1, false);
      }
    }, ms / 4);
    idleTimer.unref();
  };

  // Small messages written to the vchan in one turn of the event loop go out
  // in one writev: a service's last data, EOF and exit code reach the peer in
  // one read instead of three wake-ups. Big data frames go out at once (after
  // what is batched, in order), so a stream keeps both processes busy.
  const corkable = typeof (out as unknown as Partial<Writable>).cork === 'function' ? (out as unknown as Writable) : undefined;
  let batching = false;
  const flush = (): void => {
    if (!batching) return;
    batching = false;
    corkable?.uncork();
  };
  const send = (b: Uint8Array): void => {
    active = true;
    if (corkable && !batching && !corkable.writableEnded) {
      batching = true;
      corkable.cork();
      setImmediate(flush);
    }
    out.write(b);
  };
  const sendData = (type: number, data: Buffer): void => {
    active = true;
    if (data.length === 0) {
      send(encodeDataHeader(type, 0));
      return;
    }
    for (let off = 0; off < data.length; off += chunk) {
      const part = data.subarray(off, Math.min(off + chunk, data.length));
      if (part.length <= 4096) {
        send(encodeMessage(type, part)); // small: one copy
      } else if (corkable) {
        // header and data in one writev, now
        flush();
        corkable.cork();
        out.write(encodeDataHeader(type, part.length));
        out.write(part);
        corkable.uncork();
      } else {
        out.write(encodeDataHeader(type, part.length));
        out.write(part);
      }
    }
  };

  const closeSink = (): void => {
    flushQueued();
    if (sink === null) return;
    const s = sink;
    sink = null;
    // a stream that is ending never emits 'drain': stop waiting for it
    unblock(s);
    if ((single && source !== null) || sinkIsSocket) {
      // shutdown(SHUT_WR): reading goes on (a shared socket), or may start (SIGUSR1)
      s.end();
    } else {
      // close the descriptor once flushed: a pipe's reader sees EOF only then
      s.end(() => s.destroy());
    }
  };
  /** Stops reading `r`; `keep`: what it holds already (read now) is kept there. */
  const stopSource = (r: LocalSource | null, keep?: Buffer[]): void => {
    if (r === null) return;
    sources.delete(r);
    r.removeAllListeners('data');
    r.pause();
    if (keep) keep.push(...takeReadable(r));
    // a shared socket stays: its writing side may still be flushing (sink is
    // null once the caller's EOF was handed on, not once it was written)
    if (!(single && r === (o.sink as unknown))) r.destroy();
  };

  /** The reference's close_stdin(). */
  const closeInput = (): void => {
    if (o.exitOnClientEof) {
      flushQueued();
      if (source !== null) send(encodeDataHeader(outType, 0));
      const s = source;
      source = null;
      stopSource(s);
      unblock(sink);
      sink = null;
      return;
    }
    closeSink();
  };
  /** The reference's close_stdout(). */
  // our output's EOF went out: a later stdin-socket switch must not send more
  let outputEnded = false;
  // what the output held when a switch came before the handshake
  const beforeSwitch: Buffer[] = [];
  const closeOutput = (): void => {
    outputEnded = true;
    const s = source;
    source = null;
    stopSource(s);
    if (o.exitOnServiceEof) sink = null;
  };

  const finish = (status: number, sendExit: boolean): void => {
    if (finished) return;
    flushQueued();
    finished = true;
    stopHangupWatch();
    stopTimers();
    if (complaints > COMPLAINTS_LOGGED_PER_CALL) {
      log(`${peer}: ${complaints - COMPLAINTS_LOGGED_PER_CALL} more protocol complaints in this call were not logged`);
    }
    if (sendExit) send(encodeExitCode(status));
    for (const r of sources) {
      r.removeAllListeners('data');
      r.destroy();
    }
    sources.clear();
    sink = null;
    source = null;
    errSource = null;
    // close every local stream we were given, whatever state the call left it in
    for (const r of [o.source, o.errSource]) {
      if (r && r !== (o.sink as unknown)) {
        r.removeAllListeners('data');
        r.destroy();
      }
    }
    if (splitWriter) {
      // the reading stream goes once the writing one is done
      const reader = o.sink as LocalSink;
      if (splitWriter.destroyed) reader.destroy();
      else splitWriter.once('close', () => reader.destroy());
    }
    if (localSink && !localSink.destroyed) {
      const s = localSink;
      if (!s.writableEnded) s.end();
      // a shared socket is closed both ways, but only once what we wrote is
      // flushed: the reference hands the caller's EOF on only after its data
      if (o.single) {
        if (s.writableFinished) setImmediate(() => s.destroy());
        else s.once('finish', () => s.destroy());
      }
    }
    out.end();
    setTimeout(() => {
      ch.destroy();
      out.destroy();
    }, 2000).unref();
    if (hasLocal && localStatus === undefined) {
      void o.localExit?.then(
        (st) => {
          localStatus = st;
          resolveDone(result());
        },
        () => resolveDone(result()),
      );
    } else {
      resolveDone(result());
    }
  };
  const result = (): number => {
    if (isService) return remoteStatus ?? -1; // remoteStatus holds the sent code for services
    if (remoteStatus === undefined) return 255;
    if (remoteStatus !== 0) return remoteStatus;
    return hasLocal ? (localStatus ?? 255) : 0;
  };

  const checkDone = (): void => {
    if (finished || !started) return;
    if (sink !== null || source !== null || errSource !== null) return;
    if (isService) {
      if (!hasLocal || localStatus !== undefined) {
        remoteStatus = hasLocal ? (localStatus as number) : 0;
        finish(remoteStatus, true);
      }
    } else if ((!hasLocal || localStatus !== undefined) && remoteStatus !== undefined) {
      finish(remoteStatus, false);
    }
  };

  const pump = (r: LocalSource, type: number, onEof: () => void, gate?: () => Promise<void> | void): void => {
    sources.add(r);
    r.on('data', (d: Buffer) => {
      if (finished) return;
      sendData(type, d);
      if (out.writableNeedDrain && !r.isPaused()) {
        r.pause();
        out.once('drain', () => {
          if (!finished && sources.has(r)) r.resume();
        });
      }
    });
    let ended = false;
    const eof = (): void => {
      if (ended || finished || !sources.has(r)) return;
      if (gate) {
        const g = gate;
        gate = undefined;
        const wait = g();
        if (wait) {
          void wait.then(eof, eof);
          return;
        }
        if (finished || !sources.has(r)) return; // switched meanwhile
      }
      ended = true;
      send(encodeDataHeader(type, 0));
      onEof();
      checkDone();
    };
    r.once('end', eof);
    r.on('error', (e: NodeJS.ErrnoException) => {
      if (e.code !== 'ECONNRESET' && e.code !== 'EPIPE') log(`local read error: ${e.message}`);
      eof();
    });
    // the stream may have ended before we got to it ('end' already emitted)
    if (r.readableEnded || (r.destroyed && r.readableLength === 0)) queueMicrotask(eof);
  };

  const start = (): void => {
    if (o.exitOnly) {
      void o.exitOnly.then((r) => {
        if (finished) return;
        if (r.eofs) {
          const order = r.stderrFirst ? [MsgType.DATA_STDERR, MsgType.DATA_STDOUT] : [MsgType.DATA_STDOUT, MsgType.DATA_STDERR];
          for (const t of order) send(encodeDataHeader(t, 0));
        }
        remoteStatus = r.code;
        finish(r.code, true);
      });
      return;
    }
    started = true;
    if (isService && errSource === null) send(encodeDataHeader(MsgType.DATA_STDERR, 0));
    if (o.sinkPrefix && o.sinkPrefix.length > 0 && sink) writeSink(o.sinkPrefix);
    if (o.prefix && o.prefix.length > 0) sendData(outType, o.prefix);
    for (const b of beforeSwitch.splice(0)) sendData(outType, b);
    if (source) pump(source, outType, closeOutput, source === o.source ? o.beforeOutputEof : undefined);
    if (sharedSocket && sink !== null) {
      // a socket service that closes, or stops reading, once its output is over
      // ends the call without the caller's EOF (the reference's POLLHUP)
      stopHangupWatch = onPeerHangup(
        o.sink as unknown as net.Socket,
        () => {
          if (finished || sink === null) return;
          closeInput();
          checkDone();
        },
        (splitWriter ?? o.sink) as unknown as net.Socket,
      );
    }
    if (errSource) {
      const e = errSource;
      pump(e, MsgType.DATA_STDERR, () => {
        sources.delete(e);
        errSource = null;
      });
    }
    if (hasLocal) {
      o.localExit?.then(
        (st) => {
          localStatus = st;
          if (!finished) {
            closeInput();
            checkDone();
          }
        },
        () => {
          localStatus = 125;
          checkDone();
        },
      );
    }
    checkDone();
  };

  // Local writers (the sink, the client's stderr) that are full: the vchan is
  // not read while any of them is, so a peer that floods a stream nobody
  // reads fills its own vchan, not our memory. One listener per writer,
  // however many frames of one read were written meanwhile.
  const blocked = new Set<Writable>();
  const unblock = (s: Writable | null): void => {
    if (s !== null && blocked.delete(s) && blocked.size === 0) ch.resume();
  };
  const writeLocal = (s: Writable, data: Buffer): void => {
    if (!s.write(data) && !finished && !blocked.has(s)) {
      blocked.add(s);
      ch.pause();
      // a writer that is ending or destroyed never emits 'drain'
      const go = (): void => {
        s.off('drain', go);
        s.off('close', go);
        unblock(s);
      };
      s.on('drain', go);
      s.on('close', go);
    }
  };
  const writeSink = (data: Buffer): void => {
    if (sink !== null) writeLocal(sink, data);
  };
  // The payloads of one vchan read, written to each local stream at once: a
  // peer sending a million one-byte frames costs one write per read, not a
  // million (each a buffered chunk with its own overhead).
  let queued: Buffer[] = [];
  let queuedErr: Buffer[] = [];
  const joined = (q: Buffer[]): Buffer => (q.length === 1 ? (q[0] as Buffer) : Buffer.concat(q));
  const flushQueued = (): void => {
    if (queued.length > 0) {
      const q = queued;
      queued = [];
      writeSink(joined(q));
    }
    if (queuedErr.length > 0) {
      const q = queuedErr;
      queuedErr = [];
      if (o.errSink && !o.errSink.destroyed) writeLocal(o.errSink, joined(q));
    }
  };
  const attachSinkErrors = (s: LocalSink | null): void => {
    s?.on('error', (e: NodeJS.ErrnoException) => {
      if (e.code !== 'EPIPE' && e.code !== 'ECONNRESET') log(`local write error: ${e.message}`);
      if (s === sink) {
        closeInput();
        checkDone();
      }
    });
  };
  attachSinkErrors(sink);
  if (o.errSink) o.errSink.on('error', () => undefined);

  const onFrame = (f: Frame): void => {
    if (version < 0) {
      try {
        version = negotiateVersion(parseHello(f.payload), QREXEC_PROTOCOL_VERSION, QREXEC_DATA_MIN_VERSION);
      } catch (e) {
        log((e as Error).message);
        finish(-1, false);
        return;
      }
      chunk = maxDataChunk(version);
      decoder.setRules(dataRules(version));
      clearTimeout(setupTimer);
      startIdleTimer();
      o.onHandshake?.(version);
      start();
      return;
    }
    switch (f.type) {
      case MsgType.DATA_STDIN:
      case MsgType.DATA_STDOUT:
        if (f.type !== inType && !warnedDirection) {
          warnedDirection = true;
          complain(isService ? 'client sent MSG_DATA_STDOUT' : 'service sent MSG_DATA_STDIN');
        }
        if (sink === null) {
          if (f.payload.length > 0) complain(`${peer}: data after EOF (${f.payload.length} bytes) dropped`);
          return;
        }
        if (f.payload.length === 0) {
          closeInput();
          checkDone();
          return;
        }
        queued.push(!isService && o.replaceStdout ? replaceUnsafeBytes(Buffer.from(f.payload)) : f.payload);
        return;
      case MsgType.DATA_STDERR:
        if (isService) {
          complain('client sent MSG_DATA_STDERR');
          return;
        }
        if (f.payload.length === 0) {
          errEnded = true; // stderr's EOF: later stderr data is dropped
        } else if (errEnded) {
          complain(`${peer}: stderr data after EOF (${f.payload.length} bytes) dropped`);
        } else if (o.errSink && !o.errSink.destroyed) {
          queuedErr.push(o.replaceStderr ? replaceUnsafeBytes(Buffer.from(f.payload)) : f.payload);
        }
        return;
      case MsgType.DATA_EXIT_CODE:
        if (isService) {
          complain('client sent MSG_DATA_EXIT_CODE');
          return;
        }
        if (remoteStatus !== undefined) {
          complain(`${peer}: second exit code ignored`);
          return;
        }
        if (f.payload.length < 4) {
          complain(`MSG_DATA_EXIT_CODE too short: ${f.payload.length} < 4`);
          remoteStatus = 255;
        } else {
          remoteStatus = f.payload.readInt32LE(0);
          if (remoteStatus < 0 || remoteStatus > 255) {
            // the reference passes it on, and its low byte often reads as success (256 -> 0)
            complain(`${peer} sent exit code ${remoteStatus}, outside 0-255: the call fails with 255`);
            remoteStatus = 255;
          }
        }
        if (source !== null) send(encodeDataHeader(outType, 0));
        closeOutput();
        // nothing the service sends after its exit code counts (the reference stops reading)
        closeInput();
        checkDone();
        return;
      default:
        return;
    }
  };

  ch.on('data', (buf: Buffer) => {
    if (finished) return;
    try {
      for (const f of decoder.push(buf)) {
        if (finished) break;
        active = true;
        onFrame(f);
      }
      flushQueued();
    } catch (e) {
      if (!(e instanceof ProtocolError)) throw e;
      log(`data vchan: ${e.message}`);
      finish(isService ? -1 : 1, false);
    }
  });
  const onClose = (): void => {
    if (finished) return;
    const allClosed = sink === null && source === null && errSource === null;
    if (isService || !(allClosed && remoteStatus !== undefined)) {
      log(`vchan connection closed early (local status: ${localStatus ?? 'running'}, remote status: ${remoteStatus ?? 'none'})`);
    }
    finish(isService ? -1 : (remoteStatus ?? 255), false);
  };
  ch.on('end', onClose);
  ch.on('close', onClose);
  // A peer that sent everything and closed (the reference's agent closes at
  // once) fails our next write with EPIPE, or ends our reading with a reset
  // after its data: the normal end of a call, which the reference's clients do
  // not report either. What was sent is still read; a call that really ended
  // early is logged as such (onClose). We stop reading input the vchan can no
  // longer take, as the reference's close_stdout after a failed send.
  const onVchanError = (e: NodeJS.ErrnoException): void => {
    if (e.code !== 'EPIPE' && e.code !== 'ECONNRESET') {
      log(`data vchan error: ${e.message}`);
      return;
    }
    if (e.syscall === 'write' && source !== null && !finished) {
      const s = source;
      source = null;
      outputEnded = true;
      stopSource(s);
      checkDone();
    }
  };
  ch.on('error', onVchanError);
  if (out !== ch) out.on('error', onVchanError);
  send(encodeHello(QREXEC_PROTOCOL_VERSION));
  if (limits.setupTimeoutMs > 0) {
    setupTimer = setTimeout(() => {
      if (version >= 0) return;
      log(`${peer}: no MSG_HELLO within ${limits.setupTimeoutMs / 1000} s: closing the data vchan`);
      finish(-1, false);
    }, limits.setupTimeoutMs);
    setupTimer.unref();
  }

  return {
    done,
    get version(): number {
      return version;
    },
    useStdinSocket(sock: LocalSource & LocalSink): void {
      if (finished || single) return;
      if (outputEnded) {
        log('single-socket switch after the output ended: ignored');
        return;
      }
      // what was written to the output before the switch (it is in the
      // stream or its pipe by now) still goes out, before the socket's data
      const s = source;
      source = null;
      const early: Buffer[] = [];
      stopSource(s, early);
      single = true;
      if (started) for (const b of early) sendData(outType, b);
      else beforeSwitch.push(...early);
      if (sink !== null || sock.readable) {
        source = sock;
        // before the handshake, start() pumps it
        if (started) pump(sock, outType, closeOutput);
      }
      checkDone();
    },
    abort(reason: string): void {
      log(reason);
      finish(-1, false);
    },
  };
}

