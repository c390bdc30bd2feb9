/**
 * Qubes Air relays in the host process: each time a relay qube (one with
 * the feature `service.qubes-air-relay`, set by `qvm-air relay`) starts,
 * the host starts its sshd in it, as a qvm-service unit would at the
 * qube's boot on Qubes. `qvm-air start RELAY` does the same by hand.
 */
import { PassThrough } from 'node:stream';
import { RELAY_FEATURE } from '../air/config.js';
import { startRelayScript } from '../air/setup.js';
import { dom0Exec } from '../guiproxy/proxy.js';
import type { Logger } from '../policyd/index.js';
import type { RunningSystem } from './system.js';

/** Starts the sshd of `relay` (running); resolves with the script's exit status and its stderr. */
async function startRelaySshd(sys: RunningSystem, relay: string): Promise<{ status: number; stderr: string }> {
  const source = new PassThrough();
  source.end(startRelayScript());
  let stderr = '';
  const sink = new PassThrough();
  sink.resume();
  const err = new PassThrough();
  err.on('data', (d: Buffer) => (stderr += d.toString()));
  const status = await dom0Exec(
    {
      socketDir: sys.info.qrexecSocketDir,
      vchan: { dir: sys.info.vchanDir, ownDomain: 0, ...(sys.info.vchanLayout === 'per-domain' ? { layout: 'per-domain' as const } : {}) },
    },
    relay,
    'user:QUBESRPC qubes.VMShell dom0',
    { sink, source, single: false, errSink: err },
  );
  return { status, stderr: stderr.trim() };
}

/** Watches the registry for relay qubes starting; returns the function that stops watching. */
export function watchRelays(sys: RunningSystem, log: Logger): () => void {
  return sys.qubesd.registry.on((q, event) => {
    if (event !== 'domain-start' || q === null || q.features.get(RELAY_FEATURE) !== '1') return;
    const name = q.name;
    startRelaySshd(sys, name).then(
      (r) => {
        if (r.status === 0) log.info(`Qubes Air: the sshd of relay ${name} started`);
        else log.error(`Qubes Air: the sshd of relay ${name} did not start (exit status ${r.status}${r.stderr ? `: ${r.stderr}` : ''})`);
      },
      (e: Error) => log.error(`Qubes Air: the sshd of relay ${name} did not start: ${e.message}`),
    );
  });
}
