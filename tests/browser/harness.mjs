// Harness of the browser suite: the real release binary on a free 127.0.0.1 port with a fresh
// data directory (the approach of tests/e2e/harness.mjs), Debian's Chromium driven by
// playwright-core, and the steps a person takes in the web client.
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import assert from 'node:assert/strict';
import { chromium } from 'playwright-core';

export { assert };

const HERE = path.dirname(fileURLToPath(import.meta.url));
export const BINARY = process.env.PALAVER_BIN || path.resolve(HERE, '../../target/release/palaver');
export const SCREENSHOTS = path.join(HERE, 'screenshots');
export const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

export function freePort() {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.unref();
    server.on('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address();
      server.close(() => resolve(port));
    });
  });
}

/** A palaver process; `restart` keeps the port and the data directory. */
export class Server {
  constructor(env = {}) {
    this.env = env;
    this.dataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'palaver-browser-'));
    this.port = 0;
    this.proc = null;
    this.log = '';
  }

  get url() {
    return `http://127.0.0.1:${this.port}`;
  }

  async start() {
    if (!this.port) this.port = await freePort();
    const env = { ...process.env, ...this.env, RUST_LOG: 'warn' };
    const args = ['serve', '--listen', `127.0.0.1:${this.port}`, '--data-dir', this.dataDir];
    const proc = spawn(BINARY, args, { env, stdio: ['ignore', 'pipe', 'pipe'] });
    this.proc = proc;
    const keep = (chunk) => { this.log = (this.log + chunk).slice(-20000); };
    proc.stdout.on('data', keep);
    proc.stderr.on('data', keep);
    this.exited = new Promise((resolve) => proc.on('exit', resolve));
    const deadline = Date.now() + 20000;
    for (;;) {
      if (proc.exitCode !== null) throw new Error(`palaver exited at start:\n${this.log}`);
      try {
        const response = await fetch(`${this.url}/health`, { signal: AbortSignal.timeout(1000) });
        if (response.ok) return this;
      } catch {
        // not up yet
      }
      if (Date.now() > deadline) throw new Error(`palaver did not answer /health:\n${this.log}`);
      await sleep(50);
    }
  }

  async stop() {
    if (!this.proc || this.proc.exitCode !== null) return;
    this.proc.kill('SIGTERM');
    const timer = setTimeout(() => this.proc.kill('SIGKILL'), 5000);
    await this.exited;
    clearTimeout(timer);
  }

  async restart() {
    await this.stop();
    await this.start();
  }

  async dispose() {
    await this.stop();
    fs.rmSync(this.dataDir, { recursive: true, force: true });
  }

  async post(pathname, body, token) {
    const headers = { 'Content-Type': 'application/json' };
    if (token) headers.Authorization = `Bearer ${token}`;
    const response = await fetch(this.url + pathname, { method: 'POST', headers, body: JSON.stringify(body) });
    return { status: response.status, body: await response.json() };
  }

  async get(pathname, token) {
    const response = await fetch(this.url + pathname, { headers: { Authorization: `Bearer ${token}` } });
    return { status: response.status, body: await response.json() };
  }

  /** Registers through the API; returns { token, user }. */
  async register(name, email) {
    const { status, body } = await this.post('/api/auth/register', { name, email, password: 'password123' });
    assert.equal(status, 201, JSON.stringify(body));
    return body;
  }
}

/**
 * Debian's Chromium, headless. Playwright gives every launch a fresh temporary profile (its own
 * --user-data-dir; it refuses one in `args`), which it deletes on close.
 */
export async function launchBrowser() {
  if (!fs.existsSync('/usr/bin/chromium')) throw new Error('/usr/bin/chromium is missing: run tests/browser/run.sh');
  return chromium.launch({
    executablePath: '/usr/bin/chromium',
    headless: true,
    args: [
      '--no-sandbox',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
      '--no-first-run',
      '--disable-quic',
      '--disable-gpu',
    ],
  });
}

