#!/usr/bin/env node
/*
 * End-to-end test of the chatd browser client: a real redis-server, a real
 * bin/chatd (2 workers) and Debian's Chromium driven by playwright-core.
 *
 * Every wait has a timeout, every test has a deadline, the servers run in
 * their own process groups and are torn down (TERM, then KILL) on every
 * exit path. The last line printed is "N passed, N failed".
 *
 * Environment: CHATD_BIN (default <repo>/bin/chatd), REDIS_SERVER
 * (/usr/bin/redis-server), CHROMIUM (/usr/bin/chromium), E2E_SCREENSHOT
 * (default <repo>/docs/screenshot.png; "" for none), E2E_KEEP=1 keeps the
 * temp dir with the logs, E2E_ONLY=<regex> runs only the tests whose name
 * matches (those that lean on earlier ones then fail).
 *
 * The conversation scenarios of protocol 1.1 (edit, delete, react, unread
 * counts and read receipts, direct messages) save their screenshot to
 * E2E_CONVERSATIONS_SCREENSHOT (default <repo>/docs/images/conversations.png;
 * "" for none), and those of files and search (upload by button, drop and
 * paste, previews, downloads, search with highlights, jumping to an old
 * message) to E2E_FILES_SCREENSHOT (default <repo>/docs/images/files-search.png).
 * The encrypted rooms (two members, a later joiner, a leaver shut out by
 * the rotation; Redis holds only ciphertext) save theirs to
 * E2E_E2E_SCREENSHOT (default <repo>/docs/images/e2e.png), and the calls
 * (a second Chromium with fake camera and microphone: ringing on every
 * device, video both ways, hang-up, busy, decline) to E2E_CALL_SCREENSHOT
 * (default <repo>/docs/images/call.png).
 */
'use strict';

const assert = require('assert/strict');
const child = require('child_process');
const fs = require('fs');
const http = require('http');
const net = require('net');
const os = require('os');
const path = require('path');
const zlib = require('zlib');

const HERE = __dirname;
const REPO = path.resolve(HERE, '..', '..');
const CHATD = process.env.CHATD_BIN || path.join(REPO, 'bin', 'chatd');
const REDIS = process.env.REDIS_SERVER || '/usr/bin/redis-server';
const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
const SHOT = process.env.E2E_SCREENSHOT !== undefined ? process.env.E2E_SCREENSHOT
  : path.join(REPO, 'docs', 'screenshot.png');
const CONVO_SHOT = process.env.E2E_CONVERSATIONS_SCREENSHOT !== undefined
  ? process.env.E2E_CONVERSATIONS_SCREENSHOT : path.join(REPO, 'docs', 'images', 'conversations.png');
const FILES_SHOT = process.env.E2E_FILES_SCREENSHOT !== undefined
  ? process.env.E2E_FILES_SCREENSHOT : path.join(REPO, 'docs', 'images', 'files-search.png');
const E2E_SHOT = process.env.E2E_E2E_SCREENSHOT !== undefined
  ? process.env.E2E_E2E_SCREENSHOT : path.join(REPO, 'docs', 'images', 'e2e.png');
const CALL_SHOT = process.env.E2E_CALL_SCREENSHOT !== undefined
  ? process.env.E2E_CALL_SCREENSHOT : path.join(REPO, 'docs', 'images', 'call.png');
const TEST_TIMEOUT_MS = 60000;
const SLOW_TEST_MS = 90000;       // the encrypted-room and call scenarios: more steps, crypto, media
const ONLY = process.env.E2E_ONLY ? new RegExp(process.env.E2E_ONLY) : null;

const { chromium } = require(path.join(HERE, 'node_modules', 'playwright-core'));

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'chatd-e2e-'));
const procs = [];            // { name, proc, log } in start order
let browser = null;

// ------------------------------------------------------------ helpers
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

function withTimeout(promise, ms, what) {
  let t;
  return Promise.race([
    promise,
    new Promise((_, rej) => { t = setTimeout(() => rej(new Error('timeout after ' + ms + ' ms: ' + what)), ms); }),
  ]).finally(() => clearTimeout(t));
}

// Polls fn until it returns a truthy value (returned) or the time is up.
async function waitFor(fn, ms, what) {
  const end = Date.now() + ms;
  let last;
  for (;;) {
    try {
      const v = await fn();
      if (v) return v;
      last = v;
    } catch (e) {
      last = e;
    }
    if (Date.now() > end) {
      throw new Error('timed out waiting for ' + what + (last instanceof Error ? ': ' + last.message : ''));
    }
    await sleep(100);
  }
}

function freePort() {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.unref();
    s.on('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
}

// Starts a server in its own process group so that teardown reaches every
// process it forks (chatd's workers), with output kept in a log file.
function spawnServer(name, cmd, args, env) {
  const logPath = path.join(tmp, name + '.log');
  const log = fs.openSync(logPath, 'a');
  const proc = child.spawn(cmd, args, {
    cwd: tmp, detached: true, stdio: ['ignore', 'pipe', 'pipe'],
    env: Object.assign({}, process.env, env || {}),
  });
  const entry = { name, proc, logPath, out: '' };
  const onData = (d) => {
    fs.writeSync(log, d);
    if (entry.out.length < 1e6) entry.out += d.toString();
  };
  proc.stdout.on('data', onData);
  proc.stderr.on('data', onData);
  proc.on('exit', () => { try { fs.closeSync(log); } catch (e) { /* closed */ } });
  procs.push(entry);
  return entry;
}

function alive(proc) {
  return proc.exitCode === null && proc.signalCode === null;
}

async function stopServer(entry) {
  const { proc } = entry;
  if (!alive(proc)) return;
  try { process.kill(-proc.pid, 'SIGTERM'); } catch (e) { /* gone */ }
  const end = Date.now() + 5000;
  while (alive(proc) && Date.now() < end) await sleep(50);
  try { process.kill(-proc.pid, 'SIGKILL'); } catch (e) { /* gone */ }
}

function killAllNow() {
  for (const e of procs) {
    try { process.kill(-e.proc.pid, 'SIGKILL'); } catch (err) { /* gone */ }
  }
}
process.on('exit', killAllNow);
for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP']) {
  process.on(sig, () => {
    killAllNow();
    console.log('e2e: interrupted by ' + sig);
    console.log('0 passed, 1 failed');
    process.exit(1);
  });
}

function redisPing(port) {
  return new Promise((resolve) => {
    const s = net.connect(port, '127.0.0.1');
    let buf = '';
    s.setTimeout(500, () => { s.destroy(); resolve(false); });
    s.on('error', () => resolve(false));
    s.on('connect', () => s.write('*1\r\n$4\r\nPING\r\n'));
    s.on('data', (d) => {
      buf += d;
      if (buf.includes('\r\n')) { s.destroy(); resolve(buf.startsWith('+PONG')); }
    });
  });
}

async function startRedis() {
  const port = await freePort();
  const dir = path.join(tmp, 'redis');
  fs.mkdirSync(dir, { recursive: true });
  const r = spawnServer('redis', REDIS, [
    '--port', String(port), '--bind', '127.0.0.1', '--dir', dir, '--daemonize', 'no',
    '--appendonly', 'yes', '--appendfsync', 'always', '--save', '', '--logfile', '',
  ]);
  await waitFor(async () => {
    if (!alive(r.proc)) throw new Error('redis-server exited: ' + r.out.slice(-500));
    return redisPing(port);
  }, 10000, 'redis-server to answer PING');
  r.port = port;
  return r;
}

async function startChatd(redisPort) {
  for (let attempt = 0; attempt < 3; attempt++) {
    const port = await freePort();
    const c = spawnServer('chatd' + (attempt ? '-' + attempt : ''), CHATD, [
      '--port', String(port), '--bind', '127.0.0.1', '--workers', '2',
      '--redis-url', 'redis://127.0.0.1:' + redisPort, '--max-rooms', '4',
    ], { CHATD_WEB_DIR: path.join(REPO, 'worker', 'web') });
    try {
      await waitFor(() => {
        if (!alive(c.proc)) throw new Error('chatd exited: ' + c.out.slice(-800));
        const m = /chatd ready port=(\d+) workers=(\d+)/.exec(c.out);
        return m && Number(m[1]) === port && Number(m[2]) === 2;
      }, 15000, 'the "chatd ready" line');
      c.port = port;
      return c;
    } catch (e) {
      await stopServer(c);
      // Another process may have taken the port between probe and bind.
      if (attempt === 2 || !/Address already in use|EADDRINUSE|bind/i.test(c.out)) throw e;
    }
  }
  throw new Error('unreachable');
}

// One raw HTTP/1.1 request, so the path goes out exactly as written (no
// client-side normalisation of dot-segments or escapes).
function rawGet(port, target, method) {
  return new Promise((resolve, reject) => {
    const s = net.connect(port, '127.0.0.1');
    const chunks = [];
    s.setTimeout(5000, () => { s.destroy(); reject(new Error('timeout: ' + target)); });
    s.on('error', reject);
    s.on('connect', () => s.write((method || 'GET') + ' ' + target + ' HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n'));
    s.on('data', (d) => chunks.push(d));
    s.on('end', () => {
      const raw = Buffer.concat(chunks).toString('latin1');
      const i = raw.indexOf('\r\n\r\n');
      const head = i < 0 ? raw : raw.slice(0, i);
      const lines = head.split('\r\n');
      const status = Number((lines[0] || '').split(' ')[1]);
      const headers = {};
      for (const l of lines.slice(1)) {
        const j = l.indexOf(':');
        if (j > 0) headers[l.slice(0, j).trim().toLowerCase()] = l.slice(j + 1).trim();
      }
      resolve({ status, headers, body: i < 0 ? '' : raw.slice(i + 4) });
    });
  });
}

// ------------------------------------------------- /proc: who holds what
function childrenOf(ppid) {
  const out = [];
  for (const d of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(d)) continue;
    try {
      const stat = fs.readFileSync('/proc/' + d + '/stat', 'utf8');
      const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
      if (Number(fields[1]) === ppid) out.push(Number(d));
    } catch (e) { /* exited meanwhile */ }
  }
  return out;
}

