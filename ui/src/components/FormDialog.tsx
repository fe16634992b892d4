import type { ComponentChildren } from 'preact';
import { useState } from 'preact/hooks';
import { Dialog } from './Dialog';
import { ErrorBox } from './ErrorBox';

interface Props {
  title: string;
  open: boolean;
  onClose: () => void;
  /** Does the work; a thrown error (the server's Status) stays in the dialog. */
  onSubmit: () => Promise<void>;
  submitLabel: string;
  danger?: boolean;
  testid?: string;
  /** What the running action waits for. */
  progress?: string;
  children?: ComponentChildren;
}

/**
 * A dialog around one action: its fields, a button that runs it, and the
 * server's answer when it refuses. It closes once the action succeeded;
 * while it runs, `progress` says what it waits for.
 */
export function FormDialog({ title, open, onClose, onSubmit, submitLabel, danger, testid, progress, children }: Props) {
  const [error, setError] = useState<unknown>(null);
  const [busy, setBusy] = useState(false);
  const close = () => {
    if (busy) return;
    setError(null);
    onClose();
  };
  const submit = async (e: Event) => {
    e.preventDefault();
    setBusy(true);
    setError(null);
    try {
      await onSubmit();
      setBusy(false);
      onClose();
    } catch (err) {
      setError(err);
      setBusy(false);
    }
  };
  return (
    <Dialog title={title} open={open} onClose={close} busy={busy}>
      <form onSubmit={submit} data-testid={testid}>
        {children}
        {busy && progress && (
          <p role="status" class="muted">
            {progress}
          </p>
        )}
        <ErrorBox error={error} />
        <div class="buttons">
          <button type="submit" class={danger ? 'danger' : 'primary'} disabled={busy}>
            {busy ? `${submitLabel}…` : submitLabel}
          </button>
          <button type="button" onClick={close} disabled={busy}>
            Cancel
          </button>
        </div>
      </form>
    </Dialog>
  );
}
