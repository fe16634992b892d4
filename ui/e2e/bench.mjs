// The VM list with many VMs, in Debian's Chromium against a real server:
// time from opening the page (logged in) until every VM's row is on screen,
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
let transfer = null;
for (let i = 0; i < runs; i++) {
  const page = await context.newPage();
  await page.addInitScript((t) => sessionStorage.setItem('sheaf.token', t), token);
  const t0 = Date.now();
  await page.goto(`${url}/#/vms`, { waitUntil: 'commit' });
  await page.waitForFunction((want) => document.querySelectorAll('[data-testid="vm-table"] tbody tr').length >= want,
    n, { timeout: 30000, polling: 'raf' });
  sheaf.push(Date.now() - t0);
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
      trs.map((tr) => [...tr.querySelectorAll('td')].map((td) => td.textContent)));
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
    console.log(JSON.stringify({ vms: n, sheaf_ms: median(sheaf), sheaf_runs_ms: sheaf, static_html_ms: median(base),
      static_runs_ms: base, ...transfer }));
  }
  await page.close();
}
await context.close();
rmSync(dir, { recursive: true, force: true });
