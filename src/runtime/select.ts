/** The runtime backend a command line names. */
import * as path from 'node:path';
import { UsageError } from '../common/args.js';
import { ProcessRuntime } from './process.js';
import type { Runtime } from './types.js';
import { BwrapRuntime, bwrapUnavailable } from './bwrap.js';

export const RUNTIME_HELP = `"process" (default: each qube is its qrexec-agent as a child
                     process, with a qrexec-daemon; state in DIR/qubes/NAME,
                     vchan sockets in RUN/vchan, qrexec sockets in RUN/qrexec)
                     "bwrap" (bubblewrap sandboxes, root only; docs/RUNTIME.md;
                     falls back to "process", loudly, when bwrap cannot run)
                     or "none" (qubes cannot be started)`;

export interface RuntimeChoiceOptions {
  readonly dataDir: string;
  readonly runDir: string;
  /** The policy daemon the qubes' qrexec daemons ask (default: theirs). */
  readonly policySocket?: string;
  /** Show the agents' and daemons' stderr (else discarded). */
  readonly debug?: boolean;
  /** Where the loud fallback warning goes (default stderr). */
  readonly warn?: (msg: string) => void;
}

export function runtimeFromOptions(name: string, o: RuntimeChoiceOptions): Runtime | null {
  if (name === 'none') return null;
  if (name === 'bwrap') {
    const why = bwrapUnavailable();
    if (!why) return new BwrapRuntime({ runDir: o.runDir, dataDir: o.dataDir, readyOn: 'listening' });
    (o.warn ?? ((m) => process.stderr.write(m)))(
      `WARNING: the bwrap runtime cannot run here (${why}); falling back to "process": qubes are NOT isolated (see docs/RUNTIME.md)\n`,
    );
    name = 'process';
  }
  if (name === 'process') {
    return new ProcessRuntime({
      stateDir: path.join(o.dataDir, 'qubes'),
      vchanDir: path.join(o.runDir, 'vchan'),
      socketDir: path.join(o.runDir, 'qrexec'),
      logFd: o.debug ? 'inherit' : 'ignore',
      daemon: { qubesdSocket: path.join(o.runDir, 'qubesd.sock'), servicePath: path.join(o.runDir, 'qubes-rpc'), ...(o.policySocket ? { policySocket: o.policySocket } : {}) },
    });
  }
  throw new UsageError(`argument --runtime: invalid choice: '${name}' (choose from 'process', 'bwrap', 'none')`);
}
