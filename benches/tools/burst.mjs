// One socket's burst: it emits N `send-message` without waiting, then waits for all N acks;
// prints the median time of ROUNDS bursts. Run BENCHMARKS.md's run G with it:
//   (cd tests/e2e && npm ci) && node benches/tools/burst.mjs http://127.0.0.1:3000 200 5
// against a server with PALAVER_SEND_RATE_PER_SEC and PALAVER_SEND_BURST raised.
// socket.io-client comes from the e2e suite's install (tests/e2e/package-lock.json).
import { createRequire } from 'node:module';
const { io } = createRequire(new URL('../../tests/e2e/package.json', import.meta.url))('socket.io-client');
const url = process.argv[2], N = +process.argv[3] || 200, ROUNDS = +process.argv[4] || 5;
const post = async (p, body, token) => {
  const r = await fetch(url + p, { method: 'POST', headers: { 'content-type': 'application/json', ...(token ? { authorization: 'Bearer ' + token } : {}) }, body: JSON.stringify(body) });
  return r.json();
};
const tag = Math.random().toString(36).slice(2);
const a = await post('/api/auth/register', { name: 'a', email: `a${tag}@x.io`, password: 'password123' });
const b = await post('/api/auth/register', { name: 'b', email: `b${tag}@x.io`, password: 'password123' });
const chat = await post('/api/chats/with/' + b.user._id, {}, a.token);
const chatId = chat._id;
const s = io(url, { auth: { token: a.token }, transports: ['websocket'] });
await new Promise((r) => s.on('connect', r));
const times = [];
for (let round = 0; round < ROUNDS; round++) {
  const t0 = performance.now();
  await Promise.all(Array.from({ length: N }, (_, i) => s.emitWithAck('send-message', { chatId, text: `m${i}` })));
  times.push(performance.now() - t0);
}
times.sort((x, y) => x - y);
console.log(JSON.stringify({ n: N, median_ms: +times[Math.floor(times.length / 2)].toFixed(1), all: times.map((t) => +t.toFixed(1)) }));
s.close();
