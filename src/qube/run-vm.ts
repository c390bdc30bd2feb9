/**
 * qvm-run-vm (the reference's qubes-rpc/qvm-run-vm and qrun-in-vm of
 * qubes-core-agent-linux): a command in another qube through qubes.VMShell,
 * stdin, stdout and stderr connected. The arguments are joined with spaces
 * and run by `bash -c` there, the line `exec bash -c 'CMD' || exit 127` being
 * sent first, as qrun-in-vm does, so that the target's qubes.VMShell (a
 * shell reading commands) needs nothing else. Unlike the reference, the
 * remote exit status is propagated.
 */
import { callStatus, spawnCall } from './call.js';

export const RUN_VM_USAGE = `Usage: qvm-run-vm [OPTIONS] vmname command arguments
Executes a command in another VM using the qubes.VMShell RPC service.  The
arguments are joined with spaces and passed to "bash -c".

Standard input, output, and error are connected to the command.  This tool
does not offer protection against the remote VM messing with your terminal if
standard output is your terminal.

You can use @dispvm or $dispvm instead of vmname to start a new DisposableVM.

Options:
    --help      Show this help
    --no-gui    Run the command without GUI
    --dispvm    Execute command in a DisposibleVM
`;

/** The first line qrun-in-vm writes: the command for the remote shell. */
export function shellLine(args: readonly string[]): string {
  return `exec bash -c '${args.join(' ').replace(/'/g, "'\\''")}' || exit 127\n`;
}

export async function runVmMain(argv: readonly string[]): Promise<number> {
  let nogui = false;
  let dispvm = false;
  const rest: string[] = [];
  let i = 0;
  // getopt -o htd --long help,no-gui,dispvm: options first, permuted like GNU getopt until `--`
  for (; i < argv.length; i++) {
    const a = argv[i] as string;
    if (a === '--') {
      rest.push(...argv.slice(i + 1));
      break;
    }
    if (a === '-h' || a === '--help') {
      process.stdout.write(RUN_VM_USAGE);
      return 0;
    }
    if (a === '-t' || a === '--no-gui') nogui = true;
    else if (a === '-d' || a === '--dispvm') dispvm = true;
    else if (/^-[htd]+$/.test(a)) {
      if (a.includes('h')) {
        process.stdout.write(RUN_VM_USAGE);
        return 0;
      }
      if (a.includes('t')) nogui = true;
      if (a.includes('d')) dispvm = true;
    } else if (a.startsWith('-') && rest.length === 0) {
      process.stderr.write(`qvm-run-vm: unrecognized option '${a}'\n${RUN_VM_USAGE}`);
      return 2;
    } else rest.push(a);
  }
  if ((!dispvm && rest.length < 2) || (dispvm && rest.length === 0)) {
    process.stderr.write(RUN_VM_USAGE);
    return 2;
  }
  const vm = dispvm ? '@dispvm' : (rest.shift() as string);
  let service = 'qubes.VMShell';
  if (/^[@$]dispvm(:|$)/.test(vm) && !nogui) service += '+WaitForSession';
  // our own descriptors go to the agent: nothing is relayed through this process
  const code = await callStatus(spawnCall(vm.replace(/^\$/, '@'), service, { stdio: 'inherit', prefix: shellLine(rest) }));
  return code;
}
