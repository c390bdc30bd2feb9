/** The runtime backend a command line names. */
import { UsageError } from '../common/args.js';
import type { Runtime } from './types.js';

export const RUNTIME_HELP = '"none" (qubes cannot be started; the default for now)';

export interface RuntimeChoiceOptions {
  readonly runDir: string;
}

export function runtimeFromOptions(name: string, _opts: RuntimeChoiceOptions): Runtime | null {
  if (name === 'none') return null;
  throw new UsageError(`argument --runtime: invalid choice: '${name}' (choose from 'none')`);
}
