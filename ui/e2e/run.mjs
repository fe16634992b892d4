// End-to-end run of the Sheaf web UI in headless Chromium:
// log in, upload an image, create a VM from it with the wizard, see it
// Running, read the guest's text on its serial console, hotplug a new
// blank volume into it, snapshot and expand that volume on the volumes
// page, sort that list, unplug the volume, stop the VM, delete it. What
// the page shows is checked against the API.
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
const hotName = `e2e-hot-${stamp}`;
const snapName = `e2e-snap-${stamp}`;
const backupName = `e2e-backup-${stamp}`;
const restoredVm = `e2e-restored-${stamp}`;
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

async function apiJSON(path) {
  const r = await api('GET', path);
  if (r.status !== 200) throw new Error(`GET ${path}: ${r.status} ${r.body.slice(0, 300)}`);
  return JSON.parse(r.body);
}

/** Polls the API until `ok(object)` holds; throws with the last object. */
async function untilAPI(path, ok, what, timeout) {
  const end = Date.now() + timeout;
  let last;
  while (Date.now() < end) {
    const r = await api('GET', path);
    last = r.status === 200 ? JSON.parse(r.body) : r;
    if (r.status === 200 && ok(last)) return last;
    await page.waitForTimeout(1000);
  }
  throw new Error(`${what} within ${timeout / 1000} s; the API says: ${JSON.stringify(last).slice(0, 1500)}`);
}

/** Waits for a dialog to close after its action; its error box, if any, is the failure. */
async function dialogDone(dialog, what, timeout) {
  const end = Date.now() + timeout;
  while (Date.now() < end) {
    if (!(await dialog.isVisible().catch(() => false))) return;
    const err = await dialog
      .getByTestId('error')
      .textContent({ timeout: 100 })
      .catch(() => null);
    if (err) throw new Error(`${what}: the server refused: ${err}`);
    await page.waitForTimeout(300);
  }
  throw new Error(`${what}: the dialog was still open after ${timeout / 1000} s`);
}

