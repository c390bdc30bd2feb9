/** Talking to the GUI domain's server: JSON API with the CSRF header, and the event stream. */

function meta(name: string): string {
  return document.querySelector<HTMLMetaElement>(`meta[name="${name}"]`)?.content ?? '';
}

export const CSRF = meta('qgui-csrf');
export const GUI_NAME = meta('qgui-name');

export class ApiError extends Error {
  constructor(
    readonly status: number,
    message: string,
    /** The whole JSON error body (Policy API errors carry `diagnostics`). */
    readonly body: Readonly<Record<string, unknown>> = {},
  ) {
    super(message);
  }
}

async function parse(res: Response): Promise<unknown> {
  const body = (await res.json().catch(() => ({}))) as { error?: string };
  if (!res.ok) throw new ApiError(res.status, body.error ?? `HTTP ${res.status}`, body);
  return body;
}

export async function post<T = unknown>(path: string, body: unknown): Promise<T> {
  const res = await fetch(path, {
    method: 'POST',
    headers: { 'content-type': 'application/json', 'x-qgui-csrf': CSRF },
    body: JSON.stringify(body),
    credentials: 'same-origin',
  });
  return (await parse(res)) as T;
}

export async function get<T = unknown>(path: string): Promise<T> {
  return (await parse(await fetch(path, { credentials: 'same-origin' }))) as T;
}

/** Subscribe to the server's events; returns a function that closes the stream. */
export function events(handlers: Record<string, (data: unknown) => void>, onState: (connected: boolean) => void): () => void {
  const es = new EventSource('/api/events');
  for (const [name, f] of Object.entries(handlers)) es.addEventListener(name, (e) => f(JSON.parse((e as MessageEvent<string>).data) as unknown));
  es.onopen = () => onState(true);
  es.onerror = () => onState(false);
  return () => es.close();
}
