// Seeds the Node peer's SQLite database (node-contract's schema) with users, 1:1 chats and N
// messages, for the cold-start comparison in benches/compare.sh. Run with NODE_PATH pointing at
// the peer's node_modules: `node seed-node.js DATA_DIR MESSAGES`.
const path = require("path");
const fs = require("fs");
const Database = require("better-sqlite3");

const [dir, count] = [process.argv[2], +process.argv[3]];
fs.mkdirSync(dir, { recursive: true });
const db = new Database(path.join(dir, "contract.db"));
db.pragma("journal_mode = WAL");
// The same schema as node-contract/server.js creates on start.
db.exec(`
CREATE TABLE IF NOT EXISTS meta(k TEXT PRIMARY KEY, v TEXT);
CREATE TABLE IF NOT EXISTS users(id TEXT PRIMARY KEY, name TEXT NOT NULL, email TEXT UNIQUE NOT NULL, avatar TEXT NOT NULL DEFAULT '', pw TEXT, ext TEXT UNIQUE, createdAt TEXT, updatedAt TEXT);
CREATE TABLE IF NOT EXISTS chats(id TEXT PRIMARY KEY, pair TEXT UNIQUE, lastSeq INTEGER NOT NULL DEFAULT 0, lastMessageAt TEXT, createdAt TEXT);
CREATE TABLE IF NOT EXISTS members(chat TEXT, user TEXT, PRIMARY KEY(chat,user));
CREATE INDEX IF NOT EXISTS members_user ON members(user);
CREATE TABLE IF NOT EXISTS messages(id TEXT PRIMARY KEY, chat TEXT NOT NULL, seq INTEGER NOT NULL, sender TEXT NOT NULL, text TEXT NOT NULL, cmid TEXT, createdAt TEXT, updatedAt TEXT, UNIQUE(chat,seq), UNIQUE(chat,sender,cmid));
`);
const CHATS = 1000;
const t = new Date().toISOString();
const user = (i) => `seeduser${String(i).padStart(16, "0")}`;
const chat = (c) => `seedchat${String(c).padStart(16, "0")}`;
const insUser = db.prepare("INSERT INTO users(id,name,email,avatar,pw,ext,createdAt,updatedAt) VALUES(?,?,?,'',NULL,NULL,?,?)");
const insChat = db.prepare("INSERT INTO chats(id,pair,lastSeq,lastMessageAt,createdAt) VALUES(?,?,?,?,?)");
const insMember = db.prepare("INSERT INTO members(chat,user) VALUES(?,?)");
const insMsg = db.prepare("INSERT INTO messages(id,chat,seq,sender,text,cmid,createdAt,updatedAt) VALUES(?,?,?,?,?,?,?,?)");
db.transaction(() => {
  for (let c = 0; c < CHATS; c++) {
    const [a, b] = [user(2 * c), user(2 * c + 1)];
    insUser.run(a, `seed ${2 * c}`, `seed-${2 * c}@seed.test`, t, t);
    insUser.run(b, `seed ${2 * c + 1}`, `seed-${2 * c + 1}@seed.test`, t, t);
    insChat.run(chat(c), [a, b].sort().join(":"), Math.floor(count / CHATS) + (c < count % CHATS ? 1 : 0), t, t);
    insMember.run(chat(c), a);
    insMember.run(chat(c), b);
  }
})();
for (let start = 0; start < count; start += 10000) {
  db.transaction(() => {
    for (let i = start; i < Math.min(count, start + 10000); i++) {
      const c = i % CHATS;
      insMsg.run(`seedmsg${String(i).padStart(17, "0")}`, chat(c), Math.floor(i / CHATS) + 1, user(2 * c + (Math.floor(i / CHATS) % 2)), `seeded message ${i} ${"x".repeat(64)}`, `seed-${i}`, t, t);
    }
  })();
}
db.close();
