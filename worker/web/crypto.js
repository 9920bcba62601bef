/*
 * The cryptography of end-to-end encrypted rooms, on WebCrypto only: this
 * device's identity key pair, room keys, wrapping a room key for one
 * member, encrypting and decrypting a message, and key fingerprints. It
 * holds no state but what it keeps in IndexedDB (the identity, and the
 * room keys this device opened); e2e.js decides who gets which key when.
 *
 *  - Identity: an ECDH P-256 pair per user name on this device. The
 *    private key is made non-extractable and lives in IndexedDB (stored
 *    as a CryptoKey, never as bytes); the public key travels as base64 of
 *    its raw (uncompressed point) form.
 *  - A room key is AES-256-GCM. Wrapping it for a member: ECDH between
 *    the sender's private key and the member's public key, HKDF-SHA-256
 *    over the shared secret with an info string naming the room, the key
 *    id, the sender, the receiver and a digest of the members the key is
 *    for, and the room key encrypted with AES-GCM under the result. The wrap is static-static, so a receiver
 *    knows it came from the holder of the sender's published key.
 *  - A message is AES-GCM under the room key with a fresh 96-bit IV; the
 *    additional data names the room and the sender, so a ciphertext cannot
 *    be replayed into another room or under another name.
 */

const DB_NAME = 'chatd-e2e';
const DB_STORE = 'identity';
const DB_KEYS = 'roomkeys';       // room keys this device opened, by user, room, key id
const ECDH = { name: 'ECDH', namedCurve: 'P-256' };
const enc = new TextEncoder();
const dec = new TextDecoder();

// ------------------------------------------------------- encoding
export function b64(buf) {
  const bytes = new Uint8Array(buf);
  let s = '';
  for (let i = 0; i < bytes.length; i += 0x8000) s += String.fromCharCode.apply(null, bytes.subarray(i, i + 0x8000));
  return btoa(s);
}

export function unb64(text) {
  const s = atob(text);
  const out = new Uint8Array(s.length);
  for (let i = 0; i < s.length; i++) out[i] = s.charCodeAt(i);
  return out;
}

// Whether this page can do any of it: WebCrypto exists only in a secure
// context (https, or http on localhost).
export function available() {
  return !!(window.crypto && crypto.subtle && window.indexedDB);
}

// ------------------------------------------------------- identity
function openDb() {
  return new Promise((resolve, reject) => {
    const rq = indexedDB.open(DB_NAME, 2);
    rq.onupgradeneeded = (ev) => {
      if (ev.oldVersion < 1) rq.result.createObjectStore(DB_STORE);
      if (ev.oldVersion < 2) rq.result.createObjectStore(DB_KEYS);
    };
    rq.onsuccess = () => resolve(rq.result);
    rq.onerror = () => reject(rq.error);
  });
}

async function dbDo(mode, fn, store) {
  const db = await openDb();
  try {
    return await new Promise((resolve, reject) => {
      const tx = db.transaction(store || DB_STORE, mode);
      const rq = fn(tx.objectStore(store || DB_STORE));
      tx.oncomplete = () => resolve(rq.result);
      tx.onerror = () => reject(tx.error);
      tx.onabort = () => reject(tx.error);
    });
  } finally {
    db.close();
  }
}

// This device's identity for user: { privateKey, publicKey, pub } (pub:
// the public key as base64), made and stored on first use.
export async function identity(user) {
  const kept = await dbDo('readonly', (st) => st.get(user)).catch(() => undefined);
  if (kept && kept.privateKey && typeof kept.pub === 'string') return kept;
  const pair = await crypto.subtle.generateKey(ECDH, false, ['deriveBits']);
  const pub = b64(await crypto.subtle.exportKey('raw', pair.publicKey));
  const id = { privateKey: pair.privateKey, publicKey: pair.publicKey, pub };
  await dbDo('readwrite', (st) => st.put(id, user));
  return id;
}

// The room keys kept on this device: each one opened is stored (as a
// CryptoKey) so that history stays readable when the server no longer
// keeps its wrap (it keeps the latest 100 per member and room).
function keyName(user, room, keyId) {
  return [user, room, keyId].join('\u0000');
}

export function keepRoomKey(user, room, keyId, key) {
  return dbDo('readwrite', (st) => st.put(key, keyName(user, room, keyId)), DB_KEYS).catch(() => {});
}

// [[keyId, key], …] kept for user in room.
export async function keptRoomKeys(user, room) {
  const lo = keyName(user, room, '');
  const range = IDBKeyRange.bound(lo, lo + '\uffff');
  const [names, keys] = await Promise.all([
    dbDo('readonly', (st) => st.getAllKeys(range), DB_KEYS),
    dbDo('readonly', (st) => st.getAll(range), DB_KEYS),
  ]).catch(() => [[], []]);
  return names.map((n, i) => [n.slice(lo.length), keys[i]]).filter(([, k]) => k instanceof CryptoKey);
}

