/**
 * policy.Ask and policy.Notify for qubes whose GUI domain is dom0, answered
 * at the host's terminal: the policy agent's request handling and its
 * terminal front end, called in-process. Other GUI domains (sys-gui) are
 * reached through `others`, or answered here too when it is null.
 */
import { PolicyAgent, type AgentFrontend } from '../policyd/agent.js';
import type { GuiService, GuiServiceCaller, Logger } from '../policyd/index.js';

export class TerminalAsk implements GuiServiceCaller {
  private readonly agent: PolicyAgent;

  constructor(
    frontend: AgentFrontend,
    /** Where other GUI domains' questions go; null: answered here too (`--once`). */
    private readonly others: GuiServiceCaller | null,
    log: Logger,
  ) {
    this.agent = new PolicyAgent(frontend, log);
  }

  call(guivm: string, service: GuiService, params: unknown, timeoutMs: number): Promise<string> {
    if (guivm !== 'dom0' && this.others) return this.others.call(guivm, service, params, timeoutMs);
    return this.agent.handle(Buffer.concat([Buffer.from(`${service} dom0\0`, 'latin1'), Buffer.from(JSON.stringify(params), 'utf8')]));
  }
}