const ns = (plural, name, group = 'sheaf.io/v1alpha1') =>
  `${group === 'v1' ? '/api/v1' : `/apis/${group}`}/namespaces/${namespace}/${plural}${name ? `/${name}` : ''}`;

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
    // A load the browser drops (ERR_NETWORK_CHANGED while a node's bridges
    // and taps come and go) leaves a blank page: load it again.
    for (let attempt = 1; ; attempt++) {
      await page.goto(`${url}/`, { waitUntil: 'domcontentloaded' }).catch((e) => log(`load: ${e.message}`));
      const shown = await page
        .getByLabel('Bearer token')
        .waitFor({ timeout: T(15000) })
        .then(
          () => true,
          () => false,
        );
      if (shown) break;
      if (attempt === 3) throw new Error('the login page did not render in 3 loads');
      log('the login page did not render: loading it again');
    }
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
    // The console's code is loaded on first use; a load the browser drops
    // (ERR_NETWORK_CHANGED while other nodes' bridges and taps come and go)
    // leaves no console: load the page again.
    for (let attempt = 1; ; attempt++) {
      const connected = await page
        .getByTestId('console-state')
        .filter({ hasText: /^Connected$/ })
        .waitFor({ timeout: T(30000) })
        .then(
          () => true,
          () => false,
        );
      if (connected) break;
      const state = await page
        .getByTestId('console-state')
        .textContent({ timeout: 1000 })
        .catch(() => 'no console shown');
      if (attempt === 3) throw new Error(`the console did not connect in 3 loads: ${state}`);
      log(`the console did not connect (${state}): loading the page again`);
      await page.reload({ waitUntil: 'domcontentloaded' }).catch((e) => log(`reload: ${e.message}`));
    }
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

  await run(`hotplug a blank volume ${hotName} into the running ${vmName}`, async () => {
    await page.getByRole('link', { name: 'Overview' }).click();
    await page.getByRole('button', { name: 'Add disk', exact: true }).click();
    const dialog = page.getByTestId('add-disk-dialog');
    await dialog.getByLabel('Name', { exact: true }).fill(hotName);
    await dialog.getByLabel('Size', { exact: true }).fill('64Mi');
    await dialog.getByRole('button', { name: 'Add disk', exact: true }).click();
    await dialogDone(dialog, 'add disk', T(120000));
    const phase = page.getByTestId('vm-disks').locator(`li[data-disk="${hotName}"]`).getByTestId('disk-phase');
    await phase.filter({ hasText: /^Ready$/ }).waitFor({ timeout: T(120000) });
    // The API agrees: the instance has it, hotplugged and Ready; the VM's
    // template keeps it (the dialog's "keep it after a restart").
    const vmi = await apiJSON(ns('virtualmachineinstances', vmName, 'kubevirt.io/v1'));
    const v = (vmi.spec.volumes ?? []).find((x) => x.name === hotName);
    if (!v?.persistentVolumeClaim?.hotpluggable || v.persistentVolumeClaim.claimName !== hotName)
      throw new Error(`the VMI has no hotplugged volume ${hotName}: ${JSON.stringify(vmi.spec.volumes)}`);
    const st = (vmi.status.volumeStatus ?? []).find((x) => x.name === hotName);
    if (st?.phase !== 'Ready') throw new Error(`volumeStatus of ${hotName}: ${JSON.stringify(st)}`);
    const vm = await apiJSON(ns('virtualmachines', vmName, 'kubevirt.io/v1'));
    if (!(vm.spec.template.spec.volumes ?? []).some((x) => x.name === hotName))
      throw new Error(`the VM's template does not keep ${hotName}: ${JSON.stringify(vm.spec.template.spec.volumes)}`);
    await shot('vm-disks');
  });

  await run(`snapshot ${hotName} from the volumes page`, async () => {
    await page.getByRole('navigation', { name: 'Main' }).getByRole('link', { name: 'Volumes' }).click();
    await page.getByRole('heading', { name: 'Volumes', level: 1 }).waitFor();
    const row = page.getByTestId('table-volumes').locator(`tr[data-name="${hotName}"]`);
    await row.getByRole('button', { name: `Snapshot ${hotName}` }).click();
    const dialog = page.getByTestId('snapshot-dialog');
    await dialog.getByLabel('Snapshot name').fill(snapName);
    await dialog.getByRole('button', { name: 'Take snapshot' }).click();
    await dialogDone(dialog, 'snapshot', T(90000));
    const snap = await apiJSON(ns('volumesnapshots', snapName));
    if (snap.spec.volumeName !== hotName || snap.status?.readyToUse !== true)
      throw new Error(`VolumeSnapshot ${snapName}: ${JSON.stringify(snap)}`);
    await page
      .getByTestId('table-volumesnapshots')
      .locator(`tr[data-name="${snapName}"]`)
      .getByText('Ready', { exact: true })
      .waitFor({ timeout: T(10000) });
  });

  await run(`expand ${hotName} to 128Mi`, async () => {
    const row = page.getByTestId('table-volumes').locator(`tr[data-name="${hotName}"]`);
    await row.getByRole('button', { name: `Expand ${hotName}` }).click();
    const dialog = page.getByTestId('expand-dialog');
    await dialog.getByLabel('New size').fill('128Mi');
    await dialog.getByRole('button', { name: 'Expand', exact: true }).click();
    await dialogDone(dialog, 'expand', T(120000));
    // Through its claim (it has one): the claim asks for more, the volume grows.
    const pvc = await apiJSON(ns('persistentvolumeclaims', hotName, 'v1'));
    if (pvc.spec.resources.requests.storage !== '128Mi') throw new Error(`claim ${hotName}: ${JSON.stringify(pvc.spec)}`);
    await untilAPI(ns('volumes', hotName), (v) => v.status?.size === 128 << 20, `volume ${hotName} did not reach 128Mi`, T(60000));
    await row
      .getByTestId('volume-size')
      .filter({ hasText: /^128Mi$/ })
      .waitFor({ timeout: T(10000) });
  });

  await run('sort the volume list by name, by mouse and by keyboard', async () => {
    const table = page.getByTestId('table-volumes');
    const header = table.getByRole('button', { name: 'Name', exact: true });
    const th = table.locator('th').filter({ has: page.getByRole('button', { name: 'Name', exact: true }) });
    const shown = () => table.locator('tbody tr').evaluateAll((trs) => trs.map((t) => t.getAttribute('data-name')));
    // Every namespace's volumes: the page shows all namespaces.
    const list = await apiJSON('/apis/sheaf.io/v1alpha1/volumes');
    const names = list.items.map((v) => v.metadata.name);
    if (names.length < 2) throw new Error(`only ${names.length} volume(s) to sort`);
    const asc = [...names].sort(new Intl.Collator(undefined, { numeric: true, sensitivity: 'base' }).compare);
    await header.click();
    if ((await th.getAttribute('aria-sort')) !== 'ascending')
      throw new Error(`aria-sort after a click: ${await th.getAttribute('aria-sort')}`);
    let got = await shown();
    if (JSON.stringify(got) !== JSON.stringify(asc)) throw new Error(`ascending: ${got} (want ${asc})`);
    await header.focus();
    await page.keyboard.press('Enter');
    await th.and(page.locator('[aria-sort="descending"]')).waitFor({ timeout: T(5000) });
    got = await shown();
    const desc = [...asc].reverse();
    if (JSON.stringify(got) !== JSON.stringify(desc)) throw new Error(`descending: ${got} (want ${desc})`);
    await shot('volumes');
  });

  await run(`unplug ${hotName}`, async () => {
    await page.goto(`${url}/#/vms/${namespace}/${vmName}`);
    await page.getByRole('button', { name: `Remove disk ${hotName}` }).click();
    const dialog = page.getByTestId('remove-disk-dialog');
    await dialog.getByRole('button', { name: 'Remove disk', exact: true }).click();
    await dialogDone(dialog, 'remove disk', T(30000));
    await untilAPI(
      ns('virtualmachineinstances', vmName, 'kubevirt.io/v1'),
      (vmi) =>
        !(vmi.spec.volumes ?? []).some((x) => x.name === hotName) && !(vmi.status.volumeStatus ?? []).some((x) => x.name === hotName),
      `${hotName} did not leave the VMI`,
      T(90000),
    );
    await page
      .getByTestId('vm-disks')
      .locator(`li[data-disk="${hotName}"]`)
      .waitFor({ state: 'detached', timeout: T(10000) });
  });

  await run(`revert ${hotName} to ${snapName}, now that it is unplugged`, async () => {
    const before = await apiJSON(ns('volumes', hotName));
    await page.getByRole('navigation', { name: 'Main' }).getByRole('link', { name: 'Volumes' }).click();
    const row = page.getByTestId('table-volumesnapshots').locator(`tr[data-name="${snapName}"]`);
    await row.getByRole('button', { name: `Revert ${hotName} to ${snapName}` }).click();
    const dialog = page.getByTestId('revert-dialog');
    await dialog.getByRole('button', { name: 'Revert', exact: true }).click();
    await dialogDone(dialog, 'revert', T(90000));
    const v = await apiJSON(ns('volumes', hotName));
    const r = v.status?.lastRevert;
    if (r?.snapshot !== snapName || r.error || r.time === before.status?.lastRevert?.time)
      throw new Error(`volume ${hotName} was not reverted: ${JSON.stringify(v.status)}`);
  });

  await run(`a new volume from ${snapName}, and a clone of claim ${hotName}`, async () => {
    const row = page.getByTestId('table-volumesnapshots').locator(`tr[data-name="${snapName}"]`);
    await row.getByRole('button', { name: `Restore ${snapName} to a new volume` }).click();
    let dialog = page.getByTestId('restore-snapshot-dialog');
    await dialog.getByLabel('New volume name').fill(`${hotName}-r`);
    await dialog.getByRole('button', { name: 'Create volume' }).click();
    await dialogDone(dialog, 'new volume from a snapshot', T(90000));
    const restored = await apiJSON(ns('volumes', `${hotName}-r`));
    if (restored.spec.fromSnapshot !== snapName || !restored.status?.restoredFrom || restored.status?.size !== 64 << 20)
      throw new Error(`volume ${hotName}-r: ${JSON.stringify(restored)}`);
    await page
      .getByTestId('table-volumes')
      .locator(`tr[data-name="${hotName}"]`)
      .getByRole('button', { name: `Clone ${hotName}` })
      .click();
    dialog = page.getByTestId('clone-dialog');
    await dialog.getByLabel('New claim name').fill(`${hotName}-c`);
    await dialog.getByRole('button', { name: 'Clone', exact: true }).click();
    await dialogDone(dialog, 'clone', T(120000));
    const clone = await apiJSON(ns('persistentvolumeclaims', `${hotName}-c`, 'v1'));
    if (clone.status?.phase !== 'Bound' || clone.spec.dataSource?.name !== hotName || clone.spec.resources.requests.storage !== '128Mi')
      throw new Error(`claim ${hotName}-c: ${JSON.stringify(clone)}`);
    await page
      .getByTestId('table-volumes')
      .locator(`tr[data-name="${hotName}-c"]`)
      .waitFor({ timeout: T(10000) });
  });

  await run(`snapshot ${vmName} (a VM backup of type snapshot) and restore it as a new VM`, async () => {
    await page.goto(`${url}/#/vms/${namespace}/${vmName}`);
    await page.locator('.page-head').getByRole('button', { name: 'Snapshot', exact: true }).click();
    let dialog = page.getByTestId('vm-backup-dialog');
    await dialog.getByLabel('Name', { exact: true }).fill(backupName);
    await dialog.getByRole('button', { name: 'Take snapshot' }).click();
    await dialogDone(dialog, 'VM snapshot', T(30000));
    await untilAPI(
      ns('virtualmachinebackups', backupName, 'harvesterhci.io/v1beta1'),
      (b) => b.status?.readyToUse === true,
      `VM backup ${backupName} was not ready`,
      T(120000),
    );
    await page.getByRole('navigation', { name: 'Main' }).getByRole('link', { name: 'Backups' }).click();
    await page
      .getByTestId('table-vmbackups')
      .locator(`tr[data-name="${backupName}"]`)
      .getByRole('button', { name: `Restore ${backupName}` })
      .click();
    dialog = page.getByTestId('restore-vm-dialog');
    await dialog.getByLabel('New VM name').fill(restoredVm);
    await dialog.getByRole('button', { name: 'Restore', exact: true }).click();
    await dialogDone(dialog, 'VM restore', T(30000));
    const done = await untilAPI(
      ns('virtualmachinerestores', undefined, 'harvesterhci.io/v1beta1'),
      (l) => l.items.some((r) => r.spec.virtualMachineBackupName === backupName && r.status?.complete === true),
      `the restore of ${backupName} did not complete`,
      T(180000),
    );
    const restore = done.items.find((r) => r.spec.virtualMachineBackupName === backupName);
    if (restore.spec.target.name !== restoredVm || restore.spec.newVM !== true) throw new Error(`restore: ${JSON.stringify(restore.spec)}`);
    await apiJSON(ns('virtualmachines', restoredVm, 'kubevirt.io/v1'));
    await page
      .getByTestId('table-vmrestores')
      .locator(`tr[data-name="${restore.metadata.name}"]`)
      .waitFor({ timeout: T(10000) });
    // The restored VM goes again (it is not what this run checks further).
    const r = await api('DELETE', ns('virtualmachines', restoredVm, 'kubevirt.io/v1'));
    if (r.status >= 300) throw new Error(`deleting ${restoredVm}: ${r.status} ${r.body.slice(0, 300)}`);
  });

  await run(`clone ${vmName} while it runs`, async () => {
    const cloneName = `${vmName}-twin`;
    await page.goto(`${url}/#/vms/${namespace}/${vmName}`);
    await page.locator('.page-head').getByRole('button', { name: 'Clone', exact: true }).click();
    const dialog = page.getByTestId('vm-clone-dialog');
    await dialog.getByLabel('Name of the new VM').fill(cloneName);
    await dialog.getByRole('button', { name: 'Clone', exact: true }).click();
    await dialogDone(dialog, 'VM clone', T(30000));
    const source = await apiJSON(ns('virtualmachines', vmName, 'kubevirt.io/v1'));
    const twin = await apiJSON(ns('virtualmachines', cloneName, 'kubevirt.io/v1'));
    const claims = (source.spec.template.spec.volumes ?? [])
      .map((v) => v.persistentVolumeClaim?.claimName ?? v.dataVolume?.name)
      .filter(Boolean);
    const sources = (twin.spec.dataVolumeTemplates ?? []).map((t) => t.spec?.source?.pvc?.name);
    if (claims.length === 0 || claims.some((c) => !sources.includes(c)) || twin.spec.runStrategy !== 'Halted')
      throw new Error(`clone ${cloneName}: ${JSON.stringify(twin.spec).slice(0, 1500)} (source claims ${claims})`);
    await page.getByRole('navigation', { name: 'Main' }).getByRole('link', { name: 'Virtual machines' }).click();
    await page.getByTestId('vm-table').locator(`tr[data-name="${cloneName}"]`).waitFor({ timeout: T(20000) });
    const r = await api('DELETE', ns('virtualmachines', cloneName, 'kubevirt.io/v1'));
    if (r.status >= 300) throw new Error(`deleting ${cloneName}: ${r.status} ${r.body.slice(0, 300)}`);
  });

  await run(`stop ${vmName}`, async () => {
    await page.goto(`${url}/#/vms/${namespace}/${vmName}`);
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
    await page
      .getByTestId('vm-table')
      .locator(`tr[data-name="${restoredVm}"]`)
      .waitFor({ state: 'detached', timeout: T(120000) });
  });

  await run('screenshot of nodes', async () => {
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
