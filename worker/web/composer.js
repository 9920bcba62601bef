/*
 * The composer: writing a message (text, an optional link, and the files
 * files.js uploaded for it), editing one of ours (protocol 1.1; Up in an
 * empty composer edits the last one), checking both against the server's
 * limits, and telling the room we are typing.
 */
import { safeUrl, guessType, utf8Len } from './util.js';
import { S, activeRoom } from './state.js';
import { send, nextId, takeToken } from './conn.js';
import { ui, showBanner, scrollToBottom } from './views.js';
import { queueChat, queueEvent } from './outbox.js';
import { lastOwn } from './messages.js';
import { hasFiles, sendWithFiles } from './files.js';
import { isFile } from './attachments.js';
import { maxPlain } from './crypto.js';

const TYPING_REPEAT_MS = 3000;    // resend active:true at most this often
const TYPING_IDLE_MS = 3500;      // send active:false after this pause

const typing = { room: null, active: false, lastSent: 0, idleTimer: null };

let editing = null;               // { room, seq, node, draft } while editing

export function submit() {
  const room = activeRoom();
  if (!room) return;
  if (editing) {
    submitEdit();
    return;
  }
  const content = ui.input.value.replace(/\s+$/, '');
  const attachments = [];
  // A link would go in clear: none in an encrypted room.
  const rawUrl = room.e2e ? '' : ui.attachUrl.value.trim();
  if (rawUrl) {
    const u = safeUrl(rawUrl);
    if (!u) {
      showBanner('Attachments must be http:// or https:// links.', 'error', 5000);
      return;
    }
    attachments.push({ type: guessType(u), url: u.href });
  }
  if (hasFiles(room)) {
    // The files go with this text, once uploaded.
    if (tooLong(content, room)) return;
    clearComposer();
    sendWithFiles(room, content, attachments);
    scrollToBottom();
    return;
  }
  if (!content.trim()) {
    // content is required by the protocol; a bare link says itself.
    if (attachments.length) sendMessage(room, attachments[0].url, attachments);
    return;
  }
  if (tooLong(content, room)) return;
  sendMessage(room, content, attachments);
}

// In an encrypted room the limit is on the ciphertext (base64, and a tag).
function tooLong(content, room) {
  const bytes = utf8Len(content);
  const max = room && room.e2e ? maxPlain(S.limits.maxContent) : S.limits.maxContent;
  if (bytes <= max) return false;
  showBanner('Message too long: ' + bytes + ' bytes, the limit is ' + max + '.', 'error', 6000);
  return true;
}

function clearComposer() {
  ui.input.value = '';
  ui.attachUrl.value = '';
  ui.attachRow.hidden = true;
  autosize();
  stopTyping();
}

function sendMessage(room, content, attachments) {
  clearComposer();
  queueChat(room, content, attachments);
  scrollToBottom();
}

// ------------------------------------------------------- editing
// Puts one of our messages into the composer for editing; what was being
// written waits and comes back afterwards.
export function startEdit(room, seq) {
  const entry = room.msgs.get(seq);
  if (!S.v11 || !entry || entry.p.deleted || entry.p.lock || entry.p.sender !== S.me) return;
  cancelEdit();
  stopTyping();
  editing = { room: room.name, seq, node: entry.node, draft: ui.input.value };
  entry.node.classList.add('editing');
  ui.editBar.hidden = false;
  ui.attachRow.hidden = true;
  ui.input.value = entry.p.content;
  autosize();
  ui.input.focus();
  ui.input.setSelectionRange(ui.input.value.length, ui.input.value.length);
}

export function cancelEdit() {
  if (!editing) return;
  editing.node.classList.remove('editing');
  ui.input.value = editing.draft;
  editing = null;
  ui.editBar.hidden = true;
  autosize();
}

// Up in an empty composer: edit our newest message. Returns whether it did.
export function editLast() {
  const room = activeRoom();
  if (!S.v11 || editing || !room || ui.input.value !== '') return false;
  const seq = lastOwn(room);
  if (seq === null) return false;
  startEdit(room, seq);
  return true;
}

export function isEditing() {
  return editing !== null;
}

// A link this client once sent as type "file" is a "document" now: a 1.1
// server takes "file" only for its own /files/<id>.
function relabel(a) {
  return a && a.type === 'file' && !isFile(a) ? Object.assign({}, a, { type: 'document' }) : a;
}

function submitEdit() {
  const room = S.rooms.get(editing.room);
  const entry = room && room.msgs.get(editing.seq);
  if (!entry || entry.p.deleted) {
    cancelEdit();
    return;
  }
  const content = ui.input.value.replace(/\s+$/, '');
  if (!content.trim()) {
    showBanner('A message cannot be empty: delete it instead.', 'error', 5000);
    return;
  }
  if (tooLong(content, room)) return;
  if (content !== entry.p.content) {
    // The attachments go along unchanged, so that the edit keeps them
    // however a server reads an edit without them.
    queueEvent('edit', room, { room: room.name, target: editing.seq, content,
      attachments: Array.isArray(entry.p.attachments) ? entry.p.attachments.map(relabel) : [] });
  }
  cancelEdit();
}

// ------------------------------------------------------- typing
function sendTyping(room, active) {
  if (!room || !room.joined || S.conn !== 'online') return false;
  if (!takeToken()) return false;   // typing is best effort: never queue it
  return send({ type: 'typing', id: nextId('t'), payload: { room: room.name, active } });
}

export function onInput() {
  autosize();
  const room = activeRoom();
  if (!room || editing) return;
  const now = Date.now();
  const t = typing;
  if (ui.input.value.trim() === '') {
    stopTyping();
    return;
  }
  if (!t.active || t.room !== room.name || now - t.lastSent > TYPING_REPEAT_MS) {
    if (sendTyping(room, true)) {
      t.active = true;
      t.room = room.name;
      t.lastSent = now;
    }
  }
  clearTimeout(t.idleTimer);
  t.idleTimer = setTimeout(stopTyping, TYPING_IDLE_MS);
}

export function stopTyping() {
  const t = typing;
  clearTimeout(t.idleTimer);
  if (t.active) {
    sendTyping(S.rooms.get(t.room), false);
    t.active = false;
  }
}

// The link went down: the server forgot our typing state with it.
export function typingDown() {
  typing.active = false;
}

export function autosize() {
  ui.input.style.height = 'auto';
  ui.input.style.height = Math.min(160, ui.input.scrollHeight) + 'px';
}

export function toggleAttach() {
  ui.attachRow.hidden = !ui.attachRow.hidden;
  if (!ui.attachRow.hidden) ui.attachUrl.focus();
}
