// The page-building helpers every part of the web client shares. Every name and message text
// reaches the page through textContent, never as HTML.

export const $ = (id) => document.getElementById(id);

/** An element with a class and text content (never HTML). */
export function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined && text !== null) node.textContent = text;
  return node;
}

/** A button of type "button" (never a form's submit) with its text. */
export function button(className, text) {
  const node = el('button', className, text);
  node.type = 'button';
  return node;
}

/**
 * Replaces a container's children, keeping the keyboard focus on the new element that stands
 * for the same thing (same `data-focus-key`), so a re-render never throws a keyboard user out.
 */
export function replaceKeepingFocus(container, children) {
  const active = document.activeElement;
  const key = container.contains(active) ? active.dataset.focusKey : undefined;
  container.replaceChildren(...children);
  if (key) container.querySelector(`[data-focus-key="${CSS.escape(key)}"]`)?.focus({ preventScroll: true });
}

export const initial = (name) => (name || '?').trim().charAt(0).toUpperCase() || '?';

/** A round avatar with the name's initial, hidden from screen readers (the name is said beside it). */
export function avatar(name) {
  const node = el('span', 'avatar', initial(name));
  node.setAttribute('aria-hidden', 'true');
  return node;
}
