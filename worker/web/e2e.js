/*
 * End-to-end encrypted rooms (protocol 1.1, rooms named `e2e:<name>`):
 * publishing this device's identity key, the life of each room's keys,
 * sealing what we send and opening what we receive, and what the page
 * shows of it (the lock, the undecryptable marker, fingerprints).
 * The cryptography itself is crypto.js; the server only relays and keeps
 * public keys, wrapped room keys and ciphertext.
 *
 * Who can read a room is who is in it: the members present (presence and
 * member events). A member who goes away, by leaving or by losing every
 * connection, is gone as far as the keys go:
 *  - any member event (someone joined, someone left) marks the room's key
 *    stale, and the next message we send first makes a new room key and
 *    wraps it for every member present (us included: our other devices and
 *    our next page load read it back with `getroomkeys`);
 *  - when someone joins, the member present who sorts first by name does
 *    that at once, so the newcomer can read what comes next without
 *    waiting for someone to speak;
 *  - a new key that reaches us live (a `roomkey` frame) is the one to use;
 *    it clears the stale mark when it was made for exactly the members we
 *    see (each wrap carries a digest of them, bound into the wrap).
 * So a member who left never gets a key made after they left, and a
 * newcomer never gets one made before they came: history from before is
 * shown as undecryptable to them. Concurrent rotations by two members make
 * two keys, each wrapped for everyone present: harmless.
 *
 * A wrapped key is trusted only when the public key it was made with is
 * the sender's key in the directory; fingerprints (people list) let two
 * people check the directory did not lie to them.
 */
import { el } from './util.js';
import { S } from './state.js';
import { ask } from './conn.js';
import * as C from './crypto.js';
import { ui, renderPresence, showBanner } from './views.js';
import { updateMessage } from './msgview.js';
import { sendJoin } from './rooms.js';

const WAITING = '🔒 Decrypting…';
const NO_KEY = '🔒 Cannot decrypt this message: no key for it reached this device';
const BAD = '🔒 Cannot decrypt this message: it was altered, or the key is wrong';
const PLAIN = '⚠ This message came without encryption and is not shown';
const KEY_GRACE_MS = 4000;        // a key may trail its first message by this much
const LEADER_DELAY_MS = 300;
const PUBLISH_RETRY_MS = 3000;

let me = null;                    // this device's identity (crypto.js), with .user
let ready = false;                // our public key is in the directory (this connection)
let publishing = null;            // the publishing under way, if any
const dir = new Map();            // user -> public key (base64) as the directory last said
const rooms = new Map();          // room name -> key state

export const isE2E = (name) => typeof name === 'string' && name.startsWith('e2e:');

function state(name) {
  let s = rooms.get(name);
  if (!s) {
    s = { keys: new Map(), current: null, stale: true, loaded: false, rotating: null, waiting: new Map(),
      leaderTimer: null };
    rooms.set(name, s);
  }
  return s;
}

function report(what, e) {
  showBanner(what + ': ' + (e && (e.code || e.message) || e), 'error', 8000);
}

// ------------------------------------------------------- identity
// After each welcome: a user with an encrypted room publishes the key.
export function connected() {
  ready = false;
  publishing = null;
  if (Array.from(S.rooms.values()).some((r) => r.e2e)) publish();
}

// Our identity key in the directory (ours replaces whatever key another
// device put there), then the e2e rooms are joined.
function publish() {
  if (!publishing) publishing = publishNow();
  return publishing;
}

async function publishNow() {
  const gen = S.gen;
  if (!C.available()) return;
  try {
    if (!me || me.user !== S.me) me = Object.assign(await C.identity(S.me), { user: S.me });
    const ans = await ask('getkeys', { users: [S.me] });
    const theirs = ans.payload && ans.payload.keys ? ans.payload.keys[S.me] : null;
    if (theirs !== me.pub) await ask('setkey', { key: me.pub });
    dir.set(S.me, me.pub);
    if (!S.fingerprints.has(me.pub)) S.fingerprints.set(me.pub, await C.fingerprint(me.pub));
    if (gen !== S.gen) return;
    ready = true;
    for (const room of S.rooms.values()) if (room.e2e) sendJoin(room);
  } catch (e) {
    if (gen !== S.gen) return;
    if (e.code === 'bad_request') {
      // A server of protocol 1.0: no keys, so no encrypted rooms.
      showBanner('This server does not support encrypted rooms.', 'error', 10000);
      return;
    }
    publishing = null;
    if (e.code !== 'gone') report('Cannot publish this device\'s encryption key (retrying)', e);
    setTimeout(() => { if (gen === S.gen && !ready) publish(); }, PUBLISH_RETRY_MS);
  }
}

// Whether room may be joined now: an e2e room waits for our key to be
// published, or the first member to welcome us would wrap for an old one.
export function canJoin(room) {
  if (!room.e2e || ready) return true;
  if (S.conn === 'online') publish();
  return false;
}