// Maps the peer port of every established connection to chatd's port to
// the pid of the worker holding it (socket inodes in /proc/PID/fd matched
// against /proc/net/tcp{,6}).
function connectionsByWorker(masterPid, port) {
  const inodeToPid = new Map();
  for (const pid of childrenOf(masterPid)) {
    let fds = [];
    try { fds = fs.readdirSync('/proc/' + pid + '/fd'); } catch (e) { continue; }
    for (const fd of fds) {
      try {
        const m = /^socket:\[(\d+)\]$/.exec(fs.readlinkSync('/proc/' + pid + '/fd/' + fd));
        if (m) inodeToPid.set(m[1], pid);
      } catch (e) { /* closed meanwhile */ }
    }
  }
  const byPeer = new Map();
  for (const f of ['/proc/net/tcp', '/proc/net/tcp6']) {
    let text = '';
    try { text = fs.readFileSync(f, 'utf8'); } catch (e) { continue; }
    for (const line of text.split('\n').slice(1)) {
      const c = line.trim().split(/\s+/);
      if (c.length < 10 || c[3] !== '01') continue;        // 01 = ESTABLISHED
      const lport = parseInt(c[1].split(':').pop(), 16);
      const rport = parseInt(c[2].split(':').pop(), 16);
      if (lport !== port || !inodeToPid.has(c[9])) continue;
      byPeer.set(rport, inodeToPid.get(c[9]));
    }
  }
  return byPeer;
}

// ------------------------------------------------------ page helpers
async function online(page, ms) {
  await page.waitForSelector('#conn[data-state="online"]', { timeout: ms || 10000 });
}

async function sendText(page, text) {
  await page.fill('#input', text);
  await page.press('#input', 'Enter');
}

// The visible room's messages as the user sees them.
function messages(page) {
  return page.evaluate(() => Array.from(
    document.querySelectorAll('.room-view:not([hidden]) .msgs li.msg')).map((li) => ({
    seq: Number(li.dataset.seq),
    sender: li.dataset.sender,
    text: li.querySelector('.bubble').textContent,
    status: li.dataset.status || null,
    own: li.classList.contains('own'),
  })));
}

function pendingCount(page) {
  return page.evaluate(() => document.querySelectorAll('.room-view:not([hidden]) .pending-list li.msg').length);
}

async function waitText(page, text, ms) {
  return waitFor(async () => (await messages(page)).find((m) => m.text === text), ms || 10000,
    JSON.stringify(text) + ' on the page');
}

async function joinRoom(page, room) {
  await page.fill('#join-room', room);
  await page.press('#join-room', 'Enter');
  await page.waitForFunction((r) => document.getElementById('room-name').textContent === r, room, { timeout: 5000 });
}

async function selectRoom(page, room) {
  await page.click('#rooms button[data-room="' + room + '"]');
  await page.waitForFunction((r) => document.getElementById('room-name').textContent === r, room, { timeout: 5000 });
}

// How many times the page got a welcome: one more after each reconnect.
function connectsOf(page) {
  return page.evaluate(() => Number(document.getElementById('conn').dataset.connects || 0));
}

// ------------------------------------------- conversations (protocol 1.1)
// The visible room's messages with their 1.1 state.
function convo(page) {
  return page.evaluate(() => Array.from(
    document.querySelectorAll('.room-view:not([hidden]) .msgs li.msg')).map((li) => ({
    seq: Number(li.dataset.seq),
    sender: li.dataset.sender,
    text: li.querySelector('.bubble').textContent,
    edited: !!li.querySelector('.edited'),
    deleted: li.classList.contains('deleted'),
    reactions: Array.from(li.querySelectorAll('.reactions .chip'), (c) =>
      c.dataset.emoji + ' ' + c.querySelector('.n').textContent + (c.classList.contains('mine') ? ' mine' : '')),
    firstUnread: li.classList.contains('first-unread'),
  })));
}

async function waitConvo(page, what, pred, ms) {
  return waitFor(async () => {
    const list = await convo(page);
    return pred(list) ? list : null;
  }, ms || 10000, what);
}

const byText = (list, text) => list.find((m) => m.text === text);

// The message of the visible room whose text is exactly text.
function msgLocator(page, text) {
  const exact = new RegExp('^' + text.replace(/[.*+?^${}()|[\]\\]/g, '\\$&') + '$');
  return page.locator('.room-view:not([hidden]) .msgs li.msg')
    .filter({ has: page.locator('.bubble', { hasText: exact }) });
}

// Opens the menu of the message (it shows on hover) and clicks action.
async function menu(page, text, action) {
  const li = msgLocator(page, text);
  await li.hover();
  await li.locator('.actions button[data-action="' + action + '"]').click({ timeout: 5000 });
  return li;
}

async function react(page, text, emoji) {
  const li = await menu(page, text, 'react');
  await li.locator('.picker button[data-emoji="' + emoji + '"]').click({ timeout: 5000 });
}

async function badge(page, room) {
  return page.evaluate((r) => {
    const b = document.querySelector('button[data-room="' + r + '"] .badge');
    return b ? b.textContent : null;
  }, room);
}

async function conversations(test, openUser, base, pageErrors) {
  const c = {};
  const LAUNCH = 'launch';
  const DM = 'dm:maya:noah';
  const first = 'Launch checklist is in the doc';
  const firstEdited = 'Launch checklist is in the shared doc, section 3';

  await test('1.1: the message menu edits (also by Up) and deletes, for both sides', async () => {
    c.maya = await openUser('maya', LAUNCH);
    c.noah = await openUser('noah', LAUNCH);
    for (const [page, other] of [[c.maya, 'noah'], [c.noah, 'maya']]) {
      await page.waitForSelector('#presence li[data-user="' + other + '"]', { timeout: 10000 });
      // joined carried readSeq: the client knows the server speaks 1.1.
      await page.waitForSelector('#app.v11', { timeout: 5000 });
    }
    await sendText(c.maya, first);
    await waitText(c.noah, first);
    await waitConvo(c.maya, 'first message acked', (l) => l.length === 1 && !Number.isNaN(l[0].seq));
    await c.maya.waitForSelector('.msg[data-status="acked"]', { timeout: 10000 });
    await menu(c.maya, first, 'edit');
    assert.equal(await c.maya.inputValue('#input'), first);
    assert.equal(await c.maya.isVisible('#edit-bar'), true);
    await c.maya.fill('#input', firstEdited);
    await c.maya.press('#input', 'Enter');
    for (const page of [c.maya, c.noah]) {
      const l = await waitConvo(page, 'the edit', (x) => byText(x, firstEdited) && byText(x, firstEdited).edited);
      assert.equal(l.length, 1, 'an edit is not a new message');
      assert.ok(!byText(l, first));
    }
    assert.equal(await c.maya.inputValue('#input'), '', 'the composer is empty again');
    assert.equal(await c.maya.isVisible('#edit-bar'), false);

    // Up in the empty composer edits the last message of ours.
    await sendText(c.maya, 'Standup moves to 10');
    await waitText(c.noah, 'Standup moves to 10');
    await waitFor(async () => (await messages(c.maya)).every((m) => m.status === 'acked'), 10000, 'acks');
    await c.maya.press('#input', 'ArrowUp');
    assert.equal(await c.maya.inputValue('#input'), 'Standup moves to 10');
    await c.maya.fill('#input', 'Standup moves to 10:30');
    await c.maya.press('#input', 'Enter');
    await waitConvo(c.noah, 'the edit by Up', (x) => byText(x, 'Standup moves to 10:30') && byText(x, 'Standup moves to 10:30').edited);

    // Delete asks twice; the other side sees a placeholder, never the text.
    const gone = 'Wrong channel, sorry: ignore this';
    await sendText(c.noah, gone);
    await waitText(c.maya, gone);
    await c.noah.waitForSelector('.msg[data-status="acked"]', { timeout: 10000 });
    await menu(c.noah, gone, 'delete');
    await msgLocator(c.noah, gone).locator('button[data-action="delete"].confirm').click({ timeout: 5000 });
    for (const page of [c.maya, c.noah]) {
      await waitConvo(page, 'the delete', (x) => x.some((m) => m.deleted && m.text === 'message deleted'));
      assert.equal(await page.evaluate((t) => document.body.textContent.includes(t), gone), false);
    }
  });

  await test('1.1: reactions toggle by menu and chip, counted, ours highlighted', async () => {
    const { maya, noah } = c;
    await react(noah, firstEdited, '🎉');
    await waitConvo(maya, '🎉 from noah', (x) => byText(x, firstEdited).reactions.join() === '🎉 1');
    await maya.locator('.room-view:not([hidden]) .chip[data-emoji="🎉"]').click();
    await react(noah, firstEdited, '👍');
    const want = (who) => (x) => byText(x, firstEdited).reactions.join() === (who === 'maya' ? '🎉 2 mine,👍 1' : '🎉 2 mine,👍 1 mine');
    await waitConvo(maya, 'maya: 🎉 2 (hers), 👍 1', want('maya'));
    await waitConvo(noah, 'noah: 🎉 2, 👍 1 (both his)', want('noah'));
    // A chip click takes ours back, and another puts it on again.
    await maya.locator('.room-view:not([hidden]) .chip[data-emoji="🎉"]').click();
    await waitConvo(noah, '🎉 back to 1', (x) => byText(x, firstEdited).reactions.join() === '🎉 1 mine,👍 1 mine');
    await maya.locator('.room-view:not([hidden]) .chip[data-emoji="🎉"]').click();
    await waitConvo(noah, '🎉 2 again', want('noah'));
  });

  await test('1.1: unread badges from the server, "new messages", read receipts across tabs', async () => {
    const { maya, noah } = c;
    await joinRoom(maya, 'ops');
    const news = 'Deploy window confirmed for 10:30';
    await sendText(noah, news);
    await waitFor(async () => (await badge(maya, LAUNCH)) === '1', 10000, 'the unread badge on #launch');
    // A second tab of maya's: its count comes from the server.
    c.maya2 = await maya.context().newPage();
    c.maya2.on('pageerror', (e) => pageErrors.push('maya (second tab): ' + e.message));
    await c.maya2.goto(base + '/?user=maya&room=ops', { timeout: 10000 });
    await online(c.maya2);
    await waitFor(async () => (await badge(c.maya2, LAUNCH)) === '1', 10000, "the second tab's badge");
    // Opening #launch in the first tab marks where the unread part begins
    // and reads it; the receipt clears the badge in the second tab.
    await selectRoom(maya, LAUNCH);
    const l = await waitConvo(maya, 'the "new messages" mark', (x) => x.some((m) => m.firstUnread));
    assert.equal(l.find((m) => m.firstUnread).text, news);
    assert.equal(await badge(maya, LAUNCH), null);
    await waitFor(async () => (await badge(c.maya2, LAUNCH)) === null, 10000, 'the receipt in the second tab');
    // History comes folded: edits, the delete and reactions as they are now.
    await selectRoom(c.maya2, LAUNCH);
    const h = await waitConvo(c.maya2, 'folded history', (x) => x.length === 4);
    assert.ok(byText(h, firstEdited).edited);
    assert.deepEqual(byText(h, firstEdited).reactions.sort(), ['👍 1', '🎉 2 mine'].sort());
    assert.ok(byText(h, 'Standup moves to 10:30').edited);
    assert.equal(h.filter((m) => m.deleted).length, 1);
    await c.maya2.close();
  });

  await test('1.1: a direct message notifies, is answered, edited, reacted to (screenshot)', async () => {
    const { maya, noah } = c;
    await noah.click('#presence li[data-user="maya"] button[data-dm="maya"]');
    await noah.waitForFunction((r) => document.getElementById('room-name').dataset.room === r, DM, { timeout: 5000 });
    assert.equal(await noah.$eval('#room-name', (e) => e.textContent), 'maya');
    const q = 'Can you own the rollback plan?';
    await sendText(noah, q);
    // maya has not joined the DM: notify puts it in her list with a badge.
    await waitFor(async () => (await badge(maya, DM)) === '1', 10000, 'the DM badge from notify');
    assert.equal(await maya.$eval('#dms button[data-room="' + DM + '"] .room-label', (e) => e.textContent), 'noah');
    await maya.click('#dms button[data-room="' + DM + '"]');
    await waitText(maya, q);
    assert.equal(await badge(maya, DM), null);
    const a = 'Sure, I will write it up before the launch';
    await sendText(maya, a);
    await waitText(noah, a);
    await waitFor(async () => (await messages(noah)).every((m) => !m.own || m.status === 'acked'), 10000, 'acks');
    await noah.press('#input', 'ArrowUp');
    await noah.fill('#input', 'Can you own the rollback plan for Thursday?');
    await noah.press('#input', 'Enter');
    await waitConvo(maya, 'the DM edit', (x) => x[0].edited && x[0].text === 'Can you own the rollback plan for Thursday?');
    await react(maya, 'Can you own the rollback plan for Thursday?', '❤️');
    await react(noah, a, '👍');
    await react(noah, a, '🎉');
    await waitConvo(maya, 'reactions in the DM', (x) => x[0].reactions.join() === '❤️ 1 mine' &&
      x[1].reactions.join() === '👍 1,🎉 1');
    if (SHOT && CONVO_SHOT) {
      await msgLocator(maya, a).hover();
      fs.mkdirSync(path.dirname(CONVO_SHOT), { recursive: true });
      await maya.screenshot({ path: CONVO_SHOT });
      assert.ok(fs.statSync(CONVO_SHOT).size > 10000);
    }
  });
}

