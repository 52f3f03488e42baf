/*
 * sluice.js — drop-in client for a sluice server.
 *
 *   <script src="https://sluice.example/sluice.js"></script>
 *   const result = await Sluice.uploadAndMonitor(file, 'products', (p) => {
 *     bar.value = p.progress.percentage;            // p: the job's latest event
 *   });
 *   // result: the final event — status 'completed' | 'failed' | 'cancelled', with `results`
 *
 * Options (4th argument): baseUrl (default: same origin), token (sent as a Bearer header; live
 * events then fall back to polling, as EventSource cannot send headers — prefer the `token`
 * cookie, which POST /api/v1/session sets), mapping (column → field; a column is its header or "#N", its 1-based position), template (a saved mapping's name), mode, pollMs (2000).
 * Progress comes from Server-Sent Events (GET /api/v1/import/{id}/events), not polling; the
 * browser resumes the stream with Last-Event-ID after a network break, so no update and never the
 * final one is lost. Seed 000's polling example, done right.
 */
(function (global) {
  'use strict';

  class SluiceError extends Error {
    constructor(status, code, message, body) {
      super(message);
      this.name = 'SluiceError';
      this.status = status;
      this.code = code;
      this.body = body;
    }
  }

  const FINISHED = ['completed', 'failed', 'cancelled'];

  function request(options, path, init) {
    const headers = Object.assign({}, init && init.headers);
    if (options.token) headers.Authorization = 'Bearer ' + options.token;
    return fetch((options.baseUrl || '') + path, Object.assign({ credentials: 'include' }, init, { headers }));
  }

  async function json(res) {
    const body = await res.json().catch(() => null);
    if (!res.ok || !body) {
      const err = (body && body.error) || {};
      throw new SluiceError(res.status, err.code || 'http_' + res.status, err.message || res.statusText, body);
    }
    return body;
  }

  /** Polls the status endpoint until the job finishes (used when events are unavailable). */
  async function poll(jobId, onProgress, options) {
    for (;;) {
      const body = await json(await request(options, '/api/v1/import/status/' + jobId));
      if (onProgress) onProgress(body.data);
      if (FINISHED.includes(body.data.status)) return body.data;
      await new Promise((r) => setTimeout(r, options.pollMs || 2000));
    }
  }

  /** Follows a job until it ends; resolves with its final event. */
  function monitor(jobId, onProgress, options) {
    options = options || {};
    if (options.token || typeof EventSource === 'undefined') return poll(jobId, onProgress, options);
    return new Promise((resolve, reject) => {
      const url = (options.baseUrl || '') + '/api/v1/import/' + jobId + '/events';
      const es = new EventSource(url, { withCredentials: true });
      let finished = false;
      const handle = (e) => {
        const data = JSON.parse(e.data);
        if (onProgress) onProgress(data);
        if (e.type === 'done') {
          finished = true;
          es.close();
          resolve(data);
        }
      };
      for (const name of ['status', 'progress', 'done']) es.addEventListener(name, handle);
      es.onerror = () => {
        // While connecting or open, the browser retries by itself with Last-Event-ID. CLOSED
        // means the server refused the stream (204 once finished, 401, 404): ask the status.
        if (es.readyState === EventSource.CLOSED && !finished) {
          poll(jobId, null, options).then((final) => {
            if (onProgress) onProgress(final);
            resolve(final);
          }, reject);
        }
      };
    });
  }

  /** Uploads `file` into `dataset` and follows the import; resolves with the final state. */
  async function uploadAndMonitor(file, dataset, onProgress, options) {
    options = options || {};
    const form = new FormData();
    if (options.mode) form.append('mode', options.mode);
    if (options.priority) form.append('priority', options.priority);
    if (options.mapping) form.append('mapping', JSON.stringify(options.mapping));
    if (options.template) form.append('template', options.template);
    form.append('file', file, file.name || 'upload.csv');
    const res = await request(options, '/api/v1/import/' + encodeURIComponent(dataset), { method: 'POST', body: form });
    const body = await json(res);
    if (res.status === 200) {
      // A synchronous dataset: the import already ran.
      if (onProgress) onProgress(body.data);
      return body.data;
    }
    return monitor(body.data.jobId, onProgress, options);
  }

  const api = { uploadAndMonitor, monitor, SluiceError };
  global.Sluice = api;
  if (typeof module !== 'undefined' && module.exports) module.exports = api;
})(typeof window !== 'undefined' ? window : globalThis);
