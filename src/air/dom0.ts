/**
 * Qubes Air in dom0 (the host process): the two dom0 services a relay calls,
 * and the check in front of the policy that makes them count.
 *
 * Source host: when the policy allows a call toward a RemoteVM (the
 * transport call `qubesair.SSHProxy+REMOTE+SERVICE+ARG` into its relay),
 * dom0 remembers that it did. The relay then asks `qubesair.Sign` for the
 * envelope of that call; dom0 signs only a call it allowed, once, for the
 * relay it allowed it into.
 *
 * Target host: the relay passes the envelope to `qubesair.Verify` before it
 * makes the call. dom0 checks the signature with the peer's pinned key, that
 * the relay is the one paired with that peer, that the claimed source is the
 * RemoteVM standing for the signed source, the target, the service, the time
 * and that the nonce is new; then it holds a one-use ticket for that call.
 * A relayed call whose requested source is a Qubes Air RemoteVM (it has the
 * peer feature) is refused without its ticket, before the policy is asked.
 *
 * Each side writes one audit record per relayed call naming the peer host
 * and its key's fingerprint (beside the policy daemon's own decision).
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { KeyObject } from 'node:crypto';
import type { AuditRecord } from '../audit/audit-log.js';
import type { InProcessReply, InProcessServices } from '../daemon/dom0.js';
import type { PolicyOutcome, PolicyQuery } from '../daemon/policy.js';
import { TRANSPORT_RPC } from './config.js';
import { EnvelopeError, ReplayGuard, keyFingerprint, loadSigningKey, publicKeyFromRaw, signCall, verifyCall } from './sign.js';

/** What dom0 needs to know of a qube (from its registry). */
export interface QubeFacts {
  readonly klass: string;
  readonly relayvm: string | null;
  readonly remoteName: string | null;
  /** The Qubes Air peer feature. */
  readonly peer: string | undefined;
}

export interface AirDom0Options {
  readonly dataDir: string;
  readonly lookup: (name: string) => QubeFacts | undefined;
  readonly audit?: (r: AuditRecord) => void;
  readonly log?: (m: string) => void;
  readonly now?: () => number;
}

/** How long an allowed relayed call may wait for its signature, and a verified one for its call. */
const GRANT_TTL_MS = 30_000;
const TICKET_TTL_MS = 15_000;
const MAX_PENDING = 4096;

/** One-use permissions with an expiry, by key. */
class OneUse {
  private readonly m = new Map<string, number[]>();
  private size = 0;
  add(key: string, until: number): boolean {
    if (this.size >= MAX_PENDING) this.prune(until - 1e12);
    if (this.size >= MAX_PENDING) return false;
    const l = this.m.get(key) ?? [];
    l.push(until);
    this.m.set(key, l);
    this.size++;
    return true;
  }
  take(key: string, now: number): boolean {
    const l = this.m.get(key);
    if (!l) return false;
    while (l.length && (l[0] as number) < now) {
      l.shift();
      this.size--;
    }
    const ok = l.length > 0;
    if (ok) {
      l.shift();
      this.size--;
    }
    if (!l.length) this.m.delete(key);
    return ok;
  }
  private prune(now: number): void {
    for (const [k, l] of this.m) {
      const keep = l.filter((t) => t >= now);
      this.size -= l.length - keep.length;
      if (keep.length) this.m.set(k, keep);
      else this.m.delete(k);
    }
  }
}

interface PeerKey {
  readonly relay: string;
  /** Its signing key, then its next one while it rotates. */
  readonly keys: readonly KeyObject[];
  readonly fingerprints: readonly string[];
}

const ok = (text: string): InProcessReply => ({ code: 0, stdout: Buffer.from(text), stderr: '' });
const refuse = (why: string): InProcessReply => ({ code: 1, stdout: Buffer.alloc(0), stderr: `${why}\n` });

export class AirDom0 {
  private readonly grants = new OneUse();
  private readonly tickets = new OneUse();
  private readonly guard = new ReplayGuard();
  private readonly airDir: string;
  readonly services: InProcessServices;

