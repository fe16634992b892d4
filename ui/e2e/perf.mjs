// How long the VM list takes to show 1,000 VMs (with their instances),
// served by a stand-in for the API so that no server has to hold them.
//
//   SHEAF_URL=http://127.0.0.1:5173 node e2e/perf.mjs     # vite dev or preview
// Exits non-zero when it takes more than SHEAF_PERF_BUDGET_MS (default 1000).

import { chromium } from 'playwright-core';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

const url = (process.env.SHEAF_URL || 'http://127.0.0.1:5173').replace(/\/+$/, '');
const budget = Number(process.env.SHEAF_PERF_BUDGET_MS || 1000);
const N = Number(process.env.SHEAF_PERF_VMS || 1000);

const phases = ['Running', 'Stopped', 'Paused', 'Starting', 'ErrorUnschedulable'];
const vms = Array.from({ length: N }, (_, i) => ({
  apiVersion: 'kubevirt.io/v1',
  kind: 'VirtualMachine',
  metadata: {
    name: `vm-${String(i).padStart(4, '0')}`,
    namespace: i % 3 ? 'default' : 'prod',
    uid: `uid-${i}`,
    resourceVersion: '1',
    creationTimestamp: new Date(Date.now() - i * 60000).toISOString(),
  },
  spec: { runStrategy: 'Always', template: { spec: { domain: { cpu: { cores: 1 }, memory: { guest: '1Gi' } } } } },
  status: { printableStatus: phases[i % phases.length] },
}));
const vmis = vms
  .filter((_, i) => i % phases.length === 0)
  .map((v, i) => ({
    apiVersion: 'kubevirt.io/v1',
    kind: 'VirtualMachineInstance',
    metadata: { ...v.metadata, uid: `vmi-${i}` },
    status: { phase: 'Running', nodeName: `node-${i % 5}`, interfaces: [{ ipAddress: `10.53.${i >> 8}.${i & 255}` }] },
  }));
const list = (kind, items) => JSON.stringify({ kind, apiVersion: 'v1', metadata: { resourceVersion: '1' }, items });

const dir = mkdtempSync(join(tmpdir(), 'sheaf-perf-'));
const context = await chromium.launchPersistentContext(dir, {
  executablePath: process.env.SHEAF_CHROMIUM || '/usr/bin/chromium',
  headless: true,
  ignoreHTTPSErrors: true,
  viewport: { width: 1280, height: 800 },
  args: [
    '--no-sandbox',
    '--disable-gpu',
    '--disable-quic',
    '--no-first-run',
    '--disable-background-networking',
    '--disable-component-update',
    '--disable-sync',
  ],
});
let code = 0;
try {
  const page = context.pages()[0] ?? (await context.newPage());
  await context.route(/\/(api|apis)\//, async (route) => {
    const u = new URL(route.request().url());
    if (u.searchParams.get('watch')) return; // a watch that never says anything
    const p = u.pathname;
    if (p.endsWith('/virtualmachines')) return route.fulfill({ contentType: 'application/json', body: list('VirtualMachineList', vms) });
    if (p.endsWith('/virtualmachineinstances'))
      return route.fulfill({ contentType: 'application/json', body: list('VirtualMachineInstanceList', vmis) });
    if (p.endsWith('/namespaces')) {
      const ns = ['default', 'prod'].map((name) => ({ metadata: { name } }));
      return route.fulfill({ contentType: 'application/json', body: list('NamespaceList', ns) });
    }
    return route.fulfill({ contentType: 'application/json', body: list('List', []) });
  });
  await page.goto(`${url}/`);
  await page.evaluate(() => sessionStorage.setItem('sheaf.token', 'perf'));
  await page.reload();
  await page.getByRole('heading', { name: 'Dashboard' }).waitFor();
  const t0 = Date.now();
  await page.getByRole('navigation', { name: 'Main' }).getByRole('link', { name: 'Virtual machines' }).click();
  await page.locator(`tr[data-name="vm-${String(N - 1).padStart(4, '0')}"]`).waitFor({ state: 'attached' });
  const ms = Date.now() - t0;
  // The part spent in the page after the lists arrived (the stand-in API's
  // own overhead left out).
  const inPage = await page.evaluate(() => {
    const lists = performance.getEntriesByType('resource').filter((e) => /\/virtualmachine(instance)?s$/.test(new URL(e.name).pathname));
    const arrived = Math.max(...lists.map((e) => e.responseEnd));
    return Math.round(performance.now() - arrived);
  });
  console.log(`rendered ${inPage} ms after the lists arrived`);
  const rows = await page.getByTestId('vm-table').locator('tbody tr').count();
  console.log(`${rows} VMs listed in ${ms} ms (budget ${budget} ms)`);
  if (rows !== N || ms > budget) code = 1;
} catch (e) {
  console.error(`perf FAILED: ${e?.message ?? e}`);
  code = 1;
} finally {
  await context.close();
  rmSync(dir, { recursive: true, force: true });
}
process.exit(code);
