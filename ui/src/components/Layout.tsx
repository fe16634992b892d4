import type { ComponentChildren } from 'preact';
import { useEffect, useState } from 'preact/hooks';
import { useResource } from '../store';
import { useNamespace } from '../router';
import { Toasts } from './Toasts';

const NAV: { href: string; label: string; match: string[] }[] = [
  { href: '#/', label: 'Dashboard', match: ['', 'dashboard'] },
  { href: '#/vms', label: 'Virtual machines', match: ['vms', 'r/virtualmachines', 'r/virtualmachineinstances', 'r/migrations'] },
  { href: '#/images', label: 'Images', match: ['images', 'r/images'] },
  {
    href: '#/storage',
    label: 'Volumes',
    match: ['storage', 'r/volumes', 'r/persistentvolumeclaims', 'r/volumesnapshots', 'r/storageclasses', 'r/disks'],
  },
  { href: '#/backups', label: 'Backups', match: ['backups', 'r/vmbackups', 'r/vmrestores', 'r/schedulevmbackups', 'r/backups'] },
  { href: '#/networks', label: 'Networks', match: ['networks', 'r/networks', 'r/ippools', 'r/clusternetworks', 'r/vlanconfigs'] },
  { href: '#/nodes', label: 'Nodes', match: ['nodes', 'r/nodes'] },
  { href: '#/templates', label: 'Templates', match: ['templates', 'r/templates', 'r/templateversions'] },
  { href: '#/r/keypairs', label: 'SSH keys', match: ['r/keypairs'] },
  { href: '#/r/events', label: 'Events', match: ['r/events'] },
  { href: '#/settings', label: 'Settings', match: ['settings', 'r/backuptargets', 'r/namespaces', 'r/secrets', 'r/configmaps'] },
];

function NamespacePicker() {
  const [ns, setNs] = useNamespace();
  const { items } = useResource('v1', 'namespaces');
  return (
    <div class="ns-picker">
      <label for="ns-picker">Namespace</label>
      <select id="ns-picker" value={ns} onChange={(e) => setNs(e.currentTarget.value)} data-testid="namespace">
        <option value="">All namespaces</option>
        {items.map((n) => (
          <option value={n.metadata.name}>{n.metadata.name}</option>
        ))}
        {ns && !items.some((n) => n.metadata.name === ns) && <option value={ns}>{ns}</option>}
      </select>
    </div>
  );
}

export function Layout({ route, children, onLogout }: { route: string[]; children: ComponentChildren; onLogout: () => void }) {
  const [open, setOpen] = useState(false);
  const here = route[0] === 'r' ? `r/${route[1] ?? ''}` : (route[0] ?? '');
  useEffect(() => setOpen(false), [route.join('/')]);
  return (
    <div class="shell">
      <a
        class="skip"
        href="#main"
        onClick={(e) => {
          e.preventDefault();
          document.getElementById('main')?.focus();
        }}
      >
        Skip to content
      </a>
      <header class="topbar">
        <button type="button" class="menu-toggle" aria-expanded={open} aria-controls="nav" onClick={() => setOpen(!open)}>
          Menu
        </button>
        <a class="brand" href="#/">
          <span class="logo" aria-hidden="true" /> Sheaf
        </a>
        <div class="spacer" />
        <NamespacePicker />
        <button type="button" onClick={onLogout}>
          Log out
        </button>
      </header>
      <nav id="nav" class={open ? 'nav open' : 'nav'} aria-label="Main">
        <ul>
          {NAV.map((n) => {
            const current = n.match.includes(here);
            return (
              <li>
                <a href={n.href} aria-current={current ? 'page' : undefined}>
                  {n.label}
                </a>
              </li>
            );
          })}
        </ul>
      </nav>
      <main id="main" tabIndex={-1}>
        {children}
      </main>
      <Toasts />
    </div>
  );
}