  constructor(private readonly o: AirDom0Options) {
    this.airDir = path.join(o.dataDir, 'air');
    this.services = new Map([
      ['qubesair.Sign', (c) => this.sign(c.source, c.payload)],
      ['qubesair.Verify', (c) => this.verify(c.source, c.payload)],
    ]);
  }

  private now(): number {
    return this.o.now?.() ?? Date.now();
  }

  /** This host's name, or undefined when Qubes Air is not set up. */
  private hostName(): string | undefined {
    try {
      const j = JSON.parse(fs.readFileSync(path.join(this.airDir, 'host.json'), 'utf8')) as { name?: unknown };
      return typeof j.name === 'string' ? j.name : undefined;
    } catch {
      return undefined;
    }
  }

  private peerKey(name: string): PeerKey | undefined {
    if (!/^[a-z][a-z0-9-]{0,30}$/.test(name)) return undefined;
    try {
      const j = JSON.parse(fs.readFileSync(path.join(this.airDir, 'peers', `${name}.json`), 'utf8')) as { relay?: unknown; signingKey?: unknown; nextSigningKey?: unknown };
      if (typeof j.relay !== 'string' || typeof j.signingKey !== 'string') return undefined;
      // during the peer's key rotation, its next key too
      const raw = typeof j.nextSigningKey === 'string' ? [j.signingKey, j.nextSigningKey] : [j.signingKey];
      return { relay: j.relay, keys: raw.map(publicKeyFromRaw), fingerprints: raw.map(keyFingerprint) };
    } catch {
      return undefined;
    }
  }

  private record(r: Omit<AuditRecord, 'timeMs' | 'client' | 'durationUs' | 'rule' | 'askAnswer'>): void {
    this.o.audit?.({ ...r, timeMs: this.now(), client: 'qubes-air', rule: null, askAnswer: null, durationUs: 0 });
    if (r.result === 'deny') this.o.log?.(`qubes-air: ${r.reason ?? 'refused'}`);
  }

  /** The policy, with the ticket check in front and the grants behind it. */
  wrapPolicy(policy: (q: PolicyQuery) => Promise<PolicyOutcome>): (q: PolicyQuery) => Promise<PolicyOutcome> {
    return async (q) => {
      const rs = q.requestedSource;
      if (rs) {
        const f = this.o.lookup(rs);
        if (f?.klass === 'RemoteVM' && f.peer) {
          if (!this.tickets.take(ticketKey(q.source, rs, q.intendedTarget, q.serviceAndArg), this.now())) {
            const [service, argument] = splitService(q.serviceAndArg);
            this.record({
              mode: 'relayed',
              source: rs,
              requestedSource: rs,
              intendedTarget: q.intendedTarget,
              target: null,
              service,
              argument,
              action: 'deny',
              result: 'deny',
              reason: `qubes-air: relay ${q.source} claims source ${rs} (host ${f.peer}) without a verified envelope`,
            });
            return { result: 'deny' };
          }
        }
      }
      const d = await policy(q);
      if (d.result === 'allow' && !rs && d.service?.startsWith(`${TRANSPORT_RPC}+`)) {
        const rest = d.service.slice(TRANSPORT_RPC.length + 1);
        const plus = rest.indexOf('+');
        if (plus > 0) this.grants.add(grantKey(d.target, q.source, rest.slice(0, plus), rest.slice(plus + 1)), this.now() + GRANT_TTL_MS);
      }
      return d;
    };
  }

