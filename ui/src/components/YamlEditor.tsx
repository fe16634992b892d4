import { useMemo, useRef, useState } from 'preact/hooks';
import { parseDocument, stringify, isNode } from 'yaml';
import { ApiError, errorMessage } from '../api';

/** `spec.disks[0].name` → ['spec', 'disks', 0, 'name']. */
export function fieldPath(field: string): (string | number)[] {
  const out: (string | number)[] = [];
  let cur = '';
  for (let i = 0; i < field.length; i++) {
    const c = field[i];
    if (c === '.') {
      if (cur) out.push(cur);
      cur = '';
    } else if (c === '[') {
      if (cur) out.push(cur);
      cur = '';
      const end = field.indexOf(']', i);
      const inner = end < 0 ? field.slice(i + 1) : field.slice(i + 1, end);
      out.push(/^\d+$/.test(inner) ? Number(inner) : inner);
      i = end < 0 ? field.length : end;
    } else cur += c;
  }
  if (cur) out.push(cur);
  return out;
}

/** The line (1-based) of a field in a YAML text, or of its nearest parent present. */
export function lineOf(text: string, field: string): number | null {
  let doc;
  try {
    doc = parseDocument(text);
  } catch {
    return null;
  }
  const path = fieldPath(field);
  for (let n = path.length; n > 0; n--) {
    const node = doc.getIn(path.slice(0, n), true);
    if (isNode(node) && node.range) {
      // The key's line: search back from the value to the start of its line.
      const offset = node.range[0];
      return text.slice(0, offset).split('\n').length;
    }
  }
  return null;
}

export function toYaml(o: unknown): string {
  return stringify(o, { lineWidth: 0 });
}

interface Props {
  label: string;
  initial: string;
  submitLabel: string;
  onSubmit: (obj: any) => Promise<unknown>;
  readOnly?: boolean;
  extraButtons?: preact.ComponentChildren;
}

/** A YAML text area that sends its object and shows the server's answer next to the lines. */
export function YamlEditor({ label, initial, submitLabel, onSubmit, readOnly, extraButtons }: Props) {
  const [text, setText] = useState(initial);
  const [error, setError] = useState<unknown>(null);
  const [busy, setBusy] = useState(false);
  const [done, setDone] = useState('');
  const area = useRef<HTMLTextAreaElement>(null);
  const gutter = useRef<HTMLDivElement>(null);
  const lines = text.split('\n');

  const causes = useMemo(() => {
    if (!(error instanceof ApiError)) return [];
    return error.causes.map((c) => ({ ...c, line: c.field ? lineOf(text, c.field) : null }));
  }, [error]);

  // Lines the server's causes point at, with their messages.
  const badLines = useMemo(() => {
    const m = new Map<number, string>();
    for (const c of causes) if (c.line) m.set(c.line, [m.get(c.line), `${c.field}: ${c.message}`].filter(Boolean).join('\n'));
    return m;
  }, [causes]);

  const goto = (line: number) => {
    const el = area.current;
    if (!el) return;
    const all = el.value.split('\n');
    const start = all.slice(0, line - 1).reduce((n, l) => n + l.length + 1, 0);
    el.focus({ preventScroll: true });
    el.setSelectionRange(start, start + (all[line - 1]?.length ?? 0));
    const lh = parseFloat(getComputedStyle(el).lineHeight) || 18;
    requestAnimationFrame(() => {
      el.scrollTop = Math.max(0, (line - 4) * lh);
      if (gutter.current) gutter.current.scrollTop = el.scrollTop;
      el.scrollIntoView({ block: 'nearest' });
    });
  };

  const submit = async (e: Event) => {
    e.preventDefault();
    setError(null);
    setDone('');
    let obj: unknown;
    try {
      const doc = parseDocument(text);
      if (doc.errors.length) throw new Error(`YAML: ${doc.errors[0].message}`);
      obj = doc.toJS();
    } catch (err) {
      setError(err);
      return;
    }
    setBusy(true);
    try {
      await onSubmit(obj);
      setDone('Saved.');
    } catch (err) {
      setError(err);
    } finally {
      setBusy(false);
    }
  };

  return (
    <form class="yaml-editor" onSubmit={submit}>
      <label for="yaml-text">{label}</label>
      <div class="editor">
        <div class="gutter" aria-hidden="true" ref={gutter}>
          <div class="gutter-lines">
            {lines.map((_, i) => {
              const bad = badLines.get(i + 1);
              return (
                <div class={bad ? 'bad' : undefined} title={bad}>
                  {i + 1}
                </div>
              );
            })}
          </div>
        </div>
        <textarea
          id="yaml-text"
          ref={area}
          value={text}
          spellcheck={false}
          readOnly={readOnly}
          wrap="off"
          data-testid="yaml"
          aria-invalid={causes.length > 0}
          aria-describedby={error ? 'yaml-errors' : undefined}
          onInput={(e) => setText(e.currentTarget.value)}
          onScroll={(e) => {
            if (gutter.current) gutter.current.scrollTop = e.currentTarget.scrollTop;
          }}
          rows={Math.min(36, Math.max(12, lines.length + 1))}
        />
      </div>
      {error ? (
        <div id="yaml-errors" class="error" role="alert" data-testid="error">
          <p>{errorMessage(error)}</p>
          {causes.length > 0 && (
            <ul>
              {causes.map((c, i) => (
                <li key={i}>
                  {c.line ? (
                    <button type="button" class="link" onClick={() => goto(c.line!)}>
                      line {c.line}
                    </button>
                  ) : null}{' '}
                  {c.field ? <code>{c.field}</code> : null}: {c.message}
                </li>
              ))}
            </ul>
          )}
        </div>
      ) : null}
      {done && (
        <p class="ok" role="status">
          {done}
        </p>
      )}
      <div class="buttons">
        {!readOnly && (
          <button type="submit" class="primary" disabled={busy}>
            {busy ? 'Saving…' : submitLabel}
          </button>
        )}
        {extraButtons}
      </div>
    </form>
  );
}
