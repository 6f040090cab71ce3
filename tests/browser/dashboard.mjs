// Drives the dashboard in a real browser (Debian's chromium through playwright-core)
// against a running `tsad serve`: posts a stream with a spike, selects it, checks the
// chart and the anomaly list, gives feedback and checks through the API that it was
// stored, checks the admin panel's "needs an admin key" state, and saves a screenshot.
//
//   TSAD_URL         the server, e.g. http://127.0.0.1:8080 (required)
//   TSAD_API_KEY     a key with the admin scope, if the server has keys
//   TSAD_SCREENSHOT  where the screenshot goes [default: docs/dashboard.png]
//   CHROMIUM         the browser [default: /usr/bin/chromium]
//
// scripts/browser-test.sh starts a scratch server and runs this.
import assert from 'node:assert/strict';
import { mkdir } from 'node:fs/promises';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

const REPO = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');
const BASE = (process.env.TSAD_URL || '').replace(/\/$/, '');
const KEY = process.env.TSAD_API_KEY || '';
const SCREENSHOT = path.resolve(REPO, process.env.TSAD_SCREENSHOT || 'docs/dashboard.png');
const BROWSER = process.env.CHROMIUM || '/usr/bin/chromium';
const STREAM = 'boiler-7';

if (!BASE) {
  console.error('TSAD_URL is not set (e.g. http://127.0.0.1:8080)');
  process.exit(2);
}

const step = (text) => console.log(`• ${text}`);

async function api(method, route, body) {
  const headers = { accept: 'application/json' };
  if (KEY) headers.authorization = `Bearer ${KEY}`;
  if (body !== undefined) headers['content-type'] = 'application/json';
  const response = await fetch(BASE + route, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  const text = await response.text();
  if (!response.ok) throw new Error(`${method} ${route}: ${response.status} ${text}`);
  return text ? JSON.parse(text) : null;
}

/** Deterministic noise (mulberry32 and Box-Muller), so every run posts the same data. */
function gaussian(seed) {
  let a = seed >>> 0;
  const uniform = () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
  return () => Math.sqrt(-2 * Math.log(1 - uniform())) * Math.cos(2 * Math.PI * uniform());
}

const T0 = Date.UTC(2026, 0, 1);
const MINUTE = 60_000;

async function postData() {
  const noise = gaussian(7);
  const sine = (i) => 20 + 5 * Math.sin((2 * Math.PI * i) / 96) + 0.3 * noise();
  const readings = Array.from({ length: 400 }, (_, i) => ({ ts: T0 + MINUTE * i, value: sine(i) }));
  const first = await api('POST', `/v1/streams/${STREAM}/readings`, { readings });
  assert.equal(first.accepted, 400);
  // The spike, then the pattern again so the event closes and the chart shows the recovery.
  const spike = await api('POST', `/v1/streams/${STREAM}/readings`, { readings: [{ ts: T0 + MINUTE * 400, value: 41.5 }] });
  assert.ok(spike.anomalies.length >= 1, `the spike was not flagged: ${JSON.stringify(spike)}`);
  const after = Array.from({ length: 60 }, (_, i) => ({ ts: T0 + MINUTE * (401 + i), value: sine(401 + i) }));
  await api('POST', `/v1/streams/${STREAM}/readings`, { readings: after });

  // Two more streams, so the list looks like a real deployment: one scoring, one warming up.
  const pump = gaussian(11);
  await api('POST', '/v1/streams/pump-3.vibration/readings', {
    readings: Array.from({ length: 260 }, (_, i) => ({ ts: T0 + MINUTE * i, value: 1.2 + 0.15 * Math.sin(i / 7) + 0.03 * pump() })),
  });
  const ecg = gaussian(13);
  await api('POST', '/v1/streams/line-2:flow/readings', {
    readings: Array.from({ length: 120 }, (_, i) => ({ ts: T0 + MINUTE * i, value: 310 + 12 * Math.cos(i / 15) + 2 * ecg() })),
  });

  const events = await api('GET', `/v1/anomalies?stream=${STREAM}`);
  assert.ok(events.anomalies.length >= 1, 'no anomaly event was stored');
  return events.anomalies;
}

async function checkStaticRoutes() {
  const page = await fetch(`${BASE}/`);
  assert.equal(page.status, 200);
  assert.match(page.headers.get('content-type'), /^text\/html/);
  const html = await page.text();
  const script = html.match(/\/assets\/app\.js\?v=[0-9a-f]+/);
  assert.ok(script, 'index.html links app.js with a version');
  const js = await fetch(BASE + script[0]);
  assert.equal(js.status, 200);
  assert.match(js.headers.get('content-type'), /^text\/javascript/);
  assert.match(js.headers.get('cache-control'), /max-age/);
  const css = await fetch(`${BASE}/assets/uPlot.min.css`);
  assert.match(css.headers.get('content-type'), /^text\/css/);
  const missing = await fetch(`${BASE}/assets/nope.js`);
  assert.equal(missing.status, 404);
  const etag = page.headers.get('etag');
  assert.ok(etag, 'the page has an ETag');
  const again = await fetch(`${BASE}/`, { headers: { 'if-none-match': etag } });
  assert.equal(again.status, 304);
}

/** Counts painted pixels of the chart canvas, so an empty canvas fails. */
const paintedPixels = (page) => page.$eval('#chart canvas', (canvas) => {
  const { data } = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height);
  let n = 0;
  for (let i = 3; i < data.length; i += 4) if (data[i] > 0) n += 1;
  return n;
});

