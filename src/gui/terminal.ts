/**
 * Terminals into qubes: each one a qrexec call `gui.Terminal+COLSxROWS`
 * from this GUI domain to the qube (the policy decides: by default only
 * the qubes whose guivm it is), open as long as the window. What is typed
 * goes to the call's stdin; what the pty shows comes back on its stdout and
 * is sent to the pages over their event stream (base64 chunks).
 */
import { randomBytes } from 'node:crypto';
import { PassThrough, Writable } from 'node:stream';
import { callService } from '../agent/index.js';
import { agentSocketFromEnv } from './admin.js';

export const TERMINAL_SERVICE = 'gui.Terminal';
/** The window's new size, to its pty (qubes-rpc/qube/gui.TerminalResize). */
export const RESIZE_SERVICE = 'gui.TerminalResize';
const QUBE = /^[A-Za-z][A-Za-z0-9_.-]{0,30}$/;
/** Output kept per terminal for a page that (re)attaches. */
const KEEP = 64 * 1024;

export class TerminalError extends Error {
  override name = 'TerminalError';
}

/** `offset`: bytes of output before this chunk (a page joining late skips what its backlog had). */
export type TerminalEvent = { readonly id: string; readonly data: string; readonly offset: number } | { readonly id: string; readonly exit: number };

/** Runs a call; tests plug in a fake. */
export type TerminalCall = (qube: string, service: string, stdin: PassThrough, stdout: Writable) => Promise<{ exitCode: number; refused: boolean }>;

interface Session {
  readonly id: string;
  readonly qube: string;
  readonly input: PassThrough;
  kept: Buffer;
  /** Bytes of output so far. */
  total: number;
  exit: number | null;
}

export class Terminals {
  private readonly sessions = new Map<string, Session>();
  private readonly listeners = new Set<(e: TerminalEvent) => void>();

  constructor(
    private readonly call: TerminalCall = (qube, service, stdin, stdout) => callService(qube, service, { agentSocket: agentSocketFromEnv(), stdin, stdout, stderr: stdout }),
    private readonly max = 16,
  ) {}

  subscribe(f: (e: TerminalEvent) => void): () => void {
    this.listeners.add(f);
    return () => this.listeners.delete(f);
  }

  private emit(e: TerminalEvent): void {
    for (const f of this.listeners) f(e);
  }

  /** Opens a terminal in `qube`; resolves once the call is made (refused: throws). */
  open(qube: string, cols: number, rows: number): { id: string } {
    if (!QUBE.test(qube)) throw new TerminalError('invalid qube name');
    if (!Number.isInteger(cols) || !Number.isInteger(rows) || cols < 2 || rows < 2 || cols > 1000 || rows > 1000) throw new TerminalError('invalid size');
    if ([...this.sessions.values()].filter((s) => s.exit === null).length >= this.max) throw new TerminalError(`at most ${this.max} terminals at once`);
    const s: Session = { id: randomBytes(9).toString('base64url'), qube, input: new PassThrough(), kept: Buffer.alloc(0), total: 0, exit: null };
    this.sessions.set(s.id, s);
    const out = new Writable({
      write: (c: Buffer, _e, cb) => {
        s.kept = Buffer.concat([s.kept, c]);
        if (s.kept.length > KEEP) s.kept = s.kept.subarray(s.kept.length - KEEP);
        const offset = s.total;
        s.total += c.length;
        this.emit({ id: s.id, data: c.toString('base64'), offset });
        cb();
      },
    });
    // the id names the window in the qube too, for its resizes
    this.call(qube, `${TERMINAL_SERVICE}+${cols}x${rows}+${s.id}`, s.input, out).then(
      (r) => this.ended(s, r.refused ? 126 : r.exitCode),
      () => this.ended(s, 255),
    );
    return { id: s.id };
  }

  private ended(s: Session, code: number): void {
    s.exit = code;
    this.emit({ id: s.id, exit: code });
    // forgotten a while later (a page may still read the last output)
    setTimeout(() => this.sessions.delete(s.id), 60_000).unref();
  }

  /**
   * The window's new size: one qrexec call `gui.TerminalResize+ID+COLSxROWS`
   * to the qube (the same policy as the terminal), whose pty takes it.
   * @throws TerminalError when refused or failed
   */
  async resize(id: string, cols: number, rows: number): Promise<void> {
    const s = this.sessions.get(id);
    if (!s || s.exit !== null) throw new TerminalError('no such terminal (closed?)');
    if (!Number.isInteger(cols) || !Number.isInteger(rows) || cols < 2 || rows < 2 || cols > 1000 || rows > 1000) throw new TerminalError('invalid size');
    const stdin = new PassThrough();
    stdin.end();
    let err = '';
    const sink = new Writable({
      write: (c: Buffer, _e, cb) => {
        if (err.length < 1000) err += c.toString('utf8');
        cb();
      },
    });
    const r = await this.call(s.qube, `${RESIZE_SERVICE}+${id}+${cols}x${rows}`, stdin, sink);
    if (r.refused) throw new TerminalError(`${RESIZE_SERVICE} to ${s.qube}: refused by the policy`);
    if (r.exitCode !== 0) throw new TerminalError(`${RESIZE_SERVICE} in ${s.qube}: ${err.trim() || `exit status ${r.exitCode}`}`);
  }

  /** What is typed. */
  input(id: string, data: string): void {
    const s = this.sessions.get(id);
    if (!s || s.exit !== null) throw new TerminalError('no such terminal (closed?)');
    s.input.write(Buffer.from(data, 'utf8'));
  }

  /** The output so far (for a page that attaches late). */
  backlog(id: string): { qube: string; data: string; total: number; exit: number | null } {
    const s = this.sessions.get(id);
    if (!s) throw new TerminalError('no such terminal');
    return { qube: s.qube, data: s.kept.toString('base64'), total: s.total, exit: s.exit };
  }

  /** Ends the terminal's input: the shell sees EOF and the call ends. */
  close(id: string): void {
    const s = this.sessions.get(id);
    if (s && s.exit === null) s.input.end();
  }

  closeAll(): void {
    for (const s of this.sessions.values()) if (s.exit === null) s.input.end();
  }
}