// ------------------------------------------------ files and search (1.1)
const CRC_TABLE = Array.from({ length: 256 }, (_, n) => {
  let c = n;
  for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
  return c >>> 0;
});

function crc32(buf) {
  let c = 0xffffffff;
  for (const b of buf) c = CRC_TABLE[(c ^ b) & 0xff] ^ (c >>> 8);
  return (c ^ 0xffffffff) >>> 0;
}

// A w×h RGB PNG whose pixel (x, y) is rgb(x, y).
function makePng(w, h, rgb) {
  const raw = Buffer.alloc((w * 3 + 1) * h);
  for (let y = 0; y < h; y++) {
    raw[y * (w * 3 + 1)] = 0;                   // filter: none
    for (let x = 0; x < w; x++) {
      const [r, g, b] = rgb(x, y);
      const o = y * (w * 3 + 1) + 1 + x * 3;
      raw[o] = r; raw[o + 1] = g; raw[o + 2] = b;
    }
  }
  const chunk = (type, data) => {
    const len = Buffer.alloc(4);
    len.writeUInt32BE(data.length);
    const td = Buffer.concat([Buffer.from(type, 'latin1'), data]);
    const crc = Buffer.alloc(4);
    crc.writeUInt32BE(crc32(td));
    return Buffer.concat([len, td, crc]);
  };
  const ihdr = Buffer.alloc(13);
  ihdr.writeUInt32BE(w, 0);
  ihdr.writeUInt32BE(h, 4);
  ihdr[8] = 8; ihdr[9] = 2;                     // 8 bits, truecolour
  return Buffer.concat([Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]),
    chunk('IHDR', ihdr), chunk('IDAT', zlib.deflateSync(raw)), chunk('IEND', Buffer.alloc(0))]);
}

// Sends contents (an array of [user, text]) to room through raw sockets of
// page's browser, one per user, paced under the rate limit, in order.
function seedRoom(page, port, room, contents) {
  return page.evaluate(({ port, room, contents }) => new Promise((resolve, reject) => {
    const users = Array.from(new Set(contents.map((c) => c[0])));
    const socks = new Map();
    let ready = 0;
    let next = 0;
    let acked = 0;
    let tokens = 30;
    let inflight = false;
    const timer = setTimeout(() => { clearInterval(refill); reject(new Error('seed timeout')); }, 40000);
    // One at a time: the next goes out once this one is acked, so the
    // seqs follow the list across users.
    const pump = () => {
      // The refill timer pumps too: never before every socket has joined.
      if (ready < users.length || inflight || next >= contents.length || tokens < 1) return;
      const [u, text] = contents[next];
      next += 1;
      tokens -= 1;
      inflight = true;
      socks.get(u).send(JSON.stringify({ type: 'chat', id: 'seed-' + next, payload: { room, content: text } }));
    };
    for (const u of users) {
      const ws = new WebSocket('ws://127.0.0.1:' + port + '/ws?user=' + u);
      socks.set(u, ws);
      ws.onerror = () => reject(new Error('seed socket of ' + u + ' failed'));
      ws.onmessage = (ev) => {
        const m = JSON.parse(ev.data);
        if (m.type === 'welcome') ws.send(JSON.stringify({ type: 'join', id: 'j', payload: { room } }));
        else if (m.type === 'joined' && ++ready === users.length) pump();
        else if (m.type === 'ack') {
          acked += 1;
          inflight = false;
          if (acked === contents.length) {
            clearTimeout(timer);
            clearInterval(refill);
            for (const s of socks.values()) s.close();
            resolve();
          } else {
            setTimeout(pump, 0);
          }
        } else if (m.type === 'error') reject(new Error('seed: ' + ev.data));
      };
    }
    // Each socket has its own bucket; one shared count keeps well under any.
    const refill = setInterval(() => { tokens = Math.min(30, tokens + 1); pump(); }, 60);
  }), { port, room, contents });
}

// The visible room's attachments as the user sees them.
function attachmentsOf(page) {
  return page.evaluate(() => Array.from(
    document.querySelectorAll('.room-view:not([hidden]) .msgs li.msg')).map((li) => ({
    seq: Number(li.dataset.seq),
    text: li.querySelector('.bubble').textContent,
    images: Array.from(li.querySelectorAll('.atts a.att-img img'), (img) => ({
      src: img.getAttribute('src'), href: img.closest('a').getAttribute('href'), target: img.closest('a').target,
      loaded: img.complete && img.naturalWidth > 0, width: img.naturalWidth, alt: img.alt,
    })),
    files: Array.from(li.querySelectorAll('.atts a.att.file'), (a) => ({
      href: a.getAttribute('href'), download: a.getAttribute('download'),
      name: a.querySelector('.att-name').textContent, size: (a.querySelector('.att-size') || {}).textContent,
    })),
  })).filter((m) => m.images.length || m.files.length));
}

function tray(page) {
  return page.evaluate(() => Array.from(document.querySelectorAll('#uploads li.upload'), (li) => ({
    name: li.dataset.name, state: li.dataset.state, note: li.querySelector('.upload-note').textContent,
  })));
}

// Puts a file on the page as dropped on the messages, or pasted.
function dropFile(page, how, name, type, buf) {
  return page.evaluate(({ how, name, type, bytes }) => {
    const dt = new DataTransfer();
    dt.items.add(new File([new Uint8Array(bytes)], name, { type }));
    if (how === 'paste') {
      document.getElementById('input').dispatchEvent(new ClipboardEvent('paste',
        { bubbles: true, cancelable: true, clipboardData: dt }));
      return;
    }
    const log = document.getElementById('log');
    for (const t of ['dragenter', 'dragover', 'drop']) {
      log.dispatchEvent(new DragEvent(t, { bubbles: true, cancelable: true, dataTransfer: dt }));
    }
  }, { how, name, type, bytes: Array.from(buf) });
}

function searchState(page) {
  return page.evaluate(() => ({
    open: !document.getElementById('search-panel').hidden,
    state: document.getElementById('search-panel').dataset.state,
    status: document.getElementById('search-status').textContent,
    more: !document.getElementById('search-more').hidden,
    hits: Array.from(document.querySelectorAll('#search-results li.hit'), (li) => ({
      seq: Number(li.querySelector('button').dataset.seq),
      sender: li.querySelector('.hit-sender').textContent,
      time: (li.querySelector('.hit-time') || {}).textContent || '',
      text: li.querySelector('.hit-text').textContent,
      marks: Array.from(li.querySelectorAll('.hit-text mark'), (m) => m.textContent),
    })),
  }));
}

