/**
 * policy.Ask and policy.Notify for qubes whose GUI domain is dom0, answered
 * at the host's terminal (until the GUI domain exists): the policy agent's
 * request handling and its terminal front end, called in-process. Other
 * GUI domains are reached as the policy daemon reaches them.
 */
import { PolicyAgent, type AgentFrontend } from '../policyd/agent.js';
import type { GuiService, GuiServiceCaller, Logger } from '../policyd/index.js';

export class TerminalAsk implements GuiServiceCaller {
  private readonly agent: PolicyAgent;

  constructor(
    frontend: AgentFrontend,
    private readonly others: GuiServiceCaller,
    log: Logger,
  ) {
    this.agent = new PolicyAgent(frontend, log);
  }

  call(guivm: string, service: GuiService, params: unknown, timeoutMs: number): Promise<string> {
    if (guivm !== 'dom0') return this.others.call(guivm, service, params, timeoutMs);
    return this.agent.handle(Buffer.concat([Buffer.from(`${service} dom0\0`, 'latin1'), Buffer.from(JSON.stringify(params), 'utf8')]));
  }
}
