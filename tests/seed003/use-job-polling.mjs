// Seed 003's documented client, run unchanged against sluice: the component's `startJob`
// (POST /api/v1/analysis/analyze-file with a FormData) and `useJobPolling`'s loop (GET
// /api/v1/analysis/job/:jobId every `interval` ms until `completed` → onCompleted(result) or
// `failed` → onFailed(error)), then the download of `downloadUrl`.
//
// The only thing added is what a browser on sluice's page does by itself: relative URLs resolve
// against the page's origin, and the session cookie and Origin header go with each request.
//
//   SLUICE_URL, SLUICE_TOKEN, FILE (to analyse), OUT (where the report is saved)
//   node tests/seed003/use-job-polling.mjs   → prints one JSON line: {started, polls, result | error, report}
import fs from 'node:fs';
import path from 'node:path';

const base = process.env.SLUICE_URL;
const browserFetch = (url, init = {}) => fetch(new URL(url, base), {
  ...init,
  headers: { ...(init.headers || {}), Cookie: `token=${process.env.SLUICE_TOKEN}`, Origin: base },
});
const fetch_ = browserFetch;

// useJobPolling, as the seed's hook drives it (without React: the state is a plain object).
function useJobPolling({ jobId, interval = 60000, onCompleted, onFailed }) {
  const state = { status: null, progress: 0, polls: 0, seen: [] };
  if (!jobId) return state;
  const tick = async () => {
    const response = await fetch_(`/api/v1/analysis/job/${jobId}`);
    const data = await response.json();
    state.polls += 1;
    state.status = data.status;
    state.progress = data.progress ?? state.progress;
    state.seen.push(data.status);
    if (data.status === 'completed') {
      clearInterval(timer);
      onCompleted?.(data);
    } else if (data.status === 'failed') {
      clearInterval(timer);
      onFailed?.(data.error);
    }
  };
  const timer = setInterval(() => { tick().catch((e) => { clearInterval(timer); onFailed?.({ message: String(e) }); }); }, interval);
  return state;
}

const formData = new FormData();
formData.append('file', new Blob([fs.readFileSync(process.env.FILE)]), path.basename(process.env.FILE));
formData.append('filterOption', 'all');

const response = await fetch_('/api/v1/analysis/analyze-file', { method: 'POST', body: formData });
const data = await response.json();
if (!(data.success && data.jobId)) {
  console.log(JSON.stringify({ started: data }));
  process.exit(1);
}
const outcome = await new Promise((resolve) => {
  const jobStatus = useJobPolling({
    jobId: data.jobId,
    interval: 50,
    onCompleted: (result) => resolve({ result, jobStatus }),
    onFailed: (error) => resolve({ error, jobStatus }),
  });
});
let report = null;
if (outcome.result) {
  const file = await fetch_(outcome.result.downloadUrl);
  const bytes = Buffer.from(await file.arrayBuffer());
  fs.writeFileSync(process.env.OUT, bytes);
  report = { status: file.status, type: file.headers.get('content-type'), size: bytes.length };
}
console.log(JSON.stringify({
  started: data, polls: outcome.jobStatus.polls, seen: outcome.jobStatus.seen,
  result: outcome.result, error: outcome.error, report,
}));
