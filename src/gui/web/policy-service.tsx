/**
 * The per-service view of the policy, in the style of Qubes' Global Config:
 * pick a service, see its rules as rows (source, action, target), add,
 * remove, reorder and change them. As Global Config does (its
 * `50-config-<topic>` files, qubes-config-manager), the view writes only its
 * own file, `50-config-<service>`, through the Policy API: the token read,
 * dom0's check and the impact diff before saving, a conflict shown and never
 * overwritten. Files read before it (lower names) take precedence, and are
 * named. A file of its own with lines this view cannot show (options, other
 * services or arguments, directives) is left to the text editor.
 */
import { useEffect, useState } from 'preact/hooks';
import { get } from './api.js';
import { qubeChoices, type Vocabulary } from './complete.js';
import { CheckResult, errText, NEW_FILE, usePolicyFile } from './policy-file.js';

type Action = 'allow' | 'deny' | 'ask';
const ACTIONS: readonly Action[] = ['allow', 'deny', 'ask'];

export interface ServiceRule {
  readonly source: string;
  readonly action: Action;
  readonly target: string;
}

/** The view's own file for a service: `qubes.Filecopy` → `50-config-filecopy` (Global Config's name for it). */
export function ownFileOf(service: string): string {
  const slug = service
    .replace(/^qubes\./, '')
    .toLowerCase()
    .replace(/[^a-z0-9]+/g, '-')
    .replace(/^-+|-+$/g, '');
  return `50-config-${slug || 'service'}`.slice(0, 100);
}

const HEADER = `# Written by the GUI domain's per-service policy view (Policy, By service),
# as Qubes Global Config writes its 50-config-* files. Lines this view cannot
# show are left to the text editor, and the view then does not change the file.

`;

/** The rows of the view's file, and the lines it cannot show (1-based). */
export function parseServiceFile(service: string, text: string): { rules: ServiceRule[]; other: { line: number; text: string }[] } {
  const rules: ServiceRule[] = [];
  const other: { line: number; text: string }[] = [];
  text.split('\n').forEach((raw, i) => {
    const line = raw.trim();
    if (line === '' || line.startsWith('#')) return;
    const f = line.split(/\s+/);
    if (f.length === 5 && f[0] === service && f[1] === '*' && (ACTIONS as readonly string[]).includes(f[4] as string)) rules.push({ source: f[2] as string, action: f[4] as Action, target: f[3] as string });
    else other.push({ line: i + 1, text: raw });
  });
  return { rules, other };
}

export function renderServiceFile(service: string, rules: readonly ServiceRule[]): string {
  return HEADER + rules.map((r) => `${service}  *  ${r.source.trim()}  ${r.target.trim()}  ${r.action}\n`).join('');
}

const SERVICE = /^[\w.-]{1,200}$/;

