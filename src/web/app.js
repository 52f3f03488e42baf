// sluice web UI: sign in, preview and map a file, run it in the background, follow every import
// live through Server-Sent Events (GET /api/v1/events), inspect a job and its rejected rows,
// and manage scheduled sources (#/sources: list, run now, recent runs with their jobs, and a
// form to create one — each kind's own fields, the API's 400 message beside the field it is
// about, secrets never shown again —, with the API's JSON as an advanced alternative).
// Plain DOM code; every piece of text from the server goes in through textContent.
'use strict';

const PREVIEW_BYTES = 1024 * 1024;
const ERRORS_PAGE = 50;
const ACTIVE = ['pending', 'processing', 'paused'];

const state = {
  datasets: [],
  jobs: new Map(),
  events: null,
  file: null,
  preview: null,
  mapping: null,   // column (header, or "#N" when it repeats) → field | null, as edited
  template: '',    // chosen template name, '' = automatic
  templateTried: false,
  jobView: null,   // { id, offset }
};

const $ = (sel) => document.querySelector(sel);

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === 'class') e.className = v;
    else if (k === 'text') e.textContent = v;
    else if (k.startsWith('on')) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v === true ? '' : v);
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined) continue;
    e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return e;
}

const fmt = (n) => (n === null || n === undefined ? '–' : Number(n).toLocaleString('en-US'));

function duration(seconds) {
  if (seconds === null || seconds === undefined || !isFinite(seconds)) return '–';
  const s = Math.max(0, Math.round(seconds));
  const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), r = s % 60;
  const two = (x) => String(x).padStart(2, '0');
  return h ? `${h}:${two(m)}:${two(r)}` : `${m}:${two(r)}`;
}

const when = (t) => (t ? new Date(t).toLocaleString() : '–');

class ApiError extends Error {
  constructor(status, code, message) { super(message); this.status = status; this.code = code; }
}

async function api(path, options = {}) {
  const res = await fetch(path, { credentials: 'same-origin', ...options });
  if (res.status === 401) { showSignin('Your session has ended; sign in again.'); }
  let body = null;
  try { body = await res.json(); } catch (_) { /* not JSON */ }
  if (!res.ok) {
    const err = (body && body.error) || {};
    throw new ApiError(res.status, err.code || 'http_' + res.status, err.message || res.statusText);
  }
  return body;
}

// ---------------------------------------------------------------- toasts and notifications

function toast(text, link, bad) {
  const t = el('div', { class: 'toast' + (bad ? ' bad' : ''), role: 'status' }, text);
  if (link) t.append(el('a', { href: link.href, text: link.text }));
  $('#toasts').append(t);
  setTimeout(() => t.remove(), 8000);
}

function notificationsOn() {
  return 'Notification' in window && Notification.permission === 'granted' &&
    localStorage.getItem('sluice.notify') === '1';
}

function renderNotifyButton() {
  const b = $('#notify-btn');
  if (!('Notification' in window)) { b.hidden = true; return; }
  b.textContent = notificationsOn() ? 'Notifications on' : 'Enable notifications';
}

async function toggleNotifications() {
  if (notificationsOn()) {
    localStorage.setItem('sluice.notify', '0');
  } else {
    const p = await Notification.requestPermission();
    localStorage.setItem('sluice.notify', p === 'granted' ? '1' : '0');
    if (p !== 'granted') toast('The browser did not allow notifications.', null, true);
  }
  renderNotifyButton();
}

function announceDone(job) {
  const r = job.results || {};
  const what = { analysis: 'Analysis', export: 'Export', rollback: 'Rollback' }[job.kind] || 'Import';
  const would = job.kind === 'analysis' ? 'would be ' : '';
  const text = job.status === 'completed'
    ? (job.kind === 'export'
      ? `${what} #${job.jobId} (${job.filename}) completed: ${fmt(r.totalRows)} rows.`
      : job.kind === 'rollback'
      ? `${what} #${job.jobId} of import #${job.rollbackOf} completed: ${fmt(job.deletedCount)} deleted, ` +
        `${fmt(job.updatedCount)} restored, ${fmt(job.createdCount)} re-created, ${fmt(job.errorCount)} conflicts.`
      : `${what} #${job.jobId} (${job.filename}) completed: ${fmt(r.createdCount)} ${would}created, ` +
        `${fmt(r.updatedCount)} ${would}updated, ${fmt(r.errorCount)} rejected.`)
    : `${what} #${job.jobId} (${job.filename}) ${job.status}${job.error ? ': ' + job.error : '.'}`;
  toast(text, { href: `#/jobs/${job.jobId}`, text: 'View' }, job.status === 'failed');
  if (notificationsOn()) {
    try { new Notification(`sluice: import ${job.status}`, { body: text, tag: `job-${job.jobId}` }); }
    catch (_) { /* some browsers only allow notifications from a service worker */ }
  }
}

// ---------------------------------------------------------------- sign in
// The token goes once to POST /api/v1/session, which answers with an HttpOnly cookie: the page
// keeps no copy, and no script (this one or an injected one) can read it back. Whether we are
// signed in is what the server says of a request carrying the cookie.

function showSignin(message) {
  if (state.events) { state.events.close(); state.events = null; }
  $('#app').hidden = true;
  $('#nav').hidden = true;
  $('#signin').hidden = false;
  $('#signin-error').textContent = message || '';
  $('#token').focus();
}

async function signIn(ev) {
  ev.preventDefault();
  const token = $('#token').value.trim();
  if (!token || /[;\s]/.test(token)) { $('#signin-error').textContent = 'That is not an API token.'; return; }
  const res = await fetch('/api/v1/session', {
    method: 'POST',
    credentials: 'same-origin',
    headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify({ token }),
  });
  if (!res.ok) {
    let message = 'This token was not accepted.';
    if (res.status !== 401) {
      try { message = (await res.json()).error.message; } catch (_) { /* keep the default */ }
    }
    $('#signin-error').textContent = message;
    return;
  }
  $('#token').value = '';
  await start();
}

async function signOut() {
  if (state.events) { state.events.close(); state.events = null; }
  try { await fetch('/api/v1/session', { method: 'DELETE', credentials: 'same-origin' }); }
  catch (_) { /* the page signs out either way */ }
  state.jobs.clear();
  showSignin();
}

