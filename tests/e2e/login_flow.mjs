// The browser login flow in a real browser: headless Chromium (Debian's `chromium`) driven by
// playwright-core. Run by tests/browser_e2e.rs against a gateway it starts (access tokens live
// 3 s, no leeway); not meant to be run on its own.
//
// One browser context is one device. The script walks the flow a user walks and fails (exit
// code 1, with the step and the evidence) at the first thing that is not as the README
// "Browser flow" says:
//
//   1. a protected page without a session → the login form; no inline script, no CSP report
//   2. sign in through the form → back on the protected page, as alice; cookie attributes
//   3. the access token expires → the next page load refreshes it (refresh page, its script
//      POSTs /auth/refresh) and lands on the page without showing the login form
//   4. a second device signs in → the sessions page lists both, this one marked
//   5. revoke the other device → its next page load ends on the login form
//   6. log out → the login page; a protected page shows the login form again
//
// Environment: PORTCULLIS_E2E_BASE_URL (http://localhost:<port>), PORTCULLIS_E2E_USER,
// PORTCULLIS_E2E_PASSWORD, PORTCULLIS_E2E_SCREENSHOTS (directory for login.png and
// sessions.png).

import assert from 'node:assert/strict';
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { chromium } from 'playwright-core';

const CHROMIUM = '/usr/bin/chromium';
const BASE = need('PORTCULLIS_E2E_BASE_URL').replace(/\/$/, '');
const USER = need('PORTCULLIS_E2E_USER');
const PASSWORD = need('PORTCULLIS_E2E_PASSWORD');
const SCREENSHOTS = need('PORTCULLIS_E2E_SCREENSHOTS');
const ACCESS_COOKIE = '__Host-portcullis-at';
const REFRESH_COOKIE = '__Secure-portcullis-rt';
// The refresh cookie's binding: a refresh cookie counts only next to it (docs/security.md 36).
const BINDING_COOKIE = '__Host-portcullis-rb';
const CSRF_COOKIE = '__Host-portcullis-csrf';
// The second device's user agent, and what the sessions page calls that device.
const OTHER_UA =
  'Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:128.0) Gecko/20100101 Firefox/128.0';
const OTHER_DEVICE = 'Firefox on Windows';

