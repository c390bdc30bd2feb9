/**
 * What qubesd asks of a sandbox backend. A backend starts a qube (its
 * qrexec-agent and whatever else runs inside), tells when it is ready (the
 * agent connected to its host-side qrexec daemon), and stops, kills, pauses
 * and resumes it. It knows nothing of the registry: qubesd passes what a
 * start needs as plain data.
 *
 * Backends: `process` (src/runtime/process.ts: the agent as a child process,
 * no isolation; development and tests). bubblewrap sandboxes (#11) plug in
 * behind the same interface.
 */

/** Everything a backend needs to start one qube. */
export interface QubeLaunch {
  readonly name: string;
  readonly uuid: string;
  /** The domain id the qube's vchan uses (VCHAN_DOMAIN). */
  readonly domid: number;
  /** AppVM, TemplateVM... */
  readonly klass: string;
  /** Its template's name, if any (a backend may share the template's files). */
  readonly template: string | null;
  /** The qube's default user (DEFAULT: in commands). */
  readonly defaultUser: string;
  /** Give up starting after this long (the qube's qrexec_timeout). */
  readonly timeoutMs: number;
}

/** How a qube's processes ended. */
export interface QubeExit {
  readonly code: number | null;
  readonly signal: string | null;
}

/** A started qube. */
export interface RunningQube {
  /** Resolves once the qube is ready (its agent connected); rejects if it failed to start. */
  readonly ready: Promise<void>;
  /** Resolves when every process of the qube has ended (never rejects). */
  readonly exited: Promise<QubeExit>;
  /** Ask the qube to stop (its processes get SIGTERM); see {@link exited}. */
  shutdown(): void;
  /** Stop it now (SIGKILL), without waiting for anything. */
  kill(): void;
  /** Freeze every process of the qube (SIGSTOP), and thaw them. */
  pause(): void;
  unpause(): void;
}

export interface Runtime {
  /** The backend's name (`process`, `bwrap`). */
  readonly name: string;
  start(q: QubeLaunch): RunningQube;
  /** Stop every qube this backend started (on qubesd's exit). */
  close(): Promise<void>;
}

/** A start failed (the reason is shown to the caller as QubesException). */
export class RuntimeError extends Error {
  override name = 'RuntimeError';
}