async function main() {
  step(`server ${BASE}`);
  await checkStaticRoutes();
  step('static routes: content types, cache headers, 404, 304');
  const stored = await postData();
  step(`posted ${STREAM}: ${stored.length} anomaly event(s) stored`);
  // A small training job, so the jobs panel has something to show (it runs while the page loads).
  const job = await api('POST', '/admin/v1/models/boiler/train', {
    architecture: 'gru', hidden: 16, window: 32, epochs: 3, streams: [STREAM],
  });
  step(`training job #${job.id} queued`);

  const browser = await chromium.launch({ executablePath: BROWSER, args: ['--no-sandbox', '--disable-dev-shm-usage'] });
  const problems = [];
  try {
    const context = await browser.newContext({ viewport: { width: 1440, height: 1000 }, deviceScaleFactor: 1 });
    const page = await context.newPage();
    page.on('pageerror', (e) => problems.push(`page error: ${e.message}`));
    page.on('console', (m) => { if (m.type() === 'error') problems.push(`console: ${m.text()}`); });

    await page.goto(`${BASE}/`);
    if (KEY) {
      await page.fill('#api-key', KEY);
      await page.click('#key-form button[type=submit]');
    }
    const item = page.locator(`.stream-item[data-stream="${STREAM}"]`);
    await item.waitFor();
    await page.locator('.stream-item .scorebar').first().waitFor();
    step('stream list shows the streams with their latest score');

    await item.click();
    await page.waitForFunction(() => Number(document.getElementById('chart').dataset.points) >= 400);
    const painted = await paintedPixels(page);
    assert.ok(painted > 5000, `the chart canvas is nearly empty (${painted} painted pixels)`);
    const chart = await page.$eval('#chart', (el) => ({ ...el.dataset }));
    assert.ok(Number(chart.flagged) >= 1, `no flagged reading drawn: ${JSON.stringify(chart)}`);
    assert.ok(Number(chart.events) >= 1, `no anomaly event drawn: ${JSON.stringify(chart)}`);
    step(`chart: ${chart.points} readings, ${chart.flagged} flagged, ${chart.events} event(s), ${painted} pixels painted`);

    const row = page.locator('.anomaly-row').first();
    await row.waitFor();
    const id = Number(await row.getAttribute('data-anomaly-id'));
    assert.ok(stored.some((a) => a.id === id), `listed anomaly ${id} is not one the API returned`);
    await row.locator('button[data-label="true_positive"]').click();
    await row.locator('[data-feedback="true_positive"]').waitFor();
    const after = await api('GET', `/v1/anomalies?stream=${STREAM}`);
    const event = after.anomalies.find((a) => a.id === id);
    assert.equal(event?.feedback, 'true_positive', `feedback on anomaly ${id} was not stored`);
    step(`feedback on anomaly #${id} stored: ${event.feedback}`);

    // Clicking an event zooms both charts to it; "Reset zoom" shows the whole window again.
    await row.locator('td').nth(1).click();
    await page.locator('#reset-zoom:not([disabled])').waitFor();
    await page.click('#reset-zoom');
    await page.locator('#reset-zoom[disabled]').waitFor();
    step('clicking an anomaly zooms to it; reset zoom restores the window');

    await page.locator('#model-rows tr[data-model="default"]').waitFor();
    await page.locator(`#job-rows tr[data-job="${job.id}"] .badge-succeeded`).waitFor({ timeout: 120000 });
    await page.locator('#model-rows tr[data-model="boiler"]').waitFor();
    step(`models panel lists the default model; job #${job.id} succeeded and its model is listed`);

    // Live refresh: a new reading shows up without reloading the page.
    await api('POST', `/v1/streams/${STREAM}/readings`, { readings: [{ ts: T0 + MINUTE * 461, value: 20.4 }] });
    await page.waitForFunction(() => Number(document.getElementById('chart').dataset.points) >= 462, null, { timeout: 15000 });
    step('chart refreshed live with a new reading');

    // The screenshot: the toast gone, the cursor resting on the spike so the legend explains it.
    await page.locator('#toast').waitFor({ state: 'hidden', timeout: 10000 });
    await page.evaluate(() => window.scrollTo(0, 0));
    // The x axis spans the readings exactly and they are evenly spaced: the spike is
    // reading 400 of 0..461.
    const box = await page.locator('#chart .u-over').boundingBox();
    await page.mouse.move(box.x + box.width * (400 / 461), box.y + box.height * 0.3);
    await mkdir(path.dirname(SCREENSHOT), { recursive: true });
    await page.screenshot({ path: SCREENSHOT, fullPage: true });
    step(`screenshot ${path.relative(REPO, SCREENSHOT)}`);

    // A key is sent as a bearer token, and an admin 403 shows "needs an admin key".
    const locked = await browser.newContext({ viewport: { width: 1280, height: 900 } });
    const lockedPage = await locked.newPage();
    lockedPage.on('pageerror', (e) => problems.push(`page error: ${e.message}`));
    const seen = [];
    await lockedPage.route('**/admin/v1/**', (route) => {
      seen.push(route.request().headers().authorization);
      route.fulfill({
        status: 403,
        contentType: 'application/problem+json',
        body: JSON.stringify({ type: 'about:blank', title: 'Forbidden', status: 403, detail: 'scope' }),
      });
    });
    await lockedPage.goto(`${BASE}/`);
    await lockedPage.fill('#api-key', 'read-only-key');
    await lockedPage.click('#key-form button[type=submit]');
    await lockedPage.locator('#admin-locked').waitFor({ state: 'visible' });
    assert.match(await lockedPage.locator('#admin-locked').innerText(), /needs an admin key/i);
    await lockedPage.waitForFunction(() => localStorage.getItem('tsad.apiKey') === 'read-only-key');
    for (let waited = 0; !seen.includes('Bearer read-only-key') && waited < 15000; waited += 100) {
      await lockedPage.waitForTimeout(100);
    }
    assert.ok(seen.includes('Bearer read-only-key'), `the key was not sent: ${JSON.stringify(seen)}`);
    step('admin 403 shows "needs an admin key"; the key is stored and sent as a bearer token');
  } finally {
    await browser.close();
  }
  assert.deepEqual(problems, [], 'the page logged errors');
  console.log('browser test passed');
}

main().catch((e) => {
  console.error(`browser test FAILED: ${e.stack || e}`);
  process.exit(1);
});
