import type { ComponentType } from 'preact';
import { useEffect, useState } from 'preact/hooks';
import { useResource } from '../store';
import { href, navigate } from '../router';
import { kindById } from '../kinds';
import { ObjectYaml } from './ResourceDetail';
import { statusBadge, runAction, DeleteVmDialog } from './VmList';
import { ACTION_LABELS, actionsFor } from '../vm';
import { age } from '../format';
import { VmDisks, VmBackupDialog, VmCloneDialog } from './VmDisks';

type ConsoleProps = { namespace: string; name: string };

/** A component loaded on first use (the consoles keep the first page small). */
function useLazy(load: (() => Promise<{ default: ComponentType<ConsoleProps> }>) | null) {
  const [C, setC] = useState<ComponentType<ConsoleProps> | null>(null);
  const [error, setError] = useState('');
  useEffect(() => {
    if (!load || C) return;
    load()
      .then((m) => setC(() => m.default))
      .catch((e) => setError(String(e)));
  }, [load]);
  return { C, error };
}

const loadSerial = () => import('../console/Serial');
const loadVnc = () => import('../console/Vnc');

const TABS = [
  ['overview', 'Overview'],
  ['yaml', 'YAML'],
  ['console', 'Serial console'],
  ['vnc', 'VNC'],
] as const;

export function VmDetail({ namespace, name, tab }: { namespace: string; name: string; tab: string }) {
  const vms = useResource('kubevirt.io/v1', 'virtualmachines', namespace);
  const vmis = useResource('kubevirt.io/v1', 'virtualmachineinstances', namespace);
  const events = useResource('v1', 'events', namespace);
  const vm = vms.items.find((v) => v.metadata.name === name);
  const vmi = vmis.items.find((v) => v.metadata.name === name);
  const [deleting, setDeleting] = useState(false);
  const [backup, setBackup] = useState<'backup' | 'snapshot' | null>(null);
  const [cloning, setCloning] = useState(false);
  const serial = useLazy(tab === 'console' ? loadSerial : null);
  const vnc = useLazy(tab === 'vnc' ? loadVnc : null);
  const status = vm?.status?.printableStatus;
  const running = vmi?.status?.phase === 'Running';

  return (
    <section>
      <nav aria-label="Breadcrumb" class="crumbs">
        <a href="#/vms">Virtual machines</a> / {namespace} / {name}
      </nav>
      <div class="page-head">
        <h1>
          {name} {vm && statusBadge(status)}
        </h1>
        {vm && (
          <div class="buttons">
            {actionsFor(status).map((a) => (
              <button type="button" onClick={() => runAction(vm, a)}>
                {ACTION_LABELS[a]}
              </button>
            ))}
            <button type="button" onClick={() => setBackup('backup')}>
              Back up
            </button>
            <button type="button" onClick={() => setBackup('snapshot')}>
              Snapshot
            </button>
            <button type="button" onClick={() => setCloning(true)}>
              Clone
            </button>
            <button type="button" class="danger" onClick={() => setDeleting(true)}>
              Delete
            </button>
          </div>
        )}
      </div>
      {vms.loaded && !vm && (
        <p class="error" role="alert">
          There is no VM {namespace}/{name} (any more). <a href="#/vms">Back to the list</a>.
        </p>
      )}
      <nav class="tabs" aria-label="VM views">
        {TABS.map(([id, label]) => (
          <a href={href('vms', namespace, name, id)} aria-current={tab === id ? 'page' : undefined}>
            {label}
          </a>
        ))}
      </nav>
      {tab === 'overview' && vm && (
        <div class="overview">
          <dl class="facts">
            <dt>Status</dt>
            <dd>{status ?? ''}</dd>
            <dt>Node</dt>
            <dd data-testid="vm-node">{vmi?.status?.nodeName ?? ''}</dd>
            <dt>IP address</dt>
            <dd data-testid="vm-ip">{vmi?.status?.interfaces?.[0]?.ipAddress ?? ''}</dd>
            <dt>CPU</dt>
            <dd>{vm.spec?.template?.spec?.domain?.cpu?.cores ?? ''}</dd>
            <dt>Memory</dt>
            <dd>{vm.spec?.template?.spec?.domain?.memory?.guest ?? vm.spec?.template?.spec?.domain?.resources?.requests?.memory ?? ''}</dd>
            <dt>Run strategy</dt>
            <dd>{vm.spec?.runStrategy ?? (vm.spec?.running ? 'Always' : 'Halted')}</dd>
            <dt>Created</dt>
            <dd>{age(vm.metadata.creationTimestamp)} ago</dd>
          </dl>
          <VmDisks vm={vm} vmi={vmi} />
          <h2>Conditions</h2>
          <ul>
            {[
              ...(vm.status?.conditions ?? []).map((c: any) => ({ ...c, of: 'VM' })),
              ...(vmi?.status?.conditions ?? []).map((c: any) => ({ ...c, of: 'Instance' })),
            ].map((c: any) => (
              <li>
                <span class="muted">{c.of}:</span> <strong>{c.type}</strong> {c.status}
                {c.reason ? ` (${c.reason})` : ''}
                {c.message ? `: ${c.message}` : ''}
              </li>
            ))}
          </ul>
          <h2>Events</h2>
          <ul>
            {events.items
              .filter((e) => e.involvedObject?.name === name)
              .sort((a, b) =>
                (a.lastTimestamp ?? a.metadata.creationTimestamp) < (b.lastTimestamp ?? b.metadata.creationTimestamp) ? 1 : -1,
              )
              .slice(0, 20)
              .map((e) => (
                <li>
                  <span class={`badge ${e.type === 'Warning' ? 's-error' : 's-stopped'}`}>{e.type}</span> {e.reason}: {e.message}
                </li>
              ))}
          </ul>
        </div>
      )}
      {tab === 'yaml' && (
        <ObjectYaml kind={kindById('virtualmachines')!} namespace={namespace} name={name} onDeleted={() => navigate('/vms')} />
      )}
      {(tab === 'console' || tab === 'vnc') && !running && (
        <p class="notice" role="status">
          The VM is not running: start it to use its console.
        </p>
      )}
      {tab === 'console' &&
        running &&
        (serial.C ? <serial.C namespace={namespace} name={name} /> : <p class="muted">{serial.error || 'Loading the console…'}</p>)}
      {tab === 'vnc' &&
        running &&
        (vnc.C ? <vnc.C namespace={namespace} name={name} /> : <p class="muted">{vnc.error || 'Loading the VNC client…'}</p>)}
      {vm && <VmBackupDialog vm={vm} type={backup} onClose={() => setBackup(null)} />}
      {vm && <VmCloneDialog vm={vm} open={cloning} onClose={() => setCloning(false)} />}
      <DeleteVmDialog vm={deleting ? (vm ?? null) : null} onClose={() => setDeleting(false)} onDeleted={() => navigate('/vms')} />
    </section>
  );
}
