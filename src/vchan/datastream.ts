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
  parseExitCode,
  parseHello,
  type Frame,
} from '../protocol/index.js';
import type { Channel } from './channel.js';

/** Options of one end of a data vchan. */
export interface DataStreamOptions {
  /** The connected data vchan. */
  readonly channel: Channel;
  /**
   * `caller`: the qrexec-client(-vm) end — sends MSG_DATA_STDIN, receives stdout/stderr/exit code.
   * `service`: the end that runs the service — sends stdout/stderr/exit code, receives stdin.
   */
  readonly role: 'caller' | 'service';
  /** Local bytes to send (caller: its stdin; service: the process's stdout). */
  readonly input?: Readable | null;
  /** Service only: the process's stderr, sent as MSG_DATA_STDERR. */
  readonly errInput?: Readable | null;
  /** Where received data goes (caller: its stdout; service: the process's stdin). */
  readonly output?: Writable | null;
  /** Caller only: where MSG_DATA_STDERR goes. */
  readonly errOutput?: Writable | null;
  /** Caller only: bytes sent before `input` (qrexec-client --prefix-data). */
  readonly prefix?: Buffer;
  /** Service only: the exit status to report once stdout and stderr are done. */
  readonly exitStatus?: Promise<number>;
  /** Log sink for protocol problems. */
  readonly log?: (msg: string) => void;
}

/** What happened on a data stream. */
export interface DataStreamResult {
  /** Caller: the remote exit status (255 when the connection closed without one). Service: the status sent. */
  readonly status: number;
  /** Negotiated protocol version (-1 if the handshake failed). */
  readonly version: number;
}

/**
 * Runs one data vchan end to end: MSG_HELLO exchange (both sides send first,
 * as the reference agent and clients do), then the MSG_DATA_* stream with
 * chunks of at most the negotiated size, EOF as an empty message, and the
 * exit code. Memory stays bounded: when the vchan cannot take more, local
 * input is paused; when local output is slow, the vchan is paused.
 * Resolves when the stream is over; the channel is closed by then.
 */