// ---------------------------------------------------------------- live events

function connect() {
  if (state.events) state.events.close();
  const es = new EventSource('/api/v1/events');
  state.events = es;
  // The stream starts with `ready`: load the list then, so nothing falls between list and stream.
  es.addEventListener('ready', () => loadJobs());
  for (const name of ['status', 'progress', 'done']) {
    es.addEventListener(name, (e) => onEvent(name, JSON.parse(e.data)));
  }
  es.onerror = () => {
    if (es.readyState === EventSource.CLOSED) {
      // Refused (signed out?) or the server went away for good: check, then try again.
      setTimeout(async () => {
        try { await api('/api/v1/datasets'); connect(); } catch (_) { /* api() handles 401 */ }
      }, 3000);
    }
    // Otherwise the browser reconnects by itself, sending Last-Event-ID.
  };
}

function onEvent(name, d) {
  const known = state.jobs.get(d.jobId);
  const job = Object.assign(known || {}, {
    jobId: d.jobId, dataset: d.dataset, filename: d.filename, status: d.status,
    progress: d.progress, createdCount: d.createdCount, updatedCount: d.updatedCount,
    unchangedCount: d.unchangedCount, errorCount: d.errorCount, batches: d.batches,
    rowsPerSecond: d.rowsPerSecond, etaSeconds: d.etaSeconds, startedAt: d.startedAt,
    completedAt: d.completedAt, error: d.error, results: d.results,
  });
  job.seenAt = Date.now();
  if (!job.createdAt) job.createdAt = d.at;
  state.jobs.set(d.jobId, job);
  renderLists();
  if (state.jobView && state.jobView.id === d.jobId) {
    renderJob(job);
    if (name === 'done' || name === 'progress') { loadErrors(); loadSummary(); }
  }
  if (name === 'done') {
    // Events do not say what kind of job they are about: ask once for a job not seen yet.
    // A rollback's deletions are not in its events either: ask for its final status.
    if (job.kind && job.kind !== 'rollback') announceDone(job);
    else refreshJob(d.jobId).then(announceDone, () => announceDone(job));
  }
}

async function loadJobs() {
  const body = await api('/api/v1/import/jobs?limit=50');
  for (const j of body.data.jobs) state.jobs.set(j.jobId, Object.assign(state.jobs.get(j.jobId) || {}, j));
  renderLists();
}

// ---------------------------------------------------------------- lists

function progressBar(job) {
  const pct = job.progress ? job.progress.percentage : 0;
  const bar = el('div', {
    class: 'progress' + (job.status === 'completed' ? ' done' : ''), role: 'progressbar',
    'aria-valuemin': 0, 'aria-valuemax': 100, 'aria-valuenow': pct,
    'aria-label': `Progress of import ${job.jobId}`,
  }, el('div', { class: 'fill' }));
  bar.firstChild.style.width = pct + '%';
  return bar;
}

function elapsedSeconds(job) {
  if (!job.startedAt) return null;
  const end = job.completedAt ? new Date(job.completedAt) : new Date();
  return (end - new Date(job.startedAt)) / 1000;
}

function statsLine(job) {
  const p = job.progress || {};
  const parts = [`${fmt(p.current)} / ${fmt(p.total)} rows`, `${p.percentage || 0}%`];
  if (job.status === 'processing') {
    parts.push(job.rowsPerSecond ? `${fmt(job.rowsPerSecond)} rows/s` : '– rows/s');
    parts.push(`elapsed ${duration(elapsedSeconds(job))}`);
    let eta = job.etaSeconds;
    if (eta !== null && eta !== undefined && job.seenAt) eta -= (Date.now() - job.seenAt) / 1000;
    parts.push(`ETA ${eta === null || eta === undefined ? '–' : duration(Math.max(0, eta))}`);
  } else if (job.status === 'paused') {
    parts.push('paused');
  } else if (job.status === 'pending') {
    parts.push('waiting for a worker');
  }
  if (job.errorCount) parts.push(`${fmt(job.errorCount)} rejected`);
  return parts.join(' · ');
}

function actionButtons(job) {
  const buttons = [];
  const add = (action, label, cls) => buttons.push(el('button', {
    type: 'button', class: cls, 'data-action': action, 'data-job': job.jobId,
    onclick: () => act(job.jobId, action), text: label,
  }));
  if (job.status === 'processing' || job.status === 'pending') add('pause', 'Pause');
  if (job.status === 'paused') add('resume', 'Resume');
  if (ACTIVE.includes(job.status)) add('cancel', 'Cancel', 'danger');
  return el('div', { class: 'job-buttons' }, buttons);
}

function renderLists() {
  const jobs = [...state.jobs.values()];
  const active = jobs.filter((j) => ACTIVE.includes(j.status)).sort((a, b) => b.jobId - a.jobId);
  const recent = jobs.filter((j) => !ACTIVE.includes(j.status))
    .sort((a, b) => String(b.completedAt || b.createdAt).localeCompare(String(a.completedAt || a.createdAt)))
    .slice(0, 10);
  // Items are updated in place, and rebuilt only when their status (and so their buttons)
  // changes: a progress event must never pull a button from under a user's click.
  const list = $('#active');
  const items = active.map((job) => {
    const old = list.querySelector(`li[data-job="${job.jobId}"]`);
    if (old && old.dataset.status === job.status) {
      const pct = job.progress ? job.progress.percentage : 0;
      const bar = old.querySelector('.progress');
      bar.setAttribute('aria-valuenow', pct);
      bar.firstChild.style.width = pct + '%';
      old.querySelector('.stats').textContent = statsLine(job);
      return old;
    }
    return el('li', { 'data-job': job.jobId, 'data-status': job.status },
      el('div', { class: 'job-head' },
        el('a', { href: `#/jobs/${job.jobId}`, text: `#${job.jobId} ${job.filename || ''}` }),
        el('span', { class: `badge ${job.status}`, text: job.status })),
      progressBar(job),
      el('div', { class: 'stats', text: statsLine(job) }),
      actionButtons(job));
  });
  const same = items.length === list.children.length && items.every((li, i) => list.children[i] === li);
  if (!same) list.replaceChildren(...items);
  $('#active-empty').hidden = active.length > 0;
  $('#recent tbody').replaceChildren(...recent.map((job) => {
    const r = job.results || job;
    return el('tr', { 'data-job': job.jobId, 'data-status': job.status },
      el('td', {}, el('a', { href: `#/jobs/${job.jobId}`, text: `#${job.jobId}` })),
      el('td', {}, job.filename || '', ...(job.kind && job.kind !== 'import'
        ? [' ', el('span', { class: 'badge', 'data-kind': job.kind, text: job.kind })] : []),
        ...(job.rolledBackBy ? [' ', el('span', { class: 'badge', 'data-rolled-back': job.rolledBackBy, text: 'rolled back' })] : [])),
      el('td', {}, el('span', { class: `badge ${job.status}`, text: job.status })),
      el('td', { class: 'num created', text: fmt(r.createdCount) }),
      el('td', { class: 'num updated', text: fmt(r.updatedCount) }),
      el('td', { class: 'num unchanged', text: fmt(r.unchangedCount) }),
      el('td', { class: 'num errors', text: fmt(r.errorCount) }),
      el('td', { text: when(job.completedAt) }));
  }));
  $('#recent-empty').hidden = recent.length > 0;
}

