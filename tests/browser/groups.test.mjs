// Groups in the web client, in Debian's Chromium against the real release binary (issue 13, "The
// web client"): three people in three browser contexts (Bob with a second tab) create a group,
// write, read (unread badges, "seen by"), rename it, remove a member, leave and add back; the
// owner's controls appear for the owner only (and for the next owner when she leaves), and a
// refusal shows the server's words. Each step leaves a screenshot in screenshots/ (gitignored).
import { after, before, describe, test } from 'node:test';
import { axeViolations } from './axe.mjs';
import {
  Server, assert, connected, eventually, launchBrowser, person, screenshot, send, shownTexts, signUp, sleep,
} from './harness.mjs';

const server = new Server();
let browser;
const contexts = [];

async function newPerson(name) {
  const p = await person(browser, server);
  contexts.push(p.context);
  await signUp(p.page, name);
  return p;
}

/** The chat-list row whose title holds `name`. */
const chatRow = (page, name) => page.locator('#chat-list .chat').filter({ has: page.locator('.chat-name', { hasText: name }) });

/** The unread badge of the chat named `name` in the list ('' when none). */
async function badge(page, name) {
  const unread = chatRow(page, name).locator('.unread');
  return (await unread.count()) ? (await unread.textContent()).replace(/\D/g, '') : '';
}

async function expectBadge(page, name, count, what) {
  await eventually(async () => (await badge(page, name)) === count, `${what}: badge ${JSON.stringify(count)}`);
}

const systemTexts = (page) => page.locator('#message-list li.system').allTextContents();
const seenByText = (page) => page.locator('#message-list .seen-by:not([hidden])').allTextContents();

async function expectTexts(page, texts, what) {
  await eventually(async () => JSON.stringify(await shownTexts(page)) === JSON.stringify(texts), what);
}

/** Picks `name` in a people picker (its search box and result list). */
async function pick(page, search, found, name) {
  await page.locator(search).fill(name);
  await page.locator(`${found} .person`, { hasText: name }).first().click();
  await page.locator(`${found} .person[aria-pressed="true"]`, { hasText: name }).waitFor();
}

async function openMembers(page) {
  const toggle = page.getByRole('button', { name: 'Members', exact: true });
  if ((await toggle.getAttribute('aria-expanded')) !== 'true') await toggle.click();
  await page.locator('#members-panel').waitFor({ state: 'visible' });
}

/** axe-core in the light and the dark scheme. */
async function accessible(page, what) {
  for (const colorScheme of ['light', 'dark']) {
    await page.emulateMedia({ colorScheme });
    await axeViolations(page, `${colorScheme} ${what}`);
  }
  await page.emulateMedia({ colorScheme: 'light' });
}

const memberNames = (page) => page.locator('#member-list .member .chat-name').allTextContents();

/** The browser logs each refused request itself (`Failed to load resource`, with its status). */
function noErrors(pages, allowedStatus = []) {
  for (const page of pages) {
    const unexpected = page.errors.filter((e) => {
      const refused = /^console: Failed to load resource: .* status of (\d+)/.exec(e);
      return !(refused && allowedStatus.includes(Number(refused[1])));
    });
    assert.deepEqual(unexpected, [], 'no page errors');
    assert.deepEqual(page.dialogs, [], 'no dialogs');
  }
}