export function runDataStream(o: DataStreamOptions): Promise<DataStreamResult> {
  return new Promise((resolve) => {
    const ch = o.channel;
    const log = o.log ?? (() => undefined);
    const isService = o.role === 'service';
    const decoder = new FrameDecoder(helloRules);
    let version = -1;
    let chunk = 0;
    let finished = false;
    let remoteStatus: number | undefined;
    let localStatus: number | undefined;
    let inputOpen = !!o.input;
    let errInputOpen = isService && !!o.errInput;
    let outputOpen = !!o.output;
    let started = false;
    const inputs: Readable[] = [];

    const finish = (status: number): void => {
      if (finished) return;
      finished = true;
      for (const r of inputs) r.pause();
      if (outputOpen) o.output?.end();
      ch.end();
      setTimeout(() => ch.destroy(), 2000).unref();
      resolve({ status, version });
    };
    const send = (type: number, data: Buffer): void => {
      // split to chunk size; header and data go out as one write when small
      for (let off = 0; off < data.length || (off === 0 && data.length === 0); ) {
        const n = Math.min(chunk, data.length - off);
        const part = data.subarray(off, off + n);
        if (n <= 16384) ch.write(encodeMessage(type, part));
        else {
          ch.write(encodeDataHeader(type, n));
          ch.write(part);
        }
        off += n;
        if (n === 0) break;
      }
    };
    const checkDone = (): void => {
      if (finished || !started) return;
      if (isService) {
        if (!inputOpen && !errInputOpen && localStatus !== undefined) {
          ch.write(encodeExitCode(localStatus));
          finish(localStatus);
        }
      } else if (remoteStatus !== undefined && !outputOpen) {
        finish(remoteStatus);
      }
    };
    const pump = (r: Readable, type: number, onEof: () => void): void => {
      inputs.push(r);
      r.on('data', (d: Buffer) => {
        if (finished) return;
        send(type, d);
        if (ch.writableNeedDrain) {
          r.pause();
          ch.once('drain', () => {
            if (!finished) r.resume();
          });
        }
      });
      const eof = (): void => {
        if (finished) return;
        onEof();
        ch.write(encodeMessage(type));
        checkDone();
      };
      r.once('end', eof);
      r.once('error', (e) => {
        log(`local read error: ${e.message}`);
        eof();
      });
    };

    const start = (): void => {
      started = true;
      const mainType = isService ? MsgType.DATA_STDOUT : MsgType.DATA_STDIN;
      if (isService && !o.errInput) ch.write(encodeMessage(MsgType.DATA_STDERR));
      // nothing to send (a call that failed to start): stdout EOF before the exit code, as the reference
      if (isService && !o.input) ch.write(encodeMessage(MsgType.DATA_STDOUT));
      if (o.prefix && o.prefix.length > 0) send(mainType, o.prefix);
      if (o.input) pump(o.input, mainType, () => (inputOpen = false));
      if (isService && o.errInput) pump(o.errInput, MsgType.DATA_STDERR, () => (errInputOpen = false));
      if (isService) {
        (o.exitStatus ?? Promise.resolve(0)).then(
          (s) => {
            localStatus = s;
            checkDone();
          },
          () => {
            localStatus = 125;
            checkDone();
          },
        );
      }
      checkDone();
    };

    const endOutput = (): void => {
      if (!outputOpen) return;
      outputOpen = false;
      o.output?.end();
      // a stream that is ending never emits 'drain': stop waiting for it
      ch.resume();
      checkDone();
    };
    if (o.output) {
      o.output.on('error', (e: NodeJS.ErrnoException) => {
        // the reader went away: the end of that stream, as the reference treats it
        if (e.code !== 'EPIPE' && e.code !== 'ECONNRESET') log(`local write error: ${e.message}`);
        outputOpen = false;
        ch.resume();
        checkDone();
      });
    }

    const onFrame = (f: Frame): void => {
      if (version < 0) {
        try {
          version = negotiateVersion(parseHello(f.payload), QREXEC_PROTOCOL_VERSION, QREXEC_DATA_MIN_VERSION);
        } catch (e) {
          log((e as Error).message);
          finish(255);
          return;
        }
        chunk = maxDataChunk(version);
        decoder.setRules(dataRules(version));
        start();
        return;
      }
      switch (f.type) {
        case MsgType.DATA_STDIN:
        case MsgType.DATA_STDOUT:
          if (f.type !== (isService ? MsgType.DATA_STDIN : MsgType.DATA_STDOUT)) {
            log(isService ? 'client sent MSG_DATA_STDOUT' : 'service sent MSG_DATA_STDIN');
          }
          if (!outputOpen) return;
          if (f.payload.length === 0) {
            endOutput();
            return;
          }
          if (o.output && !o.output.write(f.payload)) {
            ch.pause();
            o.output.once('drain', () => ch.resume());
          }
          return;
        case MsgType.DATA_STDERR:
          if (isService) {
            log('client sent MSG_DATA_STDERR');
            return;
          }
          if (f.payload.length > 0) o.errOutput?.write(f.payload);
          return;
        case MsgType.DATA_EXIT_CODE:
          if (isService) {
            log('client sent MSG_DATA_EXIT_CODE');
            return;
          }
          remoteStatus = parseExitCode(f.payload);
          // the remote process is gone: stop sending, but flush what we have
          if (inputOpen) {
            inputOpen = false;
            ch.write(encodeMessage(MsgType.DATA_STDIN));
            o.input?.pause();
          }
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
          onFrame(f);
        }
      } catch (e) {
        log(`data vchan: ${e instanceof ProtocolError ? e.message : String(e)}`);
        finish(isService ? 125 : 255);
      }
    });
    const onClose = (): void => {
      if (finished) return;
      if (!isService && remoteStatus !== undefined) {
        endOutput();
        finish(remoteStatus);
        return;
      }
      log('vchan connection closed early');
      finish(isService ? (localStatus ?? 125) : 255);
    };
    ch.on('end', onClose);
    ch.on('close', onClose);
    ch.on('error', (e: Error) => log(`data vchan error: ${e.message}`));
    ch.write(encodeHello(QREXEC_PROTOCOL_VERSION));
  });
}