function need(name) {
  const value = process.env[name];
  if (!value) {
    console.error(`${name} is not set (this script is run by tests/browser_e2e.rs)`);
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

// ---- what every page reports -------------------------------------------------------------

/** CSP violations (from `securitypolicyviolation` events and from the console). */
const violations = [];
/** Uncaught script errors and console errors. */
const scriptErrors = [];
/** Responses with an error status, for the failure report. */
const failures = [];
/** One entry per document: what it contains when parsing ended. */
const documents = [];

// Runs in every document before its own scripts. CDP-injected, so the page's CSP does not
// apply to it. It reports through a raw CDP binding: Playwright's own bindings drop calls
// from a document that has already been replaced, and the refresh page is replaced at once
// (its script submits the form while the page is still loading).
function pageProbe() {
  const report = (kind, data) => {
    try {
      window.__portcullisE2E(JSON.stringify({ kind, data }));
    } catch {
      // The binding is not there (an about:blank before the first navigation).
    }
  };
  document.addEventListener('securitypolicyviolation', (e) =>
    report('csp', {
      url: location.href,
      directive: e.effectiveDirective,
      blocked: e.blockedURI,
      source: e.sourceFile,
      line: e.lineNumber,
      sample: e.sample,
    }),
  );
  // Taken when parsing ends. Not at DOMContentLoaded: a page that starts a navigation while
  // it loads (the refresh page) has its parser stopped and goes straight to "complete".
  let taken = false;
  document.addEventListener('readystatechange', () => {
    if (taken) return;
    taken = true;
    const all = [...document.querySelectorAll('*')];
    report('document', {
      url: location.href,
      title: document.title,
      scripts: [...document.scripts].map((s) => s.getAttribute('src')),
      inlineScripts: [...document.scripts].filter((s) => !s.src).length,
      eventHandlerAttributes: all.filter((el) =>
        [...el.attributes].some((a) => a.name.toLowerCase().startsWith('on')),
      ).length,
      javascriptUrls: document.querySelectorAll(
        '[href^="javascript:" i], [action^="javascript:" i], [src^="javascript:" i]',
      ).length,
      inlineStyles: document.querySelectorAll('style, [style]').length,
      passwordField: document.querySelector('input[type="password"]') !== null,
      refreshForm: document.querySelector('form[action="/auth/refresh"]') !== null,
    });
  });
}

async function newDevice(browser, name, options = {}) {
  const context = await browser.newContext({
    viewport: { width: 900, height: 700 },
    deviceScaleFactor: 1,
    colorScheme: 'light',
    locale: 'en-US',
    ...options,
  });
  await context.addInitScript(pageProbe);
  const page = await context.newPage();
  const cdp = await context.newCDPSession(page);
  cdp.on('Runtime.bindingCalled', (event) => {
    if (event.name !== '__portcullisE2E') return;
    const { kind, data } = JSON.parse(event.payload);
    const entry = { device: name, ...data };
    if (kind === 'csp') violations.push(entry);
    if (kind === 'document') documents.push(entry);
  });
  await cdp.send('Runtime.enable');
  await cdp.send('Runtime.addBinding', { name: '__portcullisE2E' });
  page.on('console', (message) => {
    const text = message.text();
    const source = message.location().url;
    if (/content security policy/i.test(text)) {
      violations.push({ device: name, url: page.url(), console: text, source });
    } else if (message.type() === 'error' && !source.endsWith('/favicon.ico')) {
      // (Chromium asks for /favicon.ico on its own; the test gateway has no route for it.)
      scriptErrors.push({ device: name, url: page.url(), console: text, source });
    }
  });
  page.on('pageerror', (error) =>
    scriptErrors.push({ device: name, url: page.url(), error: String(error) }),
  );
  // The top-level requests of the current navigation, redirects included.
  page.hops = [];
  page.on('response', (response) => {
    const request = response.request();
    if (response.status() >= 400) {
      const what = `${name}: ${request.method()} ${pathOf(request.url())} → ${response.status()}`;
      request.allHeaders().then((h) =>
        failures.push(
          request.method() === 'GET'
            ? what
            : `${what} (Origin: ${h.origin}, Sec-Fetch-Site: ${h['sec-fetch-site']})`,
        ),
      );
    }
    if (request.isNavigationRequest() && request.frame() === page.mainFrame()) {
      page.hops.push(`${request.method()} ${pathOf(request.url())} → ${response.status()}`);
      page.lastDocument = response;
    }
  });
  return { context, page, name };
}

// ---- helpers -----------------------------------------------------------------------------

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

/** Waits until the login form is shown and checks it is the form (not the refresh page). */
async function expectLoginForm(page, returnTo) {
  await page.getByLabel('Password').waitFor({ state: 'visible' });
  await page.waitForLoadState('load');
  const expected = returnTo
    ? `${BASE}/auth/login?return_to=${returnTo}`
    : `${BASE}/auth/login`;
  assert.equal(page.url(), expected, 'the login form is at the login URL');
  assert.equal(await page.getByRole('heading', { level: 1 }).innerText(), 'Sign in');
  assert.ok(await page.getByLabel('Username').isVisible(), 'a labelled username field');
  assert.ok(
    await page.getByRole('button', { name: 'Sign in' }).isVisible(),
    'a Sign in button',
  );
}

/** Waits for the protected page `path` and returns what the echo upstream saw. */
async function expectProtectedPage(page, path) {
  await page.waitForURL(BASE + path, { waitUntil: 'load' });
  const response = page.lastDocument;
  assert.ok(response, 'a document response');
  assert.equal(response.status(), 200);
  assert.equal(response.headers()['x-upstream'], 'echo', 'the page came from the upstream');
  const seen = await response.json();
  assert.equal(seen.uri, path, 'the upstream received the page that was asked for');
  assert.deepEqual(seen.headers['x-auth-subject'], [USER], 'the upstream sees the user');
  assert.ok(
    !(seen.headers.cookie ?? []).join(';').includes('portcullis'),
    "the upstream never sees the gateway's cookies",
  );
  return seen;
}

/** Fills the labelled fields and presses the button, as a person would. */
async function signIn(page) {
  await page.getByLabel('Username').click();
  await page.getByLabel('Username').pressSequentially(USER);
  await page.getByLabel('Password').click();
  await page.getByLabel('Password').pressSequentially(PASSWORD);
  page.hops = [];
  await page.getByRole('button', { name: 'Sign in' }).click();
}

async function cookies(context) {
  return Object.fromEntries((await context.cookies()).map((c) => [c.name, c]));
}

/** `exp` and `iat` of the device's access token (the cookie is HttpOnly: read it from outside). */
async function accessToken(context) {
  const cookie = (await cookies(context))[ACCESS_COOKIE];
  assert.ok(cookie, 'an access cookie');
  const payload = cookie.value.split('.')[1];
  const claims = JSON.parse(Buffer.from(payload, 'base64url').toString());
  return { value: cookie.value, exp: claims.exp, iat: claims.iat };
}

/** Waits until the device's access token has expired (the gateway has no leeway here). */
async function waitForExpiry(context) {
  const { exp } = await accessToken(context);
  const wait = exp * 1000 - Date.now() + 250;
  log(`waiting ${(Math.max(wait, 0) / 1000).toFixed(1)} s for the access token to expire`);
  if (wait > 0) await sleep(wait);
}

/** Seconds until the device's access token expires. */
async function secondsLeft(context) {
  return (await accessToken(context)).exp - Date.now() / 1000;
}

/**
 * Clicks a form's button and waits until the document at `path` has loaded (the page may
 * already be at `path`: the wait is for a new document).
 */
async function clickThrough(page, button, path) {
  page.hops = [];
  const arrived = page.waitForEvent('framenavigated', {
    predicate: (frame) => frame === page.mainFrame() && pathOf(frame.url()) === path,
  });
  await button.click();
  await arrived;
  await page.waitForLoadState('load');
}

/**
 * Opens the sessions page with at least 2 s of access token left. Its Revoke button posts
 * with the access token, and the gateway answers that post with a JSON 401 once the token has
 * expired (unlike logout, revoke does not fall back to the refresh cookie), so the page, its
 * checks and the click must fit inside the token's 3 s.
 */
async function openSessionsWithFreshToken(device) {
  if ((await secondsLeft(device.context)) < 2) await waitForExpiry(device.context);
  await open(device.page, '/auth/sessions');
  await device.page.waitForURL(`${BASE}/auth/sessions`, { waitUntil: 'load' });
}

/**
 * The page's CSP blocks an inline script, and the block reaches `violations` (through the
 * `securitypolicyviolation` event and the console): proof that "no violation reported" later
 * means something. The entries it makes are then cleared.
 */
async function expectCspEnforcedAndReported(page) {
  assert.equal(violations.length, 0, 'no CSP violation so far');
  await page.evaluate(() => {
    const s = document.createElement('script');
    s.textContent = 'window.inlineScriptRan = true';
    document.body.append(s);
  });
  // The event and the console message arrive asynchronously.
  for (let i = 0; i < 50 && violations.length < 2; i++) await sleep(20);
  assert.equal(await page.evaluate(() => window.inlineScriptRan ?? false), false, 'CSP blocks');
  assert.ok(violations.some((v) => v.directive === 'script-src-elem'), 'the event was seen');
  assert.ok(violations.some((v) => v.console), 'the console report was seen');
  violations.length = 0;
}

/** The page is styled: the stylesheet loaded (and the CSP let it) and fonts are ready. */
async function expectStyled(page) {
  await page.waitForLoadState('load');
  await page.evaluate(() => document.fonts.ready);
  const radius = await page
    .locator('main.card')
    .evaluate((el) => getComputedStyle(el).borderTopLeftRadius);
  assert.equal(radius, '12px', 'portcullis.css is applied');
}

async function screenshot(page, file) {
  await expectStyled(page);
  mkdirSync(SCREENSHOTS, { recursive: true });
  await page.screenshot({ path: join(SCREENSHOTS, file), animations: 'disabled', caret: 'hide' });
  log(`screenshot ${join(SCREENSHOTS, file)}`);
}

// ---- the flow ----------------------------------------------------------------------------

const browser = await chromium.launch({ executablePath: CHROMIUM, headless: true });
let failed = false;
try {
  const laptop = await newDevice(browser, 'laptop');
  const page = laptop.page;

  begin('a protected page without a session shows the login form');
  await open(page, '/docs/x');
  await expectLoginForm(page, '/docs/x');
  assert.deepEqual(page.hops, [
    'GET /docs/x → 303',
    'GET /auth/login?return_to=/docs/x → 200',
  ]);
  await expectCspEnforcedAndReported(page);
  await screenshot(page, 'login.png');

  begin('signing in through the form returns to the page');
  await signIn(page);
  const first = await expectProtectedPage(page, '/docs/x');
  assert.deepEqual(first.headers['x-auth-permissions'], ['docs:read,docs:write']);
  assert.deepEqual(page.hops, ['POST /auth/login → 303', 'GET /docs/x → 200']);
  // Chromium stored the Secure / __Host- cookies over plain http://localhost (a secure
  // context), with the attributes docs/security.md 22 asks for.
  const jar = await cookies(laptop.context);
  for (const [name, path] of [
    [ACCESS_COOKIE, '/'],
    [REFRESH_COOKIE, '/auth'],
    [BINDING_COOKIE, '/'],
    [CSRF_COOKIE, '/'],
  ]) {
    const c = jar[name];
    assert.ok(c, `cookie ${name} was stored`);
    assert.equal(c.path, path, `${name} path`);
    assert.equal(c.secure, true, `${name} Secure`);
    assert.equal(c.httpOnly, true, `${name} HttpOnly`);
    assert.equal(c.sameSite, 'Lax', `${name} SameSite`);
    assert.equal(c.expires, -1, `${name} is a session cookie (no "keep me signed in")`);
  }
  const issued = await accessToken(laptop.context);
  assert.equal(issued.exp - issued.iat, 3, 'the test gateway issues 3 s access tokens');
  log('signed in as alice; cookies Secure, HttpOnly, SameSite=Lax');

  begin('an expired access token is refreshed without the login form');
  await waitForExpiry(laptop.context);
  const documentsBefore = documents.length;
  await open(page, '/docs/y');
  await expectProtectedPage(page, '/docs/y');
  assert.deepEqual(page.hops, [
    'GET /docs/y → 303',
    'GET /auth/login?return_to=/docs/y → 200',
    'POST /auth/refresh → 303',
    'GET /docs/y → 200',
  ]);
  const seenOnTheWay = documents.slice(documentsBefore).filter((d) => d.device === 'laptop');
  const refreshPage = seenOnTheWay.find((d) => pathOf(d.url).startsWith('/auth/login'));
  assert.ok(refreshPage, 'the refresh page was loaded');
  assert.ok(refreshPage.refreshForm, 'it is the refresh page');
  assert.deepEqual(refreshPage.scripts, ['/auth/static/refresh.js']);
  assert.ok(
    seenOnTheWay.every((d) => !d.passwordField),
    'no page on the way asked for the password',
  );
  const refreshed = await accessToken(laptop.context);
  assert.notEqual(refreshed.value, issued.value, 'a new access token');
  const rotated = await cookies(laptop.context);
  assert.notEqual(rotated[REFRESH_COOKIE].value, jar[REFRESH_COOKIE].value, 'a new refresh token');
  assert.notEqual(rotated[BINDING_COOKIE].value, jar[BINDING_COOKIE].value, 'and a new binding');
  log('refresh page passed: its script POSTed /auth/refresh and the page came back');

  begin('a second device signs in');
  const other = await newDevice(browser, 'other device', { userAgent: OTHER_UA });
  await open(other.page, '/docs/x');
  await expectLoginForm(other.page, '/docs/x');
  await signIn(other.page);
  await expectProtectedPage(other.page, '/docs/x');

  begin('the sessions page lists both devices, this one marked');
  await openSessionsWithFreshToken(laptop);
  assert.equal(await page.getByRole('heading', { level: 1 }).innerText(), 'Your sessions');
  const rows = page.locator('li.session');
  assert.equal(await rows.count(), 2, 'two sessions');
  const current = page.locator('li.session.current');
  assert.equal(await current.count(), 1, 'one of them is this one');
  assert.equal(await current.locator('.badge').innerText(), 'This device');
  assert.ok(await current.getByRole('button', { name: 'Log out' }).isVisible());
  const otherRow = page.locator('li.session:not(.current)');
  assert.equal(await otherRow.locator('strong').innerText(), OTHER_DEVICE);
  for (const time of await page.locator('li.session time').allInnerTexts()) {
    assert.match(time, /^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC$/, 'times read as UTC');
  }
  await screenshot(page, 'sessions.png');

  begin('revoking the other device signs it out');
  if ((await secondsLeft(laptop.context)) < 1.5) await openSessionsWithFreshToken(laptop);
  await clickThrough(
    page,
    page.getByRole('button', { name: `Revoke the session of ${OTHER_DEVICE}` }),
    '/auth/sessions',
  );
  assert.deepEqual(page.hops, ['POST /auth/sessions/revoke → 303', 'GET /auth/sessions → 200']);
  assert.equal(await page.locator('li.session').count(), 1, 'one session left');
  assert.equal(await page.locator('li.session.current').count(), 1, 'and it is this one');
  await open(other.page, '/docs/z');
  await expectLoginForm(other.page, '/docs/z');
  log(`the other device now sees the login form (${other.page.hops.join(', ')})`);

  begin('logging out lands on the login page and ends the session');
  const logOut = page.getByRole('button', { name: 'Log out', exact: true });
  await clickThrough(page, logOut, '/auth/login');
  await expectLoginForm(page, null);
  assert.deepEqual(page.hops, ['POST /auth/logout → 303', 'GET /auth/login → 200']);
  const left = await cookies(laptop.context);
  assert.ok(!left[ACCESS_COOKIE], 'the access cookie is gone');
  assert.ok(!left[REFRESH_COOKIE], 'the refresh cookie is gone');
  assert.ok(!left[BINDING_COOKIE], 'the binding cookie is gone');
  await open(page, '/docs/x');
  await expectLoginForm(page, '/docs/x');

  begin('no page carried inline script or reported a CSP violation');
  const ownPages = documents.filter((d) => new URL(d.url).pathname.startsWith('/auth/'));
  assert.ok(ownPages.length >= 8, `the gateway's pages were inspected (${ownPages.length})`);
  for (const d of ownPages) {
    assert.equal(d.inlineScripts, 0, `inline <script> on ${d.url}`);
    assert.equal(d.eventHandlerAttributes, 0, `on* attributes on ${d.url}`);
    assert.equal(d.javascriptUrls, 0, `javascript: URLs on ${d.url}`);
    assert.equal(d.inlineStyles, 0, `inline style on ${d.url}`);
  }
  assert.deepEqual(violations, [], 'CSP violations');
  assert.deepEqual(scriptErrors, [], 'script or console errors');
  log(`${ownPages.length} gateway pages inspected: no inline script or style, no CSP report`);
} catch (error) {
  failed = true;
  console.error(`FAIL in step "${step}":`);
  console.error(error);
  if (violations.length) console.error('CSP violations:', violations);
  if (scriptErrors.length) console.error('script errors:', scriptErrors);
  if (failures.length) console.error('error responses:', failures);
  console.error('pages seen:', documents.map((d) => `${d.device} ${pathOf(d.url)}`));
} finally {
  await browser.close();
  clearTimeout(watchdog);
}
log(failed ? 'failed' : 'all steps passed');
process.exit(failed ? 1 : 0);
