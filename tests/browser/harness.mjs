// What the browser scripts share: their environment, Chromium's start and end, the step being
// run (named in every failure) and screenshots.
import { chromium } from 'playwright-core';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

export const env = (k) => {
  const v = process.env[k];
  if (!v) throw new Error(`${k} is not set`);
  return v;
};

/** The step being run; `check` and the scripts' failure message name it. */
export const steps = { name: 'start' };

export const check = (cond, what) => { if (!cond) throw new Error(`${steps.name}: ${what}`); };

const SHOTS = env('SCREENSHOTS');
fs.mkdirSync(SHOTS, { recursive: true });

export const shot = (page, name) => page.screenshot({ path: path.join(SHOTS, name), fullPage: true });

/** Debian's Chromium (or $CHROMIUM), headless, in a fresh profile; `close()` ends both. */
export async function launch(options = {}) {
  const profile = fs.mkdtempSync(path.join(os.tmpdir(), 'sluice-chromium-'));
  const context = await chromium.launchPersistentContext(profile, {
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    headless: true,
    args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync'],
    viewport: { width: 1280, height: 900 },
    ...options,
  });
  const close = async () => {
    await context.close();
    fs.rmSync(profile, { recursive: true, force: true });
  };
  return { context, close };
}
