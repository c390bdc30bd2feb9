/**
 * qvm-connect-tcp [LOCALPORT]:[QUBE]:PORT (the reference's
 * network/qvm-connect-tcp of qubes-core-agent-linux, which runs socat):
 * listens on localhost:LOCALPORT, and each connection becomes a
 * qubes.ConnectTCP+PORT call to QUBE (@default when empty: the policy
 * picks the target), the connection as its stdin and stdout. As the
 * reference, it prints what it binds and goes to the background, once it
 * listens; `--foreground` (ours) keeps it attached.
 */
import { spawn } from 'node:child_process';
import * as net from 'node:net';
import { callStatus, spawnCall } from './call.js';

export const CONNECT_TCP_USAGE = `Usage: qvm-connect-tcp [--foreground] [localport]:[vmname]:[port]
Bind localport to another VM port using the qubes.ConnectTCP RPC service.
`;

export interface TcpSpec {
  readonly localPort: number;
  readonly target: string;
  readonly port: number;
}

const validPort = (s: string): boolean => /^\d+$/.test(s) && Number(s) >= 1 && Number(s) <= 65535;

/** `[localport]:[vmname]:[port]`; a string is the error to print. */
export function parseTcpSpec(arg: string): TcpSpec | string {
  const [lp = '', vm = '', port = ''] = arg.split(':');
  if (!port) return 'Please provide PORT';
  const local = lp || port;
  if (!validPort(port) || !validPort(local)) return 'Invalid port provided';
  return { localPort: Number(local), target: vm || '@default', port: Number(port) };
}

/** Serves connections until the process ends; resolves once listening. */
export function serveTcp(spec: TcpSpec, host = '127.0.0.1'): Promise<net.Server> {
  // paused: not a byte read here, the descriptor goes to the launcher as it is
  const server = net.createServer({ allowHalfOpen: true, pauseOnConnect: true }, (sock) => {
    sock.on('error', () => undefined);
    // the connection itself is the call's stdin and stdout (the launcher hands it to the agent)
    const child = spawnCall(spec.target, `qubes.ConnectTCP+${spec.port}`, { stdio: [sock, sock, 'inherit'] });
    void callStatus(child);
    child.once('spawn', () => sock.destroy());
    child.once('error', () => sock.destroy());
  });
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(spec.localPort, host, () => resolve(server));
  });
}

export async function connectTcpMain(argv: readonly string[], self: string): Promise<number> {
  const args = [...argv];
  const fg = args[0] === '--foreground' || args[0] === '--serve';
  const serve = args[0] === '--serve';
  if (fg) args.shift();
  if (args[0] === '-h' || args[0] === '--help') {
    process.stdout.write(CONNECT_TCP_USAGE);
    return 0;
  }
  if (!serve && args[0]?.startsWith('-')) {
    process.stderr.write(`qvm-connect-tcp: unrecognized option '${args[0]}'\n${CONNECT_TCP_USAGE}`);
    return 2;
  }
  if (args.length !== 1) {
    process.stderr.write(CONNECT_TCP_USAGE);
    return 2;
  }
  const spec = parseTcpSpec(args[0] as string);
  if (typeof spec === 'string') {
    process.stdout.write(`${spec}\n`);
    if (spec === 'Invalid port provided') process.stderr.write(CONNECT_TCP_USAGE);
    return 1;
  }
  if (!serve) process.stdout.write(`Binding TCP '${spec.target}:${spec.port}' to 'localhost:${spec.localPort}'...\n`);
  if (fg) {
    try {
      await serveTcp(spec);
    } catch (e) {
      process.stderr.write(`qvm-connect-tcp: cannot listen on localhost:${spec.localPort}: ${(e as Error).message}\n`);
      return 1;
    }
    if (serve) {
      // the starting process reads this line and goes; later output has no reader
      process.stdout.write('listening\n');
      process.stdout.on('error', () => undefined);
      process.stderr.on('error', () => undefined);
    }
    return new Promise<number>(() => undefined);
  }
  // the background server says when it listens (or why not) on its stdout
  const child = spawn(process.execPath, [self, '--serve', args[0] as string], { detached: true, stdio: ['ignore', 'pipe', 'pipe'] });
  return new Promise((resolve) => {
    let err = '';
    child.stderr?.on('data', (c: Buffer) => (err += c.toString()));
    child.stdout?.once('data', () => {
      child.stdout?.destroy();
      child.stderr?.destroy();
      child.unref();
      resolve(0);
    });
    child.once('exit', () => {
      process.stderr.write(err);
      resolve(1);
    });
  });
}
