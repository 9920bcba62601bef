/*
 * The message menu (protocol 1.1): react with one of a few emoji, edit and
 * delete our own messages, toggle a reaction by its chip. Clicks reach
 * here by delegation from the room views; what they ask for goes through
 * the outbox like a message (acked, resent with the same id).
 */
import { utf8Len } from './util.js';
import { S, activeRoom } from './state.js';
import { queueEvent } from './outbox.js';
import { startEdit } from './composer.js';

const CONFIRM_MS = 4000;

function closePickers(except) {
  for (const p of document.querySelectorAll('.msg .picker:not([hidden])')) {
    if (p !== except) {
      p.hidden = true;
      p.closest('.msg').classList.remove('picking');
    }
  }
}

// Toggles our reaction emoji on the message.
function react(room, seq, entry, emoji) {
  if (!emoji || utf8Len(emoji) > 32) return;
  const r = entry.reactions.get(emoji);
  const on = !(r && r.users.has(S.me));
  queueEvent('react', room, { room: room.name, target: seq, emoji, on });
}

// Delete asks twice: the first click turns the button into a question.
function remove(room, seq, b) {
  if (b.classList.contains('confirm')) {
    queueEvent('delete', room, { room: room.name, target: seq });
    return;
  }
  b.classList.add('confirm');
  b.textContent = 'Delete?';
  b.title = 'Click again to delete';
  setTimeout(() => {
    b.classList.remove('confirm');
    b.textContent = 'Delete';
    b.title = 'Delete';
  }, CONFIRM_MS);
}

export function onMessageClick(ev) {
  const li = ev.target.closest('li.msg');
  const b = ev.target.closest('button[data-action]');
  if (!b) {
    // A tap on a message shows its menu where there is no hover.
    if (li && ev.target.closest('.bubble')) li.classList.toggle('menu-open');
    closePickers(null);
    return;
  }
  const room = activeRoom();
  if (!S.v11 || !li || !room || !li.dataset.seq) return;
  const seq = Number(li.dataset.seq);
  const entry = room.msgs.get(seq);
  if (!entry || entry.p.deleted) return;
  switch (b.dataset.action) {
    case 'react': {
      const picker = li.querySelector('.picker');
      closePickers(picker);
      picker.hidden = !picker.hidden;
      li.classList.toggle('picking', !picker.hidden);
      break;
    }
    case 'emoji':
    case 'chip':
      closePickers(null);
      react(room, seq, entry, b.dataset.emoji);
      break;
    case 'edit':
      if (entry.p.sender === S.me) startEdit(room, seq);
      break;
    case 'delete':
      if (entry.p.sender === S.me) remove(room, seq, b);
      break;
    default:
      break;
  }
}

export function closeMenus() {
  closePickers(null);
}