// The directory's keys of users (refreshed), and their fingerprints.
async function lookup(users) {
  const want = Array.from(new Set(users)).filter((u) => typeof u === 'string').slice(0, 100);
  if (!want.length) return;
  const ans = await ask('getkeys', { users: want });
  const keys = (ans.payload && ans.payload.keys) || {};
  let changed = false;
  for (const u of want) {
    const k = typeof keys[u] === 'string' ? keys[u] : null;
    if (dir.get(u) !== k) changed = true;
    dir.set(u, k);
    if (k && !S.fingerprints.has(k)) {
      S.fingerprints.set(k, await C.fingerprint(k));
      changed = true;
    }
  }
  if (changed) renderPresence();
}

// The fingerprint of user's directory key, if known (views.js).
export function fingerprintOf(user) {
  const k = dir.get(user);
  return k ? S.fingerprints.get(k) || null : null;
}

// ------------------------------------------------------- room keys
// A wrapped key sent to us: kept when it opens and was made with the
// sender's directory key. Returns whether it is new.
async function take(roomName, e, live) {
  const s = state(roomName);
  if (!e || typeof e.keyId !== 'string' || typeof e.from !== 'string' || typeof e.wrapped !== 'string') return false;
  if (s.keys.has(e.keyId)) return false;
  const claimed = C.wrapSender(e.wrapped);
  if (!claimed) return false;
  if (dir.get(e.from) !== claimed) await lookup([e.from]);
  if (dir.get(e.from) !== claimed) {
    console.warn('chatd e2e: ignored a key for ' + roomName + ' sent by ' + e.from + ': not made with their published key');
    return false;
  }
  let got;
  try {
    got = await C.unwrap(me, e.wrapped, roomName, e.keyId, e.from, S.me);
  } catch (err) {
    return false;         // made for another of our identities, or altered
  }
  if (s.keys.has(e.keyId)) return false;
  s.keys.set(e.keyId, got.key);
  C.keepRoomKey(S.me, roomName, e.keyId, got.key);
  const room = S.rooms.get(roomName);
  if (live && room) {
    // The newest key is the one to use; it settles a stale mark only when
    // it was made for exactly the members we see (else the sender had not
    // seen someone come or go yet, and our next message makes another).
    s.current = e.keyId;
    s.stale = got.members !== await C.membersDigest(Array.from(room.members).concat([S.me]));
  }
  const waiting = s.waiting.get(e.keyId);
  if (waiting) {
    s.waiting.delete(e.keyId);
    for (const entry of waiting) if (room) reveal(room, entry);
  }
  return true;
}

// A `roomkey` frame: a member made or passed on a key for us.
export function onRoomKey(p) {
  if (!isE2E(p.room) || !me) return;
  take(p.room, p, true).catch((e) => report('A room key could not be read', e));
}

// Our join of an e2e room was answered: the keys this device kept, the
// keys sent to us (also while we were away), and the members' keys.
export async function joined(room) {
  const s = state(room.name);
  s.stale = true;         // we may have missed who came and went
  s.loaded = false;
  try {
    for (const [keyId, key] of await C.keptRoomKeys(S.me, room.name)) if (!s.keys.has(keyId)) s.keys.set(keyId, key);
    const ans = await ask('getroomkeys', { room: room.name });
    const list = ans.payload && Array.isArray(ans.payload.keys) ? ans.payload.keys : [];
    await lookup(list.map((e) => e && e.from).concat(Array.from(room.members)));
    for (const e of list) await take(room.name, e, false);
  } catch (e) {
    if (e.code !== 'gone') report('Cannot read the keys of ' + room.name, e);
  }
  s.loaded = true;
  for (const [, entries] of s.waiting) for (const entry of entries) reveal(room, entry);
}

// The people of room changed (presence.js): fetch new members' keys, and
// on a member event mark the key stale; the first member present by name
// welcomes a newcomer with a fresh key at once.
export function membersChanged(room, user, event) {
  if (!room.e2e || !ready) return;
  lookup(Array.from(room.members).filter((u) => !dir.get(u)).concat(user && event === 'join' ? [user] : []))
    .catch(() => {});
  if (!user || user === S.me) return;
  const s = state(room.name);
  s.stale = true;
  if (event !== 'join') return;
  const first = Array.from(room.members).filter((u) => u !== user).sort()[0];
  if (first !== S.me) return;
  clearTimeout(s.leaderTimer);
  s.leaderTimer = setTimeout(() => {
    if (s.stale && room.joined) rotate(room).catch((e) => report('Cannot hand ' + user + ' the room key', e));
  }, LEADER_DELAY_MS);
}

