import { useResource, type K8sObject } from '../store';
import { age, condition, formatBytes, parseQuantity } from '../format';
import { href, useNamespace } from '../router';

function eventTime(e: K8sObject): string {
  return e.lastTimestamp ?? e.eventTime ?? e.firstTimestamp ?? e.metadata.creationTimestamp ?? '';
}

function Counts({ title, counts, testid }: { title: string; counts: Map<string, number>; testid: string }) {
  const entries = [...counts.entries()].sort();
  const total = entries.reduce((n, [, c]) => n + c, 0);
  return (
    <section class="card" aria-labelledby={`${testid}-h`} data-testid={testid}>
      <h2 id={`${testid}-h`}>{title}</h2>
      <p class="big">{total}</p>
      <ul class="counts">
        {entries.map(([k, c]) => (
          <li>
            <span class={`badge s-${k.toLowerCase()}`}>{k}</span> {c}
          </li>
        ))}
      </ul>
    </section>
  );
}

export function Dashboard() {
  const [ns] = useNamespace();
  const nodes = useResource('v1', 'nodes');
  const vms = useResource('kubevirt.io/v1', 'virtualmachines', ns);
  const volumes = useResource('sheaf.io/v1alpha1', 'volumes', ns);
  const images = useResource('harvesterhci.io/v1beta1', 'virtualmachineimages', ns);
  const events = useResource('v1', 'events', ns);

  const vmCounts = new Map<string, number>();
  for (const v of vms.items) {
    const s = v.status?.printableStatus ?? 'Unknown';
    vmCounts.set(s, (vmCounts.get(s) ?? 0) + 1);
  }
  const volCounts = new Map<string, number>();
  for (const v of volumes.items) {
    const s = v.status?.state ?? 'unknown';
    volCounts.set(s, (volCounts.get(s) ?? 0) + 1);
  }
  const imgCounts = new Map<string, number>();
  for (const i of images.items) {
    const s = condition(i, 'Imported')?.status === 'True' ? 'Ready' : i.status?.failed ? 'Failed' : 'Importing';
    imgCounts.set(s, (imgCounts.get(s) ?? 0) + 1);
  }
  const recent = [...events.items].sort((a, b) => (eventTime(a) < eventTime(b) ? 1 : -1)).slice(0, 25);

  return (
    <section>
      <h1>Dashboard</h1>
      <div class="cards">
        <Counts title="Virtual machines" counts={vmCounts} testid="vm-counts" />
        <Counts title="Volumes" counts={volCounts} testid="volume-counts" />
        <Counts title="Images" counts={imgCounts} testid="image-counts" />
      </div>

      <h2>Nodes</h2>
      <div class="scroll-x">
        <table aria-label="Nodes" data-testid="dashboard-nodes">
          <thead>
            <tr>
              <th scope="col">Name</th>
              <th scope="col">Status</th>
              <th scope="col">CPU</th>
              <th scope="col">Memory</th>
            </tr>
          </thead>
          <tbody>
            {nodes.items.map((n) => {
              const ready = condition(n, 'Ready')?.status === 'True';
              return (
                <tr key={n.metadata.name}>
                  <td>
                    <a href={href('r', 'nodes', '_', n.metadata.name)}>{n.metadata.name}</a>
                  </td>
                  <td>
                    <span class={`badge ${ready ? 's-running' : 's-error'}`}>{ready ? 'Ready' : 'NotReady'}</span>
                    {n.spec?.unschedulable && <span class="badge s-paused">Cordoned</span>}
                  </td>
                  <td>{n.status?.capacity?.cpu ?? ''}</td>
                  <td>{formatBytes(parseQuantity(n.status?.capacity?.memory))}</td>
                </tr>
              );
            })}
          </tbody>
        </table>
      </div>
      {nodes.error && (
        <p class="error" role="alert">
          {nodes.error}
        </p>
      )}

      <h2>Recent events</h2>
      <div class="scroll-x">
        <table aria-label="Recent events" data-testid="dashboard-events">
          <thead>
            <tr>
              <th scope="col">Age</th>
              <th scope="col">Type</th>
              <th scope="col">Reason</th>
              <th scope="col">Object</th>
              <th scope="col">Message</th>
            </tr>
          </thead>
          <tbody>
            {recent.map((e) => (
              <tr key={e.metadata.uid ?? e.metadata.name}>
                <td>{age(eventTime(e))}</td>
                <td>
                  <span class={`badge ${e.type === 'Warning' ? 's-error' : 's-stopped'}`}>{e.type}</span>
                </td>
                <td>{e.reason}</td>
                <td>
                  {e.involvedObject?.kind}/{e.involvedObject?.name}
                </td>
                <td class="wrap">{e.message}</td>
              </tr>
            ))}
          </tbody>
        </table>
      </div>
      {events.loaded && recent.length === 0 && <p class="muted">No events.</p>}
    </section>
  );
}
