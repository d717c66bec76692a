// The web client in Debian's Chromium against the real release binary: the scenarios of
// issue 12, each with two browser contexts (two people), each leaving a screenshot in
// screenshots/ (gitignored).
import { after, before, describe, test } from 'node:test';
import { axeViolations } from './axe.mjs';
import {
  Server, assert, connected, emailFor, eventually, launchBrowser, logIn, openChatWith, person,
  screenshot, send, shownSeqs, shownTexts, signUp, sleep, startChatWith,
} from './harness.mjs';

// Raised send limits: scenario 4 seeds 250 messages through the API in one go.
const server = new Server({ PALAVER_SEND_RATE_PER_SEC: '10000', PALAVER_SEND_BURST: '10000' });
let browser;
const contexts = [];

async function newPerson(options) {
  const p = await person(browser, server, options);
  contexts.push(p.context);
  return p;
}

/** Two people signed up, with a chat started by the first and opened by both. */
async function pairInChat(a, b, options = {}) {
  const one = await newPerson(options);
  const two = await newPerson(options);
  await signUp(one.page, a);
  await signUp(two.page, b);
  await startChatWith(one.page, b);
  await send(one.page, `Hi ${b}`);
  await openChatWhenListed(two.page, a);
  return { one, two };
}

async function openChatWhenListed(page, name) {
  await page.locator('#chat-list .chat', { hasText: name }).first().waitFor({ timeout: 10000 });
  await openChatWith(page, name);
}

async function expectTexts(page, texts, what) {
  await eventually(async () => JSON.stringify(await shownTexts(page)) === JSON.stringify(texts), what);
}

/** Pressing Tab until the focused element matches `selector`: the keyboard-only way to a control. */
async function tabTo(page, selector, max = 40) {
  for (let i = 0; i < max; i += 1) {
    if (await page.evaluate((s) => document.activeElement?.matches(s), selector)) return;
    await page.keyboard.press('Tab');
  }
  throw new Error(`Tab never reached ${selector}`);
}

/** A WebSocket the browser could not open (it logs those itself): expected while a server is down. */
const REFUSED_WEBSOCKET = /^console: WebSocket connection to .* net::ERR_CONNECTION_REFUSED$/;

function noErrors(...pages) {
  for (const page of pages) {
    assert.deepEqual(page.errors.filter((e) => !REFUSED_WEBSOCKET.test(e)), [], 'no page errors');
    assert.deepEqual(page.dialogs, [], 'no dialogs');
  }
}

