// A people picker: a search box, the people it finds (each a toggle button), and the people
// picked so far (each with a button that takes them out again). It picks a new group's members
// and the people an owner adds to a group.

import { avatar, button, el, replaceKeepingFocus } from './dom.js';

const SEARCH_DEBOUNCE_MS = 200;
/** The server takes at most 100 user ids in one request (`memberIds`, `userIds`). */
export const PICKED_MAX = 100;

export class PeoplePicker {
  /**
   * @param {object} parts
   * @param {HTMLInputElement} parts.input   the search box
   * @param {HTMLElement} parts.results      the list of people found
   * @param {HTMLElement} parts.status       says "Nobody found." or why the search failed
   * @param {HTMLElement} parts.picked       the list of people picked
   * @param {(query: string) => Promise<object[]>} parts.search  the user search (public users)
   * @param {() => Set<string>} [parts.excluded]  ids never offered (members already in)
   * @param {(error: Error) => boolean} [parts.refused]  true when the error ended the session
   */
  constructor({ input, results, status, picked, search, excluded = () => new Set(), refused = () => false }) {
    Object.assign(this, { input, results, status, pickedList: picked, searchPeople: search, excluded, refused });
    this.picked = new Map();
    this.found = [];
    this.run = 0;
    this.timer = null;
    input.addEventListener('input', () => {
      clearTimeout(this.timer);
      this.timer = setTimeout(() => this.search(), SEARCH_DEBOUNCE_MS);
    });
    // Enter in the search box searches; it must not submit the form around it half-picked.
    input.addEventListener('keydown', (event) => {
      if (event.key !== 'Enter' || event.isComposing) return;
      event.preventDefault();
      clearTimeout(this.timer);
      this.search();
    });
  }

  /** Empties the box and the picks, and lists everyone the search finds. */
  start() {
    this.input.value = '';
    this.picked.clear();
    this.found = [];
    this.render();
    this.search();
  }

  /** The ids picked, in the order picked. */
  get ids() {
    return [...this.picked.keys()];
  }

  async search() {
    const run = ++this.run;
    try {
      const users = await this.searchPeople(this.input.value.trim());
      if (run !== this.run) return;
      this.found = users;
      this.status.textContent = 'Nobody found.';
    } catch (error) {
      if (this.refused(error) || run !== this.run) return;
      this.found = [];
      this.status.textContent = error.message;
    }
    this.render();
  }

  toggle(user) {
    if (this.picked.has(user._id)) this.picked.delete(user._id);
    else if (this.picked.size < PICKED_MAX) this.picked.set(user._id, user);
    else this.status.textContent = `At most ${PICKED_MAX} people at once.`;
    this.render();
  }

  render() {
    const excluded = this.excluded();
    const offered = this.found.filter((u) => !excluded.has(u._id));
    replaceKeepingFocus(this.results, offered.map((u) => this.resultItem(u)));
    this.status.hidden = offered.length > 0;
    replaceKeepingFocus(this.pickedList, [...this.picked.values()].map((u) => this.pickedItem(u)));
  }

  resultItem(user) {
    const chosen = this.picked.has(user._id);
    const toggle = button('person', undefined);
    toggle.dataset.focusKey = `pick:${user._id}`;
    toggle.setAttribute('aria-pressed', String(chosen));
    const text = el('span', 'chat-main');
    text.append(el('span', 'chat-name', user.name));
    // Only someone found by their whole email address comes with it (docs/protocol.md).
    if (user.email) text.append(el('span', 'chat-last', user.email));
    const mark = el('span', 'pick-mark', chosen ? '✓' : '');
    mark.setAttribute('aria-hidden', 'true');
    toggle.append(avatar(user.name), text, mark);
    toggle.addEventListener('click', () => this.toggle(user));
    const item = el('li');
    item.append(toggle);
    return item;
  }

  pickedItem(user) {
    const item = el('li', 'chip');
    item.append(el('span', null, user.name));
    const drop = button('chip-drop', '×');
    drop.dataset.focusKey = `unpick:${user._id}`;
    drop.setAttribute('aria-label', `Do not add ${user.name}`);
    drop.addEventListener('click', () => this.toggle(user));
    item.append(drop);
    return item;
  }
}
