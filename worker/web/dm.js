/*
 * Direct messages: the room `dm:A:B` (A before B, bytewise) is the
 * conversation of users A and B. Names, and the browser notifications a
 * direct message may raise (permission asked only on a click).
 */
import { ROOM_RE } from './util.js';

// Only names that cannot contain the separator make a DM name.
const DM_USER_RE = /^[A-Za-z0-9_.-]{1,64}$/;
const DM_RE = /^dm:([A-Za-z0-9_.-]{1,64}):([A-Za-z0-9_.-]{1,64})$/;

// The DM room of two users, or null when either name cannot be in one.
// Names are ASCII here, so JavaScript's comparison is the bytewise one.
export function dmName(a, b) {
  if (!DM_USER_RE.test(a || '') || !DM_USER_RE.test(b || '') || a === b) return null;
  return a < b ? 'dm:' + a + ':' + b : 'dm:' + b + ':' + a;
}

export function isDmName(name) {
  const m = DM_RE.exec(name);
  return !!m && m[1] < m[2];
}

// The other user of a DM room me is in, or null.
export function dmPeer(name, me) {
  const m = DM_RE.exec(name);
  if (!m || !(m[1] < m[2])) return null;
  if (m[1] === me) return m[2];
  if (m[2] === me) return m[1];
  return null;
}

// Every room name the server accepts (DM names may be up to 132 chars).
export function validRoom(name) {
  return typeof name === 'string' && (ROOM_RE.test(name) || isDmName(name));
}

// ------------------------------------------------------ notifications
export function canAskNotify() {
  return 'Notification' in window && Notification.permission === 'default';
}

// Must run inside a user gesture; calls done() once the user answered.
export function askNotify(done) {
  if (!('Notification' in window)) return;
  try {
    const r = Notification.requestPermission(done);
    if (r && typeof r.then === 'function') r.then(done, done);
  } catch (e) { /* not allowed here */ }
}

// Shows a notification when the user allowed them; open() runs on click.
// Title and body are plain text to the browser.
export function notify(title, body, tag, open) {
  if (!('Notification' in window) || Notification.permission !== 'granted') return;
  try {
    const n = new Notification(title, { body, tag });
    n.onclick = () => { window.focus(); open(); n.close(); };
  } catch (e) { /* some browsers allow them from a service worker only */ }
}