/** A browser context (one person) with a page on the app; page errors fail the test. */
export async function person(browser, server, options = {}) {
  const context = await browser.newContext({ viewport: { width: 1100, height: 760 }, ...options });
  const page = await context.newPage();
  page.errors = [];
  page.dialogs = [];
  page.on('pageerror', (error) => page.errors.push(error.message));
  page.on('dialog', (dialog) => {
    page.dialogs.push(dialog.message());
    dialog.dismiss().catch(() => {});
  });
  page.on('console', (message) => {
    if (message.type() === 'error') page.errors.push(`console: ${message.text()}`);
  });
  await page.goto(server.url);
  return { context, page };
}

let emailCounter = 0;
/** A fresh email for `name` (unique within the run). */
export function emailFor(name) {
  emailCounter += 1;
  const local = name.toLowerCase().replace(/[^a-z0-9]/g, '') || 'user';
  return `${local}${emailCounter}-${process.pid}@example.com`;
}

/** Signs up through the form and waits for the chat list. */
export async function signUp(page, name, email = emailFor(name)) {
  await page.getByRole('button', { name: 'Sign up' }).click();
  await page.getByLabel('Name', { exact: true }).fill(name);
  await page.getByLabel('Email', { exact: true }).fill(email);
  await page.getByLabel('Password', { exact: true }).fill('password123');
  await page.getByRole('button', { name: 'Create account' }).click();
  await page.locator('#app-view').waitFor({ state: 'visible' });
  await connected(page);
  return email;
}

export async function logIn(page, email) {
  await page.getByLabel('Email', { exact: true }).fill(email);
  await page.getByLabel('Password', { exact: true }).fill('password123');
  await page.getByRole('button', { name: 'Log in' }).click();
  await page.locator('#app-view').waitFor({ state: 'visible' });
}

/** Waits until the socket is up (and so the banner gone). */
export async function connected(page, timeout = 15000) {
  await page.locator('body[data-connection="connected"]').waitFor({ state: 'attached', timeout });
  assert.equal(await page.locator('#banner').isVisible(), false);
}

/** Opens "New chat", searches `name` and starts the chat. */
export async function startChatWith(page, name) {
  await page.getByRole('button', { name: 'New chat' }).click();
  await page.getByLabel('Search people by name or email').fill(name);
  await page.locator('#people-list .person', { hasText: name }).first().click();
  await page.locator('#chat-pane').waitFor({ state: 'visible' });
}

/** Opens the chat with `name` from the chat list. */
export async function openChatWith(page, name) {
  await page.locator('#chat-list .chat', { hasText: name }).first().click();
  await page.locator('#chat-pane').waitFor({ state: 'visible' });
}

export async function send(page, text) {
  const box = page.getByLabel('Message', { exact: true });
  await box.fill(text);
  await box.press('Enter');
}

/** The texts of the stored (not pending) messages shown, in order. */
export function shownTexts(page) {
  return page.locator('#message-list li.msg:not(.pending):not(.failed) .text').allTextContents();
}

/** The seqs of the stored messages shown, in order. */
export async function shownSeqs(page) {
  const seqs = await page.locator('#message-list li.msg[data-seq]').evaluateAll((items) => items.map((i) => Number(i.dataset.seq)));
  return seqs;
}

/** Polls `check` (async, returns truthy when done) until `timeout`. */
export async function eventually(check, what, timeout = 10000) {
  const deadline = Date.now() + timeout;
  let last;
  for (;;) {
    try {
      last = await check();
      if (last) return last;
    } catch (error) {
      last = error;
    }
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what} (last: ${last})`);
    await sleep(50);
  }
}

export async function screenshot(page, name) {
  fs.mkdirSync(SCREENSHOTS, { recursive: true });
  await page.screenshot({ path: path.join(SCREENSHOTS, `${name}.png`) });
}
