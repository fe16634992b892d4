// End-to-end run of the Sheaf web UI in headless Chromium:
// log in, upload an image, create a VM from it with the wizard, see it
// Running, read the guest's text on its serial console, stop it, delete it.
// Screenshots of the main pages go to SHEAF_SCREENSHOTS.
//
//   SHEAF_URL=https://127.0.0.1:6443 SHEAF_TOKEN=... SHEAF_IMAGE_FILE=disk.qcow2 \
//   SHEAF_MARKER='hello' SHEAF_SCREENSHOTS=/tmp/shots node e2e/run.mjs
//
// SHEAF_CONSOLE_INPUT (optional): a line typed into the serial console
// once it is connected (for a guest with a shell there); SHEAF_MARKER is
// then what its answer must show.

import { launch } from './browser.mjs';
import { mkdtempSync, mkdirSync, rmSync, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, basename } from 'node:path';

function env(name, fallback) {
  const v = process.env[name] ?? fallback;
  if (v === undefined || v === '') {
    console.error(`e2e: set ${name}`);
    process.exit(2);
  }
  return v;
}

const url = env('SHEAF_URL').replace(/\/+$/, '');
const token = env('SHEAF_TOKEN');
const imageFile = env('SHEAF_IMAGE_FILE');
const marker = env('SHEAF_MARKER');
const shots = env('SHEAF_SCREENSHOTS');
const namespace = process.env.SHEAF_NAMESPACE || 'default';
const slow = Number(process.env.SHEAF_E2E_TIMEOUT_SCALE || 1);
const T = (ms) => ms * slow;

if (!existsSync(imageFile)) {
  console.error(`e2e: SHEAF_IMAGE_FILE ${imageFile} does not exist`);
  process.exit(2);
}
mkdirSync(shots, { recursive: true });
rmSync(join(shots, 'failure.png'), { force: true });

const stamp = Date.now().toString(36);
const imageName = `e2e-img-${stamp}`;
const vmName = `e2e-vm-${stamp}`;
const userDataDir = mkdtempSync(join(tmpdir(), 'sheaf-e2e-'));

let step = 'start';
const t0 = Date.now();
function log(msg) {
  console.log(`[${((Date.now() - t0) / 1000).toFixed(1)}s] ${msg}`);
}
async function run(name, f) {
  step = name;
  log(name);
  return f();
}

const context = await launch(userDataDir);
const page = context.pages()[0] ?? (await context.newPage());
const consoleErrors = [];
page.on('console', (m) => {
  if (m.type() === 'error') consoleErrors.push(m.text());
});
page.on('pageerror', (e) => consoleErrors.push(String(e)));

const shot = (name) => page.screenshot({ path: join(shots, `${name}.png`), fullPage: true });

/** Calls the API from the page (same origin, same token). */
async function api(method, path, body) {
  return page.evaluate(
    async ({ method, path, body, token }) => {
      const r = await fetch(path, {
        method,
        headers: { Authorization: `Bearer ${token}`, 'Content-Type': 'application/json' },
        body: body === undefined ? undefined : JSON.stringify(body),
      });
      return { status: r.status, body: await r.text() };
    },
    { method, path, body, token },
  );
}

async function vmStatus() {
  return page
    .locator('h1 [data-testid="vm-status"]')
    .textContent({ timeout: 2000 })
    .catch(() => '');
}

async function waitStatus(want, timeout) {
  const end = Date.now() + timeout;
  let last = '';
  while (Date.now() < end) {
    last = (await vmStatus())?.trim() ?? '';
    if (want.includes(last)) return last;
    await page.waitForTimeout(1000);
  }
  throw new Error(`VM ${vmName} did not become ${want.join(' or ')} within ${timeout / 1000} s (status: ${last || 'none'})`);
}

