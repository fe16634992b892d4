// The Kubernetes-style API of Sheaf, on the same origin as the UI.

const TOKEN_KEY = 'sheaf.token';

export interface StatusCause {
  field?: string;
  message?: string;
  reason?: string;
}

export interface K8sStatus {
  kind?: string;
  status?: string;
  message?: string;
  reason?: string;
  code?: number;
  details?: { name?: string; kind?: string; causes?: StatusCause[] };
}

/** An error answer of the API, with its Kubernetes Status when there is one. */
export class ApiError extends Error {
  constructor(
    public readonly code: number,
    message: string,
    public readonly status?: K8sStatus,
  ) {
    super(message);
  }
  get causes(): StatusCause[] {
    return this.status?.details?.causes ?? [];
  }
}

export function getToken(): string | null {
  return sessionStorage.getItem(TOKEN_KEY);
}

export function setToken(token: string | null) {
  if (token) sessionStorage.setItem(TOKEN_KEY, token);
  else sessionStorage.removeItem(TOKEN_KEY);
}

type UnauthorizedListener = (message: string) => void;
let onUnauthorized: UnauthorizedListener = () => {};
/** Called with a message when the server refuses the token (401). */
export function setUnauthorizedHandler(f: UnauthorizedListener) {
  onUnauthorized = f;
}

export function authHeaders(): Record<string, string> {
  const t = getToken();
  return t ? { Authorization: `Bearer ${t}` } : {};
}

async function errorFrom(res: Response): Promise<ApiError> {
  const text = await res.text().catch(() => '');
  let status: K8sStatus | undefined;
  try {
    const v = JSON.parse(text);
    if (v && typeof v === 'object') status = v;
  } catch {
    /* not JSON */
  }
  const message = status?.message || text.trim() || `${res.status} ${res.statusText}`;
  return new ApiError(res.status, message, status);
}

/** Turns a failed response into an ApiError; a 401 logs the user out. */
export async function check(res: Response): Promise<Response> {
  if (res.ok) return res;
  const err = await errorFrom(res);
  if (res.status === 401) {
    setToken(null);
    onUnauthorized(err.message || 'The server refused the token: log in again.');
  }
  throw err;
}

export interface RequestOptions {
  method?: string;
  body?: unknown;
  contentType?: string;
  signal?: AbortSignal;
}

function isNetworkError(e: unknown): boolean {
  return e instanceof TypeError;
}

/**
 * One API call. A request the browser could not send (for example Chrome's
 * ERR_NETWORK_CHANGED when the host's interfaces change, as they do on a
 * node that starts VMs) is sent once more; a create whose retry finds the
 * object already there is taken as done.
 */
export async function request(path: string, opts: RequestOptions = {}): Promise<Response> {
  const headers: Record<string, string> = { Accept: 'application/json', ...authHeaders() };
  let body: BodyInit | undefined;
  if (opts.body !== undefined) {
    headers['Content-Type'] = opts.contentType ?? 'application/json';
    body = typeof opts.body === 'string' ? opts.body : JSON.stringify(opts.body);
  }
  const method = opts.method ?? 'GET';
  const send = () => fetch(path, { method, headers, body, signal: opts.signal });
  let res: Response;
  let retried = false;
  try {
    res = await send();
  } catch (e) {
    if ((e as Error).name === 'AbortError') throw e;
    if (!isNetworkError(e)) throw e;
    await new Promise((r) => setTimeout(r, 400));
    try {
      res = await send();
      retried = true;
    } catch (e2) {
      if ((e2 as Error).name === 'AbortError') throw e2;
      throw new ApiError(0, `Cannot reach the Sheaf API server: ${(e2 as Error).message}`);
    }
  }
  if (retried && method === 'POST' && res.status === 409 && typeof opts.body === 'object' && opts.body !== null) {
    const name = (opts.body as { metadata?: { name?: string } }).metadata?.name;
    if (name) {
      const again = await fetch(`${path}/${encodeURIComponent(name)}`, { headers });
      if (again.ok) return again;
    }
  }
  return check(res);
}

export async function getJSON<T = any>(path: string, signal?: AbortSignal): Promise<T> {
  return (await request(path, { signal })).json();
}

export async function sendJSON<T = any>(method: string, path: string, body?: unknown, contentType?: string): Promise<T> {
  const res = await request(path, { method, body, contentType });
  const text = await res.text();
  return text ? JSON.parse(text) : (undefined as T);
}

/** `/api/v1` or `/apis/GROUP/VERSION`. */
export function groupPath(groupVersion: string): string {
  return groupVersion.includes('/') ? `/apis/${groupVersion}` : `/api/${groupVersion}`;
}

/** The URL of a collection or of one object. */
export function resourcePath(groupVersion: string, plural: string, namespace?: string, name?: string): string {
  let p = groupPath(groupVersion);
  if (namespace) p += `/namespaces/${encodeURIComponent(namespace)}`;
  p += `/${plural}`;
  if (name) p += `/${encodeURIComponent(name)}`;
  return p;
}

function base64url(s: string): string {
  const bytes = new TextEncoder().encode(s);
  let bin = '';
  for (const b of bytes) bin += String.fromCharCode(b);
  return btoa(bin).replace(/\+/g, '-').replace(/\//g, '_').replace(/=+$/, '');
}

/** WebSocket subprotocols carrying the token (Kubernetes' convention) and KubeVirt's protocol. */
export function wsProtocols(): string[] {
  const t = getToken() ?? '';
  return [`base64url.bearer.authorization.k8s.io.${base64url(t)}`, 'plain.kubevirt.io'];
}

export function wsURL(path: string): string {
  const proto = location.protocol === 'https:' ? 'wss:' : 'ws:';
  return `${proto}//${location.host}${path}`;
}

/** The message of any error, for display. */
export function errorMessage(e: unknown): string {
  if (e instanceof ApiError) return e.message;
  if (e instanceof Error) return e.message;
  return String(e);
}
