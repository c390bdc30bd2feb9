import * as net from 'node:net';
import { spawn } from 'node:child_process';

/** Reference default path of the policy daemon socket. */
export const DEFAULT_POLICY_SOCKET = '/run/qubes/policy.sock';
/** Reference default policy program. */
export const DEFAULT_POLICY_PROGRAM = '/usr/bin/qrexec-policy-exec';
/** Largest policy reply accepted (reference: qubes_read_all_to_malloc(…, 4096)). */
export const MAX_POLICY_RESPONSE = 4096;

/** What the daemon asks. */
export interface PolicyQuery {
  /** The qube owning the control channel — never a name the qube sent. */
  readonly source: string;
  /** MSG_TRIGGER_SERVICE4's requested source, when non-empty (passed on, as the reference does). */
  readonly requestedSource?: string;
  readonly intendedTarget: string;
  readonly serviceAndArg: string;
}

/** An allow decision with everything needed to connect the call. */
export interface PolicyAllow {
  readonly result: 'allow';
  readonly user: string;
  readonly target: string;
  readonly targetUuid?: string;
  readonly requestedTarget: string;
  readonly autostart: boolean;
  /** Replacement service (RemoteVM), if the policy gave one. */
  readonly service?: string;
  /** Replacement source (RemoteVM), if the policy gave one. */
  readonly policySource?: string;
}
export type PolicyDecision = PolicyAllow | { readonly result: 'deny' };
/** A decision, or why none could be had (which refuses the call). */
export type PolicyOutcome = PolicyDecision | { readonly result: 'error'; readonly reason: string };

/** The request text the reference daemon sends to the policy daemon. */
export function formatPolicyRequest(q: PolicyQuery): string {
  return (
    `source=${q.source}` +
    (q.requestedSource ? `\nrequested_source=${q.requestedSource}` : '') +
    `\nintended_target=${q.intendedTarget}\nservice_and_arg=${q.serviceAndArg}\n\n`
  );
}

/**
 * Parses a policy reply like the reference's parse_policy_response: one
 * trailing newline stripped, `key=value` lines, duplicates and NUL bytes
 * rejected, unknown keys logged and ignored; allow needs user, target,
 * requested_target and autostart; deny must have none of them.
 */
export function parsePolicyResponse(raw: Buffer, log: (m: string) => void = () => undefined): PolicyOutcome {
  const bad = (reason: string): PolicyOutcome => ({ result: 'error', reason });
  if (raw.length < 1) return bad("didn't return any data");
  if (raw.includes(0)) return bad('wrote a NUL byte');
  let text = raw.toString('utf8');
  if (text.endsWith('\n')) text = text.slice(0, -1);
  const seen = new Map<string, string>();
  const known = ['result', 'user', 'target', 'target_uuid', 'autostart', 'requested_target', 'service', 'policy_source'];
  for (const line of text.split('\n')) {
    const eq = line.indexOf('=');
    if (eq < 0) return bad('sent invalid response');
    const key = line.slice(0, eq);
    const value = line.slice(eq + 1);
    if (!known.includes(key)) {
      log(`Unknown response key ${key}, ignoring`);
      continue;
    }
    if (seen.has(key)) return bad('sent invalid response');
    if (key === 'result' && value !== 'allow' && value !== 'deny') return bad('sent invalid response');
    if (key === 'autostart' && value !== 'True' && value !== 'False') return bad('sent invalid response');
    seen.set(key, value);
  }
  const result = seen.get('result');
  const user = seen.get('user');
  const target = seen.get('target');
  const requestedTarget = seen.get('requested_target');
  const autostart = seen.get('autostart');
  if (result === 'allow') {
    if (user === undefined || target === undefined || requestedTarget === undefined || autostart === undefined) {
      return bad('sent invalid response');
    }
    const targetUuid = seen.get('target_uuid');
    const service = seen.get('service');
    const policySource = seen.get('policy_source');
    return {
      result: 'allow',
      user,
      target,
      requestedTarget,
      autostart: autostart === 'True',
      ...(targetUuid !== undefined ? { targetUuid } : {}),
      ...(service !== undefined ? { service } : {}),
      ...(policySource !== undefined ? { policySource } : {}),
    };
  }
  if (result === 'deny') {
    if (user !== undefined || target !== undefined || requestedTarget !== undefined || autostart !== undefined) {
      return bad('sent invalid response');
    }
    return { result: 'deny' };
  }
  return bad('sent invalid response');
}

