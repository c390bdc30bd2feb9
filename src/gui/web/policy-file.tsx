/**
 * One policy file being edited through the Policy API (shared by the text
 * editor and the per-service view): read with its token, checked by dom0,
 * saved with the token; and what dom0 said of the change.
 */
import { useEffect, useRef, useState } from 'preact/hooks';
import { ApiError, get, post } from './api.js';
import { TableHead } from './table.js';

export interface Diagnostic {
  readonly file: string;
  readonly line: number;
  readonly message: string;
}
interface Change {
  readonly source: string;
  readonly target: string;
  readonly old: string;
  readonly new: string;
}
export interface Impact {
  readonly total: number;
  readonly services: readonly { readonly service: string; readonly argument: string; readonly changes: readonly Change[] }[];
}
export interface FileState {
  readonly name: string;
  readonly token: string;
  readonly content: string;
}

export const errText = (e: unknown): string => (e instanceof Error ? e.message : String(e));
const diagOf = (e: unknown): Diagnostic[] => (e instanceof ApiError && Array.isArray(e.body['diagnostics']) ? (e.body['diagnostics'] as Diagnostic[]) : []);

const conflictText = (name: string, e: ApiError): string => `Conflict: ${name} was changed meanwhile (${e.message}). Nothing was overwritten; your text is still here. Reload to see the other change.`;

export interface CheckState {
  readonly error: string;
  readonly diagnostics: readonly Diagnostic[];
  readonly impact: Impact | null;
  readonly pending: boolean;
}
const CLEAN: CheckState = { error: '', diagnostics: [], impact: null, pending: false };

/** The token `new`: the file does not exist yet (Replace creates it, and refuses if someone did meanwhile). */
export const NEW_FILE = 'new';

/**
 * One policy file being edited: read with its token, checked by dom0 shortly
 * after each change (policy.Diff: validation and impact, nothing written),
 * saved with the token read (a change made meanwhile is a conflict, never
 * overwritten). `missingOk`: a file that does not exist opens empty (token `new`).
 */
export function usePolicyFile(onStatus: (m: string, e?: boolean) => void) {
  const [file, setFile] = useState<FileState | null>(null);
  const [text, setText] = useState('');
  const [check, setCheck] = useState<CheckState>(CLEAN);
  const [conflict, setConflict] = useState('');
  const timer = useRef<number | undefined>(undefined);

  const open = async (name: string, missingOk = false): Promise<FileState | null> => {
    setConflict('');
    try {
      let f: FileState;
      try {
        f = await get<FileState>(`/api/policy/file?name=${encodeURIComponent(name)}`);
      } catch (e) {
        if (!(missingOk && e instanceof ApiError && e.status === 404)) throw e;
        f = { name, token: NEW_FILE, content: '' };
      }
      setFile(f);
      setText(f.content);
      setCheck(CLEAN);
      return f;
    } catch (e) {
      onStatus(`${name}: ${errText(e)}`, true);
      return null;
    }
  };

  useEffect(() => {
    if (!file || text === file.content) {
      setCheck(CLEAN);
      return;
    }
    setCheck((c) => ({ ...c, pending: true }));
    window.clearTimeout(timer.current);
    timer.current = window.setTimeout(() => {
      post<{ diff: Impact }>('/api/policy/check', { name: file.name, token: file.token, content: text }).then(
        (r) => setCheck({ error: '', diagnostics: [], impact: r.diff, pending: false }),
        (e) => {
          // the file changed in dom0 since it was read: said at once (saving would be refused too)
          if (e instanceof ApiError && e.status === 409) {
            setConflict(conflictText(file.name, e));
            setCheck(CLEAN);
          } else setCheck({ error: errText(e), diagnostics: diagOf(e), impact: null, pending: false });
        },
      );
    }, 300);
    return () => window.clearTimeout(timer.current);
  }, [text, file]);

  const save = async (): Promise<boolean> => {
    if (!file) return false;
    try {
      const f = await post<FileState>('/api/policy/save', { name: file.name, token: file.token, content: text });
      setFile(f);
      setText(f.content);
      setConflict('');
      onStatus(`Saved ${file.name}`);
      return true;
    } catch (e) {
      if (e instanceof ApiError && e.status === 409) setConflict(conflictText(file.name, e));
      else setCheck({ error: errText(e), diagnostics: diagOf(e), impact: null, pending: false });
      return false;
    }
  };

  const state = !file ? '' : text === file.content ? 'saved' : check.pending ? 'checking…' : check.error ? 'has problems' : 'changed';
  const canSave = file !== null && text !== file.content && !check.pending && check.error === '';
  return { file, text, setText, check, conflict, open, save, state, canSave };
}

/** What dom0 said of the change: a conflict, validation errors with file:line, or the decisions that change. */
export function CheckResult({ check, conflict }: { check: CheckState; conflict: string }) {
  const changes = check.impact?.services.flatMap((s) => s.changes.map((c) => ({ ...c, service: s.argument === '*' ? `${s.service} (any other argument)` : s.argument.startsWith('+') && s.argument !== '+' ? `${s.service}${s.argument}` : s.service }))) ?? [];
  return (
    <>
      {conflict && (
        <p class="error" role="alert">
          {conflict}
        </p>
      )}
      <div class="problems" role="region" aria-label="Problems">
        {check.error ? (
          <>
            <p class="error">{check.error}</p>
            <ul>
              {check.diagnostics.map((d, i) => (
                <li key={i}>
                  <code>
                    {d.file.split('/').pop()}:{d.line}
                  </code>{' '}
                  {d.message}
                </li>
              ))}
            </ul>
          </>
        ) : null}
      </div>
      {check.impact && (
        <div class="impact" role="region" aria-label="Impact of the change">
          <p>{changes.length === 0 ? 'No decision changes.' : `${changes.length} decision${changes.length === 1 ? '' : 's'} change${changes.length === 1 ? 's' : ''}:`}</p>
          {changes.length > 0 && (
            <table class="table compact" aria-label="Decisions that change">
              <TableHead columns={['Service', 'Source', 'Target', 'Before', 'After']} />
              <tbody>
                {changes.slice(0, 200).map((c, i) => (
                  <tr key={i}>
                    <td>
                      <code>{c.service}</code>
                    </td>
                    <td>{c.source}</td>
                    <td>{c.target}</td>
                    <td>{String(c.old)}</td>
                    <td>{String(c.new)}</td>
                  </tr>
                ))}
              </tbody>
            </table>
          )}
        </div>
      )}
    </>
  );
}