async function search(page, q) {
  await page.fill('#search-q', q);
  await page.press('#search-q', 'Enter');
  return waitFor(async () => {
    const st = await searchState(page);
    return st.open && st.state !== 'loading' ? st : null;
  }, 10000, 'the results of ' + JSON.stringify(q));
}

async function filesAndSearch(test, openUser, port, pageErrors) {
  const c = {};
  const ROOM = 'studio';
  const hero = makePng(320, 180, (x, y) => [40 + Math.round(x / 2), 90 + Math.round(y / 3), 200 - Math.round(x / 3)]);
  const csv = Buffer.concat([Buffer.from('item,price\ncafé crème,3.20\ncroissant,2.10\n', 'utf8'),
    Buffer.from([0, 1, 2, 254, 255, 10])]);
  const pasted = makePng(96, 64, (x, y) => [230, 120 + y, 60 + x]);

  // Older than one history page (50): the first page theo gets holds seqs
  // 21 to 70, and the café messages run all the way down.
  const seed = [
    ['mira', 'Kickoff for the café rebrand: moodboards by Friday'],
    ['iris', 'The crème brûlée shot from Tuesday is too cold, it needs a warmer grade'],
    ['mira', 'Noted. The Café Lumière logo files are on the shared drive'],
  ];
  for (let i = 4; i <= 70; i++) {
    if (i % 3 === 0) seed.push(['mira', 'Menu card v' + i + ': café prices checked against the till']);
    else if (i % 3 === 1) seed.push(['iris', 'Review round ' + i + ': spacing on the order screen']);
    else seed.push(['mira', 'Standup ' + i + ': nothing blocking']);
  }

  await test('files: an image attached with the button shows inline for the other user, loaded', async () => {
    c.iris = await openUser('iris', ROOM);
    await seedRoom(c.iris, port, ROOM, seed);
    await waitText(c.iris, seed[69][1], 15000);
    c.theo = await openUser('theo', ROOM);
    await waitText(c.theo, seed[69][1]);
    const first = await messages(c.theo);
    assert.ok(first.length >= 50 && first.length < 70 && !first.some((m) => m.seq <= 3),
      'one history page without the oldest, got seqs ' + first[0].seq + '..');
    // welcome.limits.maxFile shows the button.
    await c.iris.waitForSelector('#attach-file:not([hidden])', { timeout: 5000 });
    await c.iris.setInputFiles('#file-input', { name: 'hero-shot.png', mimeType: 'image/png', buffer: hero });
    await waitFor(async () => {
      const t = await tray(c.iris);
      return t.length === 1 && t[0].state === 'done' ? t : null;
    }, 10000, 'the upload in the tray, done');
    await sendText(c.iris, 'New hero shot for the café menu');
    await waitText(c.theo, 'New hero shot for the café menu');
    assert.deepEqual(await tray(c.iris), [], 'the tray is empty once sent');
    const a = await waitFor(async () => {
      const l = await attachmentsOf(c.theo);
      return l.length === 1 && l[0].images.length === 1 && l[0].images[0].loaded ? l[0] : null;
    }, 10000, "the preview loaded in theo's page");
    assert.equal(a.text, 'New hero shot for the café menu');
    assert.equal(a.images[0].width, 320);
    assert.equal(a.images[0].alt, 'hero-shot.png');
    assert.equal(a.images[0].target, '_blank');
    assert.match(a.images[0].src, /^\/files\/[0-9a-f]+\?user=theo$/, 'the file URL carries who asks');
    assert.equal(a.images[0].href, a.images[0].src, 'a click opens the full size');
    // The same bytes come back, and only to someone who says who they are.
    const back = await c.theo.evaluate(async (u) => {
      const r = await fetch(u);
      return { status: r.status, type: r.headers.get('content-type'), bytes: Array.from(new Uint8Array(await r.arrayBuffer())) };
    }, a.images[0].src);
    assert.equal(back.status, 200);
    assert.equal(back.type, 'image/png');
    assert.deepEqual(Buffer.from(back.bytes), hero);
    const anon = await rawGet(port, a.images[0].src.split('?')[0]);
    assert.equal(anon.status, 401, 'no identity, no file');
    // iris sees her own preview too, acked.
    await waitFor(async () => {
      const l = await attachmentsOf(c.iris);
      return l.length === 1 && l[0].images[0].loaded;
    }, 10000, "the preview in iris's page");
  });

  await test('files: a dropped file is a download chip with the same bytes; a pasted image; a file over maxFile is refused', async () => {
    const { iris, theo } = c;
    await dropFile(iris, 'drop', 'menu-prices.csv', 'text/csv', csv);
    await waitFor(async () => {
      const t = await tray(iris);
      return t.length === 1 && t[0].name === 'menu-prices.csv' && t[0].state === 'done';
    }, 10000, 'the dropped file uploaded');
    // No text: the file's name is the message.
    await iris.press('#input', 'Enter');
    await waitText(theo, 'menu-prices.csv');
    const chip = await waitFor(async () => (await attachmentsOf(theo)).find((m) => m.files.length), 10000, 'the chip');
    assert.deepEqual([chip.files[0].name, chip.files[0].download, chip.files[0].size],
      ['menu-prices.csv', 'menu-prices.csv', csv.length + ' B']);
    const [dl] = await Promise.all([
      theo.waitForEvent('download', { timeout: 10000 }),
      theo.locator('.room-view:not([hidden]) a.att.file').click(),
    ]);
    assert.equal(dl.suggestedFilename(), 'menu-prices.csv');
    assert.deepEqual(fs.readFileSync(await dl.path()), csv, 'the download is the uploaded bytes');

    await dropFile(iris, 'paste', 'image.png', 'image/png', pasted);
    const t = await waitFor(async () => {
      const l = await tray(iris);
      return l.length === 1 && l[0].state === 'done' ? l : null;
    }, 10000, 'the pasted image uploaded');
    assert.match(t[0].name, /^pasted-\d{8}-\d{6}\.png$/);
    await sendText(iris, 'Colour swatch for the café sign');
    await waitFor(async () => {
      const l = await attachmentsOf(theo);
      const m = l.find((x) => x.text === 'Colour swatch for the café sign');
      return m && m.images.length === 1 && m.images[0].loaded && m.images[0].width === 96;
    }, 10000, 'the pasted image shown to theo');

    // A slow upload shows its progress and can be cancelled: nothing is sent.
    const cdp = await iris.context().newCDPSession(iris);
    await cdp.send('Network.enable');
    await cdp.send('Network.emulateNetworkConditions',
      { offline: false, latency: 0, downloadThroughput: -1, uploadThroughput: 256 * 1024 });
    try {
      await iris.setInputFiles('#file-input', { name: 'shoot-raw.tif', mimeType: 'image/tiff', buffer: Buffer.alloc(3 << 20, 7) });
      await waitFor(() => iris.evaluate(() => {
        const bar = document.querySelector('#uploads li.upload[data-state="uploading"] progress');
        return bar && bar.value > 0 && bar.value < bar.max;
      }), 10000, 'the progress bar moving');
      await iris.click('#uploads button.upload-cancel');
      assert.deepEqual(await tray(iris), []);
    } finally {
      await cdp.send('Network.emulateNetworkConditions',
        { offline: false, latency: 0, downloadThroughput: -1, uploadThroughput: -1 });
      await cdp.detach();
    }
    await iris.press('#input', 'Enter');
    await sleep(500);
    assert.equal((await messages(theo)).filter((m) => /shoot-raw/.test(m.text)).length, 0, 'a cancelled file is not sent');

    // The server's refusals are said plainly, on the chip and in the banner
    // (answered here by the test in the server's place).
    const refusals = [[401, /not signed in/], [403, /may not share files in #studio/], [413, /too large for the server/]];
    for (const [status, said] of refusals) {
      const only = (u) => u.pathname === '/files';
      await iris.route(only, (r) => r.fulfill({ status, contentType: 'text/plain', body: 'refused\n' }));
      try {
        await iris.setInputFiles('#file-input', { name: 'refused-' + status + '.txt', mimeType: 'text/plain', buffer: Buffer.from('x') });
        const f = await waitFor(async () => {
          const l = await tray(iris);
          return l.length === 1 && l[0].state === 'failed' ? l[0] : null;
        }, 10000, 'the upload refused with ' + status);
        assert.match(f.note, said, status + ': ' + f.note);
        assert.match(await iris.$eval('#banner-text', (b) => b.textContent), /Could not upload “refused-\d+\.txt”/);
      } finally {
        await iris.unroute(only);
      }
      await iris.click('#uploads button.upload-cancel');
      assert.deepEqual(await tray(iris), []);
      // Chromium logs the refused request (maybe a little later); that one
      // is expected.
      const logged = (e) => e.startsWith('iris console: Failed to load resource') && e.includes(' ' + status + ' ');
      await waitFor(() => pageErrors.some(logged), 2000, 'the console line').catch(() => {});
      const i = pageErrors.findIndex(logged);
      if (i >= 0) pageErrors.splice(i, 1);
    }
    await iris.click('#banner-close');

    // Over the server's limit: refused before a byte is sent.
    const maxFile = await iris.evaluate((port) => new Promise((resolve, reject) => {
      const ws = new WebSocket('ws://127.0.0.1:' + port + '/ws?user=iris');
      ws.onmessage = (ev) => { ws.close(); resolve(JSON.parse(ev.data).payload.limits.maxFile); };
      ws.onerror = () => reject(new Error('socket failed'));
    }), port);
    assert.ok(maxFile > 0, 'welcome.limits.maxFile');
    await iris.setInputFiles('#file-input', { name: 'raw-footage.bin', mimeType: 'application/octet-stream',
      buffer: Buffer.alloc(maxFile + 1) });
    await iris.waitForSelector('#banner:not([hidden])', { timeout: 5000 });
    assert.match(await iris.$eval('#banner-text', (b) => b.textContent), /raw-footage\.bin.*at most/);
    assert.deepEqual(await tray(iris), []);
    await iris.click('#banner-close');
  });

  await test('search: case and accents folded, words highlighted, more results, errors inline (screenshot)', async () => {
    const { theo } = c;
    const st = await search(theo, 'CAFE');
    assert.equal(st.hits.length, 20, 'one page of results');
    assert.ok(st.more, 'more results exist');
    assert.equal(st.hits[0].text, 'Colour swatch for the café sign', 'newest first');
    assert.equal(st.hits[0].sender, 'iris');
    assert.ok(st.hits[0].time, 'with a time');
    for (const h of st.hits) assert.deepEqual(h.marks.map((m) => m.toLowerCase()), ['café'], h.text);
    if (SHOT && FILES_SHOT) {
      await theo.hover('#search-results li.hit:nth-child(2) button');
      fs.mkdirSync(path.dirname(FILES_SHOT), { recursive: true });
      await theo.screenshot({ path: FILES_SHOT });
      assert.ok(fs.statSync(FILES_SHOT).size > 10000);
    }
    await theo.click('#search-more');
    const all = await waitFor(async () => {
      const s = await searchState(theo);
      return s.hits.length > 20 && s.state === 'done' ? s : null;
    }, 10000, 'the older results');
    const seqs = all.hits.map((h) => h.seq);
    assert.deepEqual(seqs, seqs.slice().sort((x, y) => y - x), 'newest first, no repeat');
    assert.equal(new Set(seqs).size, seqs.length);
    assert.ok(seqs.includes(3) && seqs.includes(1), 'down to the oldest');
    assert.deepEqual(all.hits.find((h) => h.seq === 3).marks, ['Café']);

    // The last word may start a word; the others must be whole.
    const pre = await search(theo, 'brulee CRÈM');
    assert.deepEqual(pre.hits.map((h) => [h.seq, h.marks]), [[2, ['crème', 'brûlée']]]);
    const none = await search(theo, 'brul crème');
    assert.deepEqual(none.hits, []);
    assert.match(none.status, /No messages match/);
    // The server's refusal is shown in the panel, not as a banner.
    const long = await search(theo, 'one two three four five six seven eight nine ten eleven');
    assert.equal(long.state, 'error');
    assert.match(long.status, /too long.*too_large/);
    assert.equal(await theo.isVisible('#banner'), false);
  });

  await test('search: a result older than the loaded page is paged in, scrolled to and flashed', async () => {
    const { theo } = c;
    await search(theo, 'cafe lumi');
    const st = await searchState(theo);
    assert.deepEqual(st.hits.map((h) => [h.seq, h.marks]), [[3, ['Café', 'Lumière']]]);
    assert.equal(await theo.$('.room-view:not([hidden]) .msgs li.msg[data-seq="3"]'), null, 'not loaded yet');
    await theo.click('#search-results button[data-seq="3"]');
    const where = await waitFor(() => theo.evaluate(() => {
      const li = document.querySelector('.room-view:not([hidden]) .msgs li.msg[data-seq="3"]');
      if (!li) return null;
      const r = li.getBoundingClientRect();
      const l = document.getElementById('log').getBoundingClientRect();
      return { inView: r.top >= l.top && r.bottom <= l.bottom, flash: li.classList.contains('flash'),
        text: li.querySelector('.bubble').textContent };
    }), 10000, 'message 3 on the page');
    assert.deepEqual(where, { inView: true, flash: true, text: seed[2][1] });
    // What is held is still one run of seqs, from 1 to the newest.
    const seqs = (await messages(theo)).map((m) => m.seq);
    assert.deepEqual(seqs, Array.from({ length: seqs.length }, (_, i) => i + 1));
    assert.ok(seqs.length >= 73);
    await theo.click('#search-close');
    assert.equal(await theo.isVisible('#search-panel'), false);
  });
}

// ------------------------------------- encrypted rooms (protocol 1.1)
const VAULT = 'e2e:vault';

// A redis-cli command against the test's Redis, as text.
function redisCli(port, args) {
  return child.execFileSync('redis-cli', ['-p', String(port), '--raw'].concat(args),
    { encoding: 'utf8', timeout: 10000 });
}

// Every value Redis holds under room's keys, as one text.
function roomDump(port, room) {
  const keys = redisCli(port, ['--scan', '--pattern', 'chatd:{' + room + '}*']).split('\n').filter(Boolean);
  assert.ok(keys.length > 0, 'Redis holds keys of ' + room);
  let out = '';
  for (const k of keys) {
    const type = redisCli(port, ['TYPE', k]).trim();
    const read = { stream: ['XRANGE', k, '-', '+'], hash: ['HGETALL', k], zset: ['ZRANGE', k, '0', '-1'],
      set: ['SMEMBERS', k], list: ['LRANGE', k, '0', '-1'] }[type] || ['GET', k];
    out += k + ' ' + type + '\n' + redisCli(port, read) + '\n';
  }
  return out;
}

// The visible room's messages with their encryption state.
function sealedView(page) {
  return page.evaluate(() => Array.from(
    document.querySelectorAll('.room-view:not([hidden]) .msgs li.msg')).map((li) => ({
    seq: Number(li.dataset.seq),
    sender: li.dataset.sender,
    text: li.querySelector('.bubble').textContent,
    locked: li.classList.contains('locked'),
    keyId: li.dataset.keyId || null,
  })));
}

// The fingerprint the page shows for user in the people list.
function fingerprintShown(page, user) {
  return page.evaluate((u) => {
    const fp = document.querySelector('#presence li[data-user="' + u + '"] code.fp');
    return fp && !fp.classList.contains('none') ? fp.textContent.replace(/\s+/g, ' ').trim() : null;
  }, user);
}

// The key ids the server keeps for user in room (getroomkeys over a raw
// socket of page's browser).
function roomKeyIds(page, port, user, room) {
  return page.evaluate(({ port, user, room }) => new Promise((resolve, reject) => {
    const ws = new WebSocket('ws://127.0.0.1:' + port + '/ws?user=' + user);
    const t = setTimeout(() => { ws.close(); reject(new Error('getroomkeys timeout')); }, 10000);
    ws.onmessage = (ev) => {
      const m = JSON.parse(ev.data);
      if (m.type === 'welcome') ws.send(JSON.stringify({ type: 'join', id: 'j', payload: { room } }));
      else if (m.type === 'joined') ws.send(JSON.stringify({ type: 'getroomkeys', id: 'k', payload: { room } }));
      else if (m.type === 'roomkeys') { clearTimeout(t); ws.close(); resolve(m.payload.keys.map((k) => k.keyId)); }
      else if (m.type === 'error') { clearTimeout(t); ws.close(); reject(new Error(ev.data)); }
    };
  }), { port, user, room });
}

async function encryptedRooms(test, openUser, redisPort, port) {
  const e = {};
  const secret = 'The vault code is 7431-alpha';
  const secretEdited = 'The vault code is 7431-bravo';
  const reply = 'Noted, 7431 received';

  await test('e2e: two members read each other, edits too; Redis holds only ciphertext', async () => {
    e.pia = await openUser('pia', VAULT);
    e.quin = await openUser('quin', VAULT);
    for (const [page, other, self] of [[e.pia, 'quin', 'pia'], [e.quin, 'pia', 'quin']]) {
      await page.waitForSelector('#presence li[data-user="' + other + '"] code.fp:not(.none)', { timeout: 30000 });
      await page.waitForSelector('#presence li[data-user="' + self + '"] code.fp:not(.none)', { timeout: 30000 });
      assert.equal(await page.$eval('#room-hash', (h) => h.textContent), '🔒');
      assert.equal(await page.isVisible('#search-form'), false, 'no search in an encrypted room');
      assert.equal(await page.isVisible('#e2e-note'), true);
      await page.waitForSelector('#rooms button[data-room="' + VAULT + '"] .lock', { timeout: 5000 });
    }
    // Each side shows the other's fingerprint as the other shows its own.
    for (const [a, b, bn] of [[e.pia, e.quin, 'quin'], [e.quin, e.pia, 'pia']]) {
      const seen = await fingerprintShown(a, bn);
      assert.match(seen, /^([0-9a-f]{4} ){15}[0-9a-f]{4}$/);
      assert.equal(seen, await fingerprintShown(b, bn));
    }
    await sendText(e.pia, secret);
    await waitText(e.quin, secret, 30000);
    await sendText(e.quin, reply);
    await waitText(e.pia, reply, 30000);
    await waitFor(async () => (await messages(e.pia)).every((m) => !m.own || m.status === 'acked'), 10000, 'acks');
    await menu(e.pia, secret, 'edit');
    await e.pia.fill('#input', secretEdited);
    await e.pia.press('#input', 'Enter');
    await waitFor(async () => {
      const l = await convo(e.quin);
      return byText(l, secretEdited) && byText(l, secretEdited).edited && !byText(l, secret);
    }, 30000, 'the encrypted edit at quin');
    const view = await sealedView(e.quin);
    assert.equal(view.length, 2);
    assert.ok(view.every((m) => !m.locked && m.keyId), 'both opened, each with a key id');
    const dump = roomDump(redisPort, VAULT);
    for (const plain of [secret, secretEdited, reply, '7431-']) {
      assert.ok(!dump.includes(plain), 'Redis holds the plaintext ' + JSON.stringify(plain));
    }
    assert.ok(dump.includes(view[0].keyId), 'Redis holds the messages (with their key ids)');
    // The append-only file holds every write Redis ever took.
    const aofDir = path.join(tmp, 'redis');
    const files = child.execFileSync('find', [aofDir, '-type', 'f'], { encoding: 'utf8' }).split('\n').filter(Boolean);
    const aof = files.map((f) => fs.readFileSync(f, 'latin1')).join('');
    assert.ok(aof.includes(VAULT));
    // '7431-' rather than '7431': four digits alone turn up by chance in
    // the timestamps and base64 of everything else Redis took; a '-' is
    // in no standard base64 and no number.
    assert.ok(!aof.includes('7431-') && !aof.includes(reply), 'no plaintext in any write to Redis');
    // After a reload the room keys come back (kept in IndexedDB, and from
    // getroomkeys), and history, the edit folded in, opens again.
    await e.pia.reload({ timeout: 10000 });
    await online(e.pia);
    await waitText(e.pia, secretEdited, 30000);
    await waitText(e.pia, reply, 30000);
    assert.equal((await sealedView(e.pia)).filter((m) => m.locked).length, 0);
  }, SLOW_TEST_MS);

  await test('e2e: a member who joins later reads new messages once the key reaches them', async () => {
    e.rex = await openUser('rex', VAULT);
    await e.rex.waitForSelector('#presence li[data-user="pia"] code.fp:not(.none)', { timeout: 30000 });
    // What was said before rex came was never wrapped for him.
    await waitFor(async () => {
      const l = await sealedView(e.rex);
      return l.length === 2 && l.every((m) => m.locked && /Cannot decrypt/.test(m.text));
    }, 30000, 'the older messages marked undecryptable for rex');
    // pia, first by name among those present, hands him a fresh key at once.
    await sendText(e.quin, 'Welcome rex, the new code is 9902');
    await waitText(e.rex, 'Welcome rex, the new code is 9902', 30000);
    await sendText(e.rex, 'Thanks, rex here');
    await waitText(e.pia, 'Thanks, rex here', 30000);
    await waitText(e.quin, 'Thanks, rex here', 30000);
    assert.equal((await sealedView(e.rex)).filter((m) => /7431/.test(m.text)).length, 0);
  }, SLOW_TEST_MS);

  await test('e2e: after a member leaves the key rotates, and the leaver cannot read what follows (screenshot)', async () => {
    const before = (await sealedView(e.quin)).find((m) => m.text === 'Thanks, rex here').keyId;
    await e.rex.click('#leave');
    await e.pia.waitForSelector('#presence li[data-user="rex"]', { state: 'detached', timeout: 10000 });
    await e.quin.waitForSelector('#presence li[data-user="rex"]', { state: 'detached', timeout: 10000 });
    const after = 'Rex is gone: the code is now 3310';
    await sendText(e.quin, after);
    await waitText(e.pia, after, 30000);
    const sent = (await sealedView(e.pia)).find((m) => m.text === after);
    assert.ok(sent.keyId && sent.keyId !== before, 'a new key after the leave');
    // The server never got a wrap of that key for rex.
    const rexKeys = await roomKeyIds(e.pia, port, 'rex', VAULT);
    assert.ok(rexKeys.includes(before), 'rex did get the key of his time');
    assert.ok(!rexKeys.includes(sent.keyId), 'rex got no wrap of the key made after he left');
    // Back in the room, rex holds the message but cannot open it.
    await joinRoom(e.rex, VAULT);
    const locked = await waitFor(async () => {
      const l = await sealedView(e.rex);
      const m = l.find((x) => x.seq === sent.seq);
      return m && m.locked && /Cannot decrypt/.test(m.text) ? m : null;
    }, 30000, 'the message after the rotation marked undecryptable for rex');
    assert.equal(locked.keyId, sent.keyId);
    assert.equal(await e.rex.evaluate((t) => document.body.textContent.includes(t), '3310'), false);
    // What comes after his return is his to read again.
    await sendText(e.pia, 'Welcome back, rex');
    await waitText(e.rex, 'Welcome back, rex', 30000);
    if (E2E_SHOT) {
      fs.mkdirSync(path.dirname(E2E_SHOT), { recursive: true });
      await e.rex.screenshot({ path: E2E_SHOT });
      assert.ok(fs.statSync(E2E_SHOT).size > 10000);
    }
    for (const page of [e.pia, e.quin, e.rex]) await page.context().close();
  }, SLOW_TEST_MS);
}

// ------------------------------------------------ calls (protocol 1.1)
async function calls(test, base, pageErrors) {
  const k = {};
  // Chromium's fake camera and microphone, granted without asking.
  k.browser = await withTimeout(chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync',
      '--use-fake-device-for-media-stream', '--use-fake-ui-for-media-stream'],
  }), 30000, 'chromium (fake media) to start');
  async function open(user, room) {
    const context = await k.browser.newContext({ viewport: { width: 1280, height: 800 }, deviceScaleFactor: 1 });
    const page = await context.newPage();
    page.on('pageerror', (err) => pageErrors.push(user + ': ' + err.message));
    page.on('console', (m) => { if (m.type() === 'error') pageErrors.push(user + ' console: ' + m.text()); });
    await page.goto(base + '/?user=' + user + '&room=' + room, { timeout: 10000 });
    await online(page);
    return page;
  }
  const state = (page) => page.$eval('#call', (c) => (c.hidden ? 'hidden' : c.dataset.state));
  const waitState = (page, s, ms) => page.waitForSelector('#call[data-state="' + s + '"]:not([hidden])', { timeout: ms || 15000 });
  const status = (page) => page.$eval('#call-status', (s) => s.textContent);
  const DM = 'dm:cara:dylan';

  try {
    await test('calls: every device of the callee rings, one answers, video flows both ways, hang-up ends both', async () => {
      k.cara = await open('cara', DM);
      k.dylan = await open('dylan', DM);
      k.dylan2 = await open('dylan', DM);      // dylan's second device
      await sendText(k.cara, 'Got a minute? Calling you on video');
      await waitText(k.dylan, 'Got a minute? Calling you on video');
      await sendText(k.dylan, 'Sure, go ahead');
      await waitText(k.cara, 'Sure, go ahead');
      await k.cara.waitForSelector('#call-video:not([hidden]):not([disabled])', { timeout: 10000 });
      await k.cara.click('#call-video');
      await waitState(k.cara, 'calling');
      await waitState(k.dylan, 'ringing');
      await waitState(k.dylan2, 'ringing');
      assert.match(await status(k.dylan), /calling you \(video\)/);
      await k.dylan.click('#call-accept');
      // The other device stops ringing once one answered.
      await waitState(k.dylan2, 'ended');
      assert.equal(await status(k.dylan2), 'answered on another device');
      for (const page of [k.cara, k.dylan]) await waitState(page, 'connected', 30000);
      for (const page of [k.cara, k.dylan]) {
        await page.waitForFunction(() => Number(document.getElementById('call').dataset.framesDecoded || 0) > 0,
          null, { timeout: 20000 });
      }
      await k.cara.waitForFunction(() => /^00:0[1-9]/.test(document.getElementById('call-timer').textContent),
        null, { timeout: 10000 });
      // Mute and camera toggle the local tracks.
      await k.cara.click('#call-mute');
      assert.equal(await k.cara.$eval('#call-mute', (b) => b.getAttribute('aria-pressed')), 'true');
      await k.cara.click('#call-camera');
      assert.equal(await k.cara.$eval('#call-camera', (b) => b.getAttribute('aria-pressed')), 'true');
      await k.cara.click('#call-camera');
      await k.cara.click('#call-mute');
      if (CALL_SHOT) {
        fs.mkdirSync(path.dirname(CALL_SHOT), { recursive: true });
        await k.cara.screenshot({ path: CALL_SHOT });
        assert.ok(fs.statSync(CALL_SHOT).size > 10000);
      }
      await k.cara.click('#call-hangup');
      for (const page of [k.cara, k.dylan]) await waitState(page, 'ended', 10000);
      assert.equal(await status(k.dylan), 'call ended');
      const t1 = await k.dylan.$eval('#call-timer', (t) => t.textContent);
      await sleep(1500);
      assert.equal(await k.dylan.$eval('#call-timer', (t) => t.textContent), t1, 'the timer stopped');
      assert.match(t1, /^00:\d\d$/);
    }, SLOW_TEST_MS);

    await test('calls: busy while in a call, a declined call, a cancelled one', async () => {
      for (const page of [k.cara, k.dylan]) {
        await page.waitForSelector('#call', { state: 'hidden', timeout: 15000 });
      }
      await k.cara.click('#call-audio');
      await waitState(k.dylan, 'ringing');
      await k.dylan.click('#call-accept');
      for (const page of [k.cara, k.dylan]) await waitState(page, 'connected', 30000);
      await waitState(k.dylan2, 'ended');
      // erin calls dylan, who is in a call: busy (dylan never opened their DM).
      k.erin = await open('erin', 'dm:dylan:erin');
      await k.erin.waitForSelector('#call-audio:not([hidden])', { timeout: 10000 });
      await k.erin.click('#call-audio');
      await waitState(k.erin, 'ended', 30000);
      assert.equal(await status(k.erin), 'dylan is busy');
      assert.equal(await state(k.dylan), 'connected', 'the call in progress goes on');
      assert.equal(await state(k.cara), 'connected');
      await k.dylan.click('#call-hangup');
      for (const page of [k.cara, k.dylan]) await waitState(page, 'ended', 10000);
      // Now dylan is free, and declines.
      for (const page of [k.erin, k.dylan, k.dylan2]) await page.waitForSelector('#call', { state: 'hidden', timeout: 15000 });
      await k.erin.click('#call-audio');
      await waitState(k.dylan, 'ringing');
      await waitState(k.dylan2, 'ringing');
      await k.dylan2.click('#call-reject');
      await waitState(k.erin, 'ended');
      assert.equal(await status(k.erin), 'dylan declined');
      await waitState(k.dylan, 'ended');
      assert.equal(await status(k.dylan), 'declined');
      // A caller who gives up stops every device ringing.
      for (const page of [k.erin, k.dylan, k.dylan2]) await page.waitForSelector('#call', { state: 'hidden', timeout: 15000 });
      await k.erin.click('#call-audio');
      for (const page of [k.dylan, k.dylan2]) await waitState(page, 'ringing');
      await k.erin.click('#call-hangup');
      for (const page of [k.dylan, k.dylan2]) {
        await waitState(page, 'ended');
        assert.equal(await status(page), 'missed call');
      }
      assert.equal(await status(k.erin), 'cancelled');
    }, SLOW_TEST_MS);
  } finally {
    await withTimeout(k.browser.close(), 10000, 'fake-media browser close').catch(() => {});
  }
}

