import { useState } from 'preact/hooks';
import { errorMessage } from '../api';

interface Props {
  notice: string;
  onLogin: (token: string) => void;
}

/** Asks for a bearer token and checks it against the API before keeping it. */
export function Login({ notice, onLogin }: Props) {
  const [token, setToken] = useState('');
  const [error, setError] = useState('');
  const [busy, setBusy] = useState(false);

  const submit = async (e: Event) => {
    e.preventDefault();
    const t = token.trim();
    if (!t) {
      setError('Enter a token.');
      return;
    }
    setBusy(true);
    setError('');
    try {
      const res = await fetch('/api/v1/namespaces?limit=1', { headers: { Authorization: `Bearer ${t}`, Accept: 'application/json' } });
      if (res.status === 401) throw new Error('The server refused this token.');
      if (!res.ok) {
        const body = await res.json().catch(() => null);
        throw new Error(body?.message ?? `The server answered ${res.status}.`);
      }
      onLogin(t);
    } catch (err) {
      setError(err instanceof TypeError ? `Cannot reach the Sheaf API server: ${err.message}` : errorMessage(err));
    } finally {
      setBusy(false);
    }
  };

  return (
    <main class="login">
      <form onSubmit={submit} aria-labelledby="login-title">
        <h1 id="login-title">
          <span class="logo" aria-hidden="true" /> Sheaf
        </h1>
        {notice && (
          <p class="notice" role="status" data-testid="login-notice">
            {notice}
          </p>
        )}
        <label for="token">Bearer token</label>
        <input
          id="token"
          name="token"
          type="password"
          autocomplete="current-password"
          value={token}
          onInput={(e) => setToken(e.currentTarget.value)}
          aria-describedby="token-help"
          aria-invalid={!!error}
          required
        />
        <p id="token-help" class="muted">
          The <code>token:</code> of a Sheaf kubeconfig, for example the admin one the server writes to{' '}
          <code>DATA_DIR/admin.kubeconfig</code>.
        </p>
        {error && (
          <p class="error" role="alert">
            {error}
          </p>
        )}
        <button type="submit" class="primary" disabled={busy}>
          {busy ? 'Checking…' : 'Log in'}
        </button>
      </form>
    </main>
  );
}
