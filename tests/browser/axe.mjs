// axe-core in a page of the browser suite: the serious and critical accessibility violations of
// what the page shows, which the suite asserts are none.
import fs from 'node:fs';
import { createRequire } from 'node:module';
import { assert } from './harness.mjs';

const require = createRequire(import.meta.url);
const AXE_SOURCE = fs.readFileSync(require.resolve('axe-core/axe.min.js'), 'utf8');

/** Fails with the list when axe-core finds a serious or critical violation on the page. */
export async function axeViolations(page, what) {
  await page.evaluate(AXE_SOURCE);
  const violations = await page.evaluate(async () => {
    const result = await window.axe.run(document, { resultTypes: ['violations'] });
    return result.violations.map((v) => ({ id: v.id, impact: v.impact, nodes: v.nodes.map((n) => n.target.join(' ')) }));
  });
  const grave = violations.filter((v) => v.impact === 'serious' || v.impact === 'critical');
  assert.deepEqual(grave, [], `${what}: ${JSON.stringify(grave, null, 1)}`);
}
