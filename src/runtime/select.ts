/** The runtime backend a command line names. */
import * as path from 'node:path';
import { UsageError } from '../common/args.js';
import { ProcessRuntime } from './process.js';
import { daemonProcessHostSide } from './host-side.js';
import type { HostSide, Runtime } from './types.js';
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
  /** Serve started qubes' host sides so (the host process: in-process daemons); default a qrexec-daemon child each. */
  readonly hostSide?: HostSide;
  /** bwrap backend log lines (default: discarded unless debug). */
  readonly log?: (msg: string) => void;
}

export function runtimeFromOptions(name: string, o: RuntimeChoiceOptions): Runtime | null {
  if (name === 'none') return null;
  const hostSide =
    o.hostSide ??
    daemonProcessHostSide({
      socketDir: path.join(o.runDir, 'qrexec'),
      logFd: o.debug ? 'inherit' : 'ignore',
      daemon: { qubesdSocket: path.join(o.runDir, 'qubesd.sock'), servicePath: path.join(o.runDir, 'qubes-rpc'), ...(o.policySocket ? { policySocket: o.policySocket } : {}) },
    });
  if (name === 'bwrap') {
    const why = bwrapUnavailable();
    const log = o.log ?? (o.debug ? (m: string) => void process.stderr.write(`bwrap: ${m}\n`) : undefined);
    if (!why) return new BwrapRuntime({ runDir: o.runDir, dataDir: o.dataDir, hostSide, ...(log ? { log } : {}) });
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
      hostSide,
    });
  }
  throw new UsageError(`argument --runtime: invalid choice: '${name}' (choose from 'process', 'bwrap', 'none')`);
}
