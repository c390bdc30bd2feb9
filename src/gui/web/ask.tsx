/**
 * The ask prompt, as the reference's dialog: the calling qube with its label
 * colour, the service and argument (text nodes: never markup), a "Target"
 * combobox with only the offered targets (the default preselected), "Allow"
 * and "Deny". Anti-clickjacking: Allow, Deny, Enter and Escape do nothing
 * until the prompt has been visible and focused for 1 s continuously; every
 * loss of focus or visibility restarts that second. Closing denies; so does
 * the timeout (server side).
 */
import { useEffect, useRef, useState } from 'preact/hooks';
import type { Ask } from './types.js';
import { rpcName } from './types.js';
import { QubeName } from './qube.js';

export const ARM_MS = 1000;

/** True once the page has been visible and focused for ARM_MS without a break. */
function useArmed(key: string): boolean {
  const [armed, setArmed] = useState(false);
  useEffect(() => {
    let since: number | null = null;
    const check = (): void => {
      const ok = document.visibilityState === 'visible' && document.hasFocus();
      if (!ok) {
        since = null;
        setArmed(false);
        return;
      }
      since ??= performance.now();
      setArmed(performance.now() - since >= ARM_MS);
    };
    const restart = (): void => {
      since = null;
      setArmed(false);
      check();
    };
    window.addEventListener('blur', restart);
    window.addEventListener('focus', check);
    document.addEventListener('visibilitychange', restart);
    const timer = setInterval(check, 50);
    check();
    return () => {
      clearInterval(timer);
      window.removeEventListener('blur', restart);
      window.removeEventListener('focus', check);
      document.removeEventListener('visibilitychange', restart);
    };
  }, [key]);
  return armed;
}

function useCountdown(remainingAtMs: number, receivedAt: number): number {
  const [now, setNow] = useState(performance.now());
  useEffect(() => {
    const t = setInterval(() => setNow(performance.now()), 500);
    return () => clearInterval(t);
  }, []);
  return Math.max(0, Math.ceil((remainingAtMs - (now - receivedAt)) / 1000));
}

export interface AskDialogProps {
  readonly ask: Ask;
  /** ms left at `receivedAt` (performance.now()). */
  readonly remainingMs: number;
  readonly receivedAt: number;
  readonly queued: number;
  readonly onAnswer: (id: string, target: string | null) => Promise<void>;
}

export function AskDialog({ ask, remainingMs, receivedAt, queued, onAnswer }: AskDialogProps) {
  const armed = useArmed(ask.id);
  const [target, setTarget] = useState(ask.defaultTarget ?? '');
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState('');
  const selectRef = useRef<HTMLSelectElement>(null);
  const left = useCountdown(remainingMs, receivedAt);
  const offered = ask.targets.some((t) => t.name === target);

  useEffect(() => {
    setTarget(ask.defaultTarget ?? '');
    setError('');
    selectRef.current?.focus();
  }, [ask.id]);

  const answer = (t: string | null): void => {
    if (busy) return;
    setBusy(true);
    onAnswer(ask.id, t).catch((e: Error) => {
      setError(e.message);
      setBusy(false);
    });
  };
  const allow = (): void => {
    if (armed && offered) answer(target);
  };
  const deny = (): void => {
    if (armed) answer(null);
  };

  useEffect(() => {
    const onKey = (e: KeyboardEvent): void => {
      if (e.key !== 'Enter' && e.key !== 'Escape') return;
      const onButton = e.target instanceof HTMLButtonElement;
      if (!armed) {
        e.preventDefault();
        return;
      }
      if (e.key === 'Escape') {
        e.preventDefault();
        deny();
      } else if (!onButton) {
        e.preventDefault();
        allow();
      }
    };
    document.addEventListener('keydown', onKey, true);
    return () => document.removeEventListener('keydown', onKey, true);
  });

  const rpc = rpcName(ask.service, ask.argument);
  const selected = ask.targets.find((t) => t.name === target);
  return (
    <div class="overlay">
      <div class={`dialog ask label-${ask.sourceLabel ?? 'none'}`} role="dialog" aria-modal="true" aria-labelledby={`ask-title-${ask.id}`} aria-describedby={`ask-desc-${ask.id}`}>
        <header class="dialog-head">
          <h2 id={`ask-title-${ask.id}`}>Operation execution</h2>
          <button class="icon-button" type="button" aria-label="Close" title="Close (denies)" onClick={() => answer(null)}>
            ×
          </button>
        </header>
        <div class="dialog-body">
          <p id={`ask-desc-${ask.id}`} class="ask-line">
            <QubeName name={ask.source} label={ask.sourceLabel} /> wants to call <code class="rpc">{rpc}</code>
          </p>
          <label class="field" for={`ask-target-${ask.id}`}>
            <span>Target</span>
            <span class="select-wrap">
              {selected ? <span class={`dot label-${selected.label ?? 'none'}`} aria-hidden="true" /> : <span class="dot label-none" aria-hidden="true" />}
              <select
                id={`ask-target-${ask.id}`}
                ref={selectRef}
                value={target}
                onChange={(e) => setTarget((e.currentTarget as HTMLSelectElement).value)}
              >
                {ask.defaultTarget === null && (
                  <option value="" disabled>
                    Choose a qube…
                  </option>
                )}
                {ask.targets.map((t) => (
                  <option key={t.name} value={t.name}>
                    {t.name}
                  </option>
                ))}
              </select>
            </span>
          </label>
          <p class="ask-hint" aria-live="polite">
            {armed ? `Denied automatically in ${left} s if not answered.` : 'Check the request: the buttons unlock after one second in view.'}
          </p>
          <div class={`arm ${armed ? 'armed' : ''}`} aria-hidden="true">
            <div class="arm-bar" />
          </div>
          {error && (
            <p class="error" role="alert">
              {error}
            </p>
          )}
        </div>
        <footer class="dialog-foot">
          {queued > 0 && <span class="queued">{queued === 1 ? '1 more request waiting' : `${queued} more requests waiting`}</span>}
          <button type="button" class="button" disabled={!armed || busy} onClick={deny}>
            Deny
          </button>
          <button type="button" class="button primary" disabled={!armed || busy || !offered} onClick={allow}>
            Allow
          </button>
        </footer>
      </div>
    </div>
  );
}