describe('groups in the web client', () => {
  before(async () => {
    await server.start();
    browser = await launchBrowser();
  });

  after(async () => {
    for (const context of contexts) await context.close().catch(() => {});
    await browser?.close();
    await server.dispose();
  });

  test('a group of three: create, write, unread and seen by, rename, remove, leave, add back', async () => {
    const ada = await newPerson('Ada');
    const bob = await newPerson('Bob');
    const cat = await newPerson('Cat');
    const bobTab = await bob.context.newPage();
    bobTab.errors = [];
    bobTab.dialogs = [];
    bobTab.on('pageerror', (error) => bobTab.errors.push(error.message));
    await bobTab.goto(server.url);
    await connected(bobTab);

    // Ada creates "Crew" with Bob and Cat.
    await ada.page.getByRole('button', { name: 'New chat' }).click();
    await ada.page.getByRole('button', { name: 'New group' }).click();
    await ada.page.locator('#group-name').fill('Crew');
    await ada.page.locator('#group-search').fill('Bob');
    await ada.page.locator('#group-search').press('Enter');
    await ada.page.locator('#group-found .person', { hasText: 'Bob' }).waitFor();
    assert.equal(await ada.page.locator('#chat-list .chat').count(), 0, 'Enter in the search box searches, it creates nothing');
    await pick(ada.page, '#group-search', '#group-found', 'Bob');
    await pick(ada.page, '#group-search', '#group-found', 'Cat');
    assert.deepEqual(await ada.page.locator('#group-picked .chip > span').allTextContents(), ['Bob', 'Cat']);
    await screenshot(ada.page, 'groups-1-create');
    await accessible(ada.page, 'new group');
    await ada.page.getByRole('button', { name: 'Create group' }).click();
    await ada.page.locator('#peer-name', { hasText: 'Crew' }).waitFor();
    assert.equal(await ada.page.locator('#peer-status').textContent(), '3 members');
    for (const page of [bob.page, bobTab, cat.page]) {
      await chatRow(page, 'Crew').waitFor();
      assert.match(await chatRow(page, 'Crew').locator('.chat-name').textContent(), /^Crew · 3 members/);
    }

    // Messages reach everyone; Bob (both tabs) and Cat are elsewhere: their badges count them.
    await send(ada.page, 'Hello crew');
    await send(ada.page, 'Plans for today?');
    for (const page of [bob.page, bobTab, cat.page]) await expectBadge(page, 'Crew', '2', 'two unread');
    assert.equal(await badge(ada.page, 'Crew'), '', 'her own messages are not unread');
    assert.equal(await chatRow(cat.page, 'Crew').locator('.chat-last').textContent(), 'Ada: Plans for today?');
    // The count is the server's: a reload shows it again.
    await cat.page.reload();
    await connected(cat.page);
    await expectBadge(cat.page, 'Crew', '2', 'two unread after a reload');
    await screenshot(cat.page, 'groups-2-unread');

    // Bob opens it in one tab: read there, and in his other tab by the `read` event.
    await chatRow(bob.page, 'Crew').click();
    await expectTexts(bob.page, ['Hello crew', 'Plans for today?'], 'Bob reads the group');
    await expectBadge(bob.page, 'Crew', '', 'read where it is open');
    await expectBadge(bobTab, 'Crew', '', 'read in the other tab too');
    assert.equal(await badge(cat.page, 'Crew'), '2', 'Cat has not read');
    await eventually(async () => JSON.stringify(await seenByText(ada.page)) === '["Seen by Bob"]', 'Ada sees that Bob read it');

    await send(bob.page, 'Sounds good');
    await expectTexts(ada.page, ['Hello crew', 'Plans for today?', 'Sounds good'], 'Ada has Bob\'s answer');
    await expectBadge(cat.page, 'Crew', '3', 'a third unread for Cat');
    await expectBadge(bobTab, 'Crew', '', 'his own message is not unread in his other tab');
    await chatRow(cat.page, 'Crew').click();
    await expectTexts(cat.page, ['Hello crew', 'Plans for today?', 'Sounds good'], 'Cat reads the group');
    await expectBadge(cat.page, 'Crew', '', 'Cat read it');
    await eventually(async () => JSON.stringify(await seenByText(bob.page)) === '["Seen by Ada, Cat"]', 'Bob sees who read his message');
    await eventually(async () => JSON.stringify(await seenByText(ada.page)) === '["Seen by Cat"]', 'Ada sees Cat read Bob\'s message');
    await screenshot(bob.page, 'groups-3-seen-by');

    // The owner's controls are the owner's only; the members and their roles are everyone's.
    await openMembers(bob.page);
    await eventually(async () => JSON.stringify(await memberNames(bob.page)) === '["Ada","Bob (you)","Cat"]', 'Bob sees the members');
    assert.deepEqual(await bob.page.locator('#member-list .role').allTextContents(), ['Owner', 'Member', 'Member']);
    assert.equal(await bob.page.locator('#member-list button').count(), 0, 'no Remove for a member');
    assert.equal(await bob.page.locator('#rename-form').isVisible(), false);
    assert.equal(await bob.page.locator('#add-form').isVisible(), false);
    assert.equal(await bob.page.getByRole('button', { name: 'Leave group' }).isVisible(), true);
    await screenshot(bob.page, 'groups-4-members-of-a-member');
    await accessible(bob.page, 'members, as a member');
    await openMembers(ada.page);
    await ada.page.getByRole('button', { name: 'Remove Cat' }).waitFor();
    assert.equal(await ada.page.getByRole('button', { name: 'Remove Bob' }).isVisible(), true);
    assert.equal(await ada.page.locator('#member-list button', { hasText: 'Remove' }).count(), 2, 'nobody removes the owner from her list');
    assert.equal(await ada.page.locator('#rename-form').isVisible(), true);
    assert.equal(await ada.page.locator('#add-form').isVisible(), true);
    await screenshot(ada.page, 'groups-4-members-of-the-owner');
    await accessible(ada.page, 'members, as the owner');

    // A refusal shows the server's words; a rename reaches everyone, tabs and lists included.
    await ada.page.locator('#rename-name').fill('   ');
    await ada.page.getByRole('button', { name: 'Rename', exact: true }).click();
    await ada.page.locator('#members-error', { hasText: 'Group name must be 1 to 64 characters' }).waitFor();
    await ada.page.locator('#rename-name').fill('Crew 2');
    await ada.page.getByRole('button', { name: 'Rename', exact: true }).click();
    for (const page of [ada.page, bob.page, cat.page]) {
      await page.locator('#peer-name', { hasText: 'Crew 2' }).waitFor();
      await eventually(async () => (await systemTexts(page)).includes('Ada renamed the group to Crew 2'), 'the rename in the conversation');
    }
    await chatRow(bobTab, 'Crew 2').waitFor();
    assert.equal(await ada.page.locator('#members-error').textContent(), '', 'the refusal is gone after a success');

    // Ada removes Cat: Cat's composer closes, and nothing later reaches her.
    await ada.page.getByRole('button', { name: 'Remove Cat' }).click();
    await cat.page.locator('#chat-notice', { hasText: 'You are no longer a member of this group.' }).waitFor();
    assert.equal(await cat.page.getByLabel('Message', { exact: true }).isDisabled(), true);
    assert.equal(await cat.page.locator('#members-toggle').isVisible(), false);
    for (const page of [ada.page, bob.page]) {
      await eventually(async () => (await systemTexts(page)).includes('Ada removed Cat'), 'the removal in the conversation');
      await page.locator('#peer-status', { hasText: '2 members' }).waitFor();
    }
    await eventually(async () => JSON.stringify(await memberNames(ada.page)) === '["Ada (you)","Bob"]', 'Cat left Ada\'s member list');
    await send(ada.page, 'Now without Cat');
    await expectTexts(bob.page, ['Hello crew', 'Plans for today?', 'Sounds good', 'Now without Cat'], 'Bob still gets messages');
    await eventually(async () => JSON.stringify(await seenByText(ada.page)) === '["Seen by Bob"]', 'seen by Bob alone now');
    await screenshot(ada.page, 'groups-5-owner');
    await sleep(500);
    assert.deepEqual(await shownTexts(cat.page), ['Hello crew', 'Plans for today?', 'Sounds good'], 'Cat gets nothing after her removal');
    assert.equal(await badge(cat.page, 'Crew'), '');
    assert.equal(await chatRow(cat.page, 'Crew').locator('.chat-last').textContent(), 'You are no longer a member of this group.');
    await screenshot(cat.page, 'groups-5-removed');
    await accessible(cat.page, 'removed from the group');

    // Moving on, Cat's list forgets the group; her direct chats work as ever.
    await cat.page.getByRole('button', { name: 'New chat' }).click();
    await cat.page.getByLabel('Search people by name or email').fill('Ada');
    await cat.page.locator('#people-list .person', { hasText: 'Ada' }).first().click();
    await cat.page.locator('#peer-name', { hasText: 'Ada' }).waitFor();
    await eventually(async () => (await chatRow(cat.page, 'Crew').count()) === 0, 'the group left Cat\'s list');
    await send(cat.page, 'Hi Ada, just us');
    await expectBadge(ada.page, 'Cat', '1', 'a direct chat counts unread too');
    assert.equal(await cat.page.locator('#peer-status').textContent(), 'online');

    // Bob leaves: the group leaves his list in both tabs; Ada sees it.
    await openMembers(bob.page);
    await bob.page.getByRole('button', { name: 'Leave group' }).click();
    await eventually(async () => (await chatRow(bob.page, 'Crew').count()) === 0, 'the group left Bob\'s list');
    await eventually(async () => (await chatRow(bobTab, 'Crew').count()) === 0, 'and his other tab\'s');
    assert.equal(await bob.page.locator('#chat-pane').isVisible(), false, 'the conversation closed');
    await eventually(async () => (await systemTexts(ada.page)).includes('Bob left'), 'Ada sees Bob leave');
    await ada.page.locator('#peer-status', { hasText: '1 member' }).waitFor();
    await eventually(async () => JSON.stringify(await memberNames(ada.page)) === '["Ada (you)"]', 'Ada alone');

    // Ada adds Cat back: the group comes back to Cat's list, with its whole history.
    await pick(ada.page, '#add-search', '#add-found', 'Cat');
    await ada.page.getByRole('button', { name: 'Add to group' }).click();
    await eventually(async () => (await systemTexts(ada.page)).includes('Ada added Cat'), 'the add in Ada\'s conversation');
    await chatRow(cat.page, 'Crew 2').waitFor();
    await chatRow(cat.page, 'Crew 2').click();
    await expectTexts(cat.page, ['Hello crew', 'Plans for today?', 'Sounds good', 'Now without Cat'], 'Cat reads the whole history');
    assert.equal(await cat.page.getByLabel('Message', { exact: true }).isDisabled(), false);
    await send(cat.page, 'Back again');
    await expectTexts(ada.page, ['Hello crew', 'Plans for today?', 'Sounds good', 'Now without Cat', 'Back again'], 'Ada hears Cat again');
    assert.equal(await badge(bob.page, 'Crew'), '', 'Bob, gone, hears nothing');
    await screenshot(ada.page, 'groups-6-owner');

    // When the owner leaves, the longest-standing member owns the group, and her controls appear.
    await openMembers(cat.page);
    await eventually(async () => JSON.stringify(await memberNames(cat.page)) === '["Ada","Cat (you)"]', 'Cat sees the members');
    assert.equal(await cat.page.locator('#rename-form').isVisible(), false, 'not the owner yet');
    await ada.page.getByRole('button', { name: 'Leave group' }).click();
    await eventually(async () => (await chatRow(ada.page, 'Crew').count()) === 0, 'the group left Ada\'s list');
    await cat.page.locator('#rename-form').waitFor({ state: 'visible' });
    assert.deepEqual(await cat.page.locator('#member-list .role').allTextContents(), ['Owner']);
    assert.equal(await cat.page.locator('#add-form').isVisible(), true);
    await eventually(async () => (await systemTexts(cat.page)).includes('Ada left'), 'Cat sees Ada leave');

    // On a phone screen the conversation and its members panel fit without sideways scrolling.
    await cat.page.setViewportSize({ width: 360, height: 640 });
    const width = await cat.page.evaluate(() => document.documentElement.scrollWidth);
    assert.ok(width <= 360, `no horizontal scroll (${width})`);
    await screenshot(cat.page, 'groups-7-phone');

    noErrors([ada.page], [400]);
    noErrors([bob.page, bobTab, cat.page]);
  });
});
