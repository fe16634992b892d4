import { useMemo } from 'preact/hooks';
import { resourcePath, sendJSON, errorMessage } from '../api';
import { useResource, type K8sObject } from '../store';
import { condition, formatBytes, parseQuantity } from '../format';
import { href } from '../router';
import { Table, type TableColumn } from '../components/Table';
import { notify } from '../components/Toasts';
import { registerNodeActions } from './ResourceDetail';
import { ageCol } from './ResourceList';

const MAINTAIN = 'harvesterhci.io/maintain-status';
const PROGRESS = 'sheaf.io/maintenance-progress';

async function patchNode(name: string, body: unknown, done: string) {
  try {
    await sendJSON('PATCH', resourcePath('v1', 'nodes', undefined, name), body, 'application/merge-patch+json');
    notify(done);
  } catch (e) {
    notify(`${name}: ${errorMessage(e)}`, true);
  }
}

export const cordon = (n: string) => patchNode(n, { spec: { unschedulable: true } }, `Node ${n} cordoned`);
export const uncordon = (n: string) => patchNode(n, { spec: { unschedulable: null } }, `Node ${n} uncordoned`);
export const maintain = (n: string) =>
  patchNode(n, { metadata: { annotations: { [MAINTAIN]: 'running' } } }, `Node ${n}: maintenance mode; its VMs are moving away`);
export const unmaintain = (n: string) =>
  patchNode(n, { metadata: { annotations: { [MAINTAIN]: null } }, spec: { unschedulable: null } }, `Node ${n} is back in service`);

function NodeButtons({ node }: { node: K8sObject }) {
  const name = node.metadata.name;
  const inMaintenance = !!node.metadata.annotations?.[MAINTAIN];
  return (
    <div class="row-actions">
      {node.spec?.unschedulable ? (
        <button type="button" class="small" aria-label={`Uncordon ${name}`} onClick={() => uncordon(name)}>
          Uncordon
        </button>
      ) : (
        <button type="button" class="small" aria-label={`Cordon ${name}`} onClick={() => cordon(name)}>
          Cordon
        </button>
      )}
      {inMaintenance ? (
        <button type="button" class="small" aria-label={`End maintenance of ${name}`} onClick={() => unmaintain(name)}>
          End maintenance
        </button>
      ) : (
        <button type="button" class="small" aria-label={`Maintenance mode for ${name}`} onClick={() => maintain(name)}>
          Maintenance mode
        </button>
      )}
    </div>
  );
}

function NodeActionsByName({ name }: { name: string }) {
  const nodes = useResource('v1', 'nodes');
  const node = nodes.items.find((n) => n.metadata.name === name);
  if (!node) return <></>;
  return <NodeButtons node={node} />;
}
registerNodeActions(NodeActionsByName);

export function Nodes() {
  const nodes = useResource('v1', 'nodes');
  const columns = useMemo<TableColumn<K8sObject>[]>(
    () => [
      {
        title: 'Name',
        text: (o) => o.metadata.name,
        cell: (o) => <a href={href('r', 'nodes', '_', o.metadata.name)}>{o.metadata.name}</a>,
      },
      {
        title: 'Status',
        text: (o) => condition(o, 'Ready')?.status ?? '',
        cell: (o) => {
          const ready = condition(o, 'Ready')?.status === 'True';
          const m = o.metadata.annotations?.[MAINTAIN];
          return (
            <>
              <span class={`badge ${ready ? 's-running' : 's-error'}`}>{ready ? 'Ready' : 'NotReady'}</span>
              {o.spec?.unschedulable && <span class="badge s-paused">Cordoned</span>}
              {m && <span class="badge s-migrating">Maintenance {m}</span>}
            </>
          );
        },
      },
      { title: 'Address', text: (o) => o.status?.addresses?.[0]?.address ?? '', cell: (o) => o.status?.addresses?.[0]?.address ?? '' },
      { title: 'CPU', sort: (o) => Number(o.status?.capacity?.cpu ?? 0), cell: (o) => o.status?.capacity?.cpu ?? '' },
      {
        title: 'Memory',
        sort: (o) => parseQuantity(o.status?.capacity?.memory),
        cell: (o) => formatBytes(parseQuantity(o.status?.capacity?.memory)),
      },
      { title: 'Maintenance', cell: (o) => <span class="wrap">{o.metadata.annotations?.[PROGRESS] ?? ''}</span> },
      ageCol(),
      { title: 'Actions', class: 'actions', cell: (o) => <NodeButtons node={o} /> },
    ],
    [],
  );
  return (
    <section>
      <h1>Nodes</h1>
      {nodes.error && (
        <p class="error" role="alert">
          {nodes.error}
        </p>
      )}
      <Table label="Nodes" testid="node-table" items={nodes.items} columns={columns} loaded={nodes.loaded} />
    </section>
  );
}