let failed = false;
try {
  await run('log in', async () => {
    await page.goto(`${url}/`, { waitUntil: 'domcontentloaded' });
    await page.getByLabel('Bearer token').fill(token);
    await page.getByRole('button', { name: 'Log in' }).click();
    await page.getByRole('heading', { name: 'Dashboard', level: 1 }).waitFor({ timeout: T(15000) });
    await page
      .getByRole('table', { name: 'Nodes' })
      .locator('tbody tr')
      .first()
      .waitFor({ timeout: T(15000) });
    await shot('dashboard');
  });

  await run(`upload ${basename(imageFile)} as image ${imageName}`, async () => {
    await page.getByRole('navigation', { name: 'Main' }).getByRole('link', { name: 'Images' }).click();
    await page.getByRole('heading', { name: 'Images', level: 1 }).waitFor();
    const form = page.getByTestId('upload-form');
    await form.getByLabel('File (qcow2, raw or ISO)').setInputFiles(imageFile);
    await form.getByLabel('Name', { exact: true }).fill(imageName);
    await form.getByLabel('Namespace', { exact: true }).fill(namespace);
    await form.getByRole('button', { name: 'Upload' }).click();
    const row = page.getByTestId('image-table').locator(`tr[data-name="${imageName}"]`);
    await row.waitFor({ timeout: T(30000) });
    const state = row.getByTestId('image-state');
    const end = Date.now() + T(300000);
    for (;;) {
      const s = (await state.textContent())?.trim();
      if (s === 'Ready') break;
      if (s === 'Failed') {
        const msg = await row.textContent();
        throw new Error(`image ${imageName} failed: ${msg}`);
      }
      const err = await form
        .getByTestId('error')
        .textContent({ timeout: 100 })
        .catch(() => null);
      if (err) throw new Error(`upload refused: ${err}`);
      if (Date.now() > end) throw new Error(`image ${imageName} was not Ready within 300 s (state ${s})`);
      await page.waitForTimeout(1000);
    }
    await shot('images');
  });

  await run('open the VM list', async () => {
    await page.getByRole('navigation', { name: 'Main' }).getByRole('link', { name: 'Virtual machines' }).click();
    await page.getByRole('heading', { name: 'Virtual machines', level: 1 }).waitFor();
    await page.getByRole('table', { name: 'Virtual machines' }).waitFor();
    await shot('vm-list');
  });

  await run(`create VM ${vmName} with the wizard`, async () => {
    await page.getByRole('link', { name: 'Create VM' }).click();
    await page.getByRole('heading', { name: 'Create a virtual machine' }).waitFor();
    const wizard = page.getByTestId('vm-wizard');
    await wizard.getByLabel('Namespace', { exact: true }).selectOption(namespace);
    await wizard.getByLabel('Name', { exact: true }).fill(vmName);
    await wizard.getByLabel('CPU cores').fill('1');
    await wizard.getByLabel('Memory').fill('256Mi');
    const image = wizard.getByTestId('volume-0-image');
    await image.locator(`option[value="${namespace}/${imageName}"]`).waitFor({ state: 'attached', timeout: T(15000) });
    await image.selectOption(`${namespace}/${imageName}`);
    await wizard.locator('[data-testid="volume-0"]').getByLabel('Size').fill('1Gi');
    await shot('wizard');
    await wizard.getByRole('button', { name: 'Create', exact: true }).click();
    await Promise.race([
      page.waitForFunction((h) => location.hash === h, `#/vms/${namespace}/${vmName}`, { timeout: T(20000) }),
      wizard
        .getByTestId('error')
        .waitFor({ timeout: T(20000) })
        .then(async () => {
          throw new Error(`the server refused the VM: ${await wizard.getByTestId('error').textContent()}`);
        }),
    ]);
  });

  await run(`wait for ${vmName} to be Running`, async () => {
    await page.getByRole('heading', { name: vmName }).waitFor();
    await waitStatus(['Running'], T(300000));
    // The IP shows once the guest has its lease; not every guest asks for one.
    await page
      .getByTestId('vm-node')
      .filter({ hasText: /\S/ })
      .waitFor({ timeout: T(30000) });
    await shot('vm-detail');
  });

  await run('read the guest on its serial console', async () => {
    await page.getByRole('link', { name: 'Serial console' }).click();
    await page
      .getByTestId('console-state')
      .filter({ hasText: /^Connected$/ })
      .waitFor({ timeout: T(30000) })
      .catch(async () => {
        throw new Error(`the console did not connect: ${await page.getByTestId('console-state').textContent()}`);
      });
    const term = page.getByTestId('serial-console');
    await term.click();
    await page.keyboard.press('Enter');
    // A command for the guest's shell, if given: its answer is the marker.
    // Typed again every 10 s: a guest still booting drops what it gets.
    const input = process.env.SHEAF_CONSOLE_INPUT;
    let typed = 0;
    const end = Date.now() + T(240000);
    for (;;) {
      if (input && Date.now() - typed > 10000) {
        typed = Date.now();
        await page.keyboard.press('Enter');
        await page.keyboard.type(input);
        await page.keyboard.press('Enter');
      }
      const text =
        (await term
          .locator('.xterm-rows')
          .innerText()
          .catch(() => '')) ?? '';
      if (text.includes(marker)) break;
      const state = (await page.getByTestId('console-state').textContent())?.trim();
      if (state?.startsWith('Disconnected')) {
        throw new Error(`the console closed before "${marker}" showed: ${state}; it showed:\n${text.slice(-2000)}`);
      }
      if (Date.now() > end)
        throw new Error(`"${marker}" did not show on the serial console within 240 s; it showed:\n${text.slice(-2000)}`);
      await page.waitForTimeout(1000);
    }
    await shot('vm-console');
  });

  await run(`stop ${vmName}`, async () => {
    await page.getByRole('link', { name: 'Overview' }).click();
    await page.locator('.page-head').getByRole('button', { name: 'Stop', exact: true }).click();
    await waitStatus(['Stopped'], T(180000));
  });

  await run(`delete ${vmName}`, async () => {
    await page.locator('.page-head').getByRole('button', { name: 'Delete', exact: true }).click();
    const dialog = page.getByTestId('delete-vm-dialog');
    await dialog.getByRole('button', { name: 'Delete', exact: true }).click();
    await page.waitForFunction(() => location.hash === '#/vms', undefined, { timeout: T(20000) });
    const row = page.getByTestId('vm-table').locator(`tr[data-name="${vmName}"]`);
    await row.waitFor({ state: 'detached', timeout: T(120000) });
  });

  await run('screenshots of volumes and nodes', async () => {
    await page.getByRole('navigation', { name: 'Main' }).getByRole('link', { name: 'Volumes' }).click();
    await page.getByRole('heading', { name: 'Volumes', level: 1 }).waitFor();
    await page.waitForTimeout(500);
    await shot('volumes');
    await page.getByRole('navigation', { name: 'Main' }).getByRole('link', { name: 'Nodes' }).click();
    await page.getByRole('heading', { name: 'Nodes', level: 1 }).waitFor();
    await page.getByTestId('node-table').locator('tbody tr').first().waitFor();
    await shot('nodes');
  });

  await run(`delete image ${imageName}`, async () => {
    const r = await api('DELETE', `/apis/harvesterhci.io/v1beta1/namespaces/${namespace}/virtualmachineimages/${imageName}`);
    if (r.status >= 300) log(`(the image stays: ${r.status} ${r.body.slice(0, 200)})`);
  });
  log('passed');
} catch (e) {
  failed = true;
  console.error(`\ne2e FAILED at step "${step}": ${e?.message ?? e}`);
  if (consoleErrors.length) console.error(`browser console errors:\n  ${consoleErrors.slice(-10).join('\n  ')}`);
  await shot('failure').catch(() => {});
  console.error(`screenshot: ${join(shots, 'failure.png')}`);
} finally {
  await context.close().catch(() => {});
  rmSync(userDataDir, { recursive: true, force: true });
}
process.exit(failed ? 1 : 0);
