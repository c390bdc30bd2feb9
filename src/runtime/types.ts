/**
 * What qubesd asks of a sandbox backend. A backend starts a qube (its
 * qrexec-agent and whatever else runs inside), tells when it is ready (the
 * agent connected to its host-side qrexec daemon), and stops, kills, pauses
 * and resumes it. It knows nothing of the registry: qubesd passes what a
 * start needs as plain data.
 *
 * Backends: `process` (src/runtime/process.ts: the agent as a child process,
 * no isolation; development and tests) and `bwrap` (src/runtime/bwrap.ts:
 * bubblewrap sandboxes). Both serve a started qube's host side through a
 * {@link HostSide}.
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
  /** Its netvm's name, or null for none (a backend without networking ignores it). */
  readonly netvm?: string | null;
  /** It provides network to others (provides_network). */
  readonly providesNetwork?: boolean;
  /** Memory limit (maxmem, MiB; 0 or absent: the backend's default). */
  readonly maxmemMb?: number;
  /** CPU limit (vcpus). */
  readonly vcpus?: number;
  /**
   * For a DispVM: the template of its disposable template, whose root it
   * runs on (`template` is the disposable template, an AppVM).
   */
  readonly rootTemplate?: string | null;
  /** Its IPv4 address as the qube sees it (visible_ip: 10.137.0.<qid>, a DispVM 10.138.<dispid>), or null. */
  readonly ip?: string | null;
  /** Its default gateway as it sees it (visible_gateway: its netvm's IP), or null. */
  readonly gateway?: string | null;
}

/** Where a qube's vchan sockets are, as the host side sees them. */
export interface HostVchan {
  /** VCHAN_SOCKET_DIR of the host side. */
  readonly dir: string;
  /** `per-domain` for sandboxes (src/vchan/socket.ts); default flat. */
  readonly layout?: 'flat' | 'per-domain';
}

/** The host side of one qube's qrexec channel (its qrexec daemon). */
export interface HostSideHandle {
  /** Resolves when the qube's agent has connected; rejects on failure or timeout. */
  readonly connected: Promise<void>;
  /** Stop serving the qube. */
  stop(): Promise<void>;
}

/**
 * Registers a started qube's host side: by default a `qrexec-daemon` child
 * process; in the host process an in-process daemon (src/host), so qubesd,
 * the policy daemon and every qrexec daemon share one event loop.
 */
export type HostSide = (q: QubeLaunch, vchan: HostVchan) => HostSideHandle;

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
  /**
   * The host directories holding a qube's volumes, by volume name
   * (`private`, `root`), whose allocated blocks are the volumes' usage
   * (admin.vm.volume.Info); a volume left out has nothing on the host's disk.
   */
  volumeDirs?(name: string, klass: string): Readonly<Partial<Record<string, readonly string[]>>>;
}

/** A start failed (the reason is shown to the caller as QubesException). */
export class RuntimeError extends Error {
  override name = 'RuntimeError';
}