// Whether a job's changes can be undone: an import (not replace) or a rollback that committed
// something and ended, not rolled back yet.
function reversible(job) {
  if (!['import', 'rollback'].includes(job.kind || 'import') || (job.mode === 'replace' && job.status !== 'completed') || job.rolledBackBy) return false;
  const wrote = (job.createdCount || 0) + (job.updatedCount || 0) + (job.deletedCount || 0) > 0;
  return wrote && ['completed', 'failed', 'cancelled'].includes(job.status);
}

// Asks before undoing, with what will happen.
function confirmRollback(job) {
  const n = (k) => fmt(job[k] || 0);
  const what = job.kind === 'rollback'
    ? `Roll back rollback #${job.jobId}? Its ${n('deletedCount')} deleted rows come back and its ${n('updatedCount')} restored rows get the values it replaced.`
    : `Roll back import #${job.jobId}? Its ${n('createdCount')} created rows will be deleted and its ${n('updatedCount')} updated rows get their previous values back` +
      (job.deletedCount ? `; the ${n('deletedCount')} rows its sync deleted come back.` : '.');
  return window.confirm(`${what} Rows a later import changed are left as they are and listed as conflicts.`);
}

async function act(id, action) {
  if (action === 'rollback' && !confirmRollback(state.jobs.get(id) || { jobId: id })) return;
  try {
    const body = await api(`/api/v1/import/${id}/${action}`, { method: 'POST' });
    const next = body && body.data && body.data.jobId;
    toast(`${action[0].toUpperCase() + action.slice(1)}: ${body.message || 'done'}`);
    await refreshJob(id);
    if (['retry', 'run', 'rollback'].includes(action) && next && next !== id) location.hash = `#/jobs/${next}`;
  } catch (e) {
    toast(e.message, null, true);
  }
}

async function refreshJob(id) {
  const body = await api(`/api/v1/import/status/${id}`);
  const job = Object.assign(state.jobs.get(id) || {}, body.data);
  state.jobs.set(id, job);
  renderLists();
  if (state.jobView && state.jobView.id === id) renderJob(job);
  return job;
}

// ---------------------------------------------------------------- job page

function renderJob(job) {
  const analysis = job.kind === 'analysis';
  const kindName = { analysis: 'Analysis', export: 'Export', rollback: 'Rollback' }[job.kind] || 'Import';
  $('#job-title').replaceChildren(`${kindName} #${job.jobId} · ${job.filename || ''} `,
    el('span', { class: `badge ${job.status}`, id: 'job-status', text: job.status }));
  $('#job-progress').replaceChildren(progressBar(job), el('div', { class: 'stats', text: statsLine(job) }));
  const r = job.results || job;
  const facts = [
    ['Dataset', job.dataset], ['Started by', job.userName || '—'],
    [analysis ? 'Would create' : 'Created', fmt(r.createdCount)], [analysis ? 'Would update' : 'Updated', fmt(r.updatedCount)],
    ['Unchanged', fmt(r.unchangedCount)], ['Rejected', fmt(r.errorCount)],
    ['Started', when(job.startedAt)], ['Finished', when(job.completedAt)],
    ['Elapsed', duration(elapsedSeconds(job))], ['Priority', job.priority || 'normal'],
  ];
  if (job.queuePosition && job.status === 'pending') facts.push(['Place in queue', `#${job.queuePosition} (estimate)`]);
  if (job.analysisOf) facts.push(['Analysed by', `#${job.analysisOf}`]);
  if (job.kind === 'rollback' || job.mode === 'sync') facts.push(['Deleted', fmt(job.deletedCount)]);
  if (job.kind === 'rollback') facts.push(['Rolls back', `#${job.rollbackOf}`]);
  if (job.rolledBackBy) facts.push(['Rolled back by', `#${job.rolledBackBy}`]);
  $('#job-facts').replaceChildren(...facts.map(([k, v]) => el('div', {}, el('dt', { text: k }), el('dd', { text: v, 'data-fact': k.toLowerCase() }))));
  $('#job-error').textContent = job.error || '';
  for (const b of document.querySelectorAll('#job-actions button')) {
    const a = b.dataset.action;
    b.hidden = !((a === 'pause' && (job.status === 'processing' || job.status === 'pending')) ||
      (a === 'resume' && job.status === 'paused') || (a === 'cancel' && ACTIVE.includes(job.status)) ||
      (a === 'retry' && (job.status === 'failed' || job.status === 'cancelled')) ||
      (a === 'run' && analysis && job.status === 'completed') ||
      (a === 'rollback' && reversible(job)));
  }
  // The job's own file: an analysis's report, an export's output.
  const done = job.status === 'completed';
  if (job.kind === 'export') {
    $('#report').href = job.downloadUrl || '#';
    $('#report').textContent = 'Download the export';
    $('#report-line').hidden = !(done && job.downloadUrl);
  } else {
    $('#report').href = `/api/v1/import/${job.jobId}/report?format=xlsx`;
    $('#report').textContent = 'Download the analysis report (XLSX)';
    $('#report-line').hidden = !(analysis && done);
  }
  $('#download').href = `/api/v1/import/${job.jobId}/errors?format=csv`;
  $('#download').hidden = !job.errorCount;
}