describe('web client in Chromium', () => {
  before(async () => {
    await server.start();
    browser = await launchBrowser();
  });

  after(async () => {
    for (const context of contexts) await context.close().catch(() => {});
    await browser?.close();
    await server.dispose();
  });

  test('1. two people sign up, chat, and see each message once, in order', async () => {
    const { one, two } = await pairInChat('Ada', 'Bob');
    await send(two.page, 'Hello Ada');
    await send(one.page, 'How are you?');
    await send(two.page, 'Fine, thanks.\nAnd you?');
    const texts = ['Hi Bob', 'Hello Ada', 'How are you?', 'Fine, thanks.\nAnd you?'];
    await expectTexts(one.page, texts, 'Ada sees the conversation');
    await expectTexts(two.page, texts, 'Bob sees the conversation');
    for (const page of [one.page, two.page]) {
      assert.deepEqual(await shownSeqs(page), [1, 2, 3, 4]);
      const last = page.locator('#chat-list .chat .chat-last').first();
      await eventually(async () => (await last.textContent()) === 'Fine, thanks.\nAnd you?', 'chat list shows the last message');
    }
    assert.equal(await one.page.locator('#message-list .msg.mine').count(), 2, 'own messages on their side');

    // A refusal is shown on its message, with a retry; Discard removes it.
    await send(one.page, 'x'.repeat(4001));
    const failed = one.page.locator('#message-list .msg.failed');
    await failed.waitFor();
    assert.match(await failed.textContent(), /Not sent: Message too long/);
    await failed.getByRole('button', { name: 'Retry' }).click();
    await one.page.locator('#message-list .msg.failed').waitFor();
    await screenshot(one.page, '1-conversation-ada');
    await failed.getByRole('button', { name: 'Discard' }).click();
    assert.equal(await one.page.locator('#message-list .msg.failed').count(), 0);
    await screenshot(two.page, '1-conversation-bob');
    noErrors(one.page, two.page);
  });

  test('2. typing shows and clears; presence follows tabs', async () => {
    const { one, two } = await pairInChat('Cleo', 'Dan');
    await eventually(async () => (await one.page.locator('#peer-status').textContent()) === 'online', 'Dan online for Cleo');
    await two.page.getByLabel('Message', { exact: true }).pressSequentially('I am wri', { delay: 30 });
    await eventually(async () => (await one.page.locator('#typing').textContent()) === 'Dan is typing…', 'typing shown');
    await screenshot(one.page, '2-typing');
    await eventually(async () => (await one.page.locator('#typing').textContent()) === '', 'typing cleared', 8000);

    // A second tab of Dan keeps him online when the first one closes.
    const secondTab = await two.context.newPage();
    await secondTab.goto(server.url);
    await connected(secondTab);
    await two.page.close();
    await sleep(700);
    assert.equal(await one.page.locator('#peer-status').textContent(), 'online');
    await two.context.close();
    await eventually(async () => (await one.page.locator('#peer-status').textContent()) === 'offline', 'Dan offline for Cleo');
    assert.equal(await one.page.locator('#chat-list .chat .dot').count(), 0, 'no online dot');
    noErrors(one.page);
  });

  test('3. written offline, reloaded offline, sent once each in order when back', async () => {
    const { one, two } = await pairInChat('Eve', 'Finn');
    await eventually(() => one.page.evaluate(() => Boolean(navigator.serviceWorker.controller)), 'service worker controls the page');
    await one.context.setOffline(true);
    await one.page.locator('#banner', { hasText: 'offline' }).waitFor();
    for (const text of ['offline one', 'offline two', 'offline three']) await send(one.page, text);
    await send(two.page, 'Finn while Eve is away');
    await one.page.reload();
    await one.page.locator('#message-list .msg.pending').nth(2).waitFor();
    assert.deepEqual(await one.page.locator('#message-list .msg.pending .text').allTextContents(), ['offline one', 'offline two', 'offline three']);
    await screenshot(one.page, '3-offline-outbox');

    await one.context.setOffline(false);
    await connected(one.page, 20000);
    const texts = ['Hi Finn', 'Finn while Eve is away', 'offline one', 'offline two', 'offline three'];
    await expectTexts(one.page, texts, 'Eve has everything once');
    await expectTexts(two.page, texts, 'Finn has everything once');
    assert.deepEqual(await shownSeqs(two.page), [1, 2, 3, 4, 5]);
    assert.deepEqual(await shownSeqs(one.page), [1, 2, 3, 4, 5]);
    assert.equal(await one.page.locator('#message-list .msg.pending').count(), 0);
    await screenshot(one.page, '3-back-online');
    noErrors(two.page);
  });

  test('4. 250 messages of history page in on scroll, no duplicate, no gap, no jump', async () => {
    const ada = await server.register('Gus', emailFor('gus'));
    const bob = await server.register('Hana', emailFor('hana'));
    const chat = (await server.post(`/api/chats/with/${bob.user._id}`, {}, ada.token)).body;
    for (let i = 1; i <= 250; i += 1) {
      const author = i % 3 === 0 ? bob : ada;
      const { status } = await server.post(`/api/messages/chat/${chat._id}`, { text: `history ${i}` }, author.token);
      assert.equal(status, 201);
    }
    const one = await newPerson();
    const two = await newPerson();
    await logIn(one.page, ada.user.email);
    await logIn(two.page, bob.user.email);
    await openChatWith(one.page, 'Hana');
    await openChatWith(two.page, 'Gus');
    await eventually(async () => (await shownSeqs(one.page)).length === 50, 'the newest page');
    const box = one.page.locator('#messages');
    for (let round = 0; round < 10 && (await shownSeqs(one.page))[0] !== 1; round += 1) {
      const firstId = await one.page.locator('#message-list li.msg').first().getAttribute('data-id');
      const anchor = one.page.locator(`#message-list li[data-id="${firstId}"]`);
      // Scrolled to the top, where the oldest shown message is measured before the page comes.
      const before = await box.evaluate((b, id) => {
        b.scrollTop = 0;
        return b.querySelector(`li[data-id="${id}"]`).getBoundingClientRect().y;
      }, firstId);
      await eventually(async () => (await one.page.locator('#message-list li.msg').first().getAttribute('data-id')) !== firstId, 'an older page');
      const afterLoad = (await anchor.boundingBox()).y;
      assert.ok(Math.abs(afterLoad - before) < 2, `the view did not jump (${before} -> ${afterLoad})`);
    }
    const seqs = await shownSeqs(one.page);
    assert.deepEqual(seqs, Array.from({ length: 250 }, (_, i) => i + 1));
    const ids = await one.page.locator('#message-list li.msg').evaluateAll((items) => items.map((i) => i.dataset.id));
    assert.equal(new Set(ids).size, 250, 'no duplicate');
    await one.page.locator('#history-status', { hasText: 'This is the start of the conversation.' }).waitFor();
    await send(two.page, 'and one more');
    await eventually(async () => (await shownSeqs(one.page)).at(-1) === 251, 'live message after paging');
    await screenshot(one.page, '4-history');
    noErrors(one.page, two.page);
  });

  test('5. on a phone screen, with the keyboard alone', async () => {
    const phone = { viewport: { width: 360, height: 640 }, isMobile: true, hasTouch: true };
    const one = await newPerson(phone);
    const two = await newPerson(phone);
    const keyboardSignUp = async (page, name) => {
      await tabTo(page, '#auth-switch');
      await page.keyboard.press('Enter');
      await page.keyboard.type(name);
      await page.keyboard.press('Tab');
      await page.keyboard.type(emailFor(name));
      await page.keyboard.press('Tab');
      await page.keyboard.type('password123');
      await page.keyboard.press('Enter');
      await page.locator('#app-view').waitFor({ state: 'visible' });
      await connected(page);
    };
    await keyboardSignUp(one.page, 'Ines');
    await keyboardSignUp(two.page, 'Jon');

    await tabTo(one.page, '#new-chat');
    const outline = await one.page.evaluate(() => getComputedStyle(document.activeElement).outlineStyle);
    assert.notEqual(outline, 'none', 'focus is visible');
    await one.page.keyboard.press('Enter');
    await one.page.keyboard.type('Jon');
    await eventually(async () => {
      const people = await one.page.locator('#people-list .person .chat-name').allTextContents();
      return people.length === 1 && people[0] === 'Jon';
    }, 'the search narrowed to Jon');
    await tabTo(one.page, '#people-list .person');
    await one.page.keyboard.press('Enter');
    await one.page.locator('#chat-pane').waitFor({ state: 'visible' });
    assert.equal(await one.page.locator('.sidebar').isVisible(), false, 'one pane at a time on a phone');
    await one.page.keyboard.type('Hello from a phone');
    await one.page.keyboard.press('Enter');

    await two.page.locator('#chat-list .chat', { hasText: 'Ines' }).waitFor();
    await tabTo(two.page, '#chat-list .chat');
    await two.page.keyboard.press('Enter');
    await two.page.keyboard.type('Line one');
    await two.page.keyboard.press('Shift+Enter');
    await two.page.keyboard.type('line two');
    await two.page.keyboard.press('Enter');

    const texts = ['Hello from a phone', 'Line one\nline two'];
    await expectTexts(one.page, texts, 'Ines sees both');
    await expectTexts(two.page, texts, 'Jon sees both');
    const width = await one.page.evaluate(() => document.documentElement.scrollWidth);
    assert.ok(width <= 360, `no horizontal scroll (${width})`);
    await screenshot(one.page, '5-phone-conversation');

    await tabTo(two.page, '#back');
    await two.page.keyboard.press('Enter');
    await two.page.locator('#chat-list').waitFor({ state: 'visible' });
    await eventually(() => two.page.evaluate(() => document.activeElement?.matches('#chat-list .chat')), 'focus back on the chat');
    // A live message re-renders the list; the keyboard focus stays on the chat.
    await send(one.page, 'Are you still there?');
    await two.page.locator('#chat-list .chat-last', { hasText: 'Are you still there?' }).waitFor();
    assert.equal(await two.page.evaluate(() => document.activeElement?.matches('#chat-list .chat')), true, 'focus kept');
    await screenshot(two.page, '5-phone-list');
    noErrors(one.page, two.page);
  });

  test('6. axe-core finds no serious or critical violation on any screen', async () => {
    for (const colorScheme of ['light', 'dark']) {
      const one = await newPerson({ colorScheme });
      const two = await newPerson({ colorScheme });
      await axeViolations(one.page, `${colorScheme} login`);
      await one.page.getByRole('button', { name: 'Sign up' }).click();
      await one.page.getByRole('button', { name: 'Create account' }).click();
      await one.page.locator('#auth-error', { hasText: 'name' }).waitFor();
      await axeViolations(one.page, `${colorScheme} sign up with an error`);
      await signUp(two.page, `Kim ${colorScheme}`);
      await one.page.getByLabel('Name', { exact: true }).fill(`Lou ${colorScheme}`);
      await one.page.getByLabel('Email', { exact: true }).fill(emailFor('lou'));
      await one.page.getByLabel('Password', { exact: true }).fill('password123');
      await one.page.getByRole('button', { name: 'Create account' }).click();
      await one.page.locator('#app-view').waitFor({ state: 'visible' });
      await connected(one.page);
      await axeViolations(one.page, `${colorScheme} empty chat list`);
      await one.page.getByRole('button', { name: 'New chat' }).click();
      await one.page.locator('#people-list .person').first().waitFor();
      await axeViolations(one.page, `${colorScheme} new chat`);
      await one.page.locator('#people-list .person', { hasText: `Kim ${colorScheme}` }).click();
      await send(one.page, 'Hello');
      await send(one.page, 'x'.repeat(4001));
      await one.page.locator('#message-list .msg.failed').waitFor();
      await openChatWhenListed(two.page, `Lou ${colorScheme}`);
      await two.page.getByLabel('Message', { exact: true }).pressSequentially('typing', { delay: 20 });
      await one.page.locator('#typing', { hasText: 'typing' }).waitFor();
      await axeViolations(one.page, `${colorScheme} conversation`);
      await axeViolations(two.page, `${colorScheme} conversation (other side)`);
      await screenshot(one.page, `6-axe-${colorScheme}`);
      noErrors(one.page, two.page);
      await one.context.close();
      await two.context.close();
    }
  });

  test('7. the server restarts under the page: reconnects and catches up', async () => {
    const { one, two } = await pairInChat('Mia', 'Ned');
    await expectTexts(one.page, ['Hi Ned'], 'first message');
    await server.stop();
    await one.page.locator('#banner', { hasText: 'Reconnecting…' }).waitFor();
    await send(one.page, 'written while the server was down');
    await screenshot(one.page, '7-reconnecting');
    await server.start();
    // Ned's token is in his page's storage; a message that Mia's page may miss while it
    // reconnects: it arrives live or through `sync`, once either way.
    const nedToken = await two.page.evaluate(() => JSON.parse(localStorage.getItem('palaver.session')).token);
    const chatId = await two.page.evaluate(() => localStorage.getItem('palaver.open-chat'));
    const posted = await server.post(`/api/messages/chat/${chatId}`, { text: 'posted right after the restart' }, nedToken);
    assert.equal(posted.status, 201);
    await connected(one.page, 20000);
    await connected(two.page, 20000);
    await eventually(async () => {
      const texts = await shownTexts(one.page);
      return texts.length === 3 && texts.includes('posted right after the restart') && texts.includes('written while the server was down');
    }, 'Mia caught up');
    await eventually(async () => (await shownTexts(two.page)).length === 3, 'Ned caught up');
    assert.deepEqual(await shownSeqs(one.page), [1, 2, 3]);
    assert.deepEqual(await shownSeqs(two.page), [1, 2, 3]);
    await send(two.page, 'after the restart');
    await eventually(async () => (await shownTexts(one.page)).at(-1) === 'after the restart', 'live again');
    noErrors(one.page, two.page);
  });

  test('sessions: log out, a refused token, the login throttle', async () => {
    const { page } = await newPerson();
    const email = await signUp(page, 'Pia');
    await page.getByRole('button', { name: 'Log out' }).click();
    await page.locator('#auth-view').waitFor({ state: 'visible' });
    assert.equal(await page.evaluate(() => localStorage.getItem('palaver.session')), null);

    await logIn(page, email);
    await connected(page);
    await page.reload();
    await connected(page);
    assert.equal(await page.locator('#me-name').textContent(), 'Pia', 'the session survives a reload');

    await page.evaluate(() => {
      const session = JSON.parse(localStorage.getItem('palaver.session'));
      localStorage.setItem('palaver.session', JSON.stringify({ ...session, token: 'expired.or.forged' }));
    });
    await page.reload();
    await page.locator('#auth-error', { hasText: 'Please log in again.' }).waitFor();
    assert.equal(await page.locator('#app-view').isVisible(), false);

    for (let i = 0; i < 10; i += 1) {
      await page.getByLabel('Email', { exact: true }).fill(email);
      await page.getByLabel('Password', { exact: true }).fill('wrong password');
      await page.getByRole('button', { name: 'Log in' }).click();
      await page.locator('#auth-error', { hasText: 'Invalid credentials' }).waitFor();
      await page.evaluate(() => { document.getElementById('auth-error').textContent = ''; });
    }
    await page.getByLabel('Password', { exact: true }).fill('password123');
    await page.getByRole('button', { name: 'Log in' }).click();
    await page.locator('#auth-error', { hasText: 'Too many attempts' }).waitFor();
    await screenshot(page, 'sessions-throttled');
    // The browser logs each refused request (401, 429) itself; nothing else may appear.
    const unexpected = page.errors.filter((e) => !/^console: Failed to load resource: .* (401|429)/.test(e));
    assert.deepEqual(unexpected, []);
    assert.deepEqual(page.dialogs, []);
  });

  test('8. hostile names and texts are shown as text and run nothing', async () => {
    const hostileName = '<img src=x onerror=alert(1)>';
    const texts = [
      '<img src=x onerror=alert(2)>',
      '<script>alert(3)</script>',
      'javascript:alert(4)',
      '[click me](javascript:alert(5)) <a href="javascript:alert(6)">link</a>',
      '"><svg onload=alert(7)>',
    ];
    const { one, two } = await pairInChat(hostileName, 'Olga');
    for (const text of texts) await send(one.page, text);
    await expectTexts(two.page, ['Hi Olga', ...texts], 'Olga sees the texts as written');
    await two.page.locator('#peer-name', { hasText: hostileName }).waitFor();
    const listedName = await two.page.locator('#chat-list .chat-name').first().evaluate((n) => n.firstChild.textContent);
    assert.equal(listedName, hostileName);
    for (const page of [one.page, two.page]) {
      const injected = await page.evaluate(() => ({
        images: document.querySelectorAll('img, svg, script:not([src]), iframe').length,
        links: document.querySelectorAll('a').length,
      }));
      assert.deepEqual(injected, { images: 0, links: 0 });
    }
    await sleep(300);
    await screenshot(two.page, '8-hostile');
    noErrors(one.page, two.page);
  });
});
