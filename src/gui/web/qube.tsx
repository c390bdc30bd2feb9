/** A qube's name with its label colour (a dot, and the colour's name for screen readers). */
import type { Label } from './types.js';

export function QubeName({ name, label }: { name: string; label: Label | null }) {
  return (
    <span class={`qube label-${label ?? 'none'}`}>
      <span class="dot" aria-hidden="true" />
      <span class="qube-name">{name}</span>
      {label && <span class="sr-only"> ({label} label)</span>}
    </span>
  );
}
