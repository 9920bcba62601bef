/*
 * One message on the page: its node (avatar, sender, time, text, "(edited)",
 * attachments (drawn by attachments.js), reactions, delivery status, the
 * action menu), and its place in the room's list, by seq, grouped under the
 * message before it and separated by days.
 */
import { el, clear, avatar, fmtTime, fmtFull, dayKey, dayLabel } from './util.js';
import { S } from './state.js';
import { renderAttachments } from './attachments.js';

// The reactions offered in the menu (any other emoji is shown all the same).
export const EMOJI = ['👍', '❤️', '😂', '🎉', '😮', '😢'];

function button(cls, text, action, title) {
  const b = el('button', cls, text);
  b.type = 'button';
  b.dataset.action = action;
  if (title) { b.title = title; b.setAttribute('aria-label', title); }
  return b;
}

// The menu of a message: react (opens the emoji row), and for our own
// messages edit and delete. CSS shows it on hover or focus, and only once
// the message has a seq and the server speaks 1.1; clicks are handled by
// actions.js.
function renderActions(own) {
  const bar = el('div', 'actions');
  bar.append(button('ghost', '☺+', 'react', 'Add a reaction'));
  if (own) bar.append(button('ghost', 'Edit', 'edit', 'Edit'), button('ghost', 'Delete', 'delete', 'Delete'));
  const picker = el('div', 'picker');
  picker.hidden = true;
  for (const e of EMOJI) {
    const b = button('ghost', e, 'emoji', 'React ' + e);
    b.dataset.emoji = e;
    picker.append(b);
  }
  bar.append(picker);
  return bar;
}

// Chips under a message: each emoji with its count, ours highlighted.
function renderReactions(reactions) {
  const box = el('div', 'reactions');
  for (const [emoji, r] of reactions) {
    if (r.count <= 0) continue;
    const mine = !!S.me && r.users.has(S.me);
    const chip = button('chip' + (mine ? ' mine' : ''), null, 'chip');
    chip.dataset.emoji = emoji;
    chip.setAttribute('aria-pressed', mine ? 'true' : 'false');
    chip.append(el('span', 'e', emoji), el('span', 'n', r.count));
    const names = Array.from(r.users);
    chip.title = names.join(', ') + (r.count > names.length ? ' and ' + (r.count - names.length) + ' more' : '');
    box.append(chip);
  }
  return box;
}

// Brings a message's node in line with its state (entry from messages.js:
// { p, reactions }): text or the deleted placeholder, "(edited)",
// attachments, reactions.
export function updateMessage(node, entry) {
  const p = entry.p;
  const bubble = node.querySelector('.bubble');
  node.classList.toggle('deleted', !!p.deleted);
  // An encrypted message not opened (yet): its marker instead (e2e.js).
  node.classList.toggle('locked', !p.deleted && !!p.lock);
  bubble.textContent = p.deleted ? 'message deleted' : p.lock || p.content;
  for (const old of node.querySelectorAll('.bubble-wrap > .edited, .bubble-wrap > .atts, .bubble-wrap > .reactions')) old.remove();
  if (p.deleted) {
    const bar = node.querySelector('.actions');
    if (bar) bar.remove();
    return;
  }
  let last = bubble;
  if (p.edited) {
    const ed = el('span', 'edited', '(edited)');
    ed.title = 'Edited ' + fmtFull(p.edited);
    last.after(ed);
    last = ed;
  }
  if (Array.isArray(p.attachments) && p.attachments.length) {
    const atts = renderAttachments(p.attachments);
    last.after(atts);
    last = atts;
  }
  if (entry.reactions && entry.reactions.size) last.after(renderReactions(entry.reactions));
}