export function ServiceView({ vocabulary, onStatus, onSaved, onRawEdit }: { vocabulary: Vocabulary; onStatus: (m: string, e?: boolean) => void; onSaved: () => void; onRawEdit: (file: string) => void }) {
  const [draft, setDraft] = useState('');
  const [service, setService] = useState<string | null>(null);
  const [rules, setRules] = useState<readonly ServiceRule[]>([]);
  const [other, setOther] = useState<readonly { line: number; text: string }[]>([]);
  const [files, setFiles] = useState<readonly string[]>([]);
  const [error, setError] = useState('');
  const ed = usePolicyFile(onStatus);
  const own = service ? ownFileOf(service) : '';

  const load = async (svc: string): Promise<void> => {
    setError('');
    const f = await ed.open(ownFileOf(svc), true);
    if (!f) return;
    const p = parseServiceFile(svc, f.content);
    setService(svc);
    setRules(p.rules);
    setOther(p.other);
    get<{ files: string[] }>(`/api/policy/files-for?service=${encodeURIComponent(svc)}`).then(
      (r) => setFiles(r.files),
      (e) => setError(errText(e)),
    );
  };

  // the file's text follows the rows (then dom0 checks it)
  const change = (next: readonly ServiceRule[]): void => {
    setRules(next);
    if (service) ed.setText(renderServiceFile(service, next));
  };
  const set = (i: number, patch: Partial<ServiceRule>): void => change(rules.map((r, j) => (j === i ? { ...r, ...patch } : r)));
  useEffect(() => {
    // a save gives the file as written: the rows stay as they are
    if (ed.state === 'saved') onSaved();
  }, [ed.file?.token]);

  const before = files.filter((f) => f !== own && f.split('/').pop()! < own);
  const after = files.filter((f) => f !== own && !before.includes(f));
  const readOnly = other.length > 0;
  const sources = qubeChoices(vocabulary, 'source');
  const targets = qubeChoices(vocabulary, 'target');
  return (
    <div class="service-view">
      <form
        class="inline service-pick"
        aria-label="Choose a service"
        onSubmit={(e) => {
          e.preventDefault();
          const s = draft.trim();
          if (!SERVICE.test(s)) setError('A service name: letters, digits, dots, dashes and underscores (no argument).');
          else void load(s);
        }}
      >
        <datalist id="svc-services">
          {vocabulary.services.map((s) => (
            <option key={s} value={s} />
          ))}
        </datalist>
        <datalist id="svc-sources">
          {sources.map((s) => (
            <option key={s} value={s} />
          ))}
        </datalist>
        <datalist id="svc-targets">
          {targets.map((s) => (
            <option key={s} value={s} />
          ))}
        </datalist>
        <input type="text" aria-label="Service" placeholder="qubes.Filecopy" list="svc-services" value={draft} onInput={(e) => setDraft((e.currentTarget as HTMLInputElement).value)} />
        <button type="submit" class="button">
          Show rules
        </button>
      </form>
      {error && (
        <p class="error" role="alert">
          {error}
        </p>
      )}
      {!service || !ed.file ? (
        <p class="empty">Choose a service to see who may call it, and where.</p>
      ) : (
        <section aria-label={`Rules for ${service}`}>
          <div class="editor-head">
            <strong>{service}</strong>
            <span class="muted">
              in {own}
              {ed.file.token === NEW_FILE ? ' (new file)' : ''} · {ed.state}
            </span>
            {ed.file.token !== NEW_FILE && (
              <button type="button" class="button" onClick={() => onRawEdit(own)}>
                Edit as text
              </button>
            )}
            <button type="button" class="button" onClick={() => void load(service)}>
              Reload
            </button>
            <button type="button" class="button primary" disabled={!ed.canSave || readOnly} onClick={() => void ed.save()}>
              Save
            </button>
          </div>
          {before.length > 0 && (
            <p class="note" role="note">
              Read before this file, so their rules for {service} come first: {before.join(', ')}.
            </p>
          )}
          {readOnly ? (
            <div class="error" role="alert">
              <p>
                {own} has lines this view cannot show, so it does not change the file:
              </p>
              <ul>
                {other.slice(0, 10).map((o) => (
                  <li key={o.line}>
                    <code>
                      {own}.policy:{o.line}
                    </code>{' '}
                    <code>{o.text}</code>
                  </li>
                ))}
              </ul>
              <button type="button" class="button" onClick={() => onRawEdit(own)}>
                Edit {own} as text
              </button>
            </div>
          ) : (
            <>
              <table class="table compact rules" aria-label={`Rules of ${own}`}>
                <thead>
                  <tr>
                    <th scope="col">#</th>
                    <th scope="col">Source</th>
                    <th scope="col">Action</th>
                    <th scope="col">Target</th>
                    <th scope="col">
                      <span class="sr-only">Change</span>
                    </th>
                  </tr>
                </thead>
                <tbody>
                  {rules.map((r, i) => (
                    <tr key={i}>
                      <td class="muted">{i + 1}</td>
                      <td>
                        <input type="text" aria-label={`Source of rule ${i + 1}`} list="svc-sources" value={r.source} onInput={(e) => set(i, { source: (e.currentTarget as HTMLInputElement).value })} />
                      </td>
                      <td>
                        <select aria-label={`Action of rule ${i + 1}`} class={`action-${r.action}`} value={r.action} onChange={(e) => set(i, { action: (e.currentTarget as HTMLSelectElement).value as Action })}>
                          {ACTIONS.map((a) => (
                            <option key={a} value={a}>
                              {a}
                            </option>
                          ))}
                        </select>
                      </td>
                      <td>
                        <input type="text" aria-label={`Target of rule ${i + 1}`} list="svc-targets" value={r.target} onInput={(e) => set(i, { target: (e.currentTarget as HTMLInputElement).value })} />
                      </td>
                      <td class="row-actions">
                        <button type="button" class="button small" aria-label={`Move rule ${i + 1} up`} disabled={i === 0} onClick={() => change([...rules.slice(0, i - 1), r, rules[i - 1] as ServiceRule, ...rules.slice(i + 1)])}>
                          ↑
                        </button>
                        <button type="button" class="button small danger" aria-label={`Remove rule ${i + 1}`} onClick={() => change(rules.filter((_x, j) => j !== i))}>
                          Remove
                        </button>
                      </td>
                    </tr>
                  ))}
                </tbody>
              </table>
              {rules.length === 0 && <p class="muted">No rule of its own: the other files decide.</p>}
              <button type="button" class="button add-rule" onClick={() => change([...rules, { source: '@anyvm', action: 'ask', target: '@default' }])}>
                Add rule
              </button>
            </>
          )}
          {after.length > 0 && (
            <p class="note muted">
              Read after this file (their rules apply when none here matches): {after.join(', ')}.
            </p>
          )}
          <CheckResult check={ed.check} conflict={ed.conflict} />
        </section>
      )}
    </div>
  );
}
