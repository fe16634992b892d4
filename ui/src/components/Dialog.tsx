import type { ComponentChildren } from 'preact';
import { useEffect, useRef } from 'preact/hooks';

interface Props {
  title: string;
  open: boolean;
  onClose: () => void;
  /** While an action runs: Escape does not close it (its outcome shows in it). */
  busy?: boolean;
  children: ComponentChildren;
}

/** A modal dialog (the browser's <dialog>: focus is kept inside, Escape closes it). */
export function Dialog({ title, open, onClose, busy, children }: Props) {
  const ref = useRef<HTMLDialogElement>(null);
  useEffect(() => {
    const d = ref.current;
    if (!d) return;
    if (open && !d.open) d.showModal();
    if (!open && d.open) d.close();
  }, [open]);
  return (
    <dialog
      ref={ref}
      aria-labelledby="dialog-title"
      aria-busy={busy ? 'true' : undefined}
      onClose={onClose}
      onCancel={(e) => {
        if (busy) e.preventDefault();
        else onClose();
      }}
    >
      {open && (
        <>
          <h2 id="dialog-title">{title}</h2>
          {children}
        </>
      )}
    </dialog>
  );
}