  /** qubesair.Sign, called by a relay: stdin `SOURCE REMOTEVM SERVICE+ARG`. */
  private sign(relay: string, payload: Buffer): InProcessReply {
    const words = payload.toString('utf8').trim().split(' ');
    if (words.length !== 3) return refuse('qubesair.Sign: expected SOURCE REMOTEVM SERVICE+ARG');
    const [source, remote, service] = words as [string, string, string];
    const [svc, arg] = splitService(service);
    const base = { mode: 'sign', source, requestedSource: null, intendedTarget: remote, target: relay, service: svc, argument: arg } as const;
    const me = this.hostName();
    const f = this.o.lookup(remote);
    if (!me || f?.klass !== 'RemoteVM' || !f.peer || f.relayvm !== relay) {
      this.record({ ...base, action: 'deny', result: 'deny', reason: `qubes-air: ${relay} asked to sign a call to ${remote}, which is no Qubes Air RemoteVM it relays` });
      return refuse('qubesair.Sign: not a Qubes Air RemoteVM of this relay');
    }
    if (!this.grants.take(grantKey(relay, source, remote, service), this.now())) {
      this.record({ ...base, action: 'deny', result: 'deny', reason: `qubes-air: ${relay} asked to sign ${source} -> ${remote} ${service}, a call the policy did not just allow into it` });
      return refuse('qubesair.Sign: no such call was allowed');
    }
    const peer = this.peerKey(f.peer);
    const envelope = signCall(loadSigningKey(this.airDir), { from: me, to: f.peer, source, target: f.remoteName || remote, service }, this.now());
    this.record({ ...base, action: 'allow', result: 'allow', reason: `qubes-air: signed for host ${f.peer}${peer ? ` (${peer.fingerprints[0] ?? '?'})` : ''} via ${relay}` });
    return ok(envelope + '\n');
  }

  /** qubesair.Verify, called by a relay: stdin `PEER LOCAL TARGET SERVICE+ARG ENVELOPE`. */
  private verify(relay: string, payload: Buffer): InProcessReply {
    const words = payload.toString('utf8').trim().split(' ');
    if (words.length !== 5) return refuse('qubesair.Verify: expected PEER LOCAL TARGET SERVICE+ARG ENVELOPE');
    const [peerName, local, target, service, envelope] = words as [string, string, string, string, string];
    const [svc, arg] = splitService(service);
    const base = { mode: 'verify', source: local, requestedSource: local, intendedTarget: target, target: null, service: svc, argument: arg } as const;
    const deny = (why: string): InProcessReply => {
      this.record({ ...base, action: 'deny', result: 'deny', reason: `qubes-air: refused a call from host ${peerName} via ${relay}: ${why}` });
      return refuse(`qubesair.Verify: ${why}`);
    };
    const me = this.hostName();
    if (!me) return deny('Qubes Air is not set up on this host');
    const peer = this.peerKey(peerName);
    if (!peer) return deny(`unknown peer host '${peerName}'`);
    if (peer.relay !== relay) return deny(`host ${peerName} is paired with relay ${peer.relay}, not ${relay}`);
    const f = this.o.lookup(local);
    if (f?.klass !== 'RemoteVM' || f.peer !== peerName || f.relayvm !== relay) return deny(`${local} is no RemoteVM of host ${peerName} relayed by ${relay}`);
    let by: string;
    try {
      const c = verifyCall(envelope, { from: peerName, keys: peer.keys, to: me, source: f.remoteName || local, target, service }, this.guard, this.now());
      by = peer.fingerprints[c.keyIndex] ?? '?';
    } catch (e) {
      if (e instanceof EnvelopeError) return deny(e.message);
      throw e;
    }
    if (!this.tickets.add(ticketKey(relay, local, target, service), this.now() + TICKET_TTL_MS)) return deny('too many calls waiting');
    this.record({ ...base, action: 'allow', result: 'allow', reason: `qubes-air: from host ${peerName} (${by}) via ${relay}: signature verified` });
    return ok('ok\n');
  }
}

const grantKey = (relay: string, source: string, remote: string, service: string): string => `${relay}\0${source}\0${remote}\0${service}`;
const ticketKey = (relay: string, local: string, target: string, service: string): string => `${relay}\0${local}\0${target}\0${service}`;

function splitService(s: string): [string, string] {
  const i = s.indexOf('+');
  return i < 0 ? [s, ''] : [s.slice(0, i), s.slice(i)];
}
