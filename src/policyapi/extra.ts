/**
 * Our services beyond the reference (named so in docs/POLICY-API.md):
 * - `policy.Eval+SERVICE[+ARG]`, payload `SOURCE TARGET`: how the policy in
 *   force decides that call, as `qrexec-policy-explain --json` prints it
 *   (decision, rule file:line and text, near misses). Same rights as
 *   policy.Get (admin-policy-ro).
 * - `policy.Diff+NAME` / `policy.include.Diff+NAME`, payload as Replace's
 *   (`TOKEN\nCONTENT`) or Remove's (`TOKEN`): a dry run of that change, every
 *   check made, nothing written; the reply is the impact diff as JSON.
 */
import * as path from 'node:path';
import { diskSource } from '../policy-files/disk.js';
import { explain, explanationToJson, type Policy, type SystemInfo } from '../policy/index.js';
import { PolicyAdminProtocolException } from './errors.js';
import type { ExtraService, PolicyAdmin } from './admin.js';
import { impactDiff, type ImpactDiff } from './diff.js';
import { parseToken, splitReplacePayload, type Kind } from './names.js';

export type SystemInfoGetter = () => SystemInfo | Promise<SystemInfo>;

const QUBE = /^(?:uuid:)?[A-Za-z0-9_.-]{1,63}$|^@[A-Za-z0-9_.:-]{1,80}$/;

export function evalService(admin: PolicyAdmin, info: SystemInfoGetter): ExtraService {
  return {
    noArg: false,
    noPayload: false,
    async handle(arg, payload) {
      if (arg === '' || arg.startsWith('+')) throw new PolicyAdminProtocolException('policy.Eval needs SERVICE[+ARG] as its argument');
      const words = payload.toString('latin1').trim().split(/\s+/);
      if (words.length !== 2 || !words.every((w) => QUBE.test(w))) throw new PolicyAdminProtocolException('Payload must be "SOURCE TARGET"');
      const [source, target] = words as [string, string];
      const x = explain(admin.currentPolicy(), { source, intendedTarget: target, serviceAndArg: arg }, await info());
      return Buffer.from(JSON.stringify(explanationToJson(x)) + '\n', 'utf8');
    },
  };
}

/** The impact of a proposed change (checked as Replace/Remove check it). */
export async function diffChange(admin: PolicyAdmin, kind: Kind, name: string, payload: Buffer, caller: string, info: SystemInfo | Promise<SystemInfo>): Promise<ImpactDiff> {
  const remove = !payload.includes(0x0a);
  const { token, content } = remove ? { token: parseToken(payload.toString('latin1')), content: null } : splitReplacePayload(payload);
  const old: Policy = admin.currentPolicy();
  const p = admin.propose(kind, name, token, content === null ? null : Buffer.from(content), caller);
  // the daemon's rules may name the file by an unresolved path
  const base = path.basename(p.file);
  const touched = [...old.rules.filter((r) => r.file === p.file || (path.basename(r.file) === base && diskSource.resolve(r.file) === p.file)), ...p.rulesOfFile];
  return impactDiff(old, p.policy, touched, await info);
}

export function diffService(admin: PolicyAdmin, kind: Kind, info: SystemInfoGetter): ExtraService {
  return {
    noArg: false,
    noPayload: false,
    async handle(arg, payload, caller) {
      const d = await diffChange(admin, kind, arg, payload, caller, info());
      return Buffer.from(JSON.stringify(d) + '\n', 'utf8');
    },
  };
}
