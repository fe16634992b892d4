// The VM list with many VMs, in Debian's Chromium against a real server:
// time from opening the page (logged in) until the list holds every VM and
// shows its first page (100 rows), then the time a sort by name takes,
// and what the page transferred (its own files, compressed as sent, and the
// API's answers). Baseline in the same run: the same rows as a plain HTML
// table (no script) rendered by the same browser.
//
//   SHEAF_URL=... SHEAF_TOKEN=... SHEAF_VMS=1000 node e2e/bench.mjs
// Prints one JSON line.

import { launch } from './browser.mjs';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

const url = process.env.SHEAF_URL.replace(/\/+$/, '');
const token = process.env.SHEAF_TOKEN;
const n = Number(process.env.SHEAF_VMS || 1000);
const runs = Number(process.env.RUNS || 3);
const dir = mkdtempSync(join(tmpdir(), 'sheaf-bench-'));
const context = await launch(dir);
const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
const sheaf = [];
const sorts = [];
let transfer = null;
for (let i = 0; i < runs; i++) {
  const page = await context.newPage();
  await page.addInitScript((t) => sessionStorage.setItem('sheaf.token', t), token);
  const t0 = Date.now();
  await page.goto(`${url}/#/vms`, { waitUntil: 'commit' });
  // The list pages its rows (100 a page): done once the table holds all n
  // VMs (its data-total) and shows its first page.
  await page.waitForFunction(
    (want) => {
      const t = document.querySelector('[data-testid="vm-table"]');
      return t && Number(t.getAttribute('data-total')) >= want && t.querySelectorAll('tbody tr').length >= Math.min(want, 100);
    },
    n,
    { timeout: 30000, polling: 'raf' },
  );
  sheaf.push(Date.now() - t0);
  // A click on the Name heading sorts all n rows (descending after ascending).
  const s0 = Date.now();
  const byName = page.getByTestId('vm-table').getByRole('button', { name: 'Name', exact: true });
  await byName.click();
  await byName.click();
  await page.waitForFunction(
    (last) => document.querySelector('[data-testid="vm-table"] tbody tr')?.getAttribute('data-name') === last,
    `vm-${String(n - 1).padStart(4, '0')}`,
    { timeout: 30000, polling: 'raf' },
  );
  sorts.push(Date.now() - s0);
  transfer = await page.evaluate(() => {
    const nav = performance.getEntriesByType('navigation')[0];
    const res = performance.getEntriesByType('resource');
    const files = res.filter((r) => new URL(r.name).pathname.startsWith('/assets/'));
    const api = res.filter((r) => new URL(r.name).pathname.startsWith('/api'));
    const sum = (xs, k) => xs.reduce((a, r) => a + (r[k] || 0), 0);
    return {
      page_bytes: nav.encodedBodySize + sum(files, 'encodedBodySize'),
      page_bytes_uncompressed: nav.decodedBodySize + sum(files, 'decodedBodySize'),
      api_bytes: sum(api, 'encodedBodySize'),
    };
  });
  if (i === runs - 1) {
    // The same rows as plain HTML, for the baseline.
    const rows = await page.$$eval('[data-testid="vm-table"] tbody tr', (trs) =>
      trs.map((tr) => [...tr.querySelectorAll('td')].map((td) => td.textContent)),
    );
    const html = `<!doctype html><table><tbody>${rows.map((r) => `<tr>${r.map((c) => `<td>${c}</td>`).join('')}</tr>`).join('')}</tbody></table>`;
    const base = [];
    for (let j = 0; j < runs; j++) {
      const p = await context.newPage();
      const b0 = Date.now();
      await p.setContent(html, { waitUntil: 'load' });
      await p.evaluate(() => new Promise((r) => requestAnimationFrame(() => r())));
      base.push(Date.now() - b0);
      await p.close();
    }
    console.log(
      JSON.stringify({
        vms: n,
        sheaf_ms: median(sheaf),
        sheaf_runs_ms: sheaf,
        sort_ms: median(sorts),
        sort_runs_ms: sorts,
        static_html_ms: median(base),
        static_runs_ms: base,
        ...transfer,
      }),
    );
  }
  await page.close();
}
await context.close();
rmSync(dir, { recursive: true, force: true });