// ------------------------------------------------------------ tests
const results = [];
const ctx = {};          // shared between tests, in order

async function test(name, fn, ms) {
  if (ONLY && !ONLY.test(name)) return;
  const t0 = Date.now();
  try {
    await withTimeout(fn(), ms || TEST_TIMEOUT_MS, name);
    results.push(true);
    console.log('ok   ' + name + ' (' + (Date.now() - t0) + ' ms)');
  } catch (e) {
    results.push(false);
    console.log('FAIL ' + name + ': ' + (e && e.stack ? e.stack : e));
  }
}

async function main() {
  for (const [what, p] of [['chatd', CHATD], ['redis-server', REDIS], ['chromium', CHROMIUM]]) {
    if (!fs.existsSync(p)) throw new Error(what + ' not found at ' + p);
  }
  const redis = await startRedis();
  const chatd = await startChatd(redis.port);
  const port = chatd.port;
  const base = 'http://127.0.0.1:' + port;
  console.log('# redis on ' + redis.port + ', chatd on ' + port + ', logs in ' + tmp);

  await test('GET / serves the client with its content type and a strict CSP', async () => {
    const r = await rawGet(port, '/');
    assert.equal(r.status, 200);
    assert.equal(r.headers['content-type'], 'text/html; charset=utf-8');
    const csp = r.headers['content-security-policy'] || '';
    assert.match(csp, /default-src 'self'/);
    assert.match(csp, /connect-src 'self' ws: wss:/);
    assert.doesNotMatch(csp, /unsafe-inline|unsafe-eval/);
    assert.equal(r.headers['x-content-type-options'], 'nosniff');
    assert.match(r.headers['cache-control'] || '', /no-cache/);
    assert.match(r.body, /<script type="module" src="\/main\.js\?v=[0-9a-f]+"><\/script>/);
    assert.doesNotMatch(r.body, /<script(?![^>]*\bsrc=)[^>]*>/, 'no inline script');
    const same = await rawGet(port, '/index.html');
    assert.equal(same.body, r.body);
    for (const [p, type] of [['/main.js', 'text/javascript; charset=utf-8'],
      ['/style.css', 'text/css; charset=utf-8'], ['/favicon.svg', 'image/svg+xml']]) {
      const a = await rawGet(port, p + '?v=whatever');
      assert.equal(a.status, 200, p);
      assert.equal(a.headers['content-type'], type, p);
      assert.equal(a.headers['x-content-type-options'], 'nosniff', p);
      assert.ok(a.headers['content-security-policy'], p);
      assert.equal(Number(a.headers['content-length']), Buffer.byteLength(a.body, 'latin1'), p);
    }
    const head = await rawGet(port, '/main.js', 'HEAD');
    assert.equal(head.status, 200);
    assert.ok(Number(head.headers['content-length']) > 1000);
    assert.equal(head.body, '', 'HEAD has no body');
  });

  await test('ES modules: every import names its module with a version stamp, one URL per module', async () => {
    // Served immutable, a module must change URL whenever it or anything it
    // imports changes: chatd stamps each import specifier (worker/net/web.c).
    const index = await rawGet(port, '/');
    const entry = /src="\/main\.js(\?v=[0-9a-f]{8})"/.exec(index.body);
    assert.ok(entry, 'main.js is stamped in index.html');
    const seen = new Map([['main.js', entry[1]]]);
    const queue = ['main.js'];
    while (queue.length) {
      const name = queue.shift();
      const r = await rawGet(port, '/' + name + seen.get(name));
      assert.equal(r.status, 200, name);
      assert.match(r.headers['cache-control'] || '', /immutable/, name);
      const specs = Array.from(r.body.matchAll(/\bfrom\s*['"]([^'"]+)['"]|\bimport\s*\(?\s*['"]([^'"]+)['"]/g),
        (m) => m[1] || m[2]);
      for (const spec of specs) {
        const m = /^\.\/([a-z0-9]+\.js)(\?v=[0-9a-f]{8})$/.exec(spec);
        assert.ok(m, name + ' imports ' + spec + ' without a version stamp');
        if (seen.has(m[1])) {
          assert.equal(seen.get(m[1]), m[2], 'two URLs for ' + m[1]);
        } else {
          seen.set(m[1], m[2]);
          queue.push(m[1]);
        }
      }
    }
    const files = fs.readdirSync(path.join(REPO, 'worker', 'web')).filter((f) => f.endsWith('.js'));
    assert.deepEqual(Array.from(seen.keys()).sort(), files.sort(), 'every module is reached from main.js');
  });

  await test('path traversal and unknown paths get 404', async () => {
    for (const p of ['/../Makefile', '/%2e%2e/Makefile', '/worker/web/../../Makefile',
      '/%2E%2E%2FMakefile', '/..%2fMakefile', '/web/main.js', '//etc/passwd', '/main.js/',
      '/./main.js', '/.gitignore', '/main.js%00', '/MAIN.JS', '/worker/web/main.js', '/nope.html']) {
      const r = await rawGet(port, p);
      assert.equal(r.status, 404, p + ' gave ' + r.status);
      assert.doesNotMatch(r.body, /CFLAGS|root:/, p);
    }
  });

  browser = await withTimeout(chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    // Playwright gives every launch a fresh temporary user-data-dir.
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  }), 30000, 'chromium to start');

  const dialogs = [];
  const pageErrors = [];
  async function openUser(user, room) {
    const context = await browser.newContext({ viewport: { width: 1280, height: 800 }, deviceScaleFactor: 1 });
    const page = await context.newPage();
    page.on('dialog', (d) => { dialogs.push(user + ': ' + d.message()); d.dismiss().catch(() => {}); });
    page.on('pageerror', (e) => pageErrors.push(user + ': ' + e.message));
    page.on('console', (m) => {
      if (m.type() === 'error') pageErrors.push(user + ' console: ' + m.text());
    });
    await page.goto(base + '/?user=' + user + '&room=' + room, { timeout: 10000 });
    await online(page);
    return page;
  }

  await test('two users on different workers join a room and see each other present', async () => {
    ctx.alice = await openUser('alice', 'general');
    // Alice's WebSocket is the only connection left once her page loaded.
    ctx.alicePort = await waitFor(() => {
      const m = connectionsByWorker(chatd.proc.pid, port);
      return m.size === 1 ? Array.from(m.keys())[0] : null;
    }, 15000, "alice's connection alone in /proc");
    ctx.bob = await openUser('bob', 'general');
    // The later kill -9 must hit alice's worker only: reload bob's page
    // until the kernel puts him on the other worker.
    for (let i = 0; ; i++) {
      const m = await waitFor(() => {
        const c = connectionsByWorker(chatd.proc.pid, port);
        return c.size === 2 && c.has(ctx.alicePort) ? c : null;
      }, 15000, 'two connections in /proc');
      const aliceWorker = m.get(ctx.alicePort);
      const bobWorker = Array.from(m.entries()).find(([p]) => p !== ctx.alicePort)[1];
      if (aliceWorker !== bobWorker) {
        ctx.aliceWorker = aliceWorker;
        break;
      }
      assert.ok(i < 12, 'bob kept landing on alice\'s worker');
      await ctx.bob.reload({ timeout: 10000 });
      await online(ctx.bob);
    }
    for (const [page, other] of [[ctx.alice, 'bob'], [ctx.bob, 'alice']]) {
      await page.waitForSelector('#presence li[data-user="' + other + '"]', { timeout: 10000 });
    }
    const names = await ctx.alice.$$eval('#presence li', (lis) => lis.map((l) => l.dataset.user));
    assert.deepEqual(names.sort(), ['alice', 'bob']);
  });

  await test('messages are exchanged, each side sees the other, own messages get acked', async () => {
    const { alice, bob } = ctx;
    const convo = [
      [alice, 'Morning Bob! Did the 2.3 release notes go out?'],
      [bob, 'Morning! Drafted them last night — waiting on the changelog for the WebSocket fixes.'],
      [alice, 'Merged those an hour ago. Reconnects now resume with `since`, so nobody misses a message.'],
      [bob, 'Great, I\'ll add that and publish before standup.'],
    ];
    for (const [page, text] of convo) {
      await sendText(page, text);
      await waitText(alice, text);
      await waitText(bob, text);
    }
    for (const [page, me] of [[alice, 'alice'], [bob, 'bob']]) {
      const ms = await waitFor(async () => {
        const l = await messages(page);
        return l.filter((m) => m.own).every((m) => m.status === 'acked') && l.length === convo.length ? l : null;
      }, 10000, me + "'s own messages acked");
      assert.deepEqual(ms.map((m) => m.text), convo.map((c) => c[1]));
      assert.deepEqual(ms.map((m) => m.seq), [1, 2, 3, 4]);
      for (const m of ms) assert.equal(m.own, m.sender === me);
      assert.equal(await pendingCount(page), 0);
    }
  });

  await test('typing indicator shows and clears', async () => {
    const { alice, bob } = ctx;
    await bob.click('#input');
    await bob.keyboard.type('Publishing n', { delay: 40 });
    await alice.waitForFunction(() => document.getElementById('typing').textContent === 'bob is typing…',
      null, { timeout: 8000 });
    await bob.fill('#input', '');
    await bob.dispatchEvent('#input', 'input');
    await alice.waitForFunction(() => document.getElementById('typing').textContent === '', null, { timeout: 8000 });
  });

  await test('attachments render as safe http(s) links; unread counts in the sidebar', async () => {
    const { alice, bob } = ctx;
    await bob.click('#attach');
    await bob.fill('#attach-url', 'https://example.com/releases/2.3-notes.pdf');
    await sendText(bob, 'Release notes draft attached');
    await waitText(alice, 'Release notes draft attached');
    const link = await alice.$eval('.room-view:not([hidden]) a.att', (a) => ({
      href: a.getAttribute('href'), rel: a.rel, target: a.target, text: a.textContent,
    }));
    assert.equal(link.href, 'https://example.com/releases/2.3-notes.pdf');
    assert.match(link.rel, /noopener/);
    assert.equal(link.target, '_blank');
    assert.match(link.text, /document/);

    await joinRoom(alice, 'random');
    await joinRoom(bob, 'random');
    await selectRoom(alice, 'general');
    await sendText(bob, 'Anyone up for lunch at 12:30?');
    await alice.waitForSelector('#rooms li.unread button[data-room="random"] .badge', { timeout: 8000 });
    assert.equal(await alice.$eval('#rooms button[data-room="random"] .badge', (b) => b.textContent), '1');
    await selectRoom(bob, 'general');
  });

  await test('screenshot of the two-user conversation', async () => {
    const { alice, bob } = ctx;
    await sendText(alice, 'Looks good. Ship it!');
    await waitText(bob, 'Looks good. Ship it!');
    await bob.click('#input');
    await bob.keyboard.type('On it', { delay: 30 });
    await alice.waitForFunction(() => document.getElementById('typing').textContent === 'bob is typing…',
      null, { timeout: 8000 });
    await waitFor(async () => (await messages(alice)).every((m) => !m.own || m.status === 'acked'), 5000, 'acks');
    if (SHOT) {
      fs.mkdirSync(path.dirname(SHOT), { recursive: true });
      await alice.screenshot({ path: SHOT });
      assert.ok(fs.statSync(SHOT).size > 10000);
    }
    await bob.fill('#input', '');
    await bob.dispatchEvent('#input', 'input');
  });

  await test('XSS payloads are shown as text and run nothing', async () => {
    const { alice, bob } = ctx;
    await joinRoom(alice, 'engineering');
    await joinRoom(bob, 'engineering');
    const payloads = ['<img src=x onerror=alert(1)>', '<script>alert(2)</script>',
      '"><svg onload=alert(3)>', 'javascript:alert(4)'];
    for (const p of payloads) await sendText(alice, p);
    for (const p of payloads) await waitText(bob, p);
    await sleep(300);
    assert.deepEqual(dialogs, []);
    const injected = await bob.evaluate(() => document.querySelectorAll('.msgs img, .msgs script, .msgs svg, .msgs a:not(.att)').length);
    assert.equal(injected, 0);
    const texts = (await messages(bob)).map((m) => m.text);
    assert.deepEqual(texts, payloads);
  });

  await test('kill -9 of alice\'s worker: she reconnects and shows every message once, in order', async () => {
    const { alice, bob } = ctx;
    const before = await connectsOf(alice);
    const bobBefore = await connectsOf(bob);
    const sent = [];
    // Offline emulation keeps alice's reconnects failing until we say so,
    // so bob's next messages are certainly missed live and must come back
    // through the rejoin with `since`.
    await alice.context().setOffline(true);
    process.kill(ctx.aliceWorker, 'SIGKILL');
    await alice.waitForSelector('#conn[data-state="reconnecting"]', { timeout: 5000 });
    // Alice writes while offline: pending now, sent (once) after reconnect.
    await sendText(alice, 'written while offline');
    for (let i = 1; i <= 6; i++) {
      const t = 'bob during the outage #' + i;
      sent.push(t);
      await sendText(bob, t);
    }
    await waitFor(async () => (await messages(bob)).filter((m) => /outage/.test(m.text) && m.status === 'acked').length === 6,
      10000, "bob's outage messages acked");
    await sleep(700);   // at least one failed reconnect attempt
    assert.equal(await connectsOf(alice), before, 'alice still offline while bob sent');
    assert.equal(await alice.$eval('#conn', (c) => c.dataset.state), 'reconnecting');
    assert.equal(await pendingCount(alice), 1, 'her message waits, pending');
    assert.equal(await alice.$eval('.room-view:not([hidden]) .pending-list li.msg', (li) => li.dataset.status), 'pending');
    await alice.context().setOffline(false);
    await online(alice, 20000);
    assert.equal(await connectsOf(alice), before + 1, 'alice reconnected once');
    for (let i = 7; i <= 12; i++) {
      const t = 'bob after the reconnect #' + i;
      sent.push(t);
      await sendText(bob, t);
    }
    assert.equal(await connectsOf(bob), bobBefore, 'bob stayed connected');
    for (const t of sent) await waitText(alice, t, 15000);
    await waitText(alice, 'written while offline', 15000);
    const want = await waitFor(async () => {
      const b = await messages(bob);
      return b.length === 4 + 12 + 1 && b.every((m) => !m.own || m.status === 'acked') ? b : null;
    }, 15000, "bob's view complete and acked");
    const got = await waitFor(async () => {
      const a = await messages(alice);
      return a.length >= want.length && a.every((m) => !m.own || m.status === 'acked') ? a : null;
    }, 15000, "alice's view acked");
    const seqs = got.map((m) => m.seq);
    assert.deepEqual(seqs, Array.from({ length: seqs.length }, (_, i) => i + 1), 'seqs 1..n, no gap, no repeat');
    assert.deepEqual(got.map((m) => [m.seq, m.sender, m.text]), want.map((m) => [m.seq, m.sender, m.text]));
    for (const t of sent.concat(['written while offline'])) {
      assert.equal(got.filter((m) => m.text === t).length, 1, 'exactly once: ' + t);
    }
    assert.equal(await pendingCount(alice), 0);
  });

  await test('older history loads on scroll-up', async () => {
    const { alice, bob } = ctx;
    await joinRoom(bob, 'archive');
    // Seed 80 messages through a raw socket of bob's browser, paced under
    // the rate limit (burst 40, then 20/s).
    await bob.evaluate((url) => new Promise((resolve, reject) => {
      const ws = new WebSocket(url);
      let acked = 0;
      ws.onerror = () => reject(new Error('seed socket failed'));
      ws.onmessage = (ev) => {
        const m = JSON.parse(ev.data);
        if (m.type === 'welcome') ws.send(JSON.stringify({ type: 'join', id: 'j', payload: { room: 'archive' } }));
        if (m.type === 'joined') {
          let i = 0;
          const next = () => {
            for (let k = 0; k < (i === 0 ? 30 : 1) && i < 80; k++) {
              i += 1;
              ws.send(JSON.stringify({ type: 'chat', id: 'seed-' + i, payload: { room: 'archive', content: 'archived message ' + i } }));
            }
            if (i < 80) setTimeout(next, 70);
          };
          next();
        }
        if (m.type === 'ack' && ++acked === 80) { ws.close(); resolve(); }
        if (m.type === 'error') reject(new Error('seed: ' + ev.data));
      };
      setTimeout(() => reject(new Error('seed timeout')), 20000);
    }), 'ws://127.0.0.1:' + port + '/ws?user=carol');
    await joinRoom(alice, 'archive');
    await waitText(alice, 'archived message 80');
    const first = await messages(alice);
    assert.ok(first.length >= 50 && first.length < 80, 'one page first, got ' + first.length);
    await waitFor(async () => {
      await alice.evaluate(() => { const l = document.getElementById('log'); l.scrollTop = 0; l.dispatchEvent(new Event('scroll')); });
      return (await messages(alice)).length === 80;
    }, 10000, 'all 80 after scrolling up');
    const all = await messages(alice);
    assert.deepEqual(all.map((m) => m.seq), Array.from({ length: 80 }, (_, i) => i + 1));
    assert.deepEqual(all.map((m) => m.text), Array.from({ length: 80 }, (_, i) => 'archived message ' + (i + 1)));
    await alice.waitForFunction(() => /beginning of #archive/.test(document.getElementById('older').textContent),
      null, { timeout: 5000 });
  });

  await test('a reload keeps every room and rejoins them', async () => {
    const { alice } = ctx;
    await alice.reload({ timeout: 10000 });
    await online(alice);
    const names = await alice.$$eval('#rooms button[data-room]', (bs) => bs.map((b) => b.dataset.room));
    assert.deepEqual(names.sort(), ['archive', 'engineering', 'general', 'random']);
    await waitText(alice, 'archived message 80');
  });

  await test('an error frame is shown (forbidden: over --max-rooms)', async () => {
    const { alice } = ctx;
    // alice holds general, random, engineering, archive: the limit is 4.
    await joinRoom(alice, 'overflow');
    await alice.waitForSelector('#banner:not([hidden])', { timeout: 8000 });
    const text = await alice.$eval('#banner-text', (b) => b.textContent);
    assert.match(text, /Cannot join #overflow/);
    assert.match(text, /forbidden/);
    await alice.waitForSelector('#rooms li.error button[data-room="overflow"]', { timeout: 5000 });
  });

  // Protocol 1.1: edits, deletes, reactions, unread and receipts, DMs.
  await conversations(test, openUser, base, pageErrors);

  // Protocol 1.1: files and search.
  await filesAndSearch(test, openUser, port, pageErrors);

  // Protocol 1.1: end-to-end encrypted rooms, and calls.
  await encryptedRooms(test, openUser, redis.port, port);
  await calls(test, base, pageErrors);

  await test('no script errors or dialogs in either page', async () => {
    assert.deepEqual(dialogs, []);
    // A killed connection is logged by Chromium as a console error; that
    // one is expected.
    const real = pageErrors.filter((e) => !/WebSocket connection to .* failed/.test(e));
    assert.deepEqual(real, []);
  });
}

async function run() {
  let crashed = null;
  try {
    await main();
  } catch (e) {
    crashed = e;
  }
  if (browser) await withTimeout(browser.close(), 10000, 'browser close').catch(() => {});
  for (const e of procs.slice().reverse()) await stopServer(e);
  if (crashed) {
    console.log('e2e: setup failed: ' + (crashed.stack || crashed));
    results.push(false);
  }
  const failed = results.filter((r) => !r).length;
  if (failed) {
    for (const e of procs) {
      console.log('--- tail of ' + e.name + ' log (' + e.logPath + ')');
      console.log(e.out.split('\n').slice(-25).join('\n'));
    }
  }
  if (!failed && !process.env.E2E_KEEP) fs.rmSync(tmp, { recursive: true, force: true });
  console.log(results.length - failed + ' passed, ' + failed + ' failed');
  process.exitCode = failed ? 1 : 0;
}

run();
