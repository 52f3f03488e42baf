// End-to-end test of the sluice web UI in real headless Chromium (Debian's /usr/bin/chromium),
// driven with playwright-core. Started by tests/browser.rs, which runs the server and passes:
//   SLUICE_URL, SLUICE_TOKEN, FILE_A (50k rows with errors), EXPECT_A (its expected counts),
//   FILE_B (a bigger file to cancel), SCREENSHOTS (where to put the PNGs), CHROMIUM (optional).
// Exits non-zero, naming the step, when anything is not as expected.
import fs from 'node:fs';
import { check, env, launch, shot, steps } from './harness.mjs';

const BASE = env('SLUICE_URL');
const TOKEN = env('SLUICE_TOKEN');
const FILE_A = env('FILE_A');
const EXPECT_A = JSON.parse(fs.readFileSync(env('EXPECT_A'), 'utf8'));
const FILE_B = env('FILE_B');


const { context, close } = await launch({ acceptDownloads: true });
const problems = [];
try {
  await context.grantPermissions(['notifications'], { origin: BASE });
  // Record the browser notifications the page shows.
  await context.addInitScript(() => {
    const Native = window.Notification;
    if (!Native) return;
    window.__notified = [];
    window.Notification = class extends Native {
      constructor(title, options) { super(title, options); window.__notified.push(title); }
    };
  });
  const page = context.pages()[0] || await context.newPage();
  page.on('pageerror', (e) => problems.push(`page error: ${e.message}`));
  page.on('console', (m) => {
    // The wrong-token attempt is expected to be refused.
    if (m.type() === 'error' && !/status of 401/.test(m.text())) problems.push(`console: ${m.text()}`);
  });

  steps.name = 'sign in';
  await page.goto(BASE + '/');
  await page.waitForSelector('#signin:not([hidden])');
  await page.fill('#token', 'slc_not_a_real_token');
  await page.click('#signin-form button[type=submit]');
  await page.waitForFunction(() => document.querySelector('#signin-error').textContent.length > 0);
  await shot(page, '01-signin-refused.png');
  await page.fill('#token', TOKEN);
  await page.click('#signin-form button[type=submit]');
  await page.waitForSelector('#app:not([hidden])');
  // The cookie comes from POST /api/v1/session: HttpOnly, so no script on the page sees it.
  const cookie = (await page.context().cookies()).find((c) => c.name === 'token');
  check(cookie && cookie.value === TOKEN, 'token cookie set');
  check(cookie.httpOnly === true, 'the token cookie is HttpOnly');
  check(cookie.sameSite === 'Strict', `the token cookie is SameSite=Strict, not ${cookie.sameSite}`);
  check(!(await page.evaluate(() => document.cookie)).includes(TOKEN), 'document.cookie does not show the token');
  check(!(await page.evaluate(() => document.cookie)).includes('token='), 'document.cookie has no token cookie');
  // A reload stays signed in: the page asks the server, not document.cookie.
  await page.reload();
  await page.waitForSelector('#app:not([hidden])');
  // The header says who is signed in: the start-up token is the default organisation's admin.
  await page.waitForFunction(() => document.querySelector('#whoami').textContent.length > 0);
  const who = await page.textContent('#whoami');
  check(who === 'admin · default (admin)', `signed in as: ${who}`);
  await page.selectOption('#dataset', 'products');
  await page.click('#notify-btn');
  await page.waitForFunction(() => document.querySelector('#notify-btn').textContent === 'Notifications on');
  await shot(page, '02-dashboard.png');

  steps.name = 'preview and mapping';
  await page.setInputFiles('#file', FILE_A);
  await page.waitForSelector('#preview:not([hidden]) #mapping tbody tr');
  check(await page.locator('#mapping tbody tr').count() === EXPECT_A.header.length, 'one mapping row per column');
  check(await page.$eval('#mapping select[data-key="sku"]', (s) => s.value) === 'sku', 'sku mapped');
  check(await page.locator('#rows tbody tr').count() === 20, 'first 20 rows shown');
  check(/would be rejected/.test(await page.textContent('#preview-summary')), 'validation summary');
  await shot(page, '03-preview.png');

  steps.name = 'run in background and watch the bar';
  await page.evaluate(() => {
    window.__seen = [];
    const record = () => document.querySelectorAll('#active .progress')
      .forEach((p) => window.__seen.push(Number(p.getAttribute('aria-valuenow'))));
    new MutationObserver(record).observe(document.querySelector('#active'),
      { childList: true, subtree: true, attributes: true });
  });
  await page.click('#run');
  await page.waitForSelector('.toast:has-text("Background import started")');
  const link = await page.waitForSelector('.toast a[href^="#/jobs/"]');
  const jobA = Number((await link.getAttribute('href')).split('/').pop());
  await page.waitForSelector(`#active li[data-job="${jobA}"][data-status="processing"] .progress:not([aria-valuenow="0"])`, { timeout: 60000 });
  await shot(page, '04-active-import.png');
  const stats = await page.textContent(`#active li[data-job="${jobA}"] .stats`);
  check(/rows\/s/.test(stats) && /elapsed \d+:\d\d/.test(stats) && /ETA/.test(stats), `stats line: ${stats}`);
  await page.waitForSelector(`#recent tr[data-job="${jobA}"][data-status="completed"]`, { timeout: 180000 });
  const seen = await page.evaluate(() => window.__seen);
  const moving = [...new Set(seen.filter((v) => v > 0 && v < 100))];
  check(moving.length >= 3, `the bar moved through several values, saw ${JSON.stringify([...new Set(seen)])}`);
  check(seen.every((v, i) => i === 0 || v >= seen[i - 1] || v === 0), 'the bar never went back');
  await page.waitForSelector(`.toast:has-text("Import #${jobA}")`);
  check((await page.evaluate(() => window.__notified)).includes('sluice: import completed'), 'a browser notification');
  const cell = (cls) => page.textContent(`#recent tr[data-job="${jobA}"] td.${cls}`);
  const num = (s) => Number(s.replace(/,/g, ''));
  check(num(await cell('created')) === EXPECT_A.valid_rows, `created = ${EXPECT_A.valid_rows}`);
  check(num(await cell('errors')) === EXPECT_A.invalid_rows, `errors = ${EXPECT_A.invalid_rows}`);
  check(num(await cell('updated')) === 0, 'nothing updated');
  await shot(page, '05-import-finished.png');

  steps.name = 'job page, error table and download';
  await page.click(`#recent tr[data-job="${jobA}"] a`);
  await page.waitForSelector('#view-job:not([hidden]) #errors tbody tr');
  check((await page.textContent('#err-total')).includes(EXPECT_A.invalid_rows.toLocaleString('en-US')), 'error total');
  check(await page.locator('#errors tbody tr').count() === 50, 'a page of 50 errors');
  // The chart: bars by column and by kind of message, their counts adding up to the total.
  await page.waitForSelector('#err-chart:not([hidden]) #err-by-column li');
  const counts = (sel) => page.$$eval(sel, (lis) => lis.map((li) => [li.dataset.label, Number(li.dataset.count)]));
  const byColumn = Object.fromEntries(await counts('#err-by-column li'));
  check(Object.values(byColumn).reduce((a, b) => a + b, 0) === EXPECT_A.invalid_rows, `bars by column add up: ${JSON.stringify(byColumn)}`);
  check(byColumn.price === EXPECT_A.invalid_by_kind.bad_price, `price bar = ${EXPECT_A.invalid_by_kind.bad_price}`);
  const byMessage = await counts('#err-by-message li');
  check(byMessage.length >= 3 && byMessage.every(([, n], i) => i === 0 || n <= byMessage[i - 1][1]), 'message bars, largest first');
  const bars = await page.$$eval('#err-by-column li', (lis) => lis.map((li) => [Number(li.dataset.count),
    li.querySelector('.fill').getBoundingClientRect().width, li.querySelector('.track').getBoundingClientRect().width]));
  const top = Math.max(...bars.map(([n]) => n));
  check(bars.every(([n, w, track]) => Math.abs(w - track * n / top) < 2), `bars scale with their counts: ${JSON.stringify(bars)}`);
  const firstRow = await page.textContent('#errors tbody tr td');
  await page.click('#err-next');
  await page.waitForFunction((f) => document.querySelector('#errors tbody tr td').textContent !== f, firstRow);
  check(/page 2 of/.test(await page.textContent('#err-page')), 'second page');
  check(await page.$eval('#job-actions [data-action=cancel]', (b) => b.hidden), 'no cancel on a finished job');
  await shot(page, '06-job-page.png');
  const [download] = await Promise.all([page.waitForEvent('download'), page.click('#download')]);
  const csv = fs.readFileSync(await download.path(), 'utf8').trim().split('\n');
  check(csv[0] === [...EXPECT_A.header, 'error'].join(','), `rejected-rows header: ${csv[0]}`);
  check(csv.length === EXPECT_A.invalid_rows + 1, `rejected rows downloaded: ${csv.length - 1}`);

  steps.name = 'drag and drop';
  await page.goto(BASE + '/#/');
  await page.waitForSelector('#view-home:not([hidden])');
  const dropped = await page.evaluateHandle(() => {
    const dt = new DataTransfer();
    dt.items.add(new File(['sku,name,updated_at\nD-1,Dropped,2024-05-01\n'], 'dropped.csv', { type: 'text/csv' }));
    return dt;
  });
  await page.dispatchEvent('#drop', 'drop', { dataTransfer: dropped });
  await page.waitForFunction(() => /dropped\.csv/.test(document.querySelector('#file-info').textContent));
  await page.click('#discard');

  steps.name = 'cancel a second import';
  await page.setInputFiles('#file', FILE_B);
  await page.waitForSelector('#preview:not([hidden]) #mapping tbody tr');
  await page.click('#run');
  const linkB = await page.waitForSelector(`.toast a[href^="#/jobs/"]:not([href="#/jobs/${jobA}"])`);
  const jobB = Number((await linkB.getAttribute('href')).split('/').pop());
  await page.waitForSelector(`#active li[data-job="${jobB}"][data-status="processing"] .progress:not([aria-valuenow="0"])`, { timeout: 60000 });
  await page.click(`#active li[data-job="${jobB}"] button[data-action="cancel"]`);
  await page.waitForSelector(`#recent tr[data-job="${jobB}"][data-status="cancelled"]`, { timeout: 60000 });
  await page.waitForSelector(`.toast:has-text("Import #${jobB}")`);
  await shot(page, '07-second-import-cancelled.png');

  steps.name = 'retry, pause and resume from the job page';
  await page.click(`#recent tr[data-job="${jobB}"] a`);
  await page.waitForSelector('#view-job:not([hidden]) #job-actions [data-action=retry]:not([hidden])');
  await page.click('#job-actions [data-action=retry]');
  await page.waitForSelector('#job-status:is(:text("pending"), :text("processing"))');
  await page.waitForSelector('#job-actions [data-action=pause]:not([hidden])');
  await page.click('#job-actions [data-action=pause]');
  await page.waitForSelector('#job-status:text("paused")', { timeout: 60000 });
  await page.click('#job-actions [data-action=resume]');
  await page.waitForSelector('#job-status:is(:text("pending"), :text("processing"))', { timeout: 60000 });
  await page.click('#job-actions [data-action=cancel]');
  await page.waitForSelector('#job-status:text("cancelled")', { timeout: 60000 });
  await page.goto(BASE + '/#/');

  steps.name = 'analyse first (dry run), read the report, then run the import';
  await page.setInputFiles('#file', FILE_A);
  await page.waitForSelector('#preview:not([hidden]) #mapping tbody tr');
  await page.click('#analyse');
  const linkC = await page.waitForSelector('.toast:has-text("Analysis started") a[href^="#/jobs/"]');
  const jobC = Number((await linkC.getAttribute('href')).split('/').pop());
  await page.goto(`${BASE}/#/jobs/${jobC}`);
  await page.waitForSelector(`#job-title:has-text("Analysis #${jobC}") #job-status:text("completed")`, { timeout: 60000 });
  await page.waitForSelector(`.toast:has-text("Analysis #${jobC}")`);
  check(/0 would be created/.test(await page.textContent(`.toast:has-text("Analysis #${jobC}")`)), 'the toast speaks of an analysis');
  check(await page.locator('[data-fact="place in queue"]').count() === 0, 'no place in queue once done');
  const valid = EXPECT_A.valid_rows.toLocaleString('en-US');
  check((await page.textContent('#job-title')).startsWith(`Analysis #${jobC}`), 'an analysis job page');
  check(await page.textContent('[data-fact="would create"]') === '0', 'file A again: nothing to create');
  check(await page.textContent('[data-fact="unchanged"]') === valid, `unchanged = ${valid}`);
  await page.waitForSelector('#report-line:not([hidden])');
  const [report] = await Promise.all([page.waitForEvent('download'), page.click('#report')]);
  check(fs.readFileSync(await report.path()).subarray(0, 2).toString() === 'PK', 'the report is a workbook');
  await shot(page, '10-analysis-job.png');
  await page.click('#job-actions [data-action=run]:not([hidden])');
  await page.waitForFunction((c) => location.hash !== `#/jobs/${c}`, jobC);
  // The new job's page first: until it renders, the analysis's own status still reads completed.
  const jobD = Number(await page.evaluate(() => location.hash.split('/').pop()));
  await page.waitForSelector(`#job-title:has-text("Import #${jobD}")`);
  await page.waitForSelector(`#job-title:has-text("Import #${jobD}") #job-status:text("completed")`, { timeout: 60000 });
  check((await page.textContent('#job-title')).startsWith('Import #'), 'Run import opened the import');
  check(await page.textContent('[data-fact="analysed by"]') === `#${jobC}`, 'the import names its analysis');
  check(await page.textContent('[data-fact="unchanged"]') === valid, 'the import counts what the analysis said');
  await page.goto(BASE + '/#/');

  steps.name = 'export the dataset as CSV and as XLSX';
  await page.selectOption('#export-dataset', 'products');
  await page.selectOption('#export-format', 'csv');
  await page.click('#export-run');
  await page.waitForSelector('#export-done:not([hidden])', { timeout: 60000 });
  const exported = Number(await page.$eval('#export-info', (e) => e.dataset.rows));
  check(exported >= EXPECT_A.valid_rows, `exported ${exported} rows`);
  const [csvExport] = await Promise.all([page.waitForEvent('download'), page.click('#export-download')]);
  const lines = fs.readFileSync(await csvExport.path(), 'utf8').trim().split('\n');
  check(lines[0].startsWith('sku,'), `export header: ${lines[0]}`);
  check(lines.length === exported + 1, `the CSV holds the ${exported} rows the page names: ${lines.length - 1}`);
  await page.selectOption('#export-format', 'xlsx');
  await page.click('#export-run');
  await page.waitForFunction(() => /\.xlsx$/.test(document.querySelector('#export-download').textContent)
    && !document.querySelector('#export-done').hidden, null, { timeout: 60000 });
  const [xlsxExport] = await Promise.all([page.waitForEvent('download'), page.click('#export-download')]);
  check(fs.readFileSync(await xlsxExport.path()).subarray(0, 2).toString() === 'PK', 'the XLSX export is a workbook');
  await page.waitForSelector('.toast:has-text("Export #"):has-text("rows.")');
  check(await page.locator('#recent [data-kind="export"]').count() === 2, 'exports marked in the recent list');
  await shot(page, '11-export.png');

  steps.name = 'sluice.js uploadAndMonitor';
  await page.addScriptTag({ url: '/sluice.js' });
  const result = await page.evaluate(async () => {
    let csv = 'sku,name,price,updated_at\n';
    for (let i = 1; i <= 300; i++) csv += `JS-${i},From sluice.js,${i}.50,2024-06-0${1 + (i % 9)}\n`;
    const updates = [];
    const final = await window.Sluice.uploadAndMonitor(new File([csv], 'client.csv'), 'products',
      (p) => updates.push(p.status));
    return { final, updates };
  });
  check(result.final.status === 'completed', `sluice.js final status ${result.final.status}`);
  check(result.final.results.totalRows === 300 && result.final.results.successCount === 300, 'sluice.js results');
  check(result.updates.length >= 2 && result.updates.at(-1) === 'completed', `sluice.js progress ${result.updates}`);

  steps.name = 'roll back the sluice.js import from its job page';
  const imported = result.final.jobId;
  await page.goto(`${BASE}/#/jobs/${imported}`);
  await page.waitForSelector(`#job-title:has-text("Import #${imported}") #job-status:text("completed")`);
  let asked = '';
  page.once('dialog', (d) => { asked = d.message(); d.accept(); });
  await page.click('#job-actions [data-action=rollback]:not([hidden])');
  await page.waitForFunction((j) => location.hash !== `#/jobs/${j}`, imported);
  check(/300 created rows will be deleted/.test(asked), `the confirmation names the counts: ${asked}`);
  const undo = Number(await page.evaluate(() => location.hash.split('/').pop()));
  await page.waitForSelector(`#job-title:has-text("Rollback #${undo}") #job-status:text("completed")`, { timeout: 60000 });
  check(await page.textContent('[data-fact="deleted"]') === '300', 'the rollback deleted the 300 rows');
  await page.waitForSelector(`.toast:has-text("Rollback #${undo} of import #${imported} completed: 300 deleted")`);
  check(await page.textContent('[data-fact="rolls back"]') === `#${imported}`, 'the rollback names its import');
  check(await page.$eval('#job-actions [data-action=rollback]', (b) => !b.hidden), 'a rollback can be rolled back');
  await page.goto(`${BASE}/#/jobs/${imported}`);
  await page.waitForSelector(`[data-fact="rolled back by"]:text("#${undo}")`);
  check(await page.$eval('#job-actions [data-action=rollback]', (b) => b.hidden), 'no second rollback');
  await shot(page, '12-rollback.png');
  await page.goto(BASE + '/#/');
  await page.waitForSelector(`#recent tr[data-job="${imported}"] [data-rolled-back="${undo}"]`);

  steps.name = 'phone';
  const phone = await context.newPage();
  await phone.setViewportSize({ width: 390, height: 844 });
  await phone.goto(BASE + '/');
  await phone.waitForSelector('#recent tbody tr');
  check(await phone.evaluate(() => document.documentElement.scrollWidth <= window.innerWidth + 1), 'no sideways scrolling on a phone');
  await shot(phone, '08-phone-dashboard.png');
  await phone.goto(BASE + `/#/jobs/${jobA}`);
  await phone.waitForSelector('#view-job:not([hidden]) #errors tbody tr');
  await shot(phone, '09-phone-job.png');
  await phone.close();

  steps.name = 'sign out';
  await page.click('#signout');
  await page.waitForSelector('#signin:not([hidden])');
  check(!(await page.context().cookies()).some((c) => c.name === 'token'), 'sign-out cleared the cookie');
  await page.reload();
  await page.waitForSelector('#signin:not([hidden])');
  check(await page.isHidden('#app'), 'signed out after a reload');

  check(problems.length === 0, `browser problems: ${problems.join(' | ')}`);
  console.log(JSON.stringify({ ok: true, jobA, jobB, barValues: moving.length }));
} catch (e) {
  try { const p = context.pages()[0]; if (p) await shot(p, 'failure.png'); } catch (_) { /* best effort */ }
  console.error(`browser test failed at step "${steps.name}": ${e.message}`);
  if (problems.length) console.error(problems.join('\n'));
  process.exitCode = 1;
} finally {
  await close();
}
