/*
 * Helpers every module uses: names and their rules, building DOM nodes
 * (text only), formatting times, checking URLs. No state.
 */

export const ROOM_RE = /^[A-Za-z0-9_.:-]{1,128}$/;
export const USER_RE = /^[A-Za-z0-9_.-]{1,64}$/;

export const $ = (id) => document.getElementById(id);

// A node with a class and text. User data only ever reaches the page
// through textContent (here) or a validated href: never innerHTML.
export function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined && text !== null) e.textContent = String(text);
  return e;
}

export function clear(node) {
  while (node.firstChild) node.removeChild(node.firstChild);
}

export function randomId() {
  const a = new Uint8Array(6);
  crypto.getRandomValues(a);
  return Array.from(a, (b) => b.toString(36).padStart(2, '0')).join('');
}

export function fmtTime(ts) {
  const d = new Date(ts);
  return d.toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' });
}

export function fmtFull(ts) {
  return new Date(ts).toLocaleString([], { dateStyle: 'medium', timeStyle: 'medium' });
}

export function dayKey(ts) {
  return ts ? new Date(ts).toDateString() : '';
}

export function dayLabel(ts) {
  const d = new Date(ts);
  const today = new Date();
  const y = new Date(); y.setDate(today.getDate() - 1);
  if (d.toDateString() === today.toDateString()) return 'Today';
  if (d.toDateString() === y.toDateString()) return 'Yesterday';
  return d.toLocaleDateString([], { weekday: 'long', month: 'long', day: 'numeric', year: 'numeric' });
}

export function hue(name) {
  let h = 0;
  for (let i = 0; i < name.length; i++) h = (h * 31 + name.charCodeAt(i)) >>> 0;
  return h % 360;
}

export function avatar(name) {
  const a = el('span', 'avatar', (name || '?').slice(0, 1));
  a.style.background = 'hsl(' + hue(name || '?') + ' 55% 46%)';
  a.setAttribute('aria-hidden', 'true');
  return a;
}

export function utf8Len(s) {
  return new TextEncoder().encode(s).length;
}

// Only http(s) URLs become links; anything else is shown inert.
export function safeUrl(raw) {
  if (typeof raw !== 'string' || raw.length > 2048) return null;
  try {
    const u = new URL(raw);
    return u.protocol === 'http:' || u.protocol === 'https:' ? u : null;
  } catch (e) {
    return null;
  }
}

export function guessType(url) {
  const p = url.pathname.toLowerCase();
  if (/\.(png|jpe?g|gif|webp|svg|avif)$/.test(p)) return 'image';
  if (/\.(mp4|webm|mov)$/.test(p)) return 'video';
  if (/\.(mp3|ogg|wav|m4a)$/.test(p)) return 'audio';
  // Not "file": since protocol 1.1 that type names a file on the server
  // (/files/<id>), and the server refuses it with an http(s) URL.
  if (/\.(pdf|zip|gz|docx?|xlsx?|pptx?|txt|csv)$/.test(p)) return 'document';
  return 'link';
}

// This page's URL with query parameters changed (null removes one); a
// token is never kept in it.
export function urlWith(extra) {
  const q = new URLSearchParams(location.search);
  q.delete('token');
  for (const [k, v] of Object.entries(extra)) {
    if (v === null) q.delete(k); else q.set(k, v);
  }
  const s = q.toString();
  return location.pathname + (s ? '?' + s : '');
}
