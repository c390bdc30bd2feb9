/**
 * qrexec-agent [--agent-socket=PATH] [--fork-server-socket=PATH] [--no-fork-server]
 * The qube side of qrexec; see src/agent/agent.ts.
 */
import { runAgentCli } from '../agent/index.js';

process.exit(await runAgentCli(process.argv.slice(2)));