// SHA-256 of a public key (its raw bytes) as 16 groups of 4 hex digits:
// what two people read to each other to know the server gave them the
// right keys.
export async function fingerprint(pub) {
  const h = new Uint8Array(await crypto.subtle.digest('SHA-256', unb64(pub)));
  const hex = Array.from(h, (b) => b.toString(16).padStart(2, '0')).join('');
  return hex.match(/.{4}/g).join(' ');
}

// ------------------------------------------------------- room keys
export function newRoomKey() {
  return crypto.subtle.generateKey({ name: 'AES-GCM', length: 256 }, true, ['encrypt', 'decrypt']);
}

// A key id that sorts by creation time (base 36 milliseconds) and is
// unique (random suffix).
export function newKeyId() {
  const r = new Uint8Array(6);
  crypto.getRandomValues(r);
  return Date.now().toString(36) + '-' + Array.from(r, (b) => b.toString(16).padStart(2, '0')).join('');
}

// Who a key was made for, as a short digest of the sorted names: it goes
// with each wrap (bound into the wrap's key), so a receiver can tell
// whether the sender saw the same members it sees.
export async function membersDigest(names) {
  const list = Array.from(new Set(names)).sort().join('\n');
  const h = new Uint8Array(await crypto.subtle.digest('SHA-256', enc.encode(list)));
  return b64(h.subarray(0, 16));
}

function wrapInfo(room, keyId, from, to, members) {
  return enc.encode(['chatd room key v1', room, keyId, from, to, members].join('\u0000'));
}

// The key that wraps room keys between the holder of myPrivate and the
// owner of theirPub (base64), for one (room, key id, sender, receiver).
async function kek(myPrivate, theirPub, info) {
  const them = await crypto.subtle.importKey('raw', unb64(theirPub), ECDH, false, []);
  const secret = await crypto.subtle.deriveBits({ name: 'ECDH', public: them }, myPrivate, 256);
  const hkdf = await crypto.subtle.importKey('raw', secret, 'HKDF', false, ['deriveKey']);
  return crypto.subtle.deriveKey({ name: 'HKDF', hash: 'SHA-256', salt: new Uint8Array(32), info },
    hkdf, { name: 'AES-GCM', length: 256 }, false, ['wrapKey', 'unwrapKey']);
}

// roomKey wrapped for the owner of theirPub: a JSON string holding the
// sender's public key (k), the members digest (m), the IV and the wrapped
// key.
export async function wrapFor(me, roomKey, theirPub, room, keyId, from, to, members) {
  const iv = crypto.getRandomValues(new Uint8Array(12));
  const k = await kek(me.privateKey, theirPub, wrapInfo(room, keyId, from, to, members));
  const w = await crypto.subtle.wrapKey('raw', roomKey, k, { name: 'AES-GCM', iv });
  return JSON.stringify({ v: 1, k: me.pub, m: members, iv: b64(iv), w: b64(w) });
}

// The sender's public key a wrap claims (to be checked against the
// directory before the wrap is trusted), or null when it is malformed.
export function wrapSender(wrapped) {
  try {
    const o = JSON.parse(wrapped);
    return o && o.v === 1 && typeof o.k === 'string' ? o.k : null;
  } catch (e) {
    return null;
  }
}

// { key, members } of a wrap made for us; throws when it is not ours, was
// tampered with, or names another room, key id, sender, receiver or
// members digest.
export async function unwrap(me, wrapped, room, keyId, from, to) {
  const o = JSON.parse(wrapped);
  if (!o || o.v !== 1 || typeof o.m !== 'string') throw new Error('unknown wrap version');
  const k = await kek(me.privateKey, o.k, wrapInfo(room, keyId, from, to, o.m));
  const key = await crypto.subtle.unwrapKey('raw', unb64(o.w), k, { name: 'AES-GCM', iv: unb64(o.iv) },
    { name: 'AES-GCM', length: 256 }, true, ['encrypt', 'decrypt']);
  return { key, members: o.m };
}

// ------------------------------------------------------- messages
function msgAad(room, sender) {
  return enc.encode(['chatd message v1', room, sender].join('\u0000'));
}

// { content, iv }: text encrypted under key, both base64.
export async function seal(key, text, room, sender) {
  const iv = crypto.getRandomValues(new Uint8Array(12));
  const ct = await crypto.subtle.encrypt({ name: 'AES-GCM', iv, additionalData: msgAad(room, sender) },
    key, enc.encode(text));
  return { content: b64(ct), iv: b64(iv) };
}

// The text of a sealed message; throws when the key, room or sender does
// not match or the ciphertext was changed.
export async function open(key, content, iv, room, sender) {
  const pt = await crypto.subtle.decrypt({ name: 'AES-GCM', iv: unb64(iv), additionalData: msgAad(room, sender) },
    key, unb64(content));
  return dec.decode(pt);
}

// The longest text (UTF-8 bytes) whose ciphertext fits in maxContent:
// base64 of the text plus GCM's 16-byte tag.
export function maxPlain(maxContent) {
  return Math.floor(maxContent / 4) * 3 - 16;
}