let errorsLoading = null;
async function loadErrors() {
  const view = state.jobView;
  if (!view) return;
  if (errorsLoading) return errorsLoading;
  errorsLoading = (async () => {
    try {
      const body = await api(`/api/v1/import/${view.id}/errors?limit=${ERRORS_PAGE}&offset=${view.offset}`);
      const d = body.data;
      $('#err-total').textContent = `(${fmt(d.total)})`;
      $('#errors tbody').replaceChildren(...d.errors.map((e) => el('tr', {},
        el('td', { class: 'num', text: e.row }), el('td', { text: e.column || '' }),
        el('td', { text: e.value || '', title: e.value || '' }), el('td', { text: e.message, title: e.message }))));
      const pages = Math.max(1, Math.ceil(d.total / ERRORS_PAGE));
      $('#err-page').textContent = `page ${Math.floor(view.offset / ERRORS_PAGE) + 1} of ${pages}`;
      $('#err-prev').disabled = view.offset === 0;
      $('#err-next').disabled = view.offset + ERRORS_PAGE >= d.total;
    } finally { errorsLoading = null; }
  })();
  return errorsLoading;
}

// Rejected rows by column and by kind of message, as bars: a few causes instead of pages of rows.
let summaryLoading = null;
async function loadSummary() {
  const view = state.jobView;
  if (!view) return;
  if (summaryLoading) return summaryLoading;
  summaryLoading = (async () => {
    try {
      const d = (await api(`/api/v1/import/${view.id}/errors/summary`)).data;
      $('#err-chart').hidden = !d.total;
      const bars = (list, label) => {
        const top = Math.max(1, ...list.map((c) => c.count));
        return list.map((c) => {
          const fill = el('span', { class: 'fill' });
          fill.style.width = `${(100 * c.count / top).toFixed(1)}%`; // CSSOM, which the CSP allows
          return el('li', { 'data-label': label(c), 'data-count': c.count, title: c.example || label(c) },
            el('span', { class: 'label', text: label(c) }), el('span', { class: 'track' }, fill),
            el('span', { class: 'num', text: fmt(c.count) }));
        });
      };
      $('#err-by-column').replaceChildren(...bars(d.byColumn, (c) => c.column));
      $('#err-by-message').replaceChildren(...bars(d.byMessage.slice(0, 10), (c) => c.message));
    } finally { summaryLoading = null; }
  })();
  return summaryLoading;
}

async function openJob(id) {
  state.jobView = { id, offset: 0 };
  $('#view-home').hidden = true;
  $('#view-job').hidden = false;
  try {
    await refreshJob(id);
    await Promise.all([loadErrors(), loadSummary()]);
  } catch (e) {
    $('#job-title').textContent = e.status === 404 ? `No import #${id}` : e.message;
  }
}

