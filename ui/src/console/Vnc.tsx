// The graphical console: noVNC's RFB client over the VMI's vnc WebSocket.

import { useEffect, useRef, useState } from 'preact/hooks';
import RFB from '@novnc/novnc';
import { resourcePath, wsProtocols, wsURL } from '../api';

export default function VncConsole({ namespace, name }: { namespace: string; name: string }) {
  const el = useRef<HTMLDivElement>(null);
  const rfb = useRef<any>(null);
  const [state, setState] = useState('Connecting…');
  const [attempt, setAttempt] = useState(0);

  useEffect(() => {
    if (!el.current) return;
    const path = `${resourcePath('subresources.kubevirt.io/v1', 'virtualmachineinstances', namespace, name)}/vnc`;
    setState('Connecting…');
    const r = new (RFB as any)(el.current, wsURL(path), { wsProtocols: wsProtocols() });
    r.scaleViewport = true;
    r.resizeSession = false;
    r.addEventListener('connect', () => setState('Connected'));
    r.addEventListener('disconnect', (e: any) =>
      setState(e.detail?.clean ? 'Disconnected' : 'Disconnected: the connection was refused or lost'),
    );
    r.addEventListener('securityfailure', (e: any) => setState(`Security failure: ${e.detail?.reason ?? ''}`));
    rfb.current = r;
    return () => {
      try {
        r.disconnect();
      } catch {
        /* already closed */
      }
      rfb.current = null;
    };
  }, [namespace, name, attempt]);

  return (
    <div class="console">
      <div class="console-bar">
        <span role="status" data-testid="vnc-state">
          {state}
        </span>
        <button type="button" class="small" onClick={() => rfb.current?.sendCtrlAltDel()}>
          Send Ctrl+Alt+Del
        </button>
        {state.startsWith('Disconnected') && (
          <button type="button" class="small" onClick={() => setAttempt(attempt + 1)}>
            Reconnect
          </button>
        )}
      </div>
      <div class="vnc" ref={el} data-testid="vnc-console" role="region" aria-label={`Display of ${name}`} />
    </div>
  );
}