// One message: avatar, sender + time, the text, attachments, the menu, and
// for our own messages a delivery status.
export function renderMessage(p, own) {
  const li = el('li', 'msg' + (own ? ' own' : ''));
  li.append(avatar(p.sender));
  const wrap = el('div', 'bubble-wrap');
  const meta = el('div', 'meta');
  meta.append(el('span', 'sender', own ? 'You' : p.sender));
  const t = el('time', 'ts', p.ts ? fmtTime(p.ts) : '');
  if (p.ts) {
    t.dateTime = new Date(p.ts).toISOString();
    t.title = fmtFull(p.ts);
  }
  meta.append(t);
  const bubble = el('div', 'bubble', p.lock || p.content);
  if (p.lock) li.classList.add('locked');
  wrap.append(meta, bubble);
  if (Array.isArray(p.attachments) && p.attachments.length) wrap.append(renderAttachments(p.attachments));
  wrap.append(renderActions(own));
  li.append(wrap);
  li.dataset.sender = p.sender || '';
  if (p.ts) li.dataset.ts = String(p.ts);
  return li;
}

// Shows the server's time on a node first drawn with the local one.
export function setTime(node, ts) {
  const t = node.querySelector('time');
  t.textContent = fmtTime(ts);
  t.dateTime = new Date(ts).toISOString();
  t.title = fmtFull(ts);
  node.dataset.ts = String(ts);
}

export function setStatus(node, state, text) {
  let st = node.querySelector('.status');
  if (!st) {
    st = el('div', 'status');
    node.querySelector('.bubble-wrap').append(st);
  }
  st.className = 'status ' + state;
  clear(st);
  st.append(document.createTextNode(text));
  node.classList.toggle('pending', state === 'pending');
  node.classList.toggle('failed', state === 'failed');
  node.dataset.status = state;
  return st;
}

export function renderPending(m) {
  const node = renderMessage({ sender: S.me || (S.ident && S.ident.user) || '', content: m.content, attachments: m.attachments, ts: m.at }, true);
  node.dataset.cid = m.id;
  setStatus(node, 'pending', 'sending…');
  return node;
}

// Groups a message under the one before it (same sender, same day,
// within five minutes) and puts day separators between days.
function regroup(node) {
  if (!node || !node.classList || !node.classList.contains('msg')) return;
  let prev = node.previousElementSibling;
  if (prev && prev.classList.contains('day')) {
    const d = prev;
    prev = d.previousElementSibling;
    d.remove();
  }
  const ts = Number(node.dataset.ts || 0);
  const pts = prev ? Number(prev.dataset.ts || 0) : 0;
  if (ts && (!prev || dayKey(ts) !== dayKey(pts))) {
    node.before(el('li', 'day', dayLabel(ts)));
  }
  const cont = prev && prev.classList.contains('msg') && prev.dataset.sender === node.dataset.sender &&
    dayKey(ts) === dayKey(pts) && Math.abs(ts - pts) < 5 * 60 * 1000;
  node.classList.toggle('cont', !!cont);
}

function nextMsg(node) {
  let n = node.nextElementSibling;
  while (n && !n.classList.contains('msg')) n = n.nextElementSibling;
  return n;
}

// Puts a message node into the room's list at its seq position.
export function placeBySeq(room, seq, node) {
  node.dataset.seq = String(seq);
  const list = room.list;
  let after = list.lastElementChild;
  while (after && !(after.classList.contains('msg') && Number(after.dataset.seq) < seq)) {
    after = after.previousElementSibling;
  }
  if (after) {
    after.after(node);
  } else {
    list.prepend(node);
  }
  regroup(node);
  const n = nextMsg(node);
  if (n) regroup(n);
}

// Marks where the unread part of a room begins: the first message from
// someone else after seq (null: nowhere). Returns that node, if any.
export function markFirstUnread(room, seq) {
  const old = room.list.querySelector('.msg.first-unread');
  if (old) old.classList.remove('first-unread');
  if (seq === null || seq === undefined) return null;
  let first = null;
  for (const [s, entry] of room.msgs) {
    if (s > seq && entry.p.sender !== S.me && !entry.p.deleted && (!first || s < Number(first.dataset.seq))) {
      first = entry.node;
    }
  }
  if (first) first.classList.add('first-unread');
  return first;
}
