import { ApiError } from '../api';

/** An error from the API: its message, and the causes no field showed. */
export function ErrorBox({ error, causes = true }: { error: unknown; causes?: boolean }) {
  if (!error) return null;
  const message = error instanceof Error ? error.message : String(error);
  const list = causes && error instanceof ApiError ? error.causes : [];
  return (
    <div class="error" role="alert" data-testid="error">
      <p>{message}</p>
      {list.length > 0 && (
        <ul>
          {list.map((c, i) => (
            <li key={i}>
              {c.field ? <code>{c.field}</code> : null} {c.message}
            </li>
          ))}
        </ul>
      )}
    </div>
  );
}

/** The causes of an error whose field is `field` (or under it). */
export function causesFor(error: unknown, ...fields: string[]): string[] {
  if (!(error instanceof ApiError)) return [];
  return error.causes
    .filter((c) => c.field && fields.some((f) => c.field === f || c.field!.startsWith(f + '.') || c.field!.startsWith(f + '[')))
    .map((c) => c.message ?? '');
}

export function FieldError({ messages, id }: { messages: string[]; id?: string }) {
  if (!messages.length) return null;
  return (
    <p class="field-error" id={id} role="alert">
      {messages.join('; ')}
    </p>
  );
}
