/** What the server sends (mirrors src/gui/prompts.ts; the page imports nothing of the server). */
export type Label = 'red' | 'orange' | 'yellow' | 'green' | 'gray' | 'blue' | 'purple' | 'black';

export interface Ask {
  readonly id: string;
  readonly source: string;
  readonly sourceLabel: Label | null;
  readonly service: string;
  readonly argument: string;
  readonly targets: readonly { readonly name: string; readonly label: Label | null }[];
  readonly defaultTarget: string | null;
  readonly created: number;
  readonly deadline: number;
}

export interface AsksEvent {
  readonly now: number;
  readonly asks: readonly Ask[];
}

export interface Notice {
  readonly id: number;
  readonly time: number;
  readonly resolution: 'allow' | 'deny' | 'fail';
  readonly service: string;
  readonly argument: string;
  readonly source: string;
  readonly target: string;
}

export function rpcName(service: string, argument: string): string {
  if (argument === '' || argument === '+') return service;
  return argument.startsWith('+') ? service + argument : `${service}+${argument}`;
}

export function noticeText(n: Notice): string {
  const what = n.resolution === 'allow' ? 'Allowed' : n.resolution === 'deny' ? 'Denied' : 'Failed';
  return `${what}: ${rpcName(n.service, n.argument)} from ${n.source} to ${n.target}`;
}

export interface QubeRow {
  readonly name: string;
  readonly klass: string;
  readonly state: string;
  readonly label: string;
  readonly template: string;
  readonly netvm: string;
  readonly providesNetwork: boolean;
  readonly diskBytes: number | null;
  readonly dispvmTemplate: boolean;
}

export interface QubesEvent {
  readonly loaded: boolean;
  readonly error: string | null;
  readonly rows: readonly QubeRow[];
}

export interface QubeDetails {
  readonly name: string;
  readonly properties: Readonly<Record<string, { readonly value: string; readonly isDefault: boolean; readonly type: string }>>;
  readonly tags: readonly string[];
  readonly features: Readonly<Record<string, string>>;
}
