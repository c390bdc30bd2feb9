/** A small policy, system info and a fake policy agent for daemon tests. */
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as path from 'node:path';

const dom = (over: Record<string, unknown>): Record<string, unknown> => ({
  tags: [],
  type: 'AppVM',
  template_for_dispvms: false,
  default_dispvm: 'default-dvm',
  icon: 'appvm-red',
  label: 'red',
  guivm: 'dom0',
  relayvm: null,
  transport_rpc: null,
  internal: null,
  power_state: 'Running',
  ...over,
});

export function systemInfo(extra: Record<string, unknown> = {}): unknown {
  return {
    domains: {
      dom0: dom({ type: 'AdminVM', guivm: null, icon: 'adminvm-black', uuid: '00000000-0000-0000-0000-000000000000' }),
      work: dom({ uuid: '11111111-1111-1111-1111-111111111111', tags: ['guivm-sys-gui'] }),
      vault: dom({ uuid: '22222222-2222-2222-2222-222222222222', guivm: null, tags: ['guivm-sys-gui'] }),
      personal: dom({ uuid: '33333333-3333-3333-3333-333333333333' }),
      'default-dvm': dom({ uuid: '44444444-4444-4444-4444-444444444444', template_for_dispvms: true, power_state: 'Halted' }),
      'sys-gui': dom({ uuid: '55555555-5555-5555-5555-555555555555', guivm: null }),
      ...extra,
    },
  };
}

export const POLICY = `test.Allow * @anyvm @anyvm allow
test.Deny * @anyvm @anyvm deny
test.DenyQuiet * @anyvm @anyvm deny notify=no
test.AllowNotify * @anyvm @anyvm allow notify=yes
test.Ask * @anyvm @anyvm ask default_target=vault
test.Reload * @anyvm @anyvm deny
test.Allow * @anyvm @adminvm allow
* * @anyvm @anyvm deny
`;

/** Write policy.d/50-test.policy and system-info.json under dir. */
export function writeFixture(dir: string): { policyDir: string; policyFile: string; infoFile: string } {
  const policyDir = path.join(dir, 'policy.d');
  fs.mkdirSync(path.join(policyDir, 'include'), { recursive: true });
  const policyFile = path.join(policyDir, '50-test.policy');
  fs.writeFileSync(policyFile, POLICY);
  const infoFile = path.join(dir, 'system-info.json');
  fs.writeFileSync(infoFile, JSON.stringify(systemInfo()));
  return { policyDir, policyFile, infoFile };
}

export interface AgentCall {
  header: string;
  service: string;
  params: Record<string, unknown>;
}

/** A fake qrexec-policy-agent: records calls, answers with `answer` (after `delayMs`). */
export class FakeAgent {
  readonly calls: AgentCall[] = [];
  answer: (c: AgentCall) => string = () => 'deny';
  delayMs = 0;
  private readonly server: net.Server;

  constructor(readonly socketPath: string) {
    this.server = net.createServer({ allowHalfOpen: true }, (s) => {
      const chunks: Buffer[] = [];
      s.on('data', (c: Buffer) => chunks.push(c));
      s.on('error', () => {});
      s.on('end', () => {
        const data = Buffer.concat(chunks).toString('latin1');
        const nul = data.indexOf('\0');
        const header = data.slice(0, nul);
        const call: AgentCall = {
          header,
          service: header.split(' ')[0] ?? '',
          params: JSON.parse(data.slice(nul + 1)) as Record<string, unknown>,
        };
        this.calls.push(call);
        setTimeout(() => {
          if (!s.destroyed) s.end(this.answer(call));
        }, this.delayMs);
      });
    });
  }

  listen(): Promise<void> {
    return new Promise((resolve) => this.server.listen(this.socketPath, () => resolve()));
  }

  async waitForCalls(n: number, timeoutMs = 10_000): Promise<void> {
    const t0 = Date.now();
    while (this.calls.length < n) {
      if (Date.now() - t0 > timeoutMs) throw new Error(`only ${this.calls.length} agent calls`);
      await new Promise((r) => setTimeout(r, 10));
    }
  }

  close(): Promise<void> {
    return new Promise((resolve) => this.server.close(() => resolve()));
  }
}

export function req(source: string, target: string, svc: string, extra = ''): string {
  return `source=${source}\nintended_target=${target}\nservice_and_arg=${svc}\n${extra}\n`;
}