// A new room key, wrapped for every member present and for us.
function rotate(room) {
  const s = state(room.name);
  if (s.rotating) return s.rotating;
  s.rotating = (async () => {
    const pres = await ask('presence', { room: room.name });
    // Whatever happens to the members from here on asks for another key.
    s.stale = false;
    const users = new Set(pres.payload && Array.isArray(pres.payload.users) ? pres.payload.users : []);
    users.add(S.me);
    const ans = await ask('getkeys', { users: Array.from(users).slice(0, 100) });
    const keys = (ans.payload && ans.payload.keys) || {};
    const key = await C.newRoomKey();
    const keyId = C.newKeyId();
    const members = await C.membersDigest(Array.from(users));
    const sends = [];
    for (const u of users) {
      const pub = u === S.me ? me.pub : keys[u];
      if (typeof pub !== 'string') continue;     // no key published: cannot read this room
      dir.set(u, pub);
      sends.push(C.wrapFor(me, key, pub, room.name, keyId, S.me, u, members)
        .then((wrapped) => ask('roomkey', { room: room.name, to: u, keyId, wrapped })));
    }
    await Promise.all(sends);
    s.keys.set(keyId, key);
    C.keepRoomKey(S.me, room.name, keyId, key);
    s.current = keyId;
    return { key, keyId };
  })();
  return s.rotating.catch((e) => {
    s.stale = true;
    throw e;
  }).finally(() => { s.rotating = null; });
}

// ------------------------------------------------------- messages
// An outbox item (chat or edit) of an e2e room gets its wire payload:
// the text sealed under the room's current key, a fresh one when stale.
export function sealOut(m, room) {
  if (m.sealing) return m.sealing;
  m.sealing = (async () => {
    if (!ready || !me) throw Object.assign(new Error('keys not ready'), { code: 'not_ready' });
    const s = state(room.name);
    const k = s.current && !s.stale ? { key: s.keys.get(s.current), keyId: s.current } : await rotate(room);
    const base = m.type === 'chat' ? { room: room.name, content: m.content } : m.payload;
    const sealed = await C.seal(k.key, base.content, room.name, S.me);
    const wire = Object.assign({}, base, { content: sealed.content, e2e: { keyId: k.keyId, iv: sealed.iv } });
    if (m.type === 'chat' && m.attachments.length) wire.attachments = m.attachments;
    m.wire = wire;
  })().finally(() => { m.sealing = null; });
  return m.sealing;
}

// A message (or the edit src of it) as it came from the server: its text
// is ciphertext until reveal() opens it. A payload of ours that never left
// the page (local) is plain text already.
export function sealIn(m, src) {
  src = src || m;
  if (src.e2e && typeof src.e2e.keyId === 'string') m.keyId = src.e2e.keyId;
  if (m.deleted) {
    m.sealed = null;
    m.lock = null;
    return;
  }
  if (src.local) {
    m.content = src.content;
    m.sealed = null;
    m.lock = null;
    return;
  }
  const e = src.e2e;
  const content = src.content;
  m.content = '';
  if (e && typeof e === 'object' && typeof e.keyId === 'string' && typeof e.iv === 'string' && typeof content === 'string') {
    m.sealed = { content, keyId: e.keyId, iv: e.iv, since: Date.now() };
    m.lock = WAITING;
  } else {
    m.sealed = null;
    m.lock = PLAIN;
  }
}

// Opens a held message when its key is here; otherwise marks it and waits
// for the key (a later one fixes it whenever it comes).
export function reveal(room, entry) {
  const p = entry.p;
  const v = p.sealed;
  if (p.keyId) entry.node.dataset.keyId = p.keyId;
  if (!v) return;
  const s = state(room.name);
  const key = s.keys.get(v.keyId);
  if (!key) {
    if (!s.waiting.has(v.keyId)) s.waiting.set(v.keyId, new Set());
    s.waiting.get(v.keyId).add(entry);
    const wait = v.since + KEY_GRACE_MS - Date.now();
    const lock = s.loaded && wait <= 0 ? NO_KEY : WAITING;
    if (p.lock !== lock) {
      p.lock = lock;
      updateMessage(entry.node, entry);
    }
    if (lock === WAITING) setTimeout(() => { if (p.sealed === v) reveal(room, entry); }, Math.max(wait, 500));
    return;
  }
  C.open(key, v.content, v.iv, room.name, p.sender).then((text) => {
    if (p.sealed !== v) return;
    p.sealed = null;
    p.lock = null;
    p.content = text;
    updateMessage(entry.node, entry);
  }, () => {
    if (p.sealed !== v) return;
    p.lock = BAD;
    updateMessage(entry.node, entry);
  });
}

// ------------------------------------------------------- the page
// The open room changed: encrypted rooms show their lock and note, and
// hide what cannot work there (search, attachments).
export function roomShown(room) {
  const on = !!(room && room.e2e);
  ui.app.classList.toggle('e2e-room', on);
  ui.e2eNote.hidden = !on;
  if (on && !C.available()) {
    ui.e2eNote.textContent = 'This page cannot encrypt: open it over https (or on localhost).';
  } else if (on) {
    ui.e2eNote.textContent = 'End-to-end encrypted: the server stores only ciphertext, so search and attachments are off here. ' +
      'Compare the fingerprints under People with the others, out of band.';
  }
}

// The fingerprint line of a member in the people list.
export function fingerprintNode(user) {
  const fp = fingerprintOf(user);
  const node = el('code', 'fp', fp ? fp.split(' ').slice(0, 8).join(' ') + '\n' + fp.split(' ').slice(8).join(' ')
    : 'no key published');
  node.title = fp ? 'Key fingerprint of ' + user + ' (SHA-256 of the public key): ' + fp : user + ' has no key: cannot read this room';
  if (!fp) node.classList.add('none');
  return node;
}