function route() {
  const m = location.hash.match(/^#\/jobs\/(\d+)$/);
  $('#view-sources').hidden = true;
  if (m) return openJob(Number(m[1]));
  state.jobView = null;
  $('#view-job').hidden = true;
  const s = location.hash.match(/^#\/sources(?:\/(\d+))?$/);
  if (s) {
    $('#view-home').hidden = true;
    $('#view-sources').hidden = false;
    return openSources(s[1] ? Number(s[1]) : null);
  }
  $('#view-home').hidden = false;
}

// ---------------------------------------------------------------- sources
// The form builds the API's body (`POST /api/v1/sources`) from the chosen kind's fields only;
// the server checks everything (paths under a source root, the schedule, the host key…) and its
// message for a 400 is shown beside the field it names. Secrets (an SFTP password or key, the
// values of URL headers) leave the page with the request: the form is emptied on success and the
// API never answers them, so they are never shown again.

const SOURCE_EXAMPLE = {
  name: 'nightly-prices', dataset: 'products', kind: 'directory',
  schedule: { cron: '0 2 * * *', timezone: 'Europe/Berlin' }, pick: 'all-new',
  path: '/srv/drop/prices', glob: '*.csv', stableSeconds: 30, after: 'move', moveTo: 'done',
};

function scheduleText(s) {
  if (s.every) return `every ${s.every}`;
  if (s.cron) return `${s.cron} (${s.timezone || 'UTC'})`;
  return '–';
}

// Where a source's files come from, as shown in the list (no secret is ever in a source's view).
function whereText(src) {
  if (src.kind === 'url') return src.url || '–';
  const files = `${src.path || ''}/${src.glob || '*'}`.replace(/\/+/g, '/');
  if (src.kind === 'sftp') return `${src.user}@${src.host}${src.port && src.port !== 22 ? ':' + src.port : ''}:${files}`;
  return files;
}

// Shows or hides a part of the form; a hidden part's inputs are disabled, so they are neither
// validated nor sent.
function showPart(part, on) {
  part.hidden = !on;
  if (part.tagName === 'FIELDSET') part.disabled = !on;
  else for (const c of part.querySelectorAll('input, select, textarea')) c.disabled = !on;
}

function sourceFormParts() {
  const kind = $('#src-kind').value;
  for (const f of document.querySelectorAll('#source-form fieldset[data-kind]')) {
    showPart(f, f.dataset.kind.split(' ').includes(kind));
  }
  // Inside a fieldset that is off, a part's inputs are off with it whatever they say.
  const pairs = [['auth', '#src-auth'], ['after', '#src-after'], ['schedule', '#src-schedule'], ['mode', '#src-mode']];
  for (const [key, sel] of pairs) {
    for (const part of document.querySelectorAll(`#source-form [data-${key}]`)) showPart(part, part.dataset[key] === $(sel).value);
  }
}

function fillSourceForm() {
  const sel = $('#src-dataset');
  const keep = sel.value;
  sel.replaceChildren(...state.datasets.map((d) => el('option', {
    value: d.name, disabled: d.sync,
    text: d.sync ? `${d.name} (imports at once: not for sources)` : d.name,
  })));
  const preferred = state.datasets.find((d) => d.name === keep && !d.sync) || state.datasets.find((d) => !d.sync);
  if (preferred) sel.value = preferred.name;
  const zones = $('#src-timezones');
  if (!zones.children.length && Intl.supportedValuesOf) {
    zones.replaceChildren(...Intl.supportedValuesOf('timeZone').map((z) => el('option', { value: z })));
  }
  if (!$('#src-timezone').value) $('#src-timezone').value = Intl.DateTimeFormat().resolvedOptions().timeZone || '';
  loadSourceTemplates();
  sourceFormParts();
}

async function loadSourceTemplates() {
  const ds = $('#src-dataset').value;
  if (!ds) return;
  try {
    const list = (await api(`/api/v1/datasets/${encodeURIComponent(ds)}/templates`)).data.templates;
    $('#src-templates').replaceChildren(...list.map((t) => el('option', { value: t.name })));
  } catch (_) { $('#src-templates').replaceChildren(); }
}

class FormError extends Error {
  constructor(field, message) { super(message); this.field = field; }
}

// The body for POST /api/v1/sources from the form, or a FormError naming the input.
function sourceBody() {
  const v = (id) => $(id).value.trim();
  const integer = (id, what) => {
    if (!v(id)) return undefined;
    const n = Number(v(id));
    if (!Number.isInteger(n)) throw new FormError(id, `${what} is a whole number.`);
    return n;
  };
  const kind = v('#src-kind');
  const body = { name: v('#src-name'), dataset: v('#src-dataset'), kind, pick: v('#src-pick') };
  body.schedule = v('#src-schedule') === 'cron'
    ? { cron: v('#src-cron'), ...(v('#src-timezone') ? { timezone: v('#src-timezone') } : {}) }
    : { every: v('#src-every') };
  body.options = { mode: v('#src-mode') };
  if (body.options.mode === 'sync' && v('#src-max-delete')) body.options.maxDeletePercent = integer('#src-max-delete', 'The percentage');
  if (v('#src-template')) body.options.template = v('#src-template');
  body.notify = v('#src-notify').split(/[\s,;]+/).filter(Boolean);
  if (kind === 'url') {
    body.url = v('#src-url');
    const lines = $('#src-headers').value.split('\n').map((l) => l.trim()).filter(Boolean);
    if (lines.length) {
      body.headers = {};
      lines.forEach((line, i) => {
        const at = line.indexOf(':');
        if (at < 1) throw new FormError('#src-headers', `Header line ${i + 1} is not “Name: value”.`);
        body.headers[line.slice(0, at).trim()] = line.slice(at + 1).trim();
      });
    }
    return body;
  }
  if (kind === 'sftp') {
    Object.assign(body, { host: v('#src-host'), user: v('#src-user'), hostKey: v('#src-host-key'), path: v('#src-sftp-path') });
    const port = integer('#src-port', 'The port');
    if (port !== undefined) body.port = port;
    if (v('#src-auth') === 'password') body.password = $('#src-password').value;
    else body.privateKey = $('#src-key').value.trim() + '\n';
  } else {
    body.path = v('#src-dir-path');
  }
  if (v('#src-glob')) body.glob = v('#src-glob');
  const stable = integer('#src-stable', 'Stable for');
  if (stable !== undefined) body.stableSeconds = stable;
  body.after = v('#src-after');
  if (body.after === 'move') body.moveTo = v('#src-move-to');
  return body;
}

// Which input an API error is about: a field the message names in backticks, else the code's.
const FIELD_OF_NAME = {
  name: '#src-name', dataset: '#src-dataset', path: null, glob: '#src-glob', stableSeconds: '#src-stable',
  moveTo: '#src-move-to', url: '#src-url', headers: '#src-headers', host: '#src-host', port: '#src-port',
  user: '#src-user', password: '#src-password', privateKey: '#src-key', hostKey: '#src-host-key',
  every: '#src-every', cron: '#src-cron', timezone: '#src-timezone', template: '#src-template',
  maxDeletePercent: '#src-max-delete',
};
const FIELD_OF_CODE = {
  invalid_name: '#src-name', source_exists: '#src-name', unknown_dataset: '#src-dataset',
  sync_dataset: '#src-dataset', invalid_mode: '#src-mode', invalid_max_delete_percent: '#src-max-delete',
  invalid_notify: '#src-notify', invalid_host_key: '#src-host-key', invalid_private_key: '#src-key',
  source_path_not_allowed: null, invalid_url: '#src-url', unsupported_url: '#src-url',
  source_url_not_allowed: '#src-url', invalid_header: '#src-headers',
};
function errorField(e) {
  const pathField = $('#src-kind').value === 'sftp' ? '#src-sftp-path' : '#src-dir-path';
  const scheduleField = $('#src-schedule').value === 'cron' ? '#src-cron' : '#src-every';
  if (e.field) return e.field;
  for (const m of (e.message || '').matchAll(/`([A-Za-z]+)`/g)) {
    if (m[1] in FIELD_OF_NAME) return FIELD_OF_NAME[m[1]] || pathField;
  }
  if (e.code === 'invalid_schedule') return /time ?zone/i.test(e.message) ? '#src-timezone' : scheduleField;
  if (e.code in FIELD_OF_CODE) return FIELD_OF_CODE[e.code] || pathField;
  return null;
}

function unmarkSourceInput(input) {
  const p = $(`#${input.id}-error`);
  if (p) p.remove();
  input.removeAttribute('aria-invalid');
  const rest = (input.getAttribute('aria-describedby') || '').split(/\s+/).filter((id) => id && id !== `${input.id}-error`);
  if (rest.length) input.setAttribute('aria-describedby', rest.join(' ')); else input.removeAttribute('aria-describedby');
}

function clearSourceErrors() {
  $('#source-create-error').textContent = '';
  for (const i of document.querySelectorAll('#source-form [aria-invalid]')) unmarkSourceInput(i);
}

// The message beside the input it is about (or under the form), the input marked and focused.
function showSourceError(e) {
  const field = errorField(e);
  const input = field && $(field);
  if (!input || input.disabled) { $('#source-create-error').textContent = e.message; return; }
  const id = `${input.id}-error`;
  input.closest('.f').append(el('p', { class: 'error field-error', id, role: 'alert', 'data-error-for': input.id, text: e.message }));
  input.setAttribute('aria-invalid', 'true');
  input.setAttribute('aria-describedby', `${input.getAttribute('aria-describedby') || ''} ${id}`.trim());
  input.focus();
}

async function postSource(body) {
  const src = (await api('/api/v1/sources', {
    method: 'POST', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify(body),
  })).data;
  toast(`Source “${src.name}” created.`);
  if (location.hash === `#/sources/${src.id}`) await openSources(src.id);
  else location.hash = `#/sources/${src.id}`;
  return src;
}

async function createSource(ev) {
  ev.preventDefault();
  clearSourceErrors();
  const button = $('#source-create');
  button.disabled = true;
  try {
    await postSource(sourceBody());
    // Nothing typed stays in the page: the secrets above all.
    $('#source-form').reset();
    $('#src-timezone').value = '';
    fillSourceForm();
  } catch (e) {
    if (e instanceof FormError || e instanceof ApiError) showSourceError(e);
    else $('#source-create-error').textContent = e.message;
  } finally {
    button.disabled = false;
  }
}

async function createSourceFromJson() {
  $('#source-json-error').textContent = '';
  let body;
  try { body = JSON.parse($('#source-json').value); } catch (e) {
    $('#source-json-error').textContent = `Not JSON: ${e.message}`;
    return;
  }
  try {
    await postSource(body);
    $('#source-json').value = JSON.stringify(SOURCE_EXAMPLE, null, 2);
  } catch (e) {
    $('#source-json-error').textContent = `${e.code}: ${e.message}`;
  }
}

async function openSources(selected) {
  if (!$('#source-json').value) $('#source-json').value = JSON.stringify(SOURCE_EXAMPLE, null, 2);
  fillSourceForm();
  $('#sources-error').textContent = '';
  let list;
  try {
    list = (await api('/api/v1/sources')).data.sources;
  } catch (e) {
    $('#sources-error').textContent = e.message;
    return;
  }
  $('#sources-empty').hidden = list.length > 0;
  const rows = await Promise.all(list.map(async (src) => {
    let last = null;
    try { last = (await api(`/api/v1/sources/${src.id}/runs?limit=1`)).data.runs[0] || null; } catch (_) { /* shown empty */ }
    return el('tr', { 'data-source': src.id, class: src.id === selected ? 'selected' : null },
      el('td', {}, el('a', { href: `#/sources/${src.id}`, text: src.name })),
      el('td', { text: src.kind }),
      el('td', { class: 'where', text: whereText(src), title: whereText(src) }),
      el('td', { text: src.dataset }),
      el('td', { text: scheduleText(src.schedule) + (src.enabled ? '' : ' (disabled)') }),
      el('td', { text: when(src.nextDueAt) }),
      el('td', { class: last && last.outcome ? `outcome-${last.outcome}` : null,
        text: last ? `${last.outcome || 'running'} · ${when(last.at)}` : '–' }),
      el('td', {}, el('button', { type: 'button', text: 'Run now', onclick: () => runSource(src.id) })));
  }));
  $('#sources tbody').replaceChildren(...rows);
  if (selected) await showRuns(list.find((x) => x.id === selected), selected);
  else $('#source-runs-card').hidden = true;
}

// A run still going is looked at again until it ends, while its source's page is open.
let runsRefresh = null;
async function showRuns(src, id) {
  clearTimeout(runsRefresh);
  $('#source-runs-card').hidden = false;
  $('#source-runs-title').textContent = `Recent runs of ${src ? src.name : '#' + id}`;
  const runs = (await api(`/api/v1/sources/${id}/runs?limit=50`)).data.runs;
  $('#source-runs tbody').replaceChildren(...runs.map((r) => el('tr', { 'data-run': r.id, 'data-outcome': r.outcome || 'running' },
    el('td', { text: when(r.at) }),
    el('td', { text: r.trigger }),
    el('td', { class: r.outcome ? `outcome-${r.outcome}` : null, text: r.outcome || 'running' }),
    el('td', { text: r.file || '–' }),
    el('td', {}, r.jobId ? el('a', { href: `#/jobs/${r.jobId}`, text: `#${r.jobId}` }) : '–'),
    el('td', { text: r.reason || '' }))));
  if (!runs.length) $('#source-runs tbody').append(el('tr', {}, el('td', { colspan: 6, class: 'muted', text: 'No runs yet.' })));
  if (runs.some((r) => !r.outcome)) {
    runsRefresh = setTimeout(() => { if (location.hash === `#/sources/${id}`) openSources(id); }, 2000);
  }
}

async function runSource(id) {
  try {
    const run = (await api(`/api/v1/sources/${id}/run`, { method: 'POST' })).data;
    toast(`Run: ${run.outcome || 'running'}${run.reason ? ' (' + run.reason + ')' : ''}`,
      run.jobId ? { href: `#/jobs/${run.jobId}`, text: 'View job' } : null,
      run.outcome === 'failed' || run.outcome === 'needs_mapping');
  } catch (e) {
    toast(e.message, null, true);
  }
  if (location.hash === `#/sources/${id}`) openSources(id); else location.hash = `#/sources/${id}`;
}

// ---------------------------------------------------------------- preview and mapping

function chooseFile(file) {
  if (!file) return;
  state.file = file;
  state.mapping = null;
  state.template = '';
  state.templateTried = false;
  preview();
}

async function preview() {
  const ds = $('#dataset').value;
  const form = new FormData();
  form.append('file', state.file.slice(0, PREVIEW_BYTES), state.file.name);
  if (state.mapping) form.append('mapping', JSON.stringify(state.mapping));
  else if (state.template) form.append('template', state.template);
  $('#problems').textContent = '';
  try {
    const body = await api(`/api/v1/import/${encodeURIComponent(ds)}/preview`, { method: 'POST', body: form });
    const d = body.data;
    // A saved template for these columns: use it once, unless the user already chose.
    if (!state.templateTried && !state.mapping && !state.template && d.suggestedTemplate) {
      state.templateTried = true;
      state.template = d.suggestedTemplate;
      toast(`Using the saved mapping “${d.suggestedTemplate}”.`);
      return preview();
    }
    state.preview = d;
    renderPreview(d);
  } catch (e) {
    $('#preview').hidden = false;
    $('#problems').textContent = e.message;
    $('#run').disabled = true;
    $('#analyse').disabled = $('#run').disabled;
  }
}

function matchBadge(c) {
  if (c.match === 'none') {
    return c.suggestion
      ? el('span', { class: 'badge', text: `not mapped — maybe “${c.suggestion}” (${c.confidence.toFixed(2)})` })
      : el('span', { class: 'badge', text: 'not mapped' });
  }
  if (c.match === 'fuzzy') {
    return el('span', { class: 'badge fuzzy', title: 'matched by similarity: check it', text: `similar (${c.confidence.toFixed(2)})` });
  }
  const label = { name: 'same name', alias: 'alias', manual: 'chosen', template: 'template' }[c.match] || c.match;
  return el('span', { class: `badge ${c.match}`, text: label });
}

function renderPreview(d) {
  $('#preview').hidden = false;
  const size = state.file.size;
  $('#file-info').textContent = `${state.file.name} · ${(size / 1048576).toFixed(1)} MB · ${d.format.toUpperCase()}` +
    (d.delimiter ? ` · delimiter “${d.delimiter === '\t' ? 'tab' : d.delimiter}”` : '') +
    (d.truncated ? ' · preview of the first 1 MB' : '');
  $('#problems').replaceChildren(...d.problems.map((p) => el('div', { text: p.message })));
  const tpl = $('#template');
  tpl.replaceChildren(el('option', { value: '', text: '(automatic)' }),
    ...d.templates.map((t) => el('option', { value: t.name, text: t.name })));
  tpl.value = d.mappingSource === 'template' ? state.template : '';

  $('#mapping tbody').replaceChildren(...d.columns.map((c) => {
    // A column is named by its header, or by its position ("#3") when the header repeats.
    const select = el('select', { 'data-key': c.key, 'aria-label': `Field for column ${c.header}` },
      el('option', { value: '', text: '(ignore)' }),
      ...d.fields.map((f) => el('option', { value: f.name, text: f.name + (f.required ? ' *' : '') + ` (${f.type})` })));
    select.value = d.mapping[c.key] || '';
    select.addEventListener('change', onMappingEdit);
    return el('tr', {}, el('td', { text: c.header }), el('td', {}, select), el('td', {}, matchBadge(c)));
  }));

  // Rows, with the cells that would be rejected marked.
  const positionOf = {};
  for (const c of d.columns) if (d.mapping[c.key]) positionOf[d.mapping[c.key]] = c.position - 1;
  const errorsByRow = new Map();
  for (const e of d.errors) errorsByRow.set(e.row, e);
  $('#rows thead').replaceChildren(el('tr', {}, el('th', { class: 'num', text: 'Row' }), ...d.headers.map((h) => el('th', { text: h }))));
  $('#rows tbody').replaceChildren(...d.rows.map((r) => {
    const err = errorsByRow.get(r.row);
    const badColumn = err && err.column ? positionOf[err.column] : null;
    return el('tr', { class: err ? 'bad' : null, 'data-row': r.row, title: err ? err.message : null },
      el('td', { class: 'num', text: r.row }),
      ...r.values.map((v, i) => el('td', { class: badColumn === i ? 'bad' : null, text: v })));
  }));
  $('#preview-summary').textContent = `(${d.rows.length} shown, ${d.errors.length} would be rejected)`;
  $('#preview-errors').replaceChildren(...d.errors.map((e) => el('li', { text: `Row ${e.row}: ${e.message}` })));
  $('#run').disabled = d.problems.length > 0;
  $('#analyse').disabled = $('#run').disabled;
}

function currentMapping() {
  const m = {};
  for (const s of document.querySelectorAll('#mapping select')) m[s.dataset.key] = s.value || null;
  return m;
}

function onMappingEdit() {
  state.mapping = currentMapping();
  preview();
}

async function saveTemplate() {
  const name = $('#template-name').value.trim();
  if (!name) { toast('Give the template a name first.', null, true); return; }
  const ds = $('#dataset').value;
  try {
    await api(`/api/v1/datasets/${encodeURIComponent(ds)}/templates`, {
      method: 'POST', headers: { 'Content-Type': 'application/json' },
      body: JSON.stringify({ name, mapping: currentMapping() }),
    });
    toast(`Saved the mapping as “${name}”. It will be suggested for files with these columns.`);
    state.mapping = null;
    state.template = name;
    $('#template-name').value = '';
    preview();
  } catch (e) { toast(e.message, null, true); }
}

function resetPreview() {
  state.file = null; state.preview = null; state.mapping = null; state.template = '';
  $('#preview').hidden = true;
  $('#file').value = '';
}

async function runImport(dryRun = false) {
  const ds = $('#dataset').value;
  const form = new FormData();
  form.append('mapping', JSON.stringify(currentMapping()));
  if (dryRun) form.append('dryRun', 'true');
  form.append('file', state.file, state.file.name);
  const name = state.file.name;
  $('#run').disabled = true;
  $('#analyse').disabled = true;
  try {
    const res = await fetch(`/api/v1/import/${encodeURIComponent(ds)}`, { method: 'POST', body: form, credentials: 'same-origin' });
    const body = await res.json().catch(() => null);
    if (!res.ok || !body) {
      const err = (body && body.error) || {};
      toast(err.message || `The upload failed (${res.status}).`,
        err.jobId ? { href: `#/jobs/${err.jobId}`, text: 'View that import' } : null, true);
      return;
    }
    resetPreview();
    if (res.status === 202) {
      toast(dryRun ? `Analysis started for ${name}: nothing is written.` : `Background import started for ${name}.`,
        { href: `#/jobs/${body.data.jobId}`, text: 'View status' });
      await refreshJob(body.data.jobId);
    } else {
      const r = body.data.results || {};
      toast(`${name} imported: ${fmt(r.successCount)} rows accepted, ${fmt(r.errorCount)} rejected.`, { href: `#/jobs/${body.data.jobId}`, text: 'View' });
      await loadJobs();
    }
  } catch (e) {
    toast(`The upload failed: ${e.message}`, null, true);
  } finally {
    $('#run').disabled = false;
    $('#analyse').disabled = false;
  }
}

// ---------------------------------------------------------------- export

async function runExport() {
  const ds = $('#export-dataset').value;
  const format = $('#export-format').value;
  $('#export-run').disabled = true;
  $('#export-done').hidden = true;
  try {
    const body = await api(`/api/v1/export/${encodeURIComponent(ds)}`, {
      method: 'POST', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify({ format }),
    });
    const id = body.data.jobId;
    let job;
    for (;;) {
      job = (await api(`/api/v1/import/status/${id}`)).data;
      $('#export-progress').replaceChildren(progressBar(job),
        el('div', { class: 'stats', text: `${fmt(job.progress.current)} / ${fmt(job.progress.total)} rows` }));
      if (!ACTIVE.includes(job.status)) break;
      await new Promise((r) => setTimeout(r, 300));
    }
    if (job.status !== 'completed') {
      toast(`Export #${id} ${job.status}${job.error ? ': ' + job.error : '.'}`, { href: `#/jobs/${id}`, text: 'View' }, true);
      return;
    }
    $('#export-download').href = job.downloadUrl;
    $('#export-download').textContent = `Download ${job.filename}`;
    $('#export-info').textContent = `${fmt(job.results.totalRows)} rows · ${fmt(job.fileSize)} bytes`;
    $('#export-info').dataset.rows = job.results.totalRows;
    $('#export-done').hidden = false;
  } catch (e) {
    toast(e.message, null, true);
  } finally {
    $('#export-run').disabled = false;
  }
}

// ---------------------------------------------------------------- start

async function start(datasets) {
  $('#signin').hidden = true;
  $('#app').hidden = false;
  $('#nav').hidden = false;
  renderNotifyButton();
  api('/api/v1/me').then((me) => {
    const d = me.data;
    $('#whoami').textContent = `${d.userName || 'user ' + d.userId} · ${d.orgName || 'organisation ' + d.orgId} (${d.role})`;
  }).catch(() => { $('#whoami').textContent = ''; });
  const body = datasets || await api('/api/v1/datasets');
  state.datasets = body.data.datasets;
  const sel = $('#dataset');
  sel.replaceChildren(...state.datasets.map((d) => el('option', { value: d.name, text: d.name + (d.sync ? ' (small, immediate)' : '') })));
  const last = localStorage.getItem('sluice.dataset');
  const preferred = state.datasets.find((d) => d.name === last) || state.datasets.find((d) => !d.sync);
  if (preferred) sel.value = preferred.name;
  $('#export-dataset').replaceChildren(...state.datasets.map((d) => el('option', { value: d.name, text: d.name })));
  if (preferred) $('#export-dataset').value = preferred.name;
  connect();
  route();
}

function wire() {
  $('#signin-form').addEventListener('submit', signIn);
  $('#signout').addEventListener('click', signOut);
  $('#export-run').addEventListener('click', runExport);
  $('#source-form').addEventListener('submit', createSource);
  $('#source-create-json').addEventListener('click', createSourceFromJson);
  for (const id of ['#src-kind', '#src-auth', '#src-after', '#src-schedule', '#src-mode']) {
    $(id).addEventListener('change', sourceFormParts);
  }
  $('#src-dataset').addEventListener('change', loadSourceTemplates);
  // An input's error goes once it is edited.
  $('#source-form').addEventListener('input', (e) => {
    if (e.target.hasAttribute('aria-invalid')) unmarkSourceInput(e.target);
  });
  $('#notify-btn').addEventListener('click', toggleNotifications);
  $('#file').addEventListener('change', (e) => chooseFile(e.target.files[0]));
  const drop = $('#drop');
  drop.addEventListener('dragover', (e) => { e.preventDefault(); drop.classList.add('over'); });
  drop.addEventListener('dragleave', () => drop.classList.remove('over'));
  drop.addEventListener('drop', (e) => {
    e.preventDefault();
    drop.classList.remove('over');
    chooseFile(e.dataTransfer && e.dataTransfer.files[0]);
  });
  $('#dataset').addEventListener('change', () => {
    localStorage.setItem('sluice.dataset', $('#dataset').value);
    if (state.file) { state.mapping = null; state.template = ''; state.templateTried = false; preview(); } });
  $('#template').addEventListener('change', (e) => { state.template = e.target.value; state.templateTried = true; state.mapping = null; preview(); });
  $('#save-template').addEventListener('click', saveTemplate);
  $('#run').addEventListener('click', () => runImport(false));
  $('#analyse').addEventListener('click', () => runImport(true));
  $('#discard').addEventListener('click', resetPreview);
  for (const b of document.querySelectorAll('#job-actions button')) {
    b.addEventListener('click', () => state.jobView && act(state.jobView.id, b.dataset.action));
  }
  $('#err-prev').addEventListener('click', () => { state.jobView.offset = Math.max(0, state.jobView.offset - ERRORS_PAGE); loadErrors(); });
  $('#err-next').addEventListener('click', () => { state.jobView.offset += ERRORS_PAGE; loadErrors(); });
  window.addEventListener('hashchange', route);
  // Elapsed time and ETA move between events too.
  setInterval(() => {
    for (const li of document.querySelectorAll('#active li')) {
      const job = state.jobs.get(Number(li.dataset.job));
      if (job) li.querySelector('.stats').textContent = statsLine(job);
    }
    if (state.jobView) {
      const job = state.jobs.get(state.jobView.id);
      const s = document.querySelector('#job-progress .stats');
      if (job && s) s.textContent = statsLine(job);
    }
  }, 1000);
}

document.addEventListener('DOMContentLoaded', async () => {
  wire();
  // Signed in? Only the server can tell: the cookie is HttpOnly.
  let datasets;
  try {
    const res = await fetch('/api/v1/datasets', { credentials: 'same-origin' });
    if (res.status === 401) { showSignin(); return; }
    if (!res.ok) throw new Error(`The server answered ${res.status}.`);
    datasets = await res.json();
  } catch (e) { showSignin(e.message); return; }
  try { await start(datasets); } catch (e) { if (!(e instanceof ApiError && e.status === 401)) showSignin(e.message); }
});
