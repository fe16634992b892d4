import { useEffect, useState } from 'preact/hooks';

interface Toast {
  id: number;
  text: string;
  error: boolean;
}

let toasts: Toast[] = [];
let next = 1;
const listeners = new Set<() => void>();

function emit() {
  for (const l of listeners) l();
}

/** Shows a short message at the bottom of the page. */
export function notify(text: string, error = false) {
  const t = { id: next++, text, error };
  toasts = [...toasts, t].slice(-5);
  emit();
  setTimeout(
    () => {
      toasts = toasts.filter((x) => x !== t);
      emit();
    },
    error ? 12000 : 5000,
  );
}

export function Toasts() {
  const [, setTick] = useState(0);
  useEffect(() => {
    const l = () => setTick((n) => n + 1);
    listeners.add(l);
    return () => {
      listeners.delete(l);
    };
  }, []);
  return (
    <div class="toasts" aria-live="polite" data-testid="toasts">
      {toasts.map((t) => (
        <div key={t.id} class={t.error ? 'toast error' : 'toast'} role={t.error ? 'alert' : 'status'}>
          {t.text}
          <button
            type="button"
            class="link"
            aria-label="Dismiss"
            onClick={() => {
              toasts = toasts.filter((x) => x !== t);
              emit();
            }}
          >
            ×
          </button>
        </div>
      ))}
    </div>
  );
}
