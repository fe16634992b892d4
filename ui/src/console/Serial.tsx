// The serial console: xterm.js over the VMI's console WebSocket (raw bytes
// both ways, in binary frames). A connection the network dropped is opened
// again a few times; one the server closed (another console took over, the
// VM stopped) is not.

import { useEffect, useRef, useState } from 'preact/hooks';
import { Terminal } from '@xterm/xterm';
import { FitAddon } from '@xterm/addon-fit';
import '@xterm/xterm/css/xterm.css';
import { resourcePath, wsProtocols, wsURL } from '../api';

type State = 'connecting' | 'connected' | 'closed';

const RETRIES = 5;

export default function SerialConsole({ namespace, name }: { namespace: string; name: string }) {
  const el = useRef<HTMLDivElement>(null);
  const [state, setState] = useState<State>('connecting');
  const [reason, setReason] = useState('');
  const [attempt, setAttempt] = useState(0);

  useEffect(() => {
    if (!el.current) return;
    const term = new Terminal({
      convertEol: false,
      cursorBlink: true,
      fontSize: 14,
      scrollback: 5000,
      fontFamily: 'ui-monospace, SFMono-Regular, Menlo, Consolas, monospace',
      theme: { background: '#111827', foreground: '#e5e7eb' },
    });
    const fitAddon = new FitAddon();
    term.loadAddon(fitAddon);
    term.open(el.current);
    const fit = () => {
      try {
        fitAddon.fit();
      } catch {
        /* not laid out yet */
      }
    };
    fit();
    const ro = new ResizeObserver(fit);
    ro.observe(el.current);

    const path = `${resourcePath('subresources.kubevirt.io/v1', 'virtualmachineinstances', namespace, name)}/console`;
    const enc = new TextEncoder();
    let ws: WebSocket | null = null;
    let disposed = false;
    let retries = RETRIES;
    let timer: number | undefined;

    const connect = () => {
      setState('connecting');
      setReason('');
      const sock = new WebSocket(wsURL(path), wsProtocols());
      sock.binaryType = 'arraybuffer';
      ws = sock;
      sock.onopen = () => {
        retries = RETRIES;
        setState('connected');
        term.focus();
      };
      sock.onmessage = (e) => {
        if (typeof e.data === 'string') term.write(e.data);
        else term.write(new Uint8Array(e.data as ArrayBuffer));
      };
      sock.onclose = (e) => {
        if (disposed || ws !== sock) return;
        if (!e.wasClean && retries > 0) {
          retries--;
          timer = window.setTimeout(connect, 1000);
          return;
        }
        setState('closed');
        setReason(e.reason || (e.code === 1006 ? 'the connection was refused or lost' : `code ${e.code}`));
      };
    };
    connect();

    const d1 = term.onData((s) => {
      if (ws?.readyState === WebSocket.OPEN) ws.send(enc.encode(s));
    });
    const d2 = term.onBinary((s) => {
      if (ws?.readyState !== WebSocket.OPEN) return;
      const b = new Uint8Array(s.length);
      for (let i = 0; i < s.length; i++) b[i] = s.charCodeAt(i) & 0xff;
      ws.send(b);
    });
    return () => {
      disposed = true;
      clearTimeout(timer);
      d1.dispose();
      d2.dispose();
      ro.disconnect();
      ws?.close();
      term.dispose();
    };
  }, [namespace, name, attempt]);

  return (
    <div class="console">
      <div class="console-bar">
        <span role="status" data-testid="console-state">
          {state === 'connecting' ? 'Connecting…' : state === 'connected' ? 'Connected' : `Disconnected: ${reason}`}
        </span>
        {state === 'closed' && (
          <button type="button" class="small" onClick={() => setAttempt(attempt + 1)}>
            Reconnect
          </button>
        )}
      </div>
      <div class="terminal" ref={el} data-testid="serial-console" aria-label={`Serial console of ${name}`} role="region" />
    </div>
  );
}
