// The login flow through a real front proxy, in a real browser: headless Chromium (Debian's
// `chromium`) driven by playwright-core, against nginx started from
// examples/forward-auth/nginx/ in front of a recording backend, asking the gateway with
// `auth_request` (same-host mode: nginx passes /auth/* to the gateway). Run by
// tests/it/browser_e2e.rs; not meant to be run on its own.
//
// Steps (exit code 1, with the step and the evidence, at the first that fails):
//
//   1. a protected page without a session → nginx redirects to the gateway's login form,
//      on nginx's origin, with the return path
//   2. sign in through the form → back on the page, served by the backend as alice (with the
//      login's session)
//   3. log out from the sessions page → the login page; the cookies are gone and the
//      protected page redirects to the login form again
//
// Environment: PORTCULLIS_E2E_BASE_URL (nginx, http://localhost:<port>), PORTCULLIS_E2E_USER,
// PORTCULLIS_E2E_PASSWORD.

import assert from 'node:assert/strict';
import { chromium } from 'playwright-core';

const CHROMIUM = '/usr/bin/chromium';
const BASE = need('PORTCULLIS_E2E_BASE_URL').replace(/\/$/, '');
const USER = need('PORTCULLIS_E2E_USER');
const PASSWORD = need('PORTCULLIS_E2E_PASSWORD');
const ACCESS_COOKIE = '__Host-portcullis-at';
const REFRESH_COOKIE = '__Secure-portcullis-rt';

function need(name) {
  const value = process.env[name];
  if (!value) {
    console.error(`${name} is not set (this script is run by tests/it/browser_e2e.rs)`);
    process.exit(2);
  }
  return value;
}

// A hung browser must not hang CI: give up well before the Rust side kills us.
const watchdog = setTimeout(() => {
  console.error('FAIL: the browser flow took longer than 100 s');
  process.exit(1);
}, 100_000);

const started = Date.now();
let step = 'launch';
function log(message) {
  console.log(`[${((Date.now() - started) / 1000).toFixed(1).padStart(5)}s] ${message}`);
}
function begin(name) {
  step = name;
  log(`— ${name}`);
}

function pathOf(url) {
  const u = new URL(url);
  return u.pathname + u.search;
}

/** Starts a top-level navigation as if typed into the address bar; returns at commit. */
async function open(page, path) {
  page.hops = [];
  page.lastDocument = undefined;
  await page.goto(BASE + path, { waitUntil: 'commit' });
}

async function expectLoginForm(page, returnTo) {
  await page.getByLabel('Password').waitFor({ state: 'visible' });
  await page.waitForLoadState('load');
  const expected = returnTo
    ? `${BASE}/auth/login?return_to=${returnTo}`
    : `${BASE}/auth/login`;
  assert.equal(page.url(), expected, 'the login form is at the login URL, on nginx');
  assert.equal(await page.getByRole('heading', { level: 1 }).innerText(), 'Sign in');
}

/** Waits for the protected page `path` and returns what the backend saw. */
async function expectProtectedPage(page, path) {
  await page.waitForURL(BASE + path, { waitUntil: 'load' });
  const response = page.lastDocument;
  assert.ok(response, 'a document response');
  assert.equal(response.status(), 200);
  assert.equal(response.headers()['x-upstream'], 'echo', 'the page came from the backend');
  const seen = await response.json();
  assert.equal(seen.uri, path, 'the backend received the page that was asked for');
  assert.deepEqual(seen.headers['x-auth-subject'], [USER], 'the backend sees the user');
  return seen;
}

async function clickThrough(page, button, path) {
  page.hops = [];
  const arrived = page.waitForEvent('framenavigated', {
    predicate: (frame) => frame === page.mainFrame() && pathOf(frame.url()) === path,
  });
  await button.click();
  await arrived;
  await page.waitForLoadState('load');
}

async function cookies(context) {
  return Object.fromEntries((await context.cookies()).map((c) => [c.name, c]));
}

const browser = await chromium.launch({ executablePath: CHROMIUM, headless: true });
let failed = false;
try {
  const context = await browser.newContext({ viewport: { width: 900, height: 700 } });
  const page = await context.newPage();
  page.hops = [];
  page.on('response', (response) => {
    const request = response.request();
    if (request.isNavigationRequest() && request.frame() === page.mainFrame()) {
      page.hops.push(`${request.method()} ${pathOf(request.url())} → ${response.status()}`);
      page.lastDocument = response;
    }
  });

  begin('a protected page without a session: nginx sends the browser to the login form');
  await open(page, '/documents/x?page=2');
  await expectLoginForm(page, '/documents/x%3Fpage%3D2');
  assert.deepEqual(page.hops, [
    'GET /documents/x?page=2 → 302',
    'GET /auth/login?return_to=/documents/x%3Fpage%3D2 → 200',
  ]);

  begin('signing in through the form returns to the page, served by the backend');
  await page.getByLabel('Username').fill(USER);
  await page.getByLabel('Password').fill(PASSWORD);
  page.hops = [];
  await page.getByRole('button', { name: 'Sign in' }).click();
  const seen = await expectProtectedPage(page, '/documents/x?page=2');
  assert.deepEqual(page.hops, ['POST /auth/login → 303', 'GET /documents/x?page=2 → 200']);
  assert.equal(seen.headers['x-auth-session']?.length, 1, 'the login session');
  assert.deepEqual(seen.headers['x-auth-permissions'], ['documents:read,documents:write']);
  const jar = await cookies(context);
  assert.ok(jar[ACCESS_COOKIE], 'the access cookie was stored for the nginx origin');
  assert.ok(jar[REFRESH_COOKIE], 'the refresh cookie was stored');
  log(`signed in as ${USER} through nginx`);

  begin('logging out from the sessions page ends the session');
  await open(page, '/auth/sessions');
  await page.waitForURL(`${BASE}/auth/sessions`, { waitUntil: 'load' });
  assert.equal(await page.getByRole('heading', { level: 1 }).innerText(), 'Your sessions');
  await clickThrough(page, page.getByRole('button', { name: 'Log out', exact: true }), '/auth/login');
  await expectLoginForm(page, null);
  assert.deepEqual(page.hops, ['POST /auth/logout → 303', 'GET /auth/login → 200']);
  const left = await cookies(context);
  assert.ok(!left[ACCESS_COOKIE], 'the access cookie is gone');
  assert.ok(!left[REFRESH_COOKIE], 'the refresh cookie is gone');
  await open(page, '/documents/x');
  await expectLoginForm(page, '/documents/x');
  assert.deepEqual(page.hops, [
    'GET /documents/x → 302',
    'GET /auth/login?return_to=/documents/x → 200',
  ]);
} catch (error) {
  failed = true;
  console.error(`FAIL in step "${step}":`);
  console.error(error);
} finally {
  await browser.close();
  clearTimeout(watchdog);
}
log(failed ? 'failed' : 'all steps passed');
process.exit(failed ? 1 : 0);