/** Where to ask. */
export interface PolicyClientOptions {
  /** Policy daemon socket (default /run/qubes/policy.sock). */
  readonly socketPath: string;
  /** Fallback program when the socket cannot be reached or replies nonsense. */
  readonly program: string;
  readonly log?: (m: string) => void;
}

/**
 * Asks for a decision as the reference daemon does: first the policy daemon
 * socket; when it cannot be connected or its reply is malformed, the policy
 * program `PROGRAM -- SOURCE TARGET SERVICE+ARG` (argv[0] qrexec-policy-exec),
 * whose stdout must be a reply in the same format and whose exit status must
 * be 0. Every failure is an `error` outcome (the call is refused).
 */
export async function askPolicy(q: PolicyQuery, o: PolicyClientOptions): Promise<PolicyOutcome> {
  const log = o.log ?? (() => undefined);
  const fromSocket = await askSocket(q, o.socketPath).catch((e: Error) => {
    log(`connection to socket failed: ${e.message}`);
    return undefined;
  });
  if (fromSocket !== undefined) {
    const r = parsePolicyResponse(fromSocket, log);
    if (r.result !== 'error') return r;
    log(`qrexec-policy-daemon ${r.reason}`);
  }
  return askProgram(q, o.program, log);
}

function askSocket(q: PolicyQuery, path: string): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const s = net.createConnection({ path });
    const chunks: Buffer[] = [];
    let size = 0;
    let connected = false;
    s.on('connect', () => {
      connected = true;
      s.end(formatPolicyRequest(q));
    });
    s.on('data', (d: Buffer) => {
      size += d.length;
      if (size > MAX_POLICY_RESPONSE) {
        s.destroy();
        resolve(Buffer.from('\0')); // oversized: treated as malformed
        return;
      }
      chunks.push(d);
    });
    s.on('end', () => resolve(Buffer.concat(chunks)));
    s.on('error', (e) => (connected ? resolve(Buffer.concat(chunks)) : reject(e)));
  });
}

function askProgram(q: PolicyQuery, program: string, log: (m: string) => void): Promise<PolicyOutcome> {
  return new Promise((resolve) => {
    let child;
    try {
      child = spawn(program, ['--', q.source, q.intendedTarget, q.serviceAndArg], {
        argv0: 'qrexec-policy-exec',
        stdio: ['ignore', 'pipe', 'inherit'],
      });
    } catch (e) {
      resolve({ result: 'error', reason: `cannot run ${program}: ${(e as Error).message}` });
      return;
    }
    const chunks: Buffer[] = [];
    let size = 0;
    child.stdout.on('data', (d: Buffer) => {
      size += d.length;
      if (size <= MAX_POLICY_RESPONSE) chunks.push(d);
    });
    child.on('error', (e) => resolve({ result: 'error', reason: `cannot run ${program}: ${e.message}` }));
    child.on('close', (code, signal) => {
      if (code !== 0) {
        resolve({ result: 'error', reason: `qrexec-policy-exec failed: ${code ?? signal}` });
        return;
      }
      if (size > MAX_POLICY_RESPONSE) {
        resolve({ result: 'error', reason: 'qrexec-policy-exec reply too long' });
        return;
      }
      const r = parsePolicyResponse(Buffer.concat(chunks), log);
      resolve(r.result === 'error' ? { result: 'error', reason: `qrexec-policy-exec ${r.reason}` } : r);
    });
  });
}
