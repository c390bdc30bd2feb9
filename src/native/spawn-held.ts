/**
 * Starting a child whose output is read later — after a data vchan's
 * MSG_HELLO exchange, say — without Node dropping any of it.
 *
 * Node's ChildProcess resumes every readable stdio stream it made that nobody
 * reads yet, one tick after the child exits (flushStdio in
 * lib/internal/child_process.js): what the child wrote before our reader was
 * attached is read and thrown away, and the stream has ended by the time we
 * look. A service that writes a little and exits before the peer's MSG_HELLO
 * arrived lost its whole output that way (issue #8).
 *
 * So an output stream ('pipe' at fd 1 or 2) is never Node's: it is our own
 * pipe (pipe2 through the addon) in a stream the ChildProcess does not know,
 * which reads up to its high-water mark and then leaves the rest in the pipe
 * until someone reads (backpressure reaches the child). Without the addon,
 * Node's stream is piped at once into a PassThrough that holds the data the
 * same way. stdin ('pipe' at fd 0) stays Node's: nothing is lost writing to a
 * process that exited.
 */
import { spawn, type ChildProcess, type SpawnOptions } from 'node:child_process';
import * as fs from 'node:fs';
import * as net from 'node:net';
import { PassThrough, type Readable, type Writable } from 'node:stream';
import { nativePipe } from './addon.js';

/** One stdio slot: 'pipe' (a stream for us), 'ignore', 'inherit', a descriptor or a stream to hand over. */
export type HeldStdio = 'pipe' | 'ignore' | 'inherit' | number | net.Socket;

/** A started child and the streams of its 'pipe' slots. */
export interface HeldChild {
  readonly child: ChildProcess;
  /** Writing end of the child's stdin, when slot 0 was 'pipe'. */
  readonly stdin: Writable | null;
  /** The child's stdout / stderr, when slot 1 / 2 was 'pipe': nothing is read from them before a reader attaches. */
  readonly stdout: Readable | null;
  readonly stderr: Readable | null;
}

/**
 * A readable stream over the read end of a pipe: it buffers until read (a
 * net.Socket over a descriptor reads to its high-water mark, then stops).
 */
export function pipeReader(fd: number): Readable {
  return new net.Socket({ fd, readable: true, writable: false });
}

/** Holds what `r` (one of Node's child stdio streams) delivers until a reader attaches. */
function hold(r: Readable): Readable {
  const held = new PassThrough();
  r.on('error', (e) => held.destroy(e));
  r.pipe(held);
  return held;
}

/**
 * spawn(), with every output slot given as 'pipe' read by a stream of ours
 * (see the module comment). Throws what spawn() throws synchronously; a failed
 * exec is the child's 'error' event, as with spawn(), and its output streams
 * then end at once.
 */
export function spawnHeld(file: string, args: readonly string[], options: Omit<SpawnOptions, 'stdio'> & { readonly stdio: readonly HeldStdio[] }): HeldChild {
  const stdio: HeldStdio[] = [...options.stdio];
  const ours: (Readable | null)[] = [null, null, null];
  const theirs: number[] = [];
  const closeAll = (fds: number[]): void => {
    for (const fd of fds) {
      try {
        fs.closeSync(fd);
      } catch {
        // already closed
      }
    }
  };
  for (const i of [1, 2]) {
    if (stdio[i] !== 'pipe') continue;
    const p = nativePipe();
    if (!p) continue; // no addon: Node's pipe, held below
    theirs.push(p[1]);
    stdio[i] = p[1];
    ours[i] = pipeReader(p[0]);
  }
  let child: ChildProcess;
  try {
    child = spawn(file, args, { ...options, stdio });
  } catch (e) {
    for (const r of ours) r?.destroy();
    throw e;
  } finally {
    // the child has its copies (or never will): its exit is then our EOF
    closeAll(theirs);
  }
  const out = (i: 1 | 2): Readable | null => {
    const own = ours[i];
    if (own) return own;
    const node = i === 1 ? child.stdout : child.stderr;
    return node ? hold(node) : null;
  };
  return { child, stdin: child.stdin, stdout: out(1), stderr: out(2) };
}
