// End-to-end test of the web UI's Sources page in real headless Chromium, driven with
// playwright-core. Started by tests/browser.rs (the_web_ui_creates_and_runs_a_directory_source),
// which runs a server with `--source-root` and passes:
//   SLUICE_URL, SLUICE_TOKEN, DROP_DIR (a directory under the root holding one products CSV),
//   EXPECT (that file's expected counts and name), BAD_PATH (an existing directory outside the root),
//   SCREENSHOTS (where to put the PNGs), CHROMIUM (optional).
// Creates a directory source through the form, runs it with "Run now", follows its run to the
// job, sees an API error beside the field it is about, creates a URL source with a secret header
// and checks the secret is nowhere in the page afterwards. Prints one JSON line for the Rust
// side; exits non-zero, naming the step, when anything is not as expected.
import fs from 'node:fs';
import { check, env, launch, shot, steps } from './harness.mjs';
import path from 'node:path';

const BASE = env('SLUICE_URL');
const TOKEN = env('SLUICE_TOKEN');
const DROP_DIR = env('DROP_DIR');
const EXPECT = JSON.parse(fs.readFileSync(env('EXPECT'), 'utf8'));
const BAD_PATH = env('BAD_PATH');

const SECRET = 'Bearer s3cret-header-value-77';


const { context, close } = await launch();
const problems = [];
try {
  const page = context.pages()[0] || await context.newPage();
  page.on('pageerror', (e) => problems.push(`page error: ${e.message}`));
  page.on('console', (m) => {
    // Expected failed requests, which the browser logs: the page asking whether it is signed in
    // before it is (401), and the refused sources (400).
    if (m.type() === 'error' && !/status of (401|400)/.test(m.text())) problems.push(`console: ${m.text()}`);
  });
  const visible = (sel) => page.isVisible(sel);

  steps.name = 'sign in and open the Sources page';
  await page.goto(BASE + '/');
  await page.waitForSelector('#signin:not([hidden])');
  await page.fill('#token', TOKEN);
  await page.click('#signin-form button[type=submit]');
  await page.waitForSelector('#app:not([hidden])');
  await page.click('#nav-sources');
  await page.waitForSelector('#view-sources:not([hidden]) #source-form');
  await page.waitForSelector('#sources-empty:not([hidden])');
  await page.waitForSelector('#src-dataset option[value="products"]', { state: 'attached' });

  steps.name = 'the form shows only the chosen kind\'s fields';
  check(await visible('#src-dir-path') && !(await visible('#src-url')) && !(await visible('#src-host')), 'directory fields by default');
  await page.selectOption('#src-kind', 'url');
  check(await visible('#src-url') && await visible('#src-headers') && !(await visible('#src-dir-path')) && !(await visible('#src-glob')), 'url fields');
  await page.selectOption('#src-kind', 'sftp');
  check(await visible('#src-host') && await visible('#src-host-key') && await visible('#src-password') && !(await visible('#src-key')), 'sftp fields, password first');
  await page.selectOption('#src-auth', 'privateKey');
  check(await visible('#src-key') && !(await visible('#src-password')), 'a private key instead of the password');
  check(await visible('#src-glob') && !(await visible('#src-url')), 'sftp shares the file fields');
  await page.selectOption('#src-kind', 'directory');
  check(!(await visible('#src-move-to')), 'no "move to" unless the file is moved');
  // Every input of the form has a label.
  const unlabelled = await page.$$eval('#source-form input, #source-form select, #source-form textarea',
    (els) => els.filter((e) => !(e.labels && e.labels.length)).map((e) => e.id));
  check(unlabelled.length === 0, `inputs without a label: ${unlabelled}`);

  steps.name = 'create a directory source through the form';
  await page.fill('#src-name', 'drop-prices');
  await page.selectOption('#src-dataset', 'products');
  await page.fill('#src-dir-path', DROP_DIR);
  await page.fill('#src-glob', '*.csv');
  await page.fill('#src-stable', '0');
  await page.selectOption('#src-after', 'move');
  await page.fill('#src-move-to', 'done');
  await page.selectOption('#src-schedule', 'every');
  await page.fill('#src-every', '1h');
  await page.selectOption('#src-pick', 'all-new');
  await page.selectOption('#src-mode', 'upsert');
  await page.fill('#src-notify', 'ops@example.com, buyer@example.com');
  await shot(page, '20-source-form.png');
  await page.click('#source-create');
  await page.waitForFunction(() => /^#\/sources\/\d+$/.test(location.hash));
  const sourceId = Number(await page.evaluate(() => location.hash.split('/').pop()));
  const row = `#sources tr[data-source="${sourceId}"]`;
  await page.waitForSelector(row);
  check(await page.textContent(`${row} td:nth-child(1)`) === 'drop-prices', 'the new source is in the list');
  check((await page.textContent(`${row} td.where`)).endsWith('/*.csv'), 'the list says where its files come from');
  check(await page.textContent(`${row} td:nth-child(5)`) === 'every 1h', 'its schedule');
  await page.waitForSelector('.toast:has-text("Source “drop-prices” created.")');
  check(await page.inputValue('#src-name') === '' && await page.inputValue('#src-dir-path') === '', 'the form is empty again');
  check(await page.$$eval('#source-form .field-error', (e) => e.length) === 0, 'no error shown');
  await shot(page, '21-source-created.png');

  steps.name = 'run it now and follow the run to its job';
  await page.click(`${row} button:has-text("Run now")`);
  // The run ends once its job is started; a run still going is looked at again by the page.
  const runLink = await page.waitForSelector('#source-runs tr[data-outcome="imported"] a[href^="#/jobs/"]', { timeout: 60000 });
  const runRow = '#source-runs tr[data-outcome="imported"]';
  check(await page.textContent(`${runRow} td:nth-child(2)`) === 'manual', 'a manual run');
  check(await page.textContent(`${runRow} td:nth-child(4)`) === path.basename(EXPECT.path), 'the run names its file');
  check(/^imported/.test(await page.textContent(`${row} td:nth-child(7)`)), 'the list shows the last outcome');
  const jobId = Number((await runLink.getAttribute('href')).split('/').pop());
  await shot(page, '22-source-run.png');
  await runLink.click();
  await page.waitForSelector(`#job-title:has-text("Import #${jobId}") #job-status:text("completed")`, { timeout: 60000 });
  const fact = (k) => page.textContent(`[data-fact="${k}"]`);
  const n = (x) => x.toLocaleString('en-US');
  check(await fact('created') === n(EXPECT.valid_rows), `created ${await fact('created')}, expected ${EXPECT.valid_rows}`);
  check(await fact('rejected') === n(EXPECT.invalid_rows), `rejected ${await fact('rejected')}, expected ${EXPECT.invalid_rows}`);
  check(await fact('dataset') === 'products', 'into products');
  await page.waitForSelector('#errors tbody tr');
  await shot(page, '23-source-job.png');

  steps.name = 'a path outside the source roots: the API\'s message beside the path';
  await page.goto(`${BASE}/#/sources`);
  await page.waitForSelector(`#view-sources:not([hidden]) ${row}`);
  await page.fill('#src-name', 'outside');
  await page.fill('#src-dir-path', BAD_PATH);
  await page.click('#source-create');
  const error = await page.waitForSelector('#source-form .field-error[data-error-for="src-dir-path"]');
  const message = await error.textContent();
  check(message.includes(BAD_PATH) && message.includes('is not an existing directory under a source root'), `the error: ${message}`);
  check(await page.getAttribute('#src-dir-path', 'aria-invalid') === 'true', 'the path is marked');
  check(await page.evaluate(() => document.activeElement.id) === 'src-dir-path', 'and focused');
  check(await page.inputValue('#src-name') === 'outside', 'what was typed stays to be corrected');
  check(await page.evaluate(() => location.hash) === '#/sources', 'still on the Sources page');
  await shot(page, '24-source-error.png');
  await page.fill('#src-dir-path', BAD_PATH + '/');
  check(await page.$$eval('#source-form .field-error', (e) => e.length) === 0, 'editing the field takes its error away');
  await page.fill('#src-every', '0s');
  await page.click('#source-create');
  await page.waitForSelector('#source-form .field-error[data-error-for="src-every"]');
  check(await page.$$eval('#source-form .field-error', (e) => e.length) === 1, 'one error at a time');

  steps.name = 'a URL source with a secret header: the secret is never shown again';
  await page.fill('#src-name', 'supplier-url');
  await page.selectOption('#src-kind', 'url');
  await page.fill('#src-url', 'http://127.0.0.1:9/prices.csv');
  await page.fill('#src-headers', `Authorization: ${SECRET}\nX-Supplier: 42`);
  await page.selectOption('#src-schedule', 'cron');
  await page.fill('#src-cron', '0 3 1 1 *');
  await page.fill('#src-timezone', 'Europe/Berlin');
  await page.selectOption('#src-pick', 'latest');
  await page.fill('#src-notify', '');
  await page.click('#source-create');
  await page.waitForSelector('#sources tr:has-text("supplier-url")');
  await page.waitForFunction(() => /^#\/sources\/\d+$/.test(location.hash));
  const urlId = Number(await page.evaluate(() => location.hash.split('/').pop()));
  check(urlId !== sourceId, 'a second source');
  const urlRow = `#sources tr[data-source="${urlId}"]`;
  check(await page.textContent(`${urlRow} td:nth-child(5)`) === '0 3 1 1 * (Europe/Berlin)', 'its cron schedule');
  const everything = await page.evaluate(() => document.documentElement.outerHTML +
    [...document.querySelectorAll('input, textarea')].map((e) => e.value).join('\n'));
  check(!everything.includes('s3cret-header-value-77'), 'the header value is nowhere in the page');
  check(await page.inputValue('#src-headers') === '', 'the headers field is empty');
  await shot(page, '25-sources.png');

  steps.name = 'phone';
  await page.setViewportSize({ width: 390, height: 844 });
  await page.reload();
  await page.waitForSelector(`#view-sources:not([hidden]) ${urlRow}`);
  check(await page.evaluate(() => document.documentElement.scrollWidth <= window.innerWidth + 1), 'no sideways scrolling on a phone');
  await shot(page, '26-phone-sources.png');

  check(problems.length === 0, `browser problems: ${problems.join(' | ')}`);
  console.log(JSON.stringify({ ok: true, sourceId, jobId, urlId }));
} catch (e) {
  try { const p = context.pages()[0]; if (p) await shot(p, 'sources-failure.png'); } catch (_) { /* best effort */ }
  console.error(`browser test failed at step "${steps.name}": ${e.message}`);
  if (problems.length) console.error(problems.join('\n'));
  process.exitCode = 1;
} finally {
  await close();
}
