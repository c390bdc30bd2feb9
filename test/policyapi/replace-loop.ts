// Helper for the kill -9 test: replaces FILE of the policy directory DIR with versions A
// and B in turn, forever (through PolicyAdmin, as the host does), printing "ready" once.
import * as fs from 'node:fs';
import { PolicyAdmin } from '../../src/policyapi/admin.js';

const [dir, a, b] = process.argv.slice(2);
// the test runner runs every file of dist/test: without arguments, do nothing
if (dir !== undefined && a !== undefined && b !== undefined) loop(dir, a, b);

function loop(dir: string, a: string, b: string): never {
  const admin = new PolicyAdmin({ dir });
  const versions = [fs.readFileSync(a), fs.readFileSync(b)];
  fs.writeSync(1, 'ready\n'); // synchronously: the loop below never yields
  for (let i = 0; ; i++) {
    const r = admin.handle('policy.Replace', '50-big', Buffer.concat([Buffer.from('any\n'), versions[i % 2] as Buffer]), 'dom0');
    if (r.code !== 0) {
      process.stderr.write(r.stderr + '\n');
      process.exit(1);
    }
  }
}
