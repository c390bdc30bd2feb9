// A qube-side caller written from the reference's qrexec-client-vm protocol:
// send MSG_TRIGGER_SERVICE4 to the agent socket, read exec_params (or EOF = refused),
// then serve the data vchan as its server and run the caller end.
import * as net from 'node:net';
import { PassThrough } from 'node:stream';
import { startPump, vchanListen } from '../../src/vchan/index.js';

const pad = (s: string, n: number): Buffer => {
  const b = Buffer.alloc(n);
  b.write(s, 'latin1');
  return b;
};

export interface CallResult {
  code: number;
  stdout: Buffer;
  stderr: string;
  refused: boolean;
}

export async function qubeCall(agentSocket: string, vchanDir: string, ownDomain: number, target: string, service: string, input: Buffer | string = ''): Promise<CallResult> {
  const s = net.createConnection(agentSocket);
  await new Promise<void>((r, j) => {
    s.once('connect', () => r());
    s.once('error', j);
  });
  const body = Buffer.concat([pad('', 64), pad(target, 64), pad('', 32), Buffer.from(`${service}\0`, 'latin1')]);
  const h = Buffer.alloc(8);
  h.writeUInt32LE(0x213, 0);
  h.writeUInt32LE(body.length, 4);
  s.write(Buffer.concat([h, body]));
  const params = await new Promise<Buffer | null>((resolve) => {
    let got = Buffer.alloc(0);
    s.on('data', (d: Buffer) => {
      got = Buffer.concat([got, d]);
      if (got.length >= 8) resolve(got.subarray(0, 8));
    });
    s.on('close', () => resolve(null));
    s.on('error', () => resolve(null));
  });
  if (!params) return { code: 126, stdout: Buffer.alloc(0), stderr: '', refused: true };
  const domain = params.readUInt32LE(0);
  const port = params.readUInt32LE(4);
  const l = await vchanListen({ dir: vchanDir, ownDomain }, domain, port);
  const ch = await l.accepted;
  const inp = new PassThrough();
  const out = new PassThrough();
  const err = new PassThrough();
  const outChunks: Buffer[] = [];
  let errText = '';
  out.on('data', (d: Buffer) => outChunks.push(d));
  err.on('data', (d: Buffer) => (errText += d.toString()));
  inp.end(input);
  const code = await startPump({ channel: ch, role: 'client', source: inp, sink: out, errSink: err, single: false }).done;
  s.end(); // the agent then sends MSG_CONNECTION_TERMINATED
  return { code, stdout: Buffer.concat(outChunks), stderr: errText, refused: false };
}
